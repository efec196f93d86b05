"""The relay websocket through the real app and a real Xvnc: origin, ticket, sign-out, status."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import struct
from collections.abc import AsyncIterator

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_services, create_app
from gateway.config import Settings
from gateway.keys import STORE
from gateway.providers.xvnc import XvncDisplay, free_tcp_port, start_display
from gateway.store.sqlite import SQLiteStore

PASSWORD = "a long enough password"
VNC_PASSWORD = "vncpw123"


@pytest.fixture
async def desktop() -> AsyncIterator[XvncDisplay]:
    d = await start_display(rfbport=free_tcp_port(), password=VNC_PASSWORD, name="relay-test",
                            geometry="640x480", window_manager=False, xterm=False)
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    port = free_tcp_port()
    settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}")
    store = SQLiteStore(settings.database_path)
    await store.open()
    services = build_services(settings, store)
    await services.add_user("alice", password=PASSWORD)
    await services.add_desktop("VM", "static", host="127.0.0.1", port=desktop.rfbport or 0,
                               password=VNC_PASSWORD)
    await services.assign("VM", "alice")
    await store.close()
    server = TestServer(create_app(settings), host="127.0.0.1", port=port)
    async with TestClient(server) as c:
        yield c


def _origin(client: TestClient) -> str:  # type: ignore[type-arg]
    return f"http://127.0.0.1:{client.port}"


async def sign_in(client: TestClient) -> str:  # type: ignore[type-arg]
    """Sign in with both factors; return the CSRF token of the signed-in session."""
    page = await (await client.get("/login")).text()
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    await client.post("/login", data={"username": "alice", "password": PASSWORD,
                                      "_csrf": csrf.group(1)})
    page = await (await client.get("/login/totp")).text()
    secret = re.sub(r"<[^>]+>|\s", "", re.search(r'id="totp-secret"[^>]*>(.*?)</code>', page,
                                                 re.S).group(1))  # type: ignore[union-attr]
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    page = await (await client.post("/login/totp", data={
        "code": pyotp.TOTP(secret).now(), "_csrf": csrf.group(1)})).text()
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    return csrf.group(1)


async def connect(client: TestClient, csrf: str) -> dict[str, str]:  # type: ignore[type-arg]
    resp = await client.post("/desktops/1/connect", headers={"X-CSRF-Token": csrf,
                                                             "Accept": "application/json"})
    assert resp.status == 200, await resp.text()
    data: dict[str, str] = await resp.json()
    return data


async def rfb_handshake(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """Browser side of RFB 3.8 with security None; returns ServerInit."""
    buf = b""

    async def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            buf += msg.data
        out, buf = buf[:n], buf[n:]
        return out

    assert await need(12) == b"RFB 003.008\n"
    await ws.send_bytes(b"RFB 003.008\n")
    count = (await need(1))[0]
    assert list(await need(count)) == [1]  # the browser is only ever offered None
    await ws.send_bytes(b"\x01")
    assert await need(4) == b"\0\0\0\0"
    await ws.send_bytes(b"\x01")  # ClientInit, shared
    head = await need(24)
    name = await need(struct.unpack(">I", head[20:24])[0])
    return head + name


async def test_relay_reaches_the_desktop_without_its_password(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client)
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=_origin(client)) as ws:
        init = await rfb_handshake(ws)
        assert struct.unpack(">HH", init[:4]) == (640, 480) and init.endswith(b"relay-test")
        await ws.send_bytes(struct.pack(">BBHHHHH", 3, 0, 0, 0, 640, 480, 0))  # update request
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.BINARY and msg.data[0] == 0  # FramebufferUpdate
        assert VNC_PASSWORD.encode() not in init + msg.data
        status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
        assert status["state"] == "active"
    for _ in range(50):
        status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
        if status["state"] == "closed":
            break
        await asyncio.sleep(0.1)
    assert status == {"id": conn["session_id"], "state": "closed",
                      "close_reason": "closed by the user", "reconnect": True}


async def test_foreign_origin_and_reused_ticket_are_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client)
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin="http://evil.example") as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4003
        assert "origin" in (msg.extra or "")
    async with client.ws_connect(conn["ws_url"], origin=_origin(client)) as ws:
        await rfb_handshake(ws)  # the foreign attempt did not burn the ticket
    async with client.ws_connect(conn["ws_url"], origin=_origin(client)) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_signing_out_ends_the_desktop_connection(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client)
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=_origin(client)) as ws:
        await rfb_handshake(ws)
        await client.post("/logout", data={"_csrf": csrf})
        msg = await ws.receive(timeout=10)
        while msg.type is aiohttp.WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4031
    session = await client.server.app[STORE].get_session(conn["session_id"])
    assert session is not None and session.close_reason == "you signed out" and session.close_final


async def test_garbage_from_the_browser_closes_with_a_reason(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client)
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=_origin(client)) as ws:
        await rfb_handshake(ws)
        await ws.send_bytes(bytes([77, 1, 2, 3]))
        msg = await ws.receive(timeout=10)
        while msg.type is aiohttp.WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert msg.data == 4013 and "77" in (msg.extra or "")
    status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
    assert status["reconnect"] is False and "77" in status["close_reason"]
