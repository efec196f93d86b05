"""Closing real relays (gateway/relay.py) from each of their states, and fifty at once as the
shutdown does: each records exactly one row (session.disconnect once it relayed, session.failed
before) and ends closed with its code (real gateway, real Xvnc, real websocket clients)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiohttp.test_utils import TestClient
from relaysupport import close_of, live_count, open_relay, row_of, store_of
from websupport import app_client, base_url, connect, eventually, sign_in

from gateway.config import Settings
from gateway.errors import WS_ADMIN_DISCONNECT, WS_GOING_AWAY, WS_SIGNED_OUT
from gateway.keys import LIVE, RELAY_TASKS, SHUTTING_DOWN
from gateway.live import SHUTDOWN, SIGNED_OUT
from gateway.model import SessionState
from gateway.relay import Phase, Relay, RelayState
from gateway.web import client as client_module
from gateway.xdisplay.xvnc import XvncDisplay

ADMIN_REASON = "disconnected by an administrator"
MANY = 50


class History(RelayState):
    """A relay's state that remembers each phase it was in."""

    def __init__(self, context: str) -> None:
        super().__init__(context)
        self.phases = [self.phase]

    def move(self, to: Phase, ending: Any = None) -> bool:
        moved = super().move(to, ending)
        if moved:
            self.phases.append(to)
        return moved


class Seen(Relay):
    """The handler's relays, kept where the test can look at them."""

    made: ClassVar[list[Seen]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = History(self.state.context)
        Seen.made.append(self)


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    Seen.made = []
    monkeypatch.setattr(client_module, "Relay", Seen)
    async with await app_client(settings, {"alice": False}, desktop,
                                max_sessions_per_user=MANY + 5) as c:
        yield c


def relay_of(session_id: str) -> Seen:
    [relay] = [r for r in Seen.made if r.admission.session.id == session_id]
    return relay


async def rows(client: TestClient, kind: str, session_id: str  # type: ignore[type-arg]
               ) -> list[str]:
    events = await store_of(client).list_audit(limit=1000, kind=kind)
    return [e.detail for e in events if e.detail.startswith(f"session {session_id}:")]


async def active(client: TestClient, session_id: str) -> bool:  # type: ignore[type-arg]
    """Relaying, and its row says so (the "started" write follows the first frame)."""
    for _ in range(100):
        session = await store_of(client).get_session(session_id)
        if relay_of(session_id).state.phase is Phase.RELAYING and session is not None and (
                session.state is SessionState.ACTIVE):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("phase", list(Phase))
async def test_a_close_from_each_state_records_exactly_one_row(
        client: TestClient, phase: Phase) -> None:  # type: ignore[type-arg]
    base = base_url(client)
    csrf = await sign_in(client, "alice")
    if phase is Phase.STARTING:  # the browser never answers the RFB greeting
        conn = await connect(client.session, csrf, base=base)
        ws = await client.session.ws_connect(base + conn["ws_url"], origin=base)
        sid = conn["session_id"]
        assert await eventually(lambda: live_count(client) == 1)
    else:
        ws, sid = await open_relay(client, csrf)
        assert await active(client, sid)
    relay = relay_of(sid)
    assert relay.state.phase is (Phase.STARTING if phase is Phase.STARTING else Phase.RELAYING)
    closing = asyncio.create_task(close_of(ws))
    live = client.server.app[LIVE].get(sid)
    assert live is not None

    first = asyncio.ensure_future(live.end(WS_ADMIN_DISCONNECT, ADMIN_REASON, final=True))
    if phase is Phase.CLOSING:  # a second end while closing: refused, the first one stands
        await asyncio.sleep(0)
        assert relay.state.phase is Phase.CLOSING
        await relay.end(WS_SIGNED_OUT, SIGNED_OUT, True)
    await first
    assert relay.state.phase is Phase.CLOSED
    if phase is Phase.CLOSED:  # an end once closed changes nothing
        await relay.end(WS_SIGNED_OUT, SIGNED_OUT, True)

    assert relay.state.phase is Phase.CLOSED
    assert (relay.state.code, relay.state.reason, relay.state.final) == (
        WS_ADMIN_DISCONNECT, ADMIN_REASON, True)
    assert await closing == (WS_ADMIN_DISCONNECT, ADMIN_REASON)
    row = await row_of(store_of(client), sid)
    assert (row.close_reason, row.close_final) == (ADMIN_REASON, True)
    disconnects = await rows(client, "session.disconnect", sid)
    failures = await rows(client, "session.failed", sid)
    if phase is Phase.STARTING:  # it never reached the desktop: a failed attempt
        assert row.state is SessionState.FAILED
        assert relay.state.phases == [Phase.STARTING, Phase.CLOSING, Phase.CLOSED]
        assert (len(disconnects), len(failures)) == (0, 1), (disconnects, failures)
    else:
        assert row.state is SessionState.CLOSED
        assert relay.state.phases == [Phase.STARTING, Phase.RELAYING, Phase.CLOSING,
                                      Phase.CLOSED]
        assert (len(disconnects), len(failures)) == (1, 0), (disconnects, failures)
    assert live_count(client) == 0
    await ws.close()


async def test_fifty_relays_ended_at_once_by_the_shutdown_each_close_with_its_code(
        client: TestClient) -> None:  # type: ignore[type-arg]
    app = client.server.app
    csrf = await sign_in(client, "alice")
    opened = await asyncio.gather(*(open_relay(client, csrf) for _ in range(MANY)))
    sids = [sid for _, sid in opened]
    assert all(await asyncio.gather(*(active(client, sid) for sid in sids)))
    closes = [asyncio.create_task(close_of(ws)) for ws, _ in opened]

    app[SHUTTING_DOWN].set()
    await app[LIVE].end_all(WS_GOING_AWAY, SHUTDOWN, final=False)

    relays = [relay_of(sid) for sid in sids]
    assert [(r.state.phase, r.state.code, r.state.reason, r.state.final) for r in relays] == [
        (Phase.CLOSED, WS_GOING_AWAY, SHUTDOWN, False)] * MANY
    assert await asyncio.gather(*closes) == [(WS_GOING_AWAY, SHUTDOWN)] * MANY
    store = store_of(client)
    ended = await asyncio.gather(*(row_of(store, sid) for sid in sids))
    assert {(s.state, s.close_reason, s.close_final) for s in ended} == {
        (SessionState.CLOSED, SHUTDOWN, False)}
    events = await store.list_audit(limit=10 * MANY, kind="session.disconnect")
    assert sorted(e.detail.split(":")[0] for e in events) == sorted(
        f"session {sid}" for sid in sids)
    assert live_count(client) == 0
    assert await eventually(lambda: not app[RELAY_TASKS])
    await asyncio.gather(*(ws.close() for ws, _ in opened))
