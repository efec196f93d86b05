"""The live-session sweep against a real SQLite store: every end reason, the keep-alive of
working people's sign-ins, and a fixed number of statements however many relays run."""

from __future__ import annotations

import asyncio
import time

from gateway.errors import (
    WS_ACCOUNT_DISABLED,
    WS_IDLE,
    WS_MOVED,
    WS_SESSION_EXPIRED,
    WS_SIGNED_OUT,
)
from gateway.live import (
    ACCOUNT_DISABLED,
    MOVED,
    SIGNED_OUT,
    LiveSession,
    LiveSessions,
)
from gateway.model import RelayCounters, WebSession, WebSessionState
from gateway.store.sqlite import SQLiteStore

LIFETIME, IDLE = 12 * 3600.0, 1800.0


def expiry(ws: WebSession, now: float) -> str | None:
    if now - ws.created_at > LIFETIME:
        return "lifetime"
    if now - ws.last_seen > IDLE:
        return "idle"
    return None


def live_session(n: int, web_session_id: str, user_id: int,
                 ended: dict[str, tuple[int, str]]) -> LiveSession:
    sid = f"s{n}"

    async def close(code: int, reason: str, final: bool) -> None:
        ended[sid] = (code, reason)

    return LiveSession(sid, web_session_id, f"u{user_id}", "VM", RelayCounters(), close,
                       user_id=user_id)


async def test_one_sweep_ends_each_with_its_reason_in_a_fixed_number_of_statements(
        store: SQLiteStore) -> None:
    now = time.time()
    per_kind = 40
    kinds = ("valid", "working", "signed_out", "disabled", "idle", "expired")
    users = await asyncio.gather(*(store.create_user(f"user{k}", None, False) for k in kinds))
    uid = {k: u.id for k, u in zip(kinds, users, strict=True)}
    await store.set_disabled(uid["disabled"], True)
    created = {"expired": now - LIFETIME - 60}
    seen = {"idle": now - IDLE - 60, "working": now - 600}
    ended: dict[str, tuple[int, str]] = {}
    lives = LiveSessions()
    sessions = []
    for i in range(per_kind * len(kinds)):
        kind = kinds[i % len(kinds)]
        ws = WebSession(f"w{i}", uid[kind], WebSessionState.AUTHENTICATED, "csrf",
                        created.get(kind, now - 60), seen.get(kind, now - 60), "127.0.0.1", "ua")
        live = live_session(i, ws.id, uid[kind], ended)
        if kind == "working":
            live.counters.last_input = now - 5
        if kind not in ("signed_out", "disabled"):  # their web sessions were deleted
            sessions.append(ws)
        lives.add(live)
    await asyncio.gather(*(store.create_web_session(ws) for ws in sessions))

    statements: list[str] = []
    await store.db.set_trace_callback(statements.append)
    await lives.sweep(store, now, expiry)
    await store.db.set_trace_callback(None)

    # One read of the web sessions, one of the users of the missing ones, one keep-alive write.
    assert len(statements) == 3, statements
    expected = {"valid": None, "working": None,
                "signed_out": (WS_SIGNED_OUT, SIGNED_OUT),
                "disabled": (WS_ACCOUNT_DISABLED, ACCOUNT_DISABLED),
                "idle": (WS_IDLE, "you were signed out after a time without any input"),
                "expired": (WS_SESSION_EXPIRED, "your sign-in expired; sign in again")}
    for i in range(per_kind * len(kinds)):
        kind = kinds[i % len(kinds)]
        assert ended.get(f"s{i}") == expected[kind], (i, kind)
        live = lives.get(f"s{i}")
        assert live is not None and live.end_reason == (None if expected[kind] is None
                                                        else expected[kind][1])
        ws = await store.get_web_session(f"w{i}")
        if kind == "working":  # kept alive up to the last input
            assert ws is not None and ws.last_seen == now - 5
        elif kind == "valid":
            assert ws is not None and ws.last_seen == now - 60


async def test_the_keep_alive_never_moves_last_seen_back(store: SQLiteStore) -> None:
    now = time.time()
    user = await store.create_user("worker", None, False)
    await store.create_web_session(WebSession("w", user.id, WebSessionState.AUTHENTICATED, "c",
                                              now - 60, now - 1, "127.0.0.1", "ua"))
    await store.touch_web_sessions({"w": now - 30, "gone": now})
    ws = await store.get_web_session("w")
    assert ws is not None and ws.last_seen == now - 1
    assert await store.get_web_sessions([]) == {}
    assert await store.disabled_or_gone_users({user.id, user.id + 1000}) == {user.id + 1000}


async def test_roaming_moves_the_persons_connection_and_leaves_others_alone() -> None:
    """A person's new connection to a desktop ends their older ones to it from other devices
    (told so, for good); the same sign-in's other windows, other people, other desktops and
    admins' watches stay; many arriving at once end each older one once."""
    ended: dict[str, tuple[int, str]] = {}
    lives = LiveSessions()

    def add(n: int, web_session: str, user: int, desktop: int,
            watch_of: str | None = None) -> LiveSession:
        live = live_session(n, web_session, user, ended)
        live.desktop_id, live.watch_of = desktop, watch_of
        lives.add(live)
        return live

    old_device = add(1, "w-phone", 7, 3)
    old_window = add(2, "w-laptop", 7, 3)
    other_desktop = add(3, "w-phone", 7, 4)
    other_person = add(4, "w-bob", 8, 3)
    watch = add(5, "w-admin", 7, 3, watch_of="s4")
    new = add(6, "w-laptop", 7, 3)
    await asyncio.gather(*(lives.moved(new) for _ in range(10)))
    assert ended == {"s1": (WS_MOVED, MOVED)}
    assert old_device.end_final
    assert all(x.end_reason is None
               for x in (old_window, other_desktop, other_person, watch, new))
    await lives.moved(watch)  # a watch never moves anyone
    assert set(ended) == {"s1"}
