"""The kiosk use case on a real store, with a clock the tests move: pairing codes (once, wrong,
expired, throttled), the device's proof with a real P-256 key signing as WebCrypto does,
credential rotation, revocation, dedicated kiosks' device accounts, and concurrent uses of every
single-use secret."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from casesupport import CLI
from kioskkeys import DeviceKey

from gateway.audit import Audit
from gateway.auth.sessions import WebSessions
from gateway.cases.kiosks import (
    CREDENTIAL_GRACE,
    WRONG_CODES_PER_ADDRESS,
    Kiosks,
    KioskSettings,
    Proven,
)
from gateway.config import Settings
from gateway.errors import BadRequest, Conflict, Forbidden, TooManyRequests, Unauthorized
from gateway.live import LiveSessions
from gateway.model import DEDICATED, Kiosk
from gateway.store.sqlite import SQLiteStore

IP, UA = "192.0.2.10", "Thin/1.0"
PAIRING_SECONDS = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_kiosks(settings: Settings, store: SQLiteStore, clock: Clock,
                rotate: float = 86400.0) -> Kiosks:
    return Kiosks(store, Audit(store), LiveSessions(), WebSessions(store, settings, clock),
                  KioskSettings(PAIRING_SECONDS, 15.0, 300.0, 30.0, rotate), clock)


@pytest.fixture
def kiosks(settings: Settings, store: SQLiteStore, clock: Clock) -> Kiosks:
    return make_kiosks(settings, store, clock)


async def outcomes(calls: list[Awaitable[Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run every call at once: (what succeeded, what was raised)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    return ([r for r in results if not isinstance(r, BaseException)],
            [r for r in results if isinstance(r, BaseException)])


async def enrolled(kiosks: Kiosks, key: DeviceKey, **create: Any) -> tuple[Kiosk, str]:
    kiosk, code = await kiosks.create(CLI, name=create.pop("name", "Front desk"), **create)
    paired, credential = await kiosks.pair(code, key.public, IP, UA)
    assert paired.id == kiosk.id and paired.enrolled
    return paired, credential


async def proven(kiosks: Kiosks, key: DeviceKey, credential: str) -> Proven:
    challenge = await kiosks.challenge(credential)
    return await kiosks.prove(credential, challenge, key.sign(challenge), IP, UA)


async def lobby(store: SQLiteStore, name: str = "Lobby") -> int:
    return (await store.create_desktop(name, "static", "10.9.8.7", 5901, None)).id


# pairing ---------------------------------------------------------------------------------------
async def test_a_pairing_code_works_once(kiosks: Kiosks, store: SQLiteStore) -> None:
    kiosk, code = await kiosks.create(CLI, name="Front desk", location="Hall")
    assert not kiosk.enrolled and kiosk.pair_expires is not None
    with pytest.raises(Unauthorized, match="wrong, used or expired"):
        await kiosks.pair("ABCD-EFGH" if code != "ABCD-EFGH" else "ABCD-EFGJ",
                          DeviceKey().public, IP, UA)
    paired, credential = await kiosks.pair(code.lower().replace("-", " "), DeviceKey().public,
                                           IP, UA)  # typed loosely: spaces, lower case
    assert paired.enrolled and paired.last_ip == IP and paired.user_agent == UA
    assert paired.pair_expires is None and credential
    with pytest.raises(Unauthorized):
        await kiosks.pair(code, DeviceKey().public, IP, UA)
    assert (await kiosks.device(credential)) == await kiosks.get(kiosk.id)
    details = [e.detail for e in await store.list_audit(kind="kiosk.device", limit=10)]
    assert sum("pairing refused" in d for d in details) == 2
    assert any("enrolled" in d for d in details)


async def test_an_expired_code_is_refused(kiosks: Kiosks, clock: Clock) -> None:
    _, code = await kiosks.create(CLI, name="Front desk")
    clock.now += PAIRING_SECONDS + 1
    with pytest.raises(Unauthorized):
        await kiosks.pair(code, DeviceKey().public, IP, UA)
    kiosk, fresh = await kiosks.new_code(CLI, (await kiosks.fleet())[0][0].id)
    clock.now += PAIRING_SECONDS - 1
    assert (await kiosks.pair(fresh, DeviceKey().public, IP, UA))[0].id == kiosk.id


async def test_a_malformed_key_does_not_spend_the_code(kiosks: Kiosks) -> None:
    _, code = await kiosks.create(CLI, name="Front desk")
    for bad in ("", "not base64!", "AAAA", DeviceKey().sign("x")):
        with pytest.raises(BadRequest):
            await kiosks.pair(code, bad, IP, UA)
    await kiosks.pair(code, DeviceKey().public, IP, UA)


async def test_wrong_codes_are_throttled_per_address(kiosks: Kiosks, clock: Clock) -> None:
    kiosk, code = await kiosks.create(CLI, name="Front desk")
    for _ in range(WRONG_CODES_PER_ADDRESS):
        with pytest.raises(Unauthorized):
            await kiosks.pair("WRNG-CODE", DeviceKey().public, IP, UA)
    with pytest.raises(TooManyRequests):  # even the right code, from this address
        await kiosks.pair(code, DeviceKey().public, IP, UA)
    # Another address is not held back, and the window passes.
    with pytest.raises(Unauthorized):
        await kiosks.pair("WRNG-CODE", DeviceKey().public, "192.0.2.99", UA)
    clock.now += 601  # the window passed (and the code expired: a new one)
    _, code = await kiosks.new_code(CLI, kiosk.id)
    assert (await kiosks.pair(code, DeviceKey().public, IP, UA))[0].enrolled


async def test_concurrent_wrong_codes_are_throttled_too(kiosks: Kiosks,
                                                        store: SQLiteStore) -> None:
    await kiosks.create(CLI, name="Front desk")
    _, failed = await outcomes([kiosks.pair("WRNG-CODE", DeviceKey().public, IP, UA)
                                for _ in range(3 * WRONG_CODES_PER_ADDRESS)])
    assert sum(isinstance(e, TooManyRequests) for e in failed) >= 2 * WRONG_CODES_PER_ADDRESS


async def test_wrong_codes_are_counted_across_gateway_processes(
        settings: Settings, kiosks: Kiosks, clock: Clock) -> None:
    """Two gateways on one database: their wrong codes from one address add up."""
    other_store = SQLiteStore(settings.database_path)
    await other_store.open()
    try:
        other = make_kiosks(settings, other_store, clock)
        _, failed = await outcomes(
            [(kiosks if i % 2 else other).pair("WRNG-CODE", DeviceKey().public, IP, UA)
             for i in range(2 * WRONG_CODES_PER_ADDRESS)])
        assert sum(isinstance(e, Unauthorized) for e in failed) == WRONG_CODES_PER_ADDRESS
        assert sum(isinstance(e, TooManyRequests) for e in failed) == WRONG_CODES_PER_ADDRESS
    finally:
        await other_store.close()


async def test_one_of_many_concurrent_pairings_wins(kiosks: Kiosks) -> None:
    kiosk, code = await kiosks.create(CLI, name="Front desk")
    keys = [DeviceKey() for _ in range(20)]
    won, lost = await outcomes([kiosks.pair(code, k.public, f"192.0.2.{i}", UA)
                                for i, k in enumerate(keys)])
    assert len(won) == 1 and len(lost) == 19
    assert all(isinstance(e, Unauthorized) for e in lost)
    # The winner's key is the one the kiosk holds: only it can prove.
    last_ip = (await kiosks.get(kiosk.id)).last_ip
    winner = next(k for i, k in enumerate(keys) if last_ip == f"192.0.2.{i}")
    _, credential = won[0]
    assert (await proven(kiosks, winner, credential)).kiosk.id == kiosk.id


# proving -------------------------------------------------------------------------------------
async def test_the_device_proves_with_its_key(kiosks: Kiosks, store: SQLiteStore) -> None:
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key)
    proof = await proven(kiosks, key, credential)
    assert proof.kiosk.id == kiosk.id and proof.credential == credential
    assert proof.new_credential is None

    # A challenge is spent once: the same signed challenge again is refused.
    challenge = await kiosks.challenge(credential)
    signature = key.sign(challenge)
    await kiosks.prove(credential, challenge, signature, IP, UA)
    with pytest.raises(Unauthorized):
        await kiosks.prove(credential, challenge, signature, IP, UA)
    # Another key's signature, a DER signature, garbage, a made-up challenge: refused.
    for make in (lambda c: DeviceKey().sign(c), key.der_signature, lambda c: "AAAA",
                 lambda c: ""):
        challenge = await kiosks.challenge(credential)
        with pytest.raises(Unauthorized):
            await kiosks.prove(credential, challenge, make(challenge), IP, UA)
        with pytest.raises(Unauthorized):  # and the challenge was spent by the try
            await kiosks.prove(credential, challenge, key.sign(challenge), IP, UA)
    with pytest.raises(Unauthorized):
        await kiosks.prove(credential, "made-up", key.sign("made-up"), IP, UA)
    refused = [e.detail for e in await store.list_audit(kind="kiosk.device", limit=50)
               if "proof refused" in e.detail]
    assert len(refused) == 10


async def test_a_copied_credential_without_the_key_is_refused(kiosks: Kiosks) -> None:
    key = DeviceKey()
    _, credential = await enrolled(kiosks, key)
    thief = DeviceKey()
    challenge = await kiosks.challenge(credential)  # the cookie alone gets a challenge...
    with pytest.raises(Unauthorized):  # ...but cannot sign it
        await kiosks.prove(credential, challenge, thief.sign(challenge), "203.0.113.5", UA)
    for wrong in (None, "", "x" * 300, credential + "x"):
        with pytest.raises(Unauthorized):
            await kiosks.challenge(wrong)
        with pytest.raises(Unauthorized):
            await kiosks.prove(wrong, challenge, key.sign(challenge), IP, UA)


async def test_an_expired_challenge_is_refused(kiosks: Kiosks, clock: Clock) -> None:
    key = DeviceKey()
    _, credential = await enrolled(kiosks, key)
    challenge = await kiosks.challenge(credential)
    clock.now += 61
    with pytest.raises(Unauthorized):
        await kiosks.prove(credential, challenge, key.sign(challenge), IP, UA)


async def test_one_of_many_concurrent_proofs_of_a_challenge_wins(kiosks: Kiosks) -> None:
    key = DeviceKey()
    _, credential = await enrolled(kiosks, key)
    challenge = await kiosks.challenge(credential)
    signature = key.sign(challenge)
    won, lost = await outcomes([kiosks.prove(credential, challenge, signature, IP, UA)
                                for _ in range(20)])
    assert len(won) == 1 and len(lost) == 19
    assert all(isinstance(e, Unauthorized) for e in lost)


# credential rotation -------------------------------------------------------------------------
async def test_the_credential_rotates_with_a_grace(settings: Settings, store: SQLiteStore,
                                                   clock: Clock) -> None:
    kiosks = make_kiosks(settings, store, clock, rotate=100.0)
    key = DeviceKey()
    _, old = await enrolled(kiosks, key)
    assert (await proven(kiosks, key, old)).new_credential is None  # not due yet
    clock.now += 101
    proof = await proven(kiosks, key, old)
    new = proof.new_credential
    assert new is not None and new != old
    assert (await proven(kiosks, key, new)).new_credential is None
    # The old one still works for the grace (requests on their way), and rotates nothing.
    clock.now += CREDENTIAL_GRACE - 1
    assert (await proven(kiosks, key, old)).new_credential is None
    assert await kiosks.device(old) is not None
    clock.now += 2
    with pytest.raises(Unauthorized):
        await proven(kiosks, key, old)
    assert await kiosks.device(old) is None
    assert (await proven(kiosks, key, new)).kiosk.enrolled


async def test_concurrent_proofs_when_due_rotate_once(settings: Settings, store: SQLiteStore,
                                                      clock: Clock) -> None:
    kiosks = make_kiosks(settings, store, clock, rotate=100.0)
    key = DeviceKey()
    _, old = await enrolled(kiosks, key)
    clock.now += 101
    challenges = [await kiosks.challenge(old) for _ in range(8)]
    won, lost = await outcomes([kiosks.prove(old, c, key.sign(c), IP, UA) for c in challenges])
    assert lost == [] and len(won) == 8
    fresh = [p.new_credential for p in won if p.new_credential is not None]
    assert len(fresh) == 1
    assert (await proven(kiosks, key, fresh[0])).kiosk.enrolled


# revocation ------------------------------------------------------------------------------------
async def test_revoking_ends_the_sessions_and_the_credential(kiosks: Kiosks, store: SQLiteStore,
                                                             settings: Settings,
                                                             clock: Clock) -> None:
    desktop_id = await lobby(store)
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key, mode=DEDICATED, desktop_id=desktop_id)
    started = await kiosks.start(await proven(kiosks, key, credential), IP, UA)
    sessions = WebSessions(store, settings, clock)
    assert started.session_cookie and await sessions.load(started.session_cookie)
    assert len(await store.kiosk_web_sessions(kiosk.id)) == 1

    revoked = await kiosks.revoke(CLI, kiosk.id)
    assert revoked.revoked_at is not None and not revoked.enrolled
    assert await sessions.load(started.session_cookie) is None
    assert await store.kiosk_web_sessions(kiosk.id) == []
    assert await kiosks.device(credential) is None
    with pytest.raises(Unauthorized):
        await kiosks.challenge(credential)
    clock.now += 10 * 86400  # never again, however long
    with pytest.raises(Unauthorized):
        await kiosks.challenge(credential)
    # A new code enrols it afresh, with a new credential; the old one stays dead.
    _, code = await kiosks.new_code(CLI, kiosk.id)
    again, fresh = await kiosks.pair(code, key.public, IP, UA)
    assert again.enrolled and fresh != credential
    assert await kiosks.device(credential) is None
    assert (await proven(kiosks, key, fresh)).kiosk.id == kiosk.id
    audit = [e.detail for e in await store.list_audit(kind="kiosk", limit=20)]
    assert any("revoked (1 sessions ended)" in d for d in audit)


async def test_a_shared_kiosks_grant_dies_with_its_enrolment(kiosks: Kiosks) -> None:
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key)
    proof = await proven(kiosks, key, credential)
    first, second = (await kiosks.start(proof, IP, UA)).grant, (
        await kiosks.start(proof, IP, UA)).grant
    assert first and second
    assert (await kiosks.redeem(first)) is not None
    assert await kiosks.redeem(first) is None  # once
    await kiosks.revoke(CLI, kiosk.id)
    assert await kiosks.redeem(second) is None


async def test_concurrent_revoke_and_start_leave_no_session(kiosks: Kiosks,
                                                            store: SQLiteStore) -> None:
    desktop_id = await lobby(store)
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key, mode=DEDICATED, desktop_id=desktop_id)
    proofs = [await proven(kiosks, key, credential) for _ in range(10)]
    await outcomes([kiosks.revoke(CLI, kiosk.id), *(kiosks.start(p, IP, UA) for p in proofs)])
    assert not (await kiosks.get(kiosk.id)).enrolled
    assert await store.kiosk_web_sessions(kiosk.id) == []


async def test_revoke_and_start_at_once_never_leave_a_working_credential(
        kiosks: Kiosks, store: SQLiteStore) -> None:
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key)
    proofs = [await proven(kiosks, key, credential) for _ in range(10)]
    _, failed = await outcomes([kiosks.revoke(CLI, kiosk.id),
                                *(kiosks.start(p, IP, UA) for p in proofs)])
    assert failed == []
    assert await kiosks.device(credential) is None
    with pytest.raises(Unauthorized):
        await proven(kiosks, key, credential)


# dedicated kiosks --------------------------------------------------------------------------------
async def test_a_dedicated_kiosk_has_its_device_account(kiosks: Kiosks,
                                                        store: SQLiteStore) -> None:
    desktop_id, other_id = await lobby(store), await lobby(store, "Hall")
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key, mode=DEDICATED, desktop_id=desktop_id,
                                       input_allowed=False)
    user = await store.get_user_by_name(f"kiosk:{kiosk.id}")
    assert user is not None and user.source == "kiosk" and kiosk.user_id == user.id
    assert [d.id for d in await store.desktops_for_user(user.id)] == [desktop_id]
    assert await kiosks.view_only(user)
    started = await kiosks.start(await proven(kiosks, key, credential), IP, UA)
    assert started.session_cookie and started.grant is None

    await kiosks.update(CLI, kiosk.id, input_allowed=True)
    assert not await kiosks.view_only(user)
    # Its desktop changes: the account follows it; the change ended the device session.
    await kiosks.update(CLI, kiosk.id, desktop_id=other_id)
    assert [d.id for d in await store.desktops_for_user(user.id)] == [other_id]
    assert await store.kiosk_web_sessions(kiosk.id) == []
    # A person's account is never a kiosk's, nor view-only.
    alice = await store.create_user("alice", None, False)
    assert not await kiosks.view_only(alice)
    await kiosks.delete(CLI, kiosk.id)
    gone = await store.get_user(user.id)
    assert gone is not None and gone.disabled
    assert await kiosks.view_only(user)


async def test_a_new_kiosk_does_not_inherit_a_deleted_ones_desktops(
        kiosks: Kiosks, store: SQLiteStore) -> None:
    old_desktop, new_desktop = await lobby(store), await lobby(store, "Hall")
    old, _ = await kiosks.create(CLI, name="Old", mode=DEDICATED, desktop_id=old_desktop)
    await kiosks.delete(CLI, old.id)
    new, _ = await kiosks.create(CLI, name="New", mode=DEDICATED, desktop_id=new_desktop)
    assert new.user_id is not None
    assert [d.id for d in await store.desktops_for_user(new.user_id)] == [new_desktop]


async def test_a_person_named_like_a_device_account_is_not_taken(kiosks: Kiosks,
                                                                 store: SQLiteStore) -> None:
    desktop_id = await lobby(store)
    await store.create_user("kiosk:1", None, False)
    with pytest.raises(Conflict, match="not this kiosk's"):
        await kiosks.create(CLI, name="Lobby", mode=DEDICATED, desktop_id=desktop_id)


async def test_only_admins_change_kiosks(kiosks: Kiosks, store: SQLiteStore) -> None:
    from gateway.cases.actor import Actor

    kiosk, _ = await kiosks.create(CLI, name="Front desk")
    person = Actor("bob", 7, False, IP)
    for call in (kiosks.create(person, name="X"), kiosks.new_code(person, kiosk.id),
                 kiosks.update(person, kiosk.id, name="Y"), kiosks.revoke(person, kiosk.id),
                 kiosks.delete(person, kiosk.id)):
        with pytest.raises(Forbidden):
            await call
    assert [k.name for k, _ in await kiosks.fleet()] == ["Front desk"]


async def test_online_follows_the_heartbeats(kiosks: Kiosks, clock: Clock) -> None:
    key = DeviceKey()
    kiosk, credential = await enrolled(kiosks, key)
    assert (await kiosks.fleet())[0][1]
    clock.now += kiosks.settings.offline_after + 1
    assert not (await kiosks.fleet())[0][1]
    await kiosks.heartbeat(await proven(kiosks, key, credential), ip="192.0.2.11", user_agent=UA,
                           person="carol", desktop="Lab")
    (seen, online), = await kiosks.fleet()
    assert online and (seen.current_user, seen.current_desktop, seen.last_ip) == (
        "carol", "Lab", "192.0.2.11")
    await kiosks.revoke(CLI, kiosk.id)
    (seen, online), = await kiosks.fleet()
    assert not online and seen.current_user == ""
