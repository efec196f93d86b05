"""Every way a relay ends is recorded as what happened: the close frame, the session row, the
audit trail, the log and the metrics (real gateway, real Xvnc, real websocket clients)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from relaysupport import (
    close_of,
    closed_count,
    disconnect_detail,
    live_count,
    open_relay,
    row_of,
    store_of,
)
from websupport import (
    PASSWORD,
    VNC_PASSWORD,
    app_client,
    base_url,
    connect,
    eventually,
    rfb_handshake,
    sign_in,
)

from gateway.app import build_cases
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

CLI = Actor.cli()  # who makes the changes that set the scene

ADMIN_JSON = {"Accept": "application/json"}


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, {"alice": False, "boss": True}, desktop) as c:
        yield c


async def test_a_shutdown_is_recorded_as_a_shutdown(
        settings: Settings, desktop: XvncDisplay, tmp_path: Path) -> None:
    """`deskgate serve` as a process, stopped with SIGTERM while three relays run."""
    port = free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    store = SQLiteStore(settings.database_path)
    await store.open()
    cases = build_cases(settings, store)
    await cases.accounts.add_user(CLI, "alice", password=PASSWORD, admin=False)
    vm = await cases.catalog.add_desktop(CLI, "VM", "static", host="127.0.0.1",
                                         port=desktop.rfbport or 0, password=VNC_PASSWORD)
    await cases.catalog.assign(CLI, vm.id, user_ref="alice")
    await store.close()
    env = {**os.environ, "DESKGATE_SERVER_PUBLIC_URL": base}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--config", str(tmp_path / "deskgate.toml"),
        "serve", "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for _ in range(100):
                try:
                    await (await http.get(base + "/healthz")).read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            csrf = await sign_in(http, "alice", base=base)
            sockets = []
            for _ in range(3):
                conn = await connect(http, csrf, base=base)
                ws = await http.ws_connect(base + conn["ws_url"], origin=base)
                await rfb_handshake(ws)
                sockets.append((ws, conn["session_id"]))
            closes = [asyncio.ensure_future(close_of(ws)) for ws, _ in sockets]
            proc.send_signal(signal.SIGTERM)  # the gateway shuts down
            for close in closes:
                assert await close == (1001, "the gateway is shutting down")
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log_text = (await proc.stderr.read()).decode()
    store = SQLiteStore(settings.database_path)
    await store.open()
    try:
        for _, sid in sockets:
            row = await row_of(store, sid)
            assert row.close_reason == "the gateway is shutting down" and not row.close_final
            assert "the gateway is shutting down" in await disconnect_detail(store, sid)
            assert f"session={sid} desktop=VM] closed: the gateway is shutting down" in log_text
    finally:
        await store.close()
    assert "closed by the user" not in log_text


async def test_a_disabled_account_is_recorded_as_disabled(
        client: TestClient, settings: Settings, tmp_path: Path) -> None:  # type: ignore[type-arg]
    base = base_url(client)
    secrets: dict[str, str] = {}
    csrf = await sign_in(client, "alice", secrets)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
        admin_csrf = await sign_in(admin, "boss", base=base)
        # From the admin pages: the connection ends at once.
        ws, sid = await open_relay(client, csrf)
        users = await (await admin.get(f"{base}/api/v1/users", headers=ADMIN_JSON)).json()
        alice = next(u for u in users["users"] if u["name"] == "alice")
        resp = await admin.post(f"{base}/api/v1/users/{alice['id']}/disable",
                                headers={**ADMIN_JSON, "X-CSRF-Token": admin_csrf})
        assert resp.status == 200, await resp.text()
        assert await close_of(ws) == (4032, "your account was disabled")
        await ws.close()
        row = await row_of(store_of(client), sid)
        assert row.close_reason == "your account was disabled" and row.close_final
        assert "your account was disabled" in await disconnect_detail(store_of(client), sid)
        resp = await admin.post(f"{base}/api/v1/users/{alice['id']}/enable",
                                headers={**ADMIN_JSON, "X-CSRF-Token": admin_csrf})
        assert resp.status == 200, await resp.text()

    # From the command line, another process: the gateway's sweep finds out and says the same.
    csrf = await sign_in(client, "alice", secrets)
    ws, sid = await open_relay(client, csrf)
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--config",
                           str(tmp_path / "deskgate.toml"), "user", "disable", "alice"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert await close_of(ws) == (4032, "your account was disabled")
    await ws.close()
    row = await row_of(store_of(client), sid)
    assert row.close_reason == "your account was disabled"
    assert await eventually(lambda: closed_count(client, "account_disabled") == 2)
    assert closed_count(client, "signed_out") == 0 and closed_count(client, "user") == 0


async def test_expired_and_idle_sign_ins_say_so(client: TestClient) -> None:  # type: ignore[type-arg]
    store = store_of(client)
    csrf = await sign_in(client, "alice")
    for column, hours, code, reason, category in (
            ("created_at", 13, 4033, "your sign-in expired; sign in again", "expired"),
            ("last_seen", 1, 4020, "you were signed out after a time without any input", "idle")):
        ws, sid = await open_relay(client, csrf)
        session = await store.get_session(sid)
        assert session is not None
        await store._exec(f"UPDATE web_sessions SET {column} = {column} - ? WHERE id = ?",  # noqa: S608
                          (hours * 3600, session.web_session_id))
        assert await close_of(ws) == (code, reason)
        await ws.close()
        assert (await row_of(store, sid)).close_reason == reason
        assert await eventually(lambda c=category: closed_count(client, c) == 1)
        await store._exec(f"UPDATE web_sessions SET {column} = {column} + ? WHERE id = ?",  # noqa: S608
                          (hours * 3600, session.web_session_id))


async def test_every_other_end_has_its_own_reason(
        client: TestClient, desktop: XvncDisplay) -> None:  # type: ignore[type-arg]
    """Sign-out, an admin's disconnect, the browser lost, a protocol error, the user's own
    close: each its own close code, row reason and metrics category."""
    base = base_url(client)
    store = store_of(client)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
        admin_csrf = await sign_in(admin, "boss", base=base)
        csrf = await sign_in(client, "alice")

        ws, sid = await open_relay(client, csrf)
        resp = await admin.post(f"{base}/api/v1/sessions/{sid}/disconnect",
                                json={"reason": "maintenance at noon"},
                                headers={**ADMIN_JSON, "X-CSRF-Token": admin_csrf})
        assert resp.status == 204, await resp.text()
        assert await close_of(ws) == (4030, "maintenance at noon")
        await ws.close()
        assert (await row_of(store, sid)).close_reason == "maintenance at noon"

        ws, sid = await open_relay(client, csrf)
        await ws.send_bytes(bytes([77, 1, 2, 3]))
        code, reason = await close_of(ws)
        assert code == 4013 and "77" in reason
        await ws.close()
        assert "77" in ((await row_of(store, sid)).close_reason or "")

        ws, sid = await open_relay(client, csrf)
        await ws.close()
        assert (await row_of(store, sid)).close_reason == "closed by the user"

        # The browser vanishes: its TCP connection reset, no close frame.
        ws, sid = await open_relay(client, csrf)
        transport = ws._response.connection.transport  # type: ignore[union-attr]
        sock: socket.socket = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()
        assert (await row_of(store, sid)).close_reason == "the connection to the browser was lost"

        ws, sid = await open_relay(client, csrf)
        await client.post("/logout", data={"_csrf": csrf})
        assert await close_of(ws) == (4031, "you signed out")
        await ws.close()
        assert (await row_of(store, sid)).close_reason == "you signed out"

    assert await eventually(lambda: live_count(client) == 0)
    for category in ("admin", "protocol_error", "user", "browser_lost", "signed_out"):
        assert await eventually(lambda c=category: closed_count(client, c) == 1), category
