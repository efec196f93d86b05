"""Sessions on the store and the live set: history, a person's own session, and an admin's
disconnect and message (one audit row each, naming the admin)."""

from __future__ import annotations

import asyncio
import time

import pytest
from casesupport import CLI, PASSWORD, admin_actor, audit_mark, audit_since

from gateway.app import build_cases
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.errors import WS_ADMIN_DISCONNECT, BadRequest, Forbidden, NotFound
from gateway.live import LiveSession, LiveSessions
from gateway.model import RelayCounters, Session, SessionState
from gateway.store.sqlite import SQLiteStore


class Closes:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, bool]] = []

    async def __call__(self, code: int, reason: str, final: bool) -> None:
        self.calls.append((code, reason, final))


def live_session(sid: str, closes: Closes) -> LiveSession:
    return LiveSession(session_id=sid, web_session_id="w", user_name="alice", desktop_name="VM",
                       counters=RelayCounters(), close=closes, user_id=2)


async def test_history_own_sessions_disconnect_and_message(settings: Settings,
                                                           store: SQLiteStore) -> None:
    live = LiveSessions()
    cases = build_cases(settings, store, live=live)
    root, _ = await cases.accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    vm = await cases.catalog.add_desktop(CLI, "VM", "local")
    now = time.time()
    await store.create_session(Session("s-old", alice.id, vm.id, "w", SessionState.ACTIVE, now))
    await store.close_session("s-old", now + 1, "closed by the user", False, 10, 20)
    history = await cases.sessions.history(limit=10, failed_limit=10)
    assert [s.id for s in history.closed] == ["s-old"] and history.failed == []
    assert history.users[alice.id] == "alice" and history.desktops[vm.id].name == "VM"
    assert (await cases.sessions.session_of(alice, "s-old")) is not None
    assert await cases.sessions.session_of(root, "s-old") is None  # not root's

    closes = Closes()
    session = live_session("s-live", closes)
    queue = session.listen()
    live.add(session)
    assert [f["id"] for f in cases.sessions.live_figures()] == ["s-live"]
    me = admin_actor(root)
    mark = await audit_mark(store)
    await cases.sessions.message(me, "s-live", "saving in five minutes")
    await cases.sessions.disconnect(me, "s-live", "maintenance")
    assert queue.get_nowait() == {"type": "message", "from": "root",
                                  "text": "saving in five minutes"}
    assert closes.calls == [(WS_ADMIN_DISCONNECT, "maintenance", True)]  # for good
    assert [(r.user, r.desktop, r.detail) for r in await audit_since(store, mark)] == [
        ("alice", "VM", "message sent to session s-live (by root)"),
        ("alice", "VM", "session s-live disconnected: maintenance (by root)")]


async def test_bad_input_is_refused_with_a_clear_error(settings: Settings,
                                                       store: SQLiteStore) -> None:
    live = LiveSessions()
    cases = build_cases(settings, store, live=live)
    live.add(live_session("s-1", Closes()))
    mark = await audit_mark(store)
    with pytest.raises(BadRequest, match="a message is 1-500 characters"):
        await cases.sessions.message(CLI, "s-1", " ")
    with pytest.raises(NotFound, match="no such live session on this gateway"):
        await cases.sessions.disconnect(CLI, "s-gone", "")
    with pytest.raises(Forbidden):
        await cases.sessions.disconnect(Actor("alice", 2, False), "s-1", "")
    assert await audit_since(store, mark) == []


async def test_fifty_messages_at_once_are_one_row_each(settings: Settings,
                                                       store: SQLiteStore) -> None:
    live = LiveSessions()
    cases = build_cases(settings, store, live=live)
    sessions = [live_session(f"s-{i}", Closes()) for i in range(50)]
    queues = [s.listen() for s in sessions]
    for s in sessions:
        live.add(s)
    mark = await audit_mark(store)
    await asyncio.gather(*(cases.sessions.message(CLI, f"s-{i}", f"hello {i}")
                           for i in range(50)))
    assert [q.get_nowait()["text"] for q in queues] == [f"hello {i}" for i in range(50)]
    rows = await audit_since(store, mark)
    assert sorted(r.detail for r in rows) == sorted(
        f"message sent to session s-{i} (by the command line)" for i in range(50))
