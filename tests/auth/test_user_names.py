"""User names that look alike are one name: local accounts, single sign-on, assignment.

``Admin``, ``ADMIN``, ``аdmin`` (Cyrillic а) and ``ａｄｍｉｎ`` (full width) must not become accounts
beside ``admin`` that an admin could hand a desktop to by mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hostile_idp import HostileIdp

from gateway.app import Cases, build_cases, create_app
from gateway.cases.actor import Actor
from gateway.cases.catalog import Assignment
from gateway.config import Settings
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.keys import STORE
from gateway.names import name_key
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()  # who makes the changes that set the scene

Client = TestClient  # type: ignore[type-arg]

LOOK_ALIKES = ["Admin", "ADMIN", "\u0430dmin", "\uff41\uff44\uff4d\uff49\uff4e", "adrnin",
               "ad\u217fin", "\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427"]


def test_look_alike_names_share_one_key_and_different_names_do_not() -> None:
    assert {name_key(n) for n in ["admin", *LOOK_ALIKES]} == {name_key("admin")}
    others = ["admin@corp", "admins", "adm1n", "bob", "alice", "Alicia"]
    assert len({name_key(n) for n in others}) == len(others)
    assert name_key("admin") not in {name_key(n) for n in others}


async def test_local_user_add_of_a_look_alike_is_refused_with_a_clear_error(
        cases: Cases) -> None:
    admin, _ = await cases.accounts.add_user(CLI, "admin", admin=True)
    for name in LOOK_ALIKES:
        with pytest.raises(Conflict) as err:
            await cases.accounts.add_user(CLI, name, password="a-long-password")
        assert err.value.reason == (f"user name {name!r} is taken: it looks like the existing"
                                    f" user 'admin' (#{admin.id})")
    with pytest.raises(Conflict, match="user 'admin' already exists"):
        await cases.accounts.add_user(CLI, "admin", password="a-long-password")
    assert [u.name for u in await cases.store.list_users()] == ["admin"]


async def test_many_colliding_user_adds_in_flight_make_exactly_one_account(
        cases: Cases) -> None:
    names = [LOOK_ALIKES[i % len(LOOK_ALIKES)] for i in range(60)] + ["admin"] * 20
    results = await asyncio.gather(
        *(cases.accounts.add_user(CLI, n, password="a-long-password") for n in names),
        return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1 and len(errors) == len(names) - 1
    assert all(isinstance(e, Conflict) for e in errors), {type(e) for e in errors}
    users = await cases.store.list_users()
    assert len(users) == 1 and users[0].name_key == name_key("admin")


async def test_existing_look_alike_accounts_are_kept_and_reported_at_upgrade(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A database from before the key: the oldest account gets it, a younger look-alike keeps
    no key (both stay, nothing is merged) and is reported; new look-alikes are refused."""
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(settings.database_path)) as old:
        for steps in MIGRATIONS[:-1]:
            for sql in steps:
                old.execute(sql)
        old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        old.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) - 1,))
        for name in ("admin", "bob", "\u0430dmin", "Bob"):
            old.execute("INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, 0)",
                        (name, name == "admin"))
        old.commit()

    store = SQLiteStore(settings.database_path)
    with caplog.at_level(logging.WARNING, logger="deskgate.store"):
        await store.open()
    try:
        keys = {u.name: u.name_key for u in await store.list_users()}
        assert keys == {"admin": name_key("admin"), "bob": name_key("bob"),
                        "\u0430dmin": None, "Bob": None}
        reported = [r.getMessage() for r in caplog.records]
        assert len(reported) == 2 and "user #3 '\u0430dmin' looks like user #1 'admin'" in (
            reported[0]) and "both accounts are kept" in reported[0]
        with pytest.raises(Conflict, match="looks like the existing user 'admin'"):
            await store.create_user("ADMIN", None, False)
    finally:
        await store.close()


