"""The store's kiosk tables on real SQLite: names unique, every single-use secret (pairing code,
challenge, grant) spent once also when two stores (two gateway processes) race for it, the
credential's grace after a rotation, and revocation and deletion ending the kiosk's sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config import Settings
from gateway.errors import Conflict, NotFound
from gateway.model import SHARED, WebSession, WebSessionState
from gateway.store.sqlite import SQLiteStore

NOW = 1_700_000_000.0


async def kiosk_id(store: SQLiteStore, name: str = "Front desk", code: str = "code-1") -> int:
    return (await store.create_kiosk(name=name, location="", mode=SHARED, desktop_id=None,
                                     input_allowed=True, created_at=NOW, pair_code_hash=code,
                                     pair_expires=NOW + 600)).id


@pytest.fixture
async def second(settings: Settings) -> AsyncIterator[SQLiteStore]:
    """Another store on the same database: another gateway process."""
    s = SQLiteStore(settings.database_path)
    await s.open()
    yield s
    await s.close()


async def test_kiosks_round_trip_and_names_are_unique(store: SQLiteStore) -> None:
    kid = await kiosk_id(store)
    kiosk = await store.get_kiosk(kid)
    assert kiosk is not None and kiosk.pair_expires == NOW + 600 and not kiosk.enrolled
    with pytest.raises(Conflict):
        await kiosk_id(store, code="code-2")
    other = await kiosk_id(store, "Second", "code-2")
    with pytest.raises(Conflict):
        await store.update_kiosk(other, name="Front desk")
    with pytest.raises(NotFound):
        await store.update_kiosk(999, location="x")
    with pytest.raises(ValueError):
        await store.update_kiosk(kid, cred_hash="x")
    assert [k.name for k in await store.list_kiosks()] == ["Front desk", "Second"]


async def test_a_code_is_spent_once_by_one_of_two_stores(store: SQLiteStore,
                                                         second: SQLiteStore) -> None:
    kid = await kiosk_id(store)
    assert await store.pair_kiosk("code-1", NOW + 601, "key", "cred") is None  # expired
    won = await asyncio.gather(*(s.pair_kiosk("code-1", NOW, f"key{i}", f"cred{i}")
                                 for i, s in enumerate([store, second] * 10)))
    assert [w[0] for w in won if w is not None] == [kid]
    kiosk = await store.get_kiosk(kid)
    assert kiosk is not None and kiosk.enrolled and kiosk.pair_expires is None


async def test_a_challenge_is_spent_once(store: SQLiteStore, second: SQLiteStore) -> None:
    kid = await kiosk_id(store)
    await store.add_kiosk_challenge(kid, "n1", NOW, NOW + 60, 8)
    taken = await asyncio.gather(*(s.take_kiosk_challenge(kid, "n1", NOW)
                                   for s in [store, second] * 10))
    assert taken.count(True) == 1
    await store.add_kiosk_challenge(kid, "n2", NOW, NOW + 60, 8)
    assert not await store.take_kiosk_challenge(kid, "n2", NOW + 61)  # expired (and gone)
    assert not await store.take_kiosk_challenge(kid, "n2", NOW)
    other = await kiosk_id(store, "Second", "code-2")
    await store.add_kiosk_challenge(kid, "n3", NOW, NOW + 60, 8)
    assert not await store.take_kiosk_challenge(other, "n3", NOW)  # another kiosk's
    # At most ``keep`` stay open: the oldest go.
    for i in range(12):
        await store.add_kiosk_challenge(kid, f"m{i}", NOW, NOW + 60 + i, 8)
    kept = [await store.take_kiosk_challenge(kid, f"m{i}", NOW) for i in range(12)]
    assert kept == [False] * 4 + [True] * 8


async def test_the_credential_and_its_grace(store: SQLiteStore) -> None:
    kid = await kiosk_id(store)
    await store.pair_kiosk("code-1", NOW, "key", "old")
    found = await store.kiosk_by_credential("old", NOW, 60)
    assert found is not None and found[1:] == ("key", True)
    assert await store.rotate_kiosk_credential(kid, "old", "new", NOW + 10)
    assert not await store.rotate_kiosk_credential(kid, "old", "newer", NOW + 10)  # one wins
    assert (await store.kiosk_by_credential("new", NOW + 10, 60))[2] is True  # type: ignore[index]
    assert (await store.kiosk_by_credential("old", NOW + 69, 60))[2] is False  # type: ignore[index]
    assert await store.kiosk_by_credential("old", NOW + 71, 60) is None
    assert await store.kiosk_credential_rotated_at(kid) == NOW + 10


async def test_grants_are_spent_once_and_die_with_the_enrolment(store: SQLiteStore,
                                                                second: SQLiteStore) -> None:
    kid = await kiosk_id(store)
    await store.pair_kiosk("code-1", NOW, "key", "cred")
    await store.add_kiosk_grant("g1", kid, NOW, NOW + 600)
    taken = await asyncio.gather(*(s.take_kiosk_grant("g1", NOW) for s in [store, second] * 10))
    assert [t for t in taken if t is not None] == [kid]
    await store.add_kiosk_grant("g2", kid, NOW, NOW + 600)
    assert await store.take_kiosk_grant("g2", NOW + 601) is None
    await store.add_kiosk_grant("g3", kid, NOW, NOW + 600)
    await store.revoke_kiosk(kid, NOW)
    assert await store.take_kiosk_grant("g3", NOW) is None


async def _session(store: SQLiteStore, user_id: int, kid: int | None, name: str) -> str:
    await store.create_web_session(WebSession(name, user_id, WebSessionState.AUTHENTICATED,
                                              "csrf", NOW, NOW, "192.0.2.1", "ua",
                                              kiosk_id=kid))
    return name


async def test_revoking_and_deleting_end_the_kiosks_sessions(store: SQLiteStore) -> None:
    user = await store.create_user("carol", None, False)
    kid = await kiosk_id(store)
    other = await kiosk_id(store, "Second", "code-2")
    await store.pair_kiosk("code-1", NOW, "key", "cred")
    on_it = {await _session(store, user.id, kid, "ws1"), await _session(store, user.id, kid,
                                                                         "ws2")}
    elsewhere = {await _session(store, user.id, other, "ws3"),
                 await _session(store, user.id, None, "ws4")}
    await store.add_kiosk_challenge(kid, "n1", NOW, NOW + 60, 8)
    ended = await store.revoke_kiosk(kid, NOW + 5)
    assert set(ended or []) == on_it
    kiosk = await store.get_kiosk(kid)
    assert kiosk is not None and kiosk.revoked_at == NOW + 5 and not kiosk.enrolled
    assert await store.kiosk_by_credential("cred", NOW, 60) is None
    assert not await store.take_kiosk_challenge(kid, "n1", NOW)
    assert await store.revoke_kiosk(kid, NOW + 9) == []  # again: the first time stays
    assert (await store.get_kiosk(kid)).revoked_at == NOW + 5  # type: ignore[union-attr]
    assert await store.revoke_kiosk(999, NOW) is None
    for ws in elsewhere:
        assert await store.get_web_session(ws) is not None
    assert await store.delete_kiosk(other) == ["ws3"]
    assert await store.get_kiosk(other) is None and await store.delete_kiosk(other) is None
    assert await store.get_web_session("ws4") is not None
