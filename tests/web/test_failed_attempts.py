"""Connection attempts that never reach the desktop: recorded as failed attempts (not closed
sessions), one audit event per attempt however often the client retries it, through the real
app, a real closed port and a real Xvnc."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websupport import (
    PASSWORD,
    VNC_PASSWORD,
    Client,
    app_client,
    base_url,
    connect,
    rfb_handshake,
    sign_in,
)

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.errors import WS_UPSTREAM_UNREACHABLE
from gateway.keys import ACCOUNTS, BROKER, CATALOG, STORE
from gateway.model import SessionState
from gateway.web.admin_sessions import snapshot
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

DOWN = "Down desktop"


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[Client]:
    """alice, assigned "VM" (a real Xvnc) and DOWN (a loopback port nothing listens on)."""
    # Up to 60 tries at once here: above the default max_sessions_per_user (test_web_limits.py).
    async with await app_client(settings, {"alice": False, "root": True}, desktop=desktop,
                                max_sessions_per_user=100) as c:
        catalog = c.server.app[CATALOG]
        down = await catalog.add_desktop(Actor.cli(), DOWN, "static", host="127.0.0.1",
                                         port=free_tcp_port(), password=VNC_PASSWORD)
        await catalog.assign(Actor.cli(), down.id, user_ref="alice")
        yield c


async def desktop_id(client: Client, name: str) -> int:
    desktop = await client.server.app[STORE].get_desktop_by_name(name)
    assert desktop is not None
    return desktop.id


async def post_connect(client: Client, csrf: str, desktop: int,
                       body: dict[str, Any]) -> aiohttp.ClientResponse:
    return await client.post(f"/desktops/{desktop}/connect", json=body,
                             headers={"X-CSRF-Token": csrf, "Accept": "application/json"})


async def try_once(client: Client, csrf: str, desktop: int, retry_of: str | None) -> str:
    """One try as the client page makes it: connect (naming the previous try), open the
    websocket, which the gateway closes because the desktop does not answer. Returns the
    session id, once the gateway has recorded the try."""
    resp = await post_connect(client, csrf, desktop, {"retry_of": retry_of} if retry_of else {})
    assert resp.status == 200, await resp.text()
    conn = await resp.json()
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        msg = await ws.receive(timeout=15)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == WS_UPSTREAM_UNREACHABLE, msg
    sid: str = conn["session_id"]
    for _ in range(100):
        status = await (await client.get(f"/sessions/{sid}")).json()
        if status["state"] != "starting":
            break
        await asyncio.sleep(0.05)
    # What the client page reads to decide: a failed attempt, worth retrying.
    assert status == {"id": sid, "state": "failed", "close_reason": "the desktop cannot be reached",
                      "reconnect": True}
    return sid


async def session_audit(client: Client, desktop: str) -> list[tuple[str, str]]:
    events = await client.server.app[STORE].list_audit(limit=10_000, kind="session.",
                                                       desktop=desktop)
    return [(e.kind, e.detail) for e in reversed(events)]


async def test_unreachable_desktop_is_one_failed_attempt_however_often_retried(
        client: Client) -> None:
    app = client.server.app
    store = app[STORE]
    csrf = await sign_in(client, "alice")
    down = await desktop_id(client, DOWN)

    sid = await try_once(client, csrf, down, None)
    for _ in range(5):  # the client retrying the desktop that is down
        assert await try_once(client, csrf, down, sid) == sid
    failed = await store.get_session(sid)
    assert failed is not None and (failed.state, failed.tries, failed.bytes_up,
                                   failed.bytes_down) == (SessionState.FAILED, 6, 0, 0)
    # One audit event for the whole attempt: no connect/disconnect pair per try.
    assert await session_audit(client, DOWN) == [
        ("session.failed", f"session {sid}: the desktop cannot be reached")]

    # The admin sees it as a failed attempt (API, with its state), never as a closed session.
    root = await store.get_user_by_name("root")
    assert root is not None
    _, token = await app[ACCOUNTS].create_token(Actor.of(root), root, "test", read_only=True)
    resp = await client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    recent = {r["id"]: r for r in (await resp.json())["recent"]}
    assert {k: recent[sid][k] for k in ("state", "close_reason", "tries", "bytes_down")} == {
        "state": "failed", "close_reason": "the desktop cannot be reached", "tries": 6,
        "bytes_down": 0}
    assert sid not in {r["id"] for r in (await snapshot(app))["recent"]}

    # A real session on the desktop that answers: connect and disconnect, "Recently closed".
    conn = await connect(client, csrf, await desktop_id(client, "VM"))
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        await rfb_handshake(ws)
    for _ in range(100):
        real = await store.get_session(conn["session_id"])
        if real is not None and real.state is SessionState.CLOSED:
            break
        await asyncio.sleep(0.05)
    assert [k for k, _ in await session_audit(client, "VM")] == ["session.connect",
                                                                 "session.disconnect"]
    assert [r["id"] for r in (await snapshot(app))["recent"]] == [conn["session_id"]]

    # Retrying a real (closed) session starts a new attempt; so does a made-up id.
    fresh = await try_once(client, csrf, down, conn["session_id"])
    assert fresh != sid
    assert await try_once(client, csrf, down, "no-such-session") not in (sid, fresh)
    assert [k for k, _ in await session_audit(client, DOWN)] == ["session.failed"] * 3


async def test_concurrent_retries_continue_the_attempt_once(client: Client) -> None:
    store = client.server.app[STORE]
    csrf = await sign_in(client, "alice")
    down = await desktop_id(client, DOWN)
    sid = await try_once(client, csrf, down, None)

    answers = await asyncio.gather(*(post_connect(client, csrf, down, {"retry_of": sid})
                                     for _ in range(60)))
    assert [r.status for r in answers] == [200] * 60
    ids = [(await r.json())["session_id"] for r in answers]
    # Exactly one retry continues the attempt; no two tickets ever share a session.
    assert ids.count(sid) == 1 and len(set(ids)) == 60
    row = await store.get_session(sid)
    assert row is not None and (row.state, row.tries) == (SessionState.STARTING, 2)

    # All 60 tries fail at once: each attempt failed once, audited once.
    async def fail(url: str) -> int:
        async with client.ws_connect(url, origin=base_url(client)) as ws:
            msg = await ws.receive(timeout=30)
            return int(msg.data) if msg.type is aiohttp.WSMsgType.CLOSE else -1

    urls = [(await r.json())["ws_url"] for r in answers]
    assert await asyncio.gather(*(fail(u) for u in urls)) == [WS_UPSTREAM_UNREACHABLE] * 60
    for _ in range(100):
        rows = [await store.get_session(i) for i in ids]
        if all(r is not None and r.state is SessionState.FAILED for r in rows):
            break
        await asyncio.sleep(0.05)
    assert all(r is not None and r.state is SessionState.FAILED for r in rows)
    events = await session_audit(client, DOWN)
    assert sorted(d.split(":")[0] for _, d in events) == sorted(f"session {i}" for i in ids)
    assert {k for k, _ in events} == {"session.failed"}


async def test_bad_retry_of_is_refused_and_foreign_attempts_are_not_continued(
        client: Client, settings: Settings) -> None:
    csrf = await sign_in(client, "alice")
    down = await desktop_id(client, DOWN)
    sid = await try_once(client, csrf, down, None)
    for bad in (5, "", "x" * 65, ["a"], {"a": 1}, True):
        resp = await post_connect(client, csrf, down, {"retry_of": bad})
        assert resp.status == 400, (bad, resp.status)
        assert "retry_of" in (await resp.json())["error"]

    # Another person naming alice's attempt gets an attempt of their own.
    app = client.server.app
    await app[ACCOUNTS].add_user(Actor.cli(), "bea", password=PASSWORD)
    await app[CATALOG].assign(Actor.cli(), down, user_ref="bea")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        base = base_url(client)
        other_csrf = await sign_in(other, "bea", base=base)
        resp = await other.post(f"{base}/desktops/{down}/connect", json={"retry_of": sid},
                                headers={"X-CSRF-Token": other_csrf, "Accept": "application/json"})
        assert resp.status == 200
        assert (await resp.json())["session_id"] != sid
    row = await client.server.app[STORE].get_session(sid)
    assert row is not None and (row.state, row.tries) == (SessionState.FAILED, 1)


async def test_a_ticket_never_used_is_a_failed_attempt(settings: Settings,
                                                       desktop: XvncDisplay) -> None:
    async with await app_client(settings, desktop=desktop, ticket_ttl_seconds=1) as client:
        csrf = await sign_in(client, "alice")
        conn = await connect(client, csrf, await desktop_id(client, "VM"))
        await asyncio.sleep(1.2)
        await client.server.app[BROKER].expire_unused_tickets()
        row = await client.server.app[STORE].get_session(conn["session_id"])
        assert row is not None and (row.state, row.close_reason) == (
            SessionState.FAILED, "connection ticket not used")
        assert await session_audit(client, "VM") == [
            ("session.failed", f"session {conn['session_id']}: connection ticket not used")]


async def test_maintenance_is_no_attempt_and_not_retried(client: Client) -> None:
    """A desktop under maintenance records no attempt and tells the client not to retry by
    itself (it would only repeat the refusal)."""
    store = client.server.app[STORE]
    csrf = await sign_in(client, "alice")
    down = await store.get_desktop_by_name(DOWN)
    assert down is not None
    await store.update_desktop(down.id, name=down.name, host=down.host, port=down.port,
                               maintenance=True)
    answers = await asyncio.gather(*(post_connect(client, csrf, down.id, {}) for _ in range(50)))
    for resp in answers:
        assert resp.status == 503
        assert await resp.json() == {
            "error": "this desktop is under maintenance; try again later", "reconnect": False}
    assert [s for s in await store.list_sessions() if s.desktop_id == down.id] == []
