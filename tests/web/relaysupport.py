"""Helpers for the relay websocket's tests: close frames, session rows, audit and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from websupport import base_url, connect, rfb_handshake

from gateway.keys import LIVE, STORE
from gateway.metrics import METRICS
from gateway.model import Session
from gateway.store.sqlite import SQLiteStore


async def close_of(ws: aiohttp.ClientWebSocketResponse, timeout: float = 20.0
                   ) -> tuple[int | None, str]:
    """Read (skipping desktop bytes) until the close frame: (code, reason); (None, "") when the
    connection ended without one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        msg = await ws.receive(timeout=max(0.1, deadline - loop.time()))
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data, msg.extra or ""
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return None, ""
    raise AssertionError("no close frame in time")


async def open_relay(client: TestClient, csrf: str, http: Any = None  # type: ignore[type-arg]
                     ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """Connect to desktop 1 and finish the RFB handshake: (websocket, session id)."""
    base = base_url(client)
    http = http or client.session
    conn = await connect(http, csrf, base=base)
    ws = await http.ws_connect(base + conn["ws_url"], origin=base)
    await rfb_handshake(ws)
    return ws, conn["session_id"]


async def row_of(store: SQLiteStore, session_id: str, timeout: float = 15.0) -> Session:
    """The session's row once it is closed."""
    for _ in range(int(timeout / 0.1)):
        session = await store.get_session(session_id)
        assert session is not None
        if session.state.value == "closed":
            return session
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} still open")


async def disconnect_detail(store: SQLiteStore, session_id: str) -> str:
    """The audit's disconnect event of the session (written just after its row is closed)."""
    for _ in range(50):
        events = await store.list_audit(limit=1000, kind="session.disconnect")
        details = [e.detail for e in events if e.detail.startswith(f"session {session_id}:")]
        if details:
            assert len(details) == 1, details
            return details[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no disconnect event for session {session_id}")


def closed_count(client: TestClient, category: str) -> float:  # type: ignore[type-arg]
    value: float = client.server.app[METRICS].closed.labels(category)._value.get()
    return value


def live_count(client: TestClient) -> int:  # type: ignore[type-arg]
    return len(client.server.app[LIVE])


def store_of(client: TestClient) -> SQLiteStore:  # type: ignore[type-arg]
    store: SQLiteStore = client.server.app[STORE]
    return store
