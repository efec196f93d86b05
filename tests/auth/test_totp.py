"""TOTP: the accepted window, replay protection, recovery codes, lockout."""

from __future__ import annotations

import base64

import pyotp
import pytest

from gateway.app import Cases
from gateway.auth.totp import TotpFactor
from gateway.cases.actor import Actor
from gateway.crypto import SecretBox
from gateway.errors import AccountLocked, SecondFactorFailed
from gateway.model import WebSessionState
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()  # who makes the changes that set the scene


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rfc6238_vector_with_pyotp() -> None:
    # RFC 6238 appendix B, SHA1, T=59: the library we build on computes the standard codes.
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert pyotp.TOTP(secret, digits=8).at(59) == "94287082"


async def _enrolled(store: SQLiteStore, box: SecretBox, clock: Clock) -> tuple[TotpFactor, str, int]:
    user = await store.create_user("alice", None, False)
    totp = TotpFactor(store, box, clock=clock)
    enrolment = await totp.enrolment(user)
    code = pyotp.TOTP(enrolment.secret).at(clock.now)
    codes = await totp.confirm_enrolment(user, code)
    assert codes is not None and len(codes) == 10 and len(set(codes)) == 10
    return totp, enrolment.secret, user.id


async def test_enrolment_shows_qr_and_keeps_secret_until_confirmed(store: SQLiteStore,
                                                                   cases: Cases) -> None:
    user = await store.create_user("bob", None, False)
    first = await cases.signin.totp.enrolment(user)
    again = await cases.signin.totp.enrolment(user)
    assert first.secret == again.secret
    assert first.qr_svg.startswith("<svg") and "otpauth://totp/" in first.uri
    secret_enc, enrolled, _ = await store.get_totp(user.id)
    assert not enrolled and secret_enc is not None and first.secret not in secret_enc
    wrong = "000000" if pyotp.TOTP(first.secret).now() != "000000" else "111111"
    assert await cases.signin.totp.confirm_enrolment(user, wrong) is None
    assert not (await store.get_totp(user.id))[1]


async def test_window_accepts_neighbouring_steps_only(store: SQLiteStore, cases: Cases) -> None:
    clock = Clock(1_700_000_000.0)
    totp, secret, uid = await _enrolled(store, cases.box, clock)
    user = await store.get_user(uid)
    assert user is not None
    gen = pyotp.TOTP(secret)
    clock.now += 300
    assert not await totp.verify(user, gen.at(clock.now - 60))  # two steps back
    assert not await totp.verify(user, gen.at(clock.now + 60))  # two steps ahead
    assert await totp.verify(user, gen.at(clock.now - 30))  # one step back
    assert await totp.verify(user, gen.at(clock.now + 30))  # one step ahead
    assert not await totp.verify(user, "12345")
    assert not await totp.verify(user, "abcdef")


async def test_replay_of_same_or_older_step_is_rejected(store: SQLiteStore,
                                                        cases: Cases) -> None:
    clock = Clock(1_700_000_000.0)
    totp, secret, uid = await _enrolled(store, cases.box, clock)
    user = await store.get_user(uid)
    assert user is not None
    gen = pyotp.TOTP(secret)
    # The enrolment code's step was consumed: the same code is refused.
    assert not await totp.verify(user, gen.at(clock.now))
    clock.now += 30
    code = gen.at(clock.now)
    assert await totp.verify(user, code)
    assert not await totp.verify(user, code)  # replay
    assert not await totp.verify(user, gen.at(clock.now - 30))  # older step, still in window
    clock.now += 30
    assert await totp.verify(user, gen.at(clock.now))


async def test_recovery_codes_are_single_use_and_hashed(store: SQLiteStore,
                                                        cases: Cases) -> None:
    user = await store.create_user("carol", None, False)
    enrolment = await cases.signin.totp.enrolment(user)
    codes = await cases.signin.totp.confirm_enrolment(user, pyotp.TOTP(enrolment.secret).now())
    assert codes is not None
    async with store.db.execute("SELECT code_hash FROM recovery_codes") as cur:
        stored = [r[0] for r in await cur.fetchall()]
    assert not any(c.replace("-", "") in h for c in codes for h in stored)
    assert await cases.signin.totp.use_recovery_code(user, codes[0].upper())  # case and dash tolerant
    assert not await cases.signin.totp.use_recovery_code(user, codes[0])
    assert await store.count_recovery_codes(user.id) == 9
    assert not await cases.signin.totp.use_recovery_code(user, "nope")


async def test_wrong_codes_lock_the_account(store: SQLiteStore, cases: Cases) -> None:
    await cases.accounts.add_user(CLI, "dave", password="correct horse")
    user = await store.get_user_by_name("dave")
    assert user is not None
    enrolment = await cases.signin.totp.enrolment(user)
    assert await cases.signin.totp.confirm_enrolment(user, pyotp.TOTP(enrolment.secret).now())
    _, ws, _ = await cases.signin.sign_in_password("dave", "correct horse", "10.0.0.1", "ua")
    assert ws.state is WebSessionState.PASSWORD_OK
    for _ in range(5):
        with pytest.raises(SecondFactorFailed):
            await cases.signin.second_factor(ws, "000000", "10.0.0.1")
    with pytest.raises(AccountLocked):
        await cases.signin.second_factor(ws, pyotp.TOTP(enrolment.secret).now(), "10.0.0.1")
    kinds = [e.kind for e in await store.list_audit(limit=20)]
    assert "account.locked" in kinds and kinds.count("second_factor.failed") >= 5
