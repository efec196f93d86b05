"""The live sessions dashboard and watching, through the real app and a real Xvnc."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from websupport import (
    app_client,
    base_url,
    connect,
    eventually,
    key_event,
    keys_down,
    pointer_at,
    pointer_event,
    rfb_handshake,
    sign_in,
)

from gateway.config import Settings
from gateway.keys import LIVE, STORE
from gateway.xdisplay.xvnc import XvncDisplay

SHIFT_L = 0xFFE1


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, {"alice": False, "boss": True}, desktop) as c:
        yield c


async def next_event(stream: aiohttp.ClientResponse) -> dict[str, object]:
    """The data of the next event on a server-sent event stream."""
    while True:
        line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
        if line.startswith("data: "):
            data: dict[str, object] = json.loads(line[6:])
            return data


@pytest.fixture
async def admin_http(client: TestClient) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:  # type: ignore[type-arg]
    """A second browser: the admin, signed in with both factors; (session, CSRF token)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = await sign_in(http, "boss", base=base_url(client))
        yield http, csrf


async def test_non_admins_are_refused_everywhere(client: TestClient) -> None:  # type: ignore[type-arg]
    base = base_url(client)
    csrf = await sign_in(client.session, "alice", base=base)
    conn = await connect(client.session, csrf, base=base)
    async with client.ws_connect(conn["ws_url"], origin=base) as ws:
        await rfb_handshake(ws)
        sid = conn["session_id"]
        json_headers = {"Accept": "application/json", "X-CSRF-Token": csrf}
        for method, path in (
            ("GET", "/admin/sessions"),
            ("GET", "/admin/sessions/events"),
            ("GET", f"/admin/sessions/{sid}/watch"),
            ("POST", f"/admin/sessions/{sid}/watch/connect"),
            ("POST", f"/admin/sessions/{sid}/disconnect"),
            ("POST", f"/admin/sessions/{sid}/message"),
        ):
            resp = await client.request(method, path, headers=json_headers,
                                        json={"reason": "x", "text": "x"}
                                        if method == "POST" else None)
            assert resp.status == 403, (method, path, resp.status)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"/ws/watch/w{sid}?ticket=x", origin=base)
        assert refused.value.status == 403
        # Still live, and no message reached it.
        assert client.server.app[LIVE].get(sid) is not None
    rows = await client.server.app[STORE].list_audit(kind="admin.denied")
    assert len(rows) >= 7


