"""A Monday-morning rush on one node: many people sign in and click Connect at the same moment.

Every request is in flight at once against a real gateway (aiohttp test server, SQLite store,
the audit writer on its own connection) and a real Xvnc desktop. Nothing may fail: no HTTP 500,
no "database is locked", every session opened, relayed and closed with its row and audit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websupport import (
    PASSWORD,
    Client,
    base_url,
    rfb_handshake,
    sign_in,
)

from gateway.app import build_cases, create_app
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.crypto import hash_password
from gateway.model import SessionState
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_display, free_tcp_port

CLI = Actor.cli()  # who makes the changes that set the scene

PEOPLE = int(os.environ.get("RUSH_PEOPLE", "200"))


@pytest.fixture
async def shared_desktop(tmp_path: Path) -> AsyncIterator[int]:
    """One Xvnc everybody connects to; its TCP port. TigerVNC counts every connection that has
    not finished its handshake yet against its blacklist (five by default), so a rush of one
    gateway's connections to one shared server trips it: such a server runs with UseBlacklist
    off (it cannot be changed while the server runs)."""
    port = free_tcp_port()
    with open(tmp_path / "Xvnc.log", "wb") as log:
        xvnc = subprocess.Popen(
            ["Xvnc", f":{free_display(60)}", "-geometry", "640x480", "-depth", "24",
             "-rfbport", str(port), "-localhost", "-interface", "127.0.0.1", "-nolisten", "tcp",
             "-AlwaysShared", "-SecurityTypes", "None", "-UseBlacklist=0", "-desktop", "rush"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        yield port
    finally:
        xvnc.terminate()
        xvnc.wait(10)


@pytest.fixture
async def rush_gateway(settings: Settings, shared_desktop: int) -> AsyncIterator[Client]:
    """A gateway with PEOPLE accounts, each assigned the desktop "VM" (one password hash for
    all of them: creating the accounts is not what is measured)."""
    from aiohttp.test_utils import TestClient, TestServer

    port = free_tcp_port()
    settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}")
    store = SQLiteStore(settings.database_path)
    await store.open()
    cases = build_cases(settings, store)
    await cases.catalog.add_desktop(CLI, "VM", "static", host="127.0.0.1",
                               port=shared_desktop)
    pw_hash = await asyncio.to_thread(hash_password, PASSWORD)
    for n in range(PEOPLE):
        user = await store.create_user(f"person{n}", pw_hash, False)
        await store.assign(1, user.id)
    await store.close()
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1", port=port)) as c:
        yield c


async def test_many_sign_ins_and_connects_at_once_all_succeed(rush_gateway: Client,
                                                              settings: Settings) -> None:
    base = base_url(rush_gateway)
    browsers = [aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                for _ in range(PEOPLE)]
    try:
        # Everyone signs in at once (password, then enrolling and confirming TOTP).
        csrfs = await asyncio.gather(*(sign_in(b, f"person{n}", base=base)
                                       for n, b in enumerate(browsers)))

        # Everyone clicks Connect at once.
        async def click(browser: aiohttp.ClientSession, csrf: str) -> tuple[int, str]:
            resp = await browser.post(f"{base}/desktops/1/connect",
                                      headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
            return resp.status, await resp.text()

        answers = await asyncio.gather(*(click(b, c) for b, c in zip(browsers, csrfs, strict=True)))
        assert [status for status, _ in answers] == [200] * PEOPLE, [
            text for status, text in answers if status != 200][:3]

        # Everyone's page opens its websocket and gets the desktop's ServerInit, 16 at a time:
        # the one test Xvnc that stands in for 200 desktops handshakes one client at a time.
        opening = asyncio.Semaphore(16)

        async def open_relay(browser: aiohttp.ClientSession, answer: str
                             ) -> aiohttp.ClientWebSocketResponse:
            async with opening:
                ws = await browser.ws_connect(base + json.loads(answer)["ws_url"], origin=base,
                                              protocols=("binary",))
                await rfb_handshake(ws)
                return ws

        sockets = await asyncio.gather(*(open_relay(b, a) for b, (_, a) in zip(
            browsers, answers, strict=True)))
        store = SQLiteStore(settings.database_path)
        await store.open()
        try:
            async def active() -> int:
                rows = await store.list_sessions(limit=PEOPLE * 2)
                return sum(1 for s in rows if s.state is SessionState.ACTIVE)

            for _ in range(100):  # the "started" write follows the first frame
                if await active() == PEOPLE:
                    break
                await asyncio.sleep(0.1)
            rows = await store.list_sessions(limit=PEOPLE * 2)
            assert [s.state for s in rows] == [SessionState.ACTIVE] * PEOPLE, (
                Counter(s.state.value for s in rows), Counter(s.close_reason for s in rows))

            # And everyone leaves at once: every row is closed, with its disconnect audit row.
            await asyncio.gather(*(ws.close() for ws in sockets))
            for _ in range(100):
                rows = await store.list_sessions(limit=PEOPLE * 2)
                if all(s.state is SessionState.CLOSED for s in rows):
                    break
                await asyncio.sleep(0.1)
            rows = await store.list_sessions(limit=PEOPLE * 2)
            assert len(rows) == PEOPLE
            assert all(s.state is SessionState.CLOSED for s in rows)
            events = await store.list_audit(limit=PEOPLE * 10)
            kinds = [e.kind for e in events]
            assert kinds.count("session.connect") == PEOPLE
            assert kinds.count("session.disconnect") == PEOPLE
        finally:
            await store.close()
    finally:
        await asyncio.gather(*(b.close() for b in browsers))
