"""Password hashing, sign-in failures, lockout and the per-IP throttle."""

from __future__ import annotations

import pytest

from gateway.app import Cases
from gateway.auth.guard import AddressWindow
from gateway.cases.actor import Actor
from gateway.crypto import hash_password, verify_password
from gateway.errors import AccountLocked, AuthenticationFailed, BadRequest, TooManyRequests
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()  # who makes the changes that set the scene


def test_scrypt_hash_roundtrip_and_salt() -> None:
    h1, h2 = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert h1 != h2 and h1.startswith("scrypt$") and "s3cret" not in h1
    assert verify_password("s3cret-pass", h1)
    assert not verify_password("s3cret-pasS", h1)


@pytest.mark.parametrize("stored", ["", "plain", "md5$x$y", "scrypt$1$2$3$%%%$%%%", "scrypt$a$b$c$d$e"])
def test_malformed_stored_hash_fails_closed(stored: str) -> None:
    assert not verify_password("anything", stored)


async def test_sign_in_failures_are_generic_and_audited(cases: Cases,
                                                        store: SQLiteStore) -> None:
    await cases.accounts.add_user(CLI, "erin", password="long enough pw")
    with pytest.raises(AuthenticationFailed) as unknown:
        await cases.signin.sign_in_password("nobody", "long enough pw", "10.0.0.2", "ua")
    with pytest.raises(AuthenticationFailed) as wrong:
        await cases.signin.sign_in_password("erin", "not it at all", "10.0.0.2", "ua")
    assert unknown.value.reason == wrong.value.reason  # no hint which names exist
    erin = await store.get_user_by_name("erin")
    assert erin is not None
    await store.set_disabled(erin.id, True)
    with pytest.raises(AuthenticationFailed):
        await cases.signin.sign_in_password("erin", "long enough pw", "10.0.0.2", "ua")
    details = [e.detail for e in await store.list_audit(kind="signin.failed")]
    assert sorted(details) == ["account disabled", "unknown user", "wrong password"]
    assert not any("long enough" in e.detail for e in await store.list_audit(limit=100))


async def test_five_wrong_passwords_lock_for_a_while(cases: Cases, store: SQLiteStore) -> None:
    await cases.accounts.add_user(CLI, "frank", password="right password")
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await cases.signin.sign_in_password("frank", "wrong password", "10.0.0.3", "ua")
    with pytest.raises(AccountLocked):
        await cases.signin.sign_in_password("frank", "right password", "10.0.0.4", "ua")
    user = await store.get_user_by_name("frank")
    assert user is not None and user.failed_attempts == 5
    # An admin's password reset clears the lock.
    await cases.accounts.set_password(CLI, "frank", "another password")
    await cases.signin.sign_in_password("frank", "another password", "10.0.0.4", "ua")


async def test_address_window_slides_and_gives_back(store: SQLiteStore) -> None:
    now = [1000.0]
    window = AddressWindow(store, "signin", 3, clock=lambda: now[0])
    slots = [await window.take("10.1.1.1") for _ in range(3)]
    assert None not in slots
    assert await window.take("10.1.1.1") is None
    assert await window.take("10.1.1.2") is not None  # other addresses are not affected
    await window.give_back(slots[0])  # a check that passed costs nothing
    assert await window.take("10.1.1.1") is not None
    assert await window.take("10.1.1.1") is None
    now[0] += 61
    assert await window.take("10.1.1.1") is not None


async def test_throttle_spans_accounts(settings: object, store: SQLiteStore) -> None:
    from gateway.app import build_cases
    from gateway.config import Settings

    assert isinstance(settings, Settings)
    cases = build_cases(
        Settings(**{**settings.__dict__, "ip_throttle_per_minute": 4}), store)
    for i in range(4):
        with pytest.raises(AuthenticationFailed):
            await cases.signin.sign_in_password(f"user{i}", "whatever pw", "10.9.9.9", "ua")
    with pytest.raises(TooManyRequests):
        await cases.signin.sign_in_password("user9", "whatever pw", "10.9.9.9", "ua")
    assert await store.list_audit(kind="signin.throttled")


async def test_user_name_and_password_rules(cases: Cases) -> None:
    with pytest.raises(BadRequest):
        await cases.accounts.add_user(CLI, "short", password="1234567")
    with pytest.raises(BadRequest):
        await cases.accounts.add_user(CLI, "", password="long enough")
    _, generated = await cases.accounts.add_user(CLI, "gina")
    assert generated is not None and len(generated) >= 16