async def test_watch_is_view_only_at_the_rfb_level(
    client: TestClient, admin_http: tuple[aiohttp.ClientSession, str],  # type: ignore[type-arg]
    desktop: XvncDisplay,
) -> None:
    base = base_url(client)
    admin, admin_csrf = admin_http
    csrf = await sign_in(client.session, "alice", base=base)
    conn = await connect(client.session, csrf, base=base)
    sid = conn["session_id"]
    async with client.ws_connect(conn["ws_url"], origin=base) as user_ws:
        user_init = await rfb_handshake(user_ws)

        # The user's own input reaches the desktop (the positive control).
        await user_ws.send_bytes(pointer_event(100, 100))
        assert await eventually(lambda: pointer_at(desktop) == (100, 100))
        await user_ws.send_bytes(key_event(SHIFT_L, True))
        assert await eventually(lambda: keys_down(desktop) == 1)
        await user_ws.send_bytes(key_event(SHIFT_L, False))
        assert await eventually(lambda: keys_down(desktop) == 0)

        # The user's notifications stream.
        events = await client.session.get(f"{base}/sessions/{sid}/events")
        assert events.status == 200 and events.content_type == "text/event-stream"

        assert await next_event(events) == {"type": "watched", "watchers": 0}

        resp = await admin.post(f"{base}/admin/sessions/{sid}/watch/connect",
                                headers={"X-CSRF-Token": admin_csrf, "Accept": "application/json"})
        assert resp.status == 200, await resp.text()
        watch = await resp.json()
        async with admin.ws_connect(base + watch["ws_url"], origin=base) as watch_ws:
            watch_init = await rfb_handshake(watch_ws)
            assert watch_init == user_init  # the same desktop, a second shared connection
            assert await next_event(events) == {"type": "watched", "watchers": 1}
            live = client.server.app[LIVE]
            assert live.get(sid).watchers == 1  # type: ignore[union-attr]
            # The gateway timed a websocket PING to the user's client.
            rtt = live.get(sid).rtt_ms  # type: ignore[union-attr]
            assert rtt is not None and 0 <= rtt < 1000, rtt
            assert live.get(watch["watch_id"]).watch_of == sid  # type: ignore[union-attr]

            # Keys and pointer from the watch are dropped by the gateway.
            await watch_ws.send_bytes(key_event(SHIFT_L, True) + pointer_event(300, 200, 1))
            await watch_ws.send_bytes(struct.pack(">BBHHHH", 3, 0, 0, 0, 64, 64))  # update request
            msg = await watch_ws.receive(timeout=10)  # the connection is alive and relaying
            assert msg.type is aiohttp.WSMsgType.BINARY
            await asyncio.sleep(0.5)
            assert keys_down(desktop) == 0
            assert pointer_at(desktop) == (100, 100)
            counters = live.get(watch["watch_id"]).counters  # type: ignore[union-attr]
            assert counters.messages_dropped == 2

            # An admin message reaches the user's stream.
            resp = await admin.post(f"{base}/admin/sessions/{sid}/message",
                                    json={"text": "please save your work"},
                                    headers={"X-CSRF-Token": admin_csrf})
            assert resp.status == 200, await resp.text()
            assert await next_event(events) == {"type": "message", "from": "boss",
                                                "text": "please save your work"}

            # Disconnecting the watched session ends the watch too, and is final.
            resp = await admin.post(f"{base}/admin/sessions/{sid}/disconnect",
                                    json={"reason": "maintenance at noon"},
                                    headers={"X-CSRF-Token": admin_csrf})
            assert resp.status == 200, await resp.text()
            for ws, code in ((user_ws, 4030), (watch_ws, 1000)):
                msg = await ws.receive(timeout=10)
                while msg.type is aiohttp.WSMsgType.BINARY:
                    msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == code, msg
        events.close()
    status = await (await client.session.get(f"{base}/sessions/{sid}")).json()
    assert status["reconnect"] is False and status["close_reason"] == "maintenance at noon"
    audit = [r.detail for r in await client.server.app[STORE].list_audit(kind="admin")]
    assert any(f"session {sid} watched (by boss)" in d for d in audit), audit


async def test_dashboard_stream_pushes_a_new_session(
    client: TestClient, admin_http: tuple[aiohttp.ClientSession, str],  # type: ignore[type-arg]
) -> None:
    base = base_url(client)
    admin, _ = admin_http
    page = await admin.get(f"{base}/admin/sessions")
    assert page.status == 200 and "admin.js" in await page.text()
    stream = await admin.get(f"{base}/admin/sessions/events")
    assert stream.headers["Content-Type"].startswith("text/event-stream")

    first = await next_event(stream)
    assert first["live"] == []
    csrf = await sign_in(client.session, "alice", base=base)
    conn = await connect(client.session, csrf, base=base)
    async with client.ws_connect(conn["ws_url"], origin=base) as ws:
        await rfb_handshake(ws)
        while True:
            snap = await next_event(stream)
            live = snap["live"]
            assert isinstance(live, list)
            if live:
                break
        row = live[0]
        assert row["id"] == conn["session_id"] and row["user"] == "alice"
        assert row["desktop"] == "VM" and row["watchers"] == 0
    while True:
        snap = await next_event(stream)
        recent = snap["recent"]
        assert isinstance(recent, list)
        if recent and not snap["live"]:
            break
    assert recent[0]["id"] == conn["session_id"]
    assert recent[0]["close_reason"] == "closed by the user"
    stream.close()
