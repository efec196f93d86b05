"""Stopping a gateway with many live sessions: every relay closes its books before the store.

A real `deskgate serve`, a real Xvnc desktop, and SESSIONS people relaying through websockets
(the client page's RFB handshake, then reading as a browser does) when the gateway gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
from crowd import XVNC_PIDS, browsers, click_connect, gateway, open_relay, shared_xvnc

from gateway.config import load_settings
from gateway.model import SessionState
from gateway.store.sqlite import SQLiteStore

SESSIONS = int(os.environ.get("SHUTDOWN_SESSIONS", "150"))
REASON = "the gateway is shutting down"


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read as a browser does (answering the gateway's close); the close code."""
    for _ in range(100_000):
        msg = await ws.receive(timeout=120)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            break
    return ws.close_code


async def test_sigterm_with_live_sessions_closes_each_with_its_reason_and_audit(
        tmp_path: Path) -> None:
    with shared_xvnc(tmp_path) as vnc_port, gateway(tmp_path / "data", vnc_port,
                                                     SESSIONS) as gw:
        async with browsers(gw, SESSIONS) as people:
            answers = await asyncio.gather(*(click_connect(gw, b, csrf) for b, csrf in people))
            assert [s for s, _ in answers] == [200] * SESSIONS, answers[:3]
            opening = asyncio.Semaphore(int(os.environ.get("SHUTDOWN_OPENING", "4")))

            async def relay(b: aiohttp.ClientSession, answer: dict  # type: ignore[type-arg]
                            ) -> aiohttp.ClientWebSocketResponse:
                async with opening:
                    return await open_relay(gw, b, answer)

            sockets = await asyncio.gather(*(relay(b, a) for (b, _), (_, a) in zip(
                people, answers, strict=True)))
            for _ in range(100):  # the "started" write follows the first frame
                if gw.metrics().get("deskgate_sessions_active") == SESSIONS:
                    break
                await asyncio.sleep(0.1)
            readers = [asyncio.create_task(_read_until_closed(ws)) for ws in sockets]

            began = time.monotonic()
            status = await asyncio.to_thread(gw.stop, 90)
            print(f"\nSIGTERM with {SESSIONS} live sessions: exited in"
                  f" {time.monotonic() - began:.1f} s")  # a figure, not an assertion
            codes = await asyncio.gather(*readers)
        assert status == 0, gw.log()[-3000:]
        assert codes == [1001] * SESSIONS

    log = gw.log()
    assert "no active connection" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    store = SQLiteStore(load_settings(gw.config, env={}).database_path)
    await store.open()
    try:
        rows = await store.list_sessions(limit=SESSIONS * 2)
        assert len(rows) == SESSIONS
        assert {(s.state, s.close_reason) for s in rows} == {(SessionState.CLOSED, REASON)}
        kinds = [e.kind for e in await store.list_audit(limit=SESSIONS * 10)]
        assert kinds.count("session.connect") == SESSIONS
        assert kinds.count("session.disconnect") == SESSIONS
    finally:
        await store.close()
    verify = gw.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_sigterm_while_relays_wait_for_a_frozen_desktop_still_closes_their_books(
        tmp_path: Path) -> None:
    """Relays that outlast aiohttp's own shutdown wait (5 s): here they wait for a desktop that
    stopped answering (a stopped Xvnc) up to the connect timeout (10 s). The store stays open
    until each has recorded how it ended."""
    with shared_xvnc(tmp_path) as vnc_port, gateway(tmp_path / "data", vnc_port, 10) as gw:
        xvnc_pid = XVNC_PIDS[vnc_port]
        async with browsers(gw, 10) as people:
            answers = await asyncio.gather(*(click_connect(gw, b, csrf) for b, csrf in people))
            assert [s for s, _ in answers] == [200] * 10, answers[:3]
            working = [await open_relay(gw, b, a) for (b, _), (_, a) in zip(
                people[:5], answers[:5], strict=True)]
            os.kill(xvnc_pid, signal.SIGSTOP)  # the desktop freezes
            try:
                waiting = [await b.ws_connect(gw.base + a["ws_url"], origin=gw.base,
                                              protocols=("binary",))
                           for (b, _), (_, a) in zip(people[5:], answers[5:], strict=True)]
                await asyncio.sleep(1)  # their relays are now waiting for the desktop's banner
                readers = [asyncio.create_task(_read_until_closed(ws))
                           for ws in working + waiting]
                status = await asyncio.to_thread(gw.stop, 90)
                await asyncio.gather(*readers)
            finally:
                os.kill(xvnc_pid, signal.SIGCONT)
        assert status == 0, gw.log()[-3000:]

    log = gw.log()
    assert "no active connection" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    store = SQLiteStore(load_settings(gw.config, env={}).database_path)
    await store.open()
    try:
        rows = await store.list_sessions(limit=20)
        assert len(rows) == 10
        assert Counter((s.state, s.close_reason) for s in rows) == {
            (SessionState.CLOSED, REASON): 5, (SessionState.FAILED, REASON): 5}, rows
        kinds = Counter(e.kind for e in await store.list_audit(limit=200))
        assert (kinds["session.disconnect"], kinds["session.failed"]) == (5, 5), kinds
    finally:
        await store.close()
    verify = gw.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
