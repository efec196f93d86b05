"""The relay websocket through the real app and a real Xvnc: origin, ticket, sign-out, status."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from websupport import VNC_PASSWORD, app_client, base_url, connect, rfb_handshake, sign_in

from gateway.config import Settings
from gateway.keys import STORE
from gateway.xdisplay.xvnc import XvncDisplay


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, desktop=desktop) as c:
        yield c


async def test_relay_reaches_the_desktop_without_its_password(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
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
    csrf = await sign_in(client, "alice")
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin="http://evil.example") as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4003
        assert "origin" in (msg.extra or "")
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        await rfb_handshake(ws)  # the foreign attempt did not burn the ticket
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_signing_out_ends_the_desktop_connection(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        await rfb_handshake(ws)
        await client.post("/logout", data={"_csrf": csrf})
        msg = await ws.receive(timeout=10)
        while msg.type is aiohttp.WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4031
    session = await client.server.app[STORE].get_session(conn["session_id"])
    assert session is not None and session.close_reason == "you signed out" and session.close_final


async def test_garbage_from_the_browser_closes_with_a_reason(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    conn = await connect(client, csrf)
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        await rfb_handshake(ws)
        await ws.send_bytes(bytes([77, 1, 2, 3]))
        msg = await ws.receive(timeout=10)
        while msg.type is aiohttp.WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert msg.data == 4013 and "77" in (msg.extra or "")
    status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
    assert status["reconnect"] is False and "77" in status["close_reason"]
