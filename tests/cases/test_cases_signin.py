"""Signing in on the store: password, second factor, sign-out; failures carry a reason code
that the audit writer's listeners hear (metrics count it; the stored rows are unchanged)."""

from __future__ import annotations

import asyncio

import pyotp
import pytest
from casesupport import CLI, PASSWORD, audit_mark, audit_since

from gateway.app import Cases
from gateway.audit import AuditKind
from gateway.cases.actor import Actor
from gateway.errors import AccountLocked, AuthenticationFailed, SecondFactorFailed
from gateway.model import WebSessionState


def heard(cases: Cases) -> list[tuple[AuditKind, str | None]]:
    codes: list[tuple[AuditKind, str | None]] = []
    cases.audit.listen(lambda kind, code: codes.append((kind, code)))
    return codes


async def test_password_then_enrolment_then_sign_out(cases: Cases) -> None:
    await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    signin, store = cases.signin, cases.store
    _, ws, user = await signin.sign_in_password("alice", PASSWORD, "10.0.0.1", "ua")
    assert ws.state is WebSessionState.PASSWORD_OK and await signin.user_of(ws) == user
    enrolment = await signin.enrolment(user)
    result = await signin.second_factor(ws, pyotp.TOTP(enrolment.secret).now(), "10.0.0.1")
    assert result.web_session.state is WebSessionState.AUTHENTICATED
    assert result.recovery_codes is not None
    assert await signin.unsaved_recovery_codes(result.web_session) == result.recovery_codes
    await signin.recovery_codes_saved(result.web_session)
    assert await signin.unsaved_recovery_codes(result.web_session) is None

    mark = await audit_mark(store)
    await signin.sign_out(Actor.of(user, "10.0.0.1"), result.web_session)
    [row] = await audit_since(store, mark)
    assert (row.kind, row.user, row.client_ip) == ("signout", "alice", "10.0.0.1")
    assert await store.get_web_session(result.web_session.id) is None


async def test_failures_are_refused_and_recorded_with_their_code(cases: Cases) -> None:
    await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    bob, _ = await cases.accounts.add_user(CLI, "bob", password=PASSWORD)
    await cases.accounts.set_disabled(CLI, bob.id, True)
    codes = heard(cases)
    mark = await audit_mark(cases.store)
    for name, password in (("alice", "not the password"), ("nobody", PASSWORD),
                           ("bob", PASSWORD)):
        with pytest.raises(AuthenticationFailed) as refused:
            await cases.signin.sign_in_password(name, password, "10.0.0.2", "ua")
        assert refused.value.reason == "wrong user name or password"  # one answer for all
    rows = await audit_since(cases.store, mark)
    assert [(r.kind, r.user, r.detail) for r in rows] == [
        ("signin.failed", "alice", "wrong password"), ("signin.failed", "nobody", "unknown user"),
        ("signin.failed", "bob", "account disabled")]
    assert codes == [(AuditKind.SIGNIN_FAILED, "password"),
                     (AuditKind.SIGNIN_FAILED, "unknown_user"),
                     (AuditKind.SIGNIN_FAILED, "disabled")]

    _, ws, _ = await cases.signin.sign_in_password("alice", PASSWORD, "10.0.0.2", "ua")
    codes.clear()
    with pytest.raises(SecondFactorFailed):
        await cases.signin.second_factor(ws, "000000", "10.0.0.2")
    assert codes == [(AuditKind.SECOND_FACTOR_FAILED, "second_factor")]


async def test_fifty_wrong_passwords_at_once_lock_once(cases: Cases) -> None:
    """Each attempt reserved before its check: at most the threshold of failures are checked,
    the rest refused as locked; every attempt is one failure row, the lockout one row."""
    await cases.accounts.add_user(CLI, "carol", password=PASSWORD)
    codes = heard(cases)
    mark = await audit_mark(cases.store)
    results = await asyncio.gather(*(cases.signin.sign_in_password(
        "carol", f"wrong password {i}", f"10.1.0.{i}", "ua") for i in range(50)),
        return_exceptions=True)
    assert all(isinstance(r, AuthenticationFailed | AccountLocked) for r in results)
    assert sum(isinstance(r, AccountLocked) for r in results) == 45
    rows = await audit_since(cases.store, mark)
    failed = [r for r in rows if r.kind == "signin.failed"]
    assert len(failed) == 50 and [r.kind for r in rows].count("account.locked") == 1
    assert sorted(code or "" for kind, code in codes if kind is AuditKind.SIGNIN_FAILED) == \
        sorted(["password"] * 5 + ["locked"] * 45)
