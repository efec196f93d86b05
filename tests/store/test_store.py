"""The Store contract. Written against the Protocol so that every implementation runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.errors import Conflict
from gateway.model import Session, SessionState, WebSession, WebSessionState
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite import SQLiteStore


async def test_migrations_are_idempotent(store: SQLiteStore) -> None:
    assert await store.schema_version() == len(MIGRATIONS)
    again = SQLiteStore(store.path)
    await again.open()
    try:
        assert await again.schema_version() == len(MIGRATIONS)
    finally:
        await again.close()


async def test_users_are_unique_and_failures_lock(store: SQLiteStore) -> None:
    user = await store.create_user("ann", "hash", False)
    with pytest.raises(Conflict):
        await store.create_user("ann", "hash", True)
    # Attempts are counted before they are checked; the third locks at once (until 500).
    assert [await store.reserve_attempt(user.id, 3, 100.0, 500.0) for _ in range(2)] == [1, 2]
    assert (await store.get_user(user.id)).locked_until == 0  # type: ignore[union-attr]
    await store.release_attempt(user.id, 3)  # the second one passed
    assert await store.reserve_attempt(user.id, 3, 100.0, 500.0) == 2
    assert await store.reserve_attempt(user.id, 3, 100.0, 500.0) == 3
    assert (await store.get_user(user.id)).locked_until == 500.0  # type: ignore[union-attr]
    assert await store.reserve_attempt(user.id, 3, 499.0, 900.0) is None  # locked: not counted
    # After the lock: one more attempt is checked, and locks again unless it passes.
    assert await store.reserve_attempt(user.id, 3, 500.0, 900.0) == 3
    assert await store.reserve_attempt(user.id, 3, 501.0, 900.0) is None
    await store.release_attempt(user.id, 3)
    released = await store.get_user(user.id)
    assert released is not None and (released.failed_attempts, released.locked_until) == (2, 0)
    await store.clear_failures(user.id)
    cleared = await store.get_user(user.id)
    assert cleared is not None and (cleared.failed_attempts, cleared.locked_until) == (0, 0)


async def test_totp_step_advances_once_under_concurrency(store: SQLiteStore) -> None:
    user = await store.create_user("ben", None, False)
    await store.set_totp_secret(user.id, "enc")
    await store.mark_totp_enrolled(user.id, 10)
    results = await asyncio.gather(*(store.advance_totp_step(user.id, 11) for _ in range(5)))
    assert results.count(True) == 1
    assert not await store.advance_totp_step(user.id, 11)
    assert not await store.advance_totp_step(user.id, 5)
    await store.reset_totp(user.id)
    assert await store.get_totp(user.id) == (None, False, -1)


async def test_recovery_codes_are_consumed_once_under_concurrency(store: SQLiteStore) -> None:
    user = await store.create_user("cat", None, False)
    await store.replace_recovery_codes(user.id, ["h1", "h2"])
    results = await asyncio.gather(*(store.use_recovery_code(user.id, "h1") for _ in range(4)))
    assert results.count(True) == 1 and await store.count_recovery_codes(user.id) == 1


async def test_web_sessions_and_connection_sessions(store: SQLiteStore) -> None:
    user = await store.create_user("dan", None, False)
    desk = await store.create_desktop("D", "static", "127.0.0.1", 5900, None)
    ws = WebSession("h", user.id, WebSessionState.PASSWORD_OK, "csrf", 1.0, 1.0, "ip", "ua")
    await store.create_web_session(ws)
    await store.set_web_session_state("h", WebSessionState.AUTHENTICATED)
    assert (await store.get_web_session("h")).state is WebSessionState.AUTHENTICATED  # type: ignore[union-attr]
    await store.assign(desk.id, user.id)
    await store.assign(desk.id, user.id)  # idempotent
    assert [d.name for d in await store.desktops_for_user(user.id)] == ["D"]
    session = Session("s1", user.id, desk.id, "h", SessionState.STARTING, 2.0, client_ip="ip")
    await store.create_session(session)
    await store.set_session_state("s1", SessionState.ACTIVE)
    assert [s.id for s in await store.list_sessions(active_only=True)] == ["s1"]
    await store.close_session("s1", 3.0, "done", True, 10, 20)
    await store.close_session("s1", 4.0, "again", False, 0, 0)  # a closed session stays closed
    closed = await store.get_session("s1")
    assert closed is not None
    assert (closed.state, closed.close_reason, closed.close_final, closed.bytes_up,
            closed.bytes_down, closed.ended_at) == (SessionState.CLOSED, "done", True, 10, 20, 3.0)
    await store.create_session(Session("s2", user.id, desk.id, "h", SessionState.ACTIVE, 5.0))
    assert await store.close_open_sessions(6.0, "restart") == 1
    await store.delete_user_web_sessions(user.id)
    assert await store.get_web_session("h") is None


async def test_audit_is_listed_newest_first_and_filtered(store: SQLiteStore) -> None:
    for i in range(3):
        await store.append_audit(float(i), "a" if i % 2 else "b", "u", None, "ip", f"d{i}")
    assert [e.detail for e in await store.list_audit()] == ["d2", "d1", "d0"]
    assert [e.detail for e in await store.list_audit(kind="a")] == ["d1"]


async def test_identities_groups_and_group_assignments(store: SQLiteStore) -> None:
    user = await store.create_user("eve", None, False, source="corp")
    other = await store.create_user("fay", None, False)
    await store.link_identity("corp", "sub-1", user.id)
    with pytest.raises(Conflict):
        await store.link_identity("corp", "sub-1", other.id)
    assert await store.identity_user("corp", "sub-1") == user.id
    assert await store.identity_user("other", "sub-1") is None
    d1 = await store.create_desktop("by-user", "static", "h", 1, None)
    d2 = await store.create_desktop("by-group", "static", "h", 2, None)
    await store.assign(d1.id, user.id)
    await store.assign_group(d2.id, "engineers")
    await store.assign_group(d2.id, "engineers")  # idempotent
    assert [d.name for d in await store.desktops_for_user(user.id)] == ["by-user"]
    await store.set_user_groups(user.id, ["engineers", "staff", "engineers"])
    assert await store.user_groups(user.id) == ["engineers", "staff"]
    assert [d.name for d in await store.desktops_for_user(user.id)] == ["by-group", "by-user"]
    assert await store.is_assigned(d2.id, user.id) and not await store.is_assigned(d2.id, other.id)
    await store.set_user_groups(user.id, ["staff"])
    assert not await store.is_assigned(d2.id, user.id)
    assert (await store.get_user(user.id)).source == "corp"  # type: ignore[union-attr]


async def test_oidc_login_records_are_single_use(store: SQLiteStore) -> None:
    from gateway.model import OidcLogin

    login = OidcLogin("corp", "browser", "nonce-enc", "verifier-enc", 10.0)
    await store.save_oidc_login("state-hash", login)
    results = await asyncio.gather(*(store.take_oidc_login("state-hash") for _ in range(3)))
    assert [r for r in results if r is not None] == [login]
    await store.save_oidc_login("old", OidcLogin("corp", "b", "n", "v", 1.0))
    assert await store.purge_oidc_logins(before=5.0) == 1


async def test_reservations_and_caps_hold_under_concurrency(store: SQLiteStore) -> None:
    from gateway.model import OidcLogin, PendingCaps

    user = await store.create_user("cara", None, False)
    counts = await asyncio.gather(*(store.reserve_attempt(user.id, 5, 100.0, 900.0)
                                    for _ in range(100)))
    assert sorted(c for c in counts if c is not None) == [1, 2, 3, 4, 5]
    slots = await asyncio.gather(*(store.take_rate_slot("signin:10.0.0.1", 100.0, 40.0, 7)
                                   for _ in range(100)))
    assert len([s for s in slots if s is not None]) == 7
    caps = PendingCaps(total=12, per_address=10, per_minute=8, expired_before=50.0,
                       minute_start=40.0)
    login = OidcLogin("corp", "b", "n", "v", 100.0)
    full = await asyncio.gather(*(store.save_oidc_login(f"s{i}", login, client_ip="10.0.0.1",
                                                        caps=caps) for i in range(50)))
    assert full.count(None) == 8 and set(full) == {None, "per_minute"}
    full = await asyncio.gather(*(store.save_oidc_login(f"t{i}", login, client_ip=f"10.0.1.{i}",
                                                        caps=caps) for i in range(50)))
    assert full.count(None) == 4 and set(full) == {None, "total"}
    # Expired ones are purged and no longer count.
    later = PendingCaps(12, 10, 8, expired_before=101.0, minute_start=90.0)
    assert await store.save_oidc_login("u", OidcLogin("corp", "b", "n", "v", 200.0),
                                       client_ip="10.0.0.1", caps=later) is None
    assert await store.count_oidc_logins("10.0.0.1", 0.0) == 1


async def test_failed_attempts_are_apart_and_a_retry_continues_them(store: SQLiteStore) -> None:
    """A session that never reached its desktop fails (not closed); a retry by the same person,
    desktop and web session starts that row again, once, however many retries race for it."""
    user = await store.create_user("fay", None, False)
    other = await store.create_user("gus", None, False)
    desk = await store.create_desktop("Down", "static", "127.0.0.1", 1, None)
    await store.create_session(Session("a1", user.id, desk.id, "h", SessionState.STARTING, 1.0))
    assert await store.fail_session("a1", 2.0, "the desktop cannot be reached", False) == 1
    assert await store.fail_session("a1", 3.0, "again", False) is None  # not starting any more
    assert not await store.close_session("a1", 3.0, "closed", False, 0, 0)  # failed stays failed
    failed = await store.get_session("a1")
    assert failed is not None
    assert (failed.state, failed.close_reason, failed.ended_at, failed.tries) == (
        SessionState.FAILED, "the desktop cannot be reached", 2.0, 1)
    assert await store.list_sessions(active_only=True) == []

    def retry(sid: str, user_id: int = user.id,
              web_session_id: str = "h") -> Coroutine[Any, Any, Session | None]:
        return store.retry_session(sid, user_id=user_id, desktop_id=desk.id,
                                   web_session_id=web_session_id, started_at=4.0,
                                   client_ip="ip2", user_agent="ua2")

    # Someone else's attempt, another web session's, or a missing one: never continued.
    assert await retry("a1", user_id=other.id) is None
    assert await retry("a1", web_session_id="other") is None
    assert await retry("missing") is None
    # 100 retries at once: exactly one continues the attempt.
    results = await asyncio.gather(*(retry("a1") for _ in range(100)))
    continued = [r for r in results if r is not None]
    assert len(continued) == 1
    again = await store.get_session("a1")
    assert again is not None and (again.state, again.tries, again.ended_at, again.close_reason,
                                  again.started_at, again.client_ip) == (
        SessionState.STARTING, 2, None, None, 4.0, "ip2")
    assert await store.fail_session("a1", 5.0, "still down", False) == 2
    # The try that reaches the desktop makes it a session like any other.
    assert await retry("a1") is not None
    await store.set_session_state("a1", SessionState.ACTIVE)
    assert await retry("a1") is None  # an active session is not a failed attempt
    assert await store.fail_session("a1", 6.0, "late", False) is None
    assert await store.close_session("a1", 7.0, "closed by the user", False, 10, 20)
    done = await store.get_session("a1")
    assert done is not None and (done.state, done.tries) == (SessionState.CLOSED, 3)

    # At start-up, what a previous run left starting failed; what was active closed.
    await store.create_session(Session("b1", user.id, desk.id, "h", SessionState.STARTING, 8.0))
    await store.create_session(Session("b2", user.id, desk.id, "h", SessionState.ACTIVE, 8.0))
    assert await store.close_open_sessions(9.0, "the gateway restarted") == 2
    states = {s.id: s.state for s in await store.list_sessions()}
    assert (states["b1"], states["b2"]) == (SessionState.FAILED, SessionState.CLOSED)
