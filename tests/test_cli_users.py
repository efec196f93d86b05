"""`deskgate user list` and `deskgate assign` as an admin runs them: who each account really is,
and desktops given only to an account named without ambiguity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_cli import deskgate

from gateway.cli import _print_users
from gateway.config import load_settings
from gateway.model import User
from gateway.names import name_key
from gateway.store.sqlite import SQLiteStore


async def _sso_accounts(config: Path) -> dict[str, int]:
    """Accounts as single sign-on makes them (a look-alike of "admin" from a second provider)."""
    store = SQLiteStore(load_settings(config).database_path)
    await store.open()
    try:
        ids = {}
        for name, provider, subject in (("admin@evil", "evil", "e-1"), ("carol", "corp", "c-9")):
            user = await store.create_user(name, None, False, source=provider)
            await store.link_identity(provider, subject, user.id)
            ids[name] = user.id
        return ids
    finally:
        await store.close()


def test_user_list_has_a_header_and_the_identity_of_each_account(tmp_path: Path) -> None:
    deskgate("init", "--data", str(tmp_path / "data"), "--no-demo")
    config = tmp_path / "data" / "deskgate.toml"
    ids = asyncio.run(_sso_accounts(config))
    lines = deskgate("user", "list", config=config).stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "IDENTITY", "ADMIN", "DISABLED", "TOTP", "NOTE"]
    rows = {r.split()[1]: r.split() for r in lines[1:]}
    assert rows["admin"] == ["1", "admin", "local", "yes", "no", "no"]
    assert rows["admin@evil"] == [str(ids["admin@evil"]), "admin@evil", "evil:e-1", "no", "no",
                                  "no"]
    assert rows["carol"][2] == "corp:c-9"
    # Columns line up under the header.
    col = lines[0].index("IDENTITY")
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[1:]), lines


def test_assign_by_id_or_identity_and_refuse_look_alikes(tmp_path: Path) -> None:
    deskgate("init", "--data", str(tmp_path / "data"), "--no-demo")
    config = tmp_path / "data" / "deskgate.toml"
    ids = asyncio.run(_sso_accounts(config))
    deskgate("desktop", "add", "Lab", "--provider", "static", "--vnc", "127.0.0.1:5999",
             config=config)

    out = deskgate("assign", "Lab", "corp:c-9", config=config).stdout
    assert out.strip() == f"Desktop Lab assigned to #{ids['carol']} carol (corp:c-9)"
    out = deskgate("assign", "Lab", "--user-id", str(ids["admin@evil"]), config=config).stdout
    assert out.strip() == f"Desktop Lab assigned to #{ids['admin@evil']} admin@evil (evil:e-1)"
    out = deskgate("assign", "Lab", "admin", config=config).stdout
    assert out.strip() == "Desktop Lab assigned to #1 admin (local)"

    refused = deskgate("assign", "Lab", "Admin", config=config, check=False)
    assert refused.returncode == 1
    assert "'Admin' names no user exactly, but looks like: #1 admin (local)." in refused.stderr
    assert "--user-id N" in refused.stderr and "Traceback" not in refused.stderr
    both = deskgate("assign", "Lab", "carol", "--user-id", "1", config=config, check=False)
    assert both.returncode == 1 and "name one user" in both.stderr
    added = deskgate("user", "add", "\u0430dmin", config=config, check=False)
    assert added.returncode == 1
    assert "user name '\u0430dmin' is taken: it looks like the existing user 'admin' (#1)" in (
        added.stderr)


def test_user_list_marks_an_older_databases_look_alike_accounts(
        capsys: pytest.CaptureFixture[str]) -> None:
    """After an upgrade, a younger look-alike account has no key of its own: the list says whose
    name it looks like."""
    users = [User(1, "admin", True, False, True, name_key=name_key("admin")),
             User(4, "\u0430dmin", False, False, False, source="evil"),
             User(5, "bob", False, True, False, name_key=name_key("bob"))]
    _print_users(users, {4: "evil:e-1"})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["ID", "NAME", "IDENTITY", "ADMIN", "DISABLED", "TOTP", "NOTE"],
        ["1", "admin", "local", "yes", "no", "yes"],
        ["4", "\u0430dmin", "evil:e-1", "no", "no", "no", "looks", "like", "#1", "admin"],
        ["5", "bob", "local", "no", "yes", "no"]]