async def test_assign_takes_an_unambiguous_identity_and_lists_the_candidates_otherwise(
        cases: Cases) -> None:
    store = cases.store
    admin, _ = await cases.accounts.add_user(CLI, "admin", admin=True)
    impostor = await store.create_user("admin@evil", None, False, source="evil")
    await store.link_identity("evil", "s-1", impostor.id)
    corp = await store.create_user("carol", None, False, source="corp")
    await store.link_identity("corp", "c-9", corp.id)
    vm = (await cases.catalog.add_desktop(CLI, "VM", "static", host="127.0.0.1", port=5999)).id

    def assigned(done: Assignment) -> int:
        assert done.user is not None
        return done.user.id

    assert assigned(await cases.catalog.assign(CLI, vm, user_ref="admin")) == admin.id
    assert assigned(await cases.catalog.assign(CLI, vm, user_ref="corp:c-9")) == corp.id
    assert assigned(await cases.catalog.assign(CLI, vm, user_id=impostor.id)) == impostor.id
    with pytest.raises(BadRequest) as err:
        await cases.catalog.assign(CLI, vm, user_ref="Admin")  # only looks like a name
    assert err.value.reason == (f"'Admin' names no user exactly, but looks like: #{admin.id}"
                                " admin (local). Name the account by id (--user-id N) or as"
                                " PROVIDER:SUBJECT")
    with pytest.raises(NotFound):
        await cases.catalog.assign(CLI, vm, user_ref="nobody")
    with pytest.raises(NotFound):
        await cases.catalog.assign(CLI, vm, user_id=999)
    with pytest.raises(NotFound):
        await cases.catalog.assign(CLI, vm, user_ref="corp:nobody")


# -- single sign-on ------------------------------------------------------------------------------


@pytest.fixture
async def gateway(settings: Settings, hostile_idp: HostileIdp) -> AsyncIterator[Client]:
    s = dataclasses.replace(settings, oidc=(hostile_idp.config(require_totp=False),))
    store = SQLiteStore(s.database_path)
    await store.open()
    await build_cases(s, store).accounts.add_user(CLI, "admin", admin=True)
    await store.close()
    async with TestClient(TestServer(create_app(s))) as client:
        yield client


async def _answers(client: Client, idp: HostileIdp, claims: list[dict[str, str]]
                   ) -> list[tuple[aiohttp.ClientSession, str]]:
    """For each claim set: a browser that started a sign-in, and the provider's answer to it."""
    out = []
    for c in claims:
        browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        start = await browser.get(client.make_url("/login/oidc/hostile"), allow_redirects=False)
        idp.user_claims = {**c, "amr": ["pwd"]}
        async with browser.get(start.headers["Location"], allow_redirects=False) as resp:
            answer = urlsplit(resp.headers["Location"])
        out.append((browser, f"{answer.path}?{answer.query}"))
    return out


async def test_many_look_alike_sso_sign_ins_in_flight_get_distinct_names(
        gateway: Client, hostile_idp: HostileIdp) -> None:
    """60 first sign-ins at once, each a different person claiming a name like "admin", and 20
    more of one person: every one signs in, nobody gets a name that looks like "admin", one
    account per person, and no two names look alike."""
    claims = [{"sub": f"p{i}", "preferred_username": LOOK_ALIKES[i % len(LOOK_ALIKES)]}
              for i in range(60)]
    claims += [{"sub": "same-person", "preferred_username": "admin"}] * 20
    pairs = await _answers(gateway, hostile_idp, claims)
    try:
        async def finish(browser: aiohttp.ClientSession, path: str) -> int:
            async with browser.get(gateway.make_url(path), allow_redirects=False) as resp:
                await resp.read()
                return resp.status
        statuses = await asyncio.gather(*(finish(b, p) for b, p in pairs))
    finally:
        for browser, _ in pairs:
            await browser.close()
    assert statuses == [303] * len(pairs)
    store = gateway.server.app[STORE]
    users = await store.list_users()
    assert len(users) == 1 + 61
    keys = [name_key(u.name) for u in users]
    assert len(set(keys)) == len(keys), "two accounts have names that look alike"
    assert [u.name for u in users if name_key(u.name) == name_key("admin")] == ["admin"]
    same = await store.identity_user("hostile", "same-person")
    person = await store.get_user(same) if same else None
    assert person is not None and person.name.startswith("admin@hostile") and person.source == "hostile"
    details = [e.detail for e in await store.list_audit(kind="admin", limit=200)]
    assert sum("user provisioned from idp hostile" in d for d in details) == 61


async def test_a_name_posing_as_another_providers_account_is_not_taken_as_is(
        settings: Settings, hostile_idp: HostileIdp) -> None:
    """"admin@corp" from the provider "hostile" would pass for corp's disambiguated "admin"."""
    corp = dataclasses.replace(hostile_idp.config(), id="corp", issuer="http://127.0.0.1:9")
    s = dataclasses.replace(settings, oidc=(hostile_idp.config(require_totp=False), corp))
    async with TestClient(TestServer(create_app(s))) as client:
        [(browser, path)] = await _answers(client, hostile_idp,
                                           [{"sub": "x", "preferred_username": "Admin@Corp"}])
        async with browser:
            async with browser.get(client.make_url(path), allow_redirects=False) as resp:
                assert resp.status == 303
        user = await client.server.app[STORE].get_user_by_name("Admin@Corp@hostile")
        assert user is not None and user.source == "hostile"
