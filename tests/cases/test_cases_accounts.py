"""Accounts on the store: users, passwords, disabling, TOTP resets and API tokens; one audit row
per change naming its actor."""

from __future__ import annotations

import asyncio

import pytest
from casesupport import CLI, PASSWORD, admin_actor, audit_mark, audit_since

from gateway.app import Cases
from gateway.cases.actor import Actor
from gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized


async def test_users_passwords_disabling_and_totp_resets(cases: Cases) -> None:
    accounts, store = cases.accounts, cases.store
    mark = await audit_mark(store)
    root, generated = await accounts.add_user(CLI, "root", admin=True)
    assert generated is not None and len(generated) >= 8
    [row] = await audit_since(store, mark)
    assert (row.user, row.detail, row.client_ip) == (
        "root", "user created (admin) (by the command line)", None)

    me = admin_actor(root)
    mark = await audit_mark(store)
    bob, _ = await accounts.add_user(me, "bob", password=PASSWORD)
    assert await accounts.set_password(me, "bob", "another password") is None
    disabled = await accounts.set_disabled(me, bob.id, True)
    enabled = await accounts.set_disabled(me, bob.id, False)
    await accounts.reset_totp(me, bob.id)
    assert disabled.disabled and not enabled.disabled
    rows = await audit_since(store, mark)
    assert [(r.user, r.detail) for r in rows] == [
        ("bob", "user created (by root)"), ("bob", "password changed (by root)"),
        ("bob", "user disabled (by root)"), ("bob", "user enabled (by root)"),
        ("bob", "second factor reset (by root)")]
    assert {r.client_ip for r in rows} == {"192.0.2.7"}
    assert [u.name for u in await accounts.users("BO")] == ["bob"]
    view = await accounts.user_view(bob.id)
    assert view.user.name == "bob" and view.subject is None and view.desktops == []


async def test_api_tokens_name_their_owner_and_who_made_them(cases: Cases) -> None:
    root, _ = await cases.accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    mark = await audit_mark(cases.store)
    token, secret = await cases.accounts.create_token(CLI, root, "ci", days=3, read_only=True)
    assert secret.startswith("dg_") and token.read_only
    found, owner = await cases.accounts.authenticate_token(secret)
    assert found.id == token.id and owner.id == root.id
    await cases.accounts.revoke_token(admin_actor(root), token.id)
    assert [r.detail for r in await audit_since(cases.store, mark)] == [
        "API token 'ci' created (read-only), 3 days, for root (by the command line)",
        f"API token {token.id} revoked (by root)"]
    with pytest.raises(Unauthorized):
        await cases.accounts.authenticate_token(secret)


async def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(
        cases: Cases) -> None:
    accounts = cases.accounts
    root, _ = await accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    alice, _ = await accounts.add_user(CLI, "alice", password=PASSWORD)
    me = admin_actor(root)
    mark = await audit_mark(cases.store)
    with pytest.raises(BadRequest, match="passwords need at least 8 characters"):
        await accounts.add_user(me, "carol", password="short")
    with pytest.raises(BadRequest, match="user names are 1-64 printable characters"):
        await accounts.add_user(me, "a\x1bb", password=PASSWORD)
    with pytest.raises(BadRequest, match="you cannot disable your own account"):
        await accounts.set_disabled(me, root.id, True)
    with pytest.raises(NotFound, match="no user with id 999"):
        await accounts.reset_totp(me, 999)
    with pytest.raises(BadRequest, match="alice is not an enabled admin"):
        await accounts.create_token(me, alice, "x")
    with pytest.raises(BadRequest, match="tokens live 1-366 days"):
        await accounts.create_token(me, root, "x", days=0)
    with pytest.raises(NotFound, match="no such token"):
        await accounts.revoke_token(me, 42)
    with pytest.raises(Forbidden):
        await accounts.set_disabled(Actor.of(alice), root.id, True)
    assert await audit_since(cases.store, mark) == []


async def test_fifty_users_added_at_once_are_one_row_each(cases: Cases) -> None:
    mark = await audit_mark(cases.store)
    made = await asyncio.gather(*(cases.accounts.add_user(CLI, f"user{i}", password=PASSWORD)
                                  for i in range(50)))
    assert len({u.id for u, _ in made}) == 50
    rows = await audit_since(cases.store, mark)
    assert sorted(r.user or "" for r in rows) == sorted(f"user{i}" for i in range(50))
    assert all(r.detail == "user created (by the command line)" for r in rows)
    # And fifty tokens for one admin, at once: fifty secrets, fifty rows.
    root, _ = await cases.accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    mark = await audit_mark(cases.store)
    tokens = await asyncio.gather(*(cases.accounts.create_token(admin_actor(root), root, f"t{i}")
                                    for i in range(50)))
    assert len({secret for _, secret in tokens}) == 50
    assert len(await audit_since(cases.store, mark)) == 50
    assert len(await cases.accounts.tokens()) == 50
