"""The catalog on the store: desktops and assignments, one audit row per change naming its actor."""

from __future__ import annotations

import asyncio

import pytest
from casesupport import CLI, PASSWORD, admin_actor, audit_mark, audit_since

from gateway.app import Cases
from gateway.cases.actor import Actor
from gateway.cases.catalog import provider_names
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.providers import PROVIDERS


async def _root(cases: Cases) -> Actor:
    root, _ = await cases.accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    return admin_actor(root)


async def test_add_change_assign_and_delete_a_desktop(cases: Cases) -> None:
    me = await _root(cases)
    await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    catalog, store = cases.catalog, cases.store

    mark = await audit_mark(store)
    desktop = await catalog.add_desktop(me, "Lab", "static", host="127.0.0.1", port=5999,
                                        password="vncpass1")
    [row] = await audit_since(store, mark)
    assert (row.kind, row.desktop, row.detail, row.client_ip) == (
        "admin", "Lab", "desktop created (static, vnc) (by root)", "192.0.2.7")
    assert desktop.has_password and await catalog.desktop_named("Lab") == desktop

    mark = await audit_mark(store)
    done = await catalog.assign(me, desktop.id, user_ref="alice")
    assert done.user is not None and done.user.name == "alice"
    await catalog.assign(me, desktop.id, group="staff")
    rows = await audit_since(store, mark)
    assert [r.detail for r in rows] == [
        f"desktop assigned to #{done.user.id} alice (local) (by root)",
        "desktop assigned to group staff (by root)"]
    view = await catalog.desktop_view(desktop.id)
    assert (view.users, view.groups) == (["alice"], ["staff"])

    mark = await audit_mark(store)
    changed = await catalog.update_desktop(me, desktop.id, name="Lab 2", port=6000,
                                           clear_password=True)
    assert (changed.name, changed.port, changed.has_password) == ("Lab 2", 6000, False)
    await catalog.assign(me, desktop.id, user_id=done.user.id, remove=True)
    await catalog.delete_desktop(me, desktop.id)
    assert [r.detail for r in await audit_since(store, mark)] == [
        "desktop changed: name, port, password cleared (by root)",
        f"desktop unassigned from #{done.user.id} alice (local) (by root)",
        "desktop deleted (by root)"]
    assert await catalog.desktops() == []


async def test_every_edge_adds_a_desktop_the_same_way(cases: Cases) -> None:
    """The command line, the admin pages and the API call the one add_desktop: one row each,
    spelled alike, naming who asked."""
    me = await _root(cases)
    mark = await audit_mark(cases.store)
    await cases.catalog.add_desktop(CLI, "From the CLI", "local")
    await cases.catalog.add_desktop(me, "From a page", "local")
    assert [r.detail for r in await audit_since(cases.store, mark)] == [
        "desktop created (local, vnc) (by the command line)",
        "desktop created (local, vnc) (by root)"]


async def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(
        cases: Cases) -> None:
    me = await _root(cases)
    mark = await audit_mark(cases.store)
    catalog = cases.catalog
    with pytest.raises(BadRequest, match="unknown provider 'vm'; use one of static, local"):
        await catalog.add_desktop(me, "X", "vm")
    with pytest.raises(BadRequest, match="desktop names are 1-64 printable characters"):
        await catalog.add_desktop(me, " ", "local")
    with pytest.raises(BadRequest, match="a static desktop needs --vnc HOST:PORT"):
        await catalog.add_desktop(me, "X", "static")
    desktop = await catalog.add_desktop(me, "Y", "local")
    with pytest.raises(BadRequest, match="give a user or a group"):
        await catalog.assign(me, desktop.id)
    with pytest.raises(BadRequest, match="give a user or a group"):
        await catalog.assign(me, desktop.id, user_ref="root", group="staff")
    with pytest.raises(BadRequest, match="group names are 1-256 characters"):
        await catalog.assign(me, desktop.id, group="  ")
    with pytest.raises(NotFound, match="no user named 'nobody'"):
        await catalog.assign(me, desktop.id, user_ref="nobody")
    with pytest.raises(NotFound, match="no such desktop"):
        await catalog.assign(me, 999, group="staff")
    with pytest.raises(BadRequest, match="power actions are start, stop and restart"):
        await catalog.power(me, desktop.id, "explode")
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    with pytest.raises(Forbidden):
        await catalog.add_desktop(Actor.of(alice), "Mine", "local")
    # Only the desktop Y and the user alice were made.
    assert [r.detail for r in await audit_since(cases.store, mark)] == [
        "desktop created (local, vnc) (by root)", "user created (by the command line)"]


def test_provider_names_are_the_provider_map() -> None:
    assert provider_names() == tuple(PROVIDERS)


async def test_fifty_assigns_and_adds_at_once_are_one_row_each(cases: Cases) -> None:
    me = await _root(cases)
    store = cases.store
    people = [(await cases.accounts.add_user(CLI, f"p{i}", password=PASSWORD))[0]
              for i in range(50)]
    mark = await audit_mark(store)
    desktops = await asyncio.gather(*(cases.catalog.add_desktop(me, f"D{i}", "local")
                                      for i in range(50)))
    assert sorted(d.name for d in desktops) == sorted(f"D{i}" for i in range(50))
    rows = await audit_since(store, mark)
    assert len(rows) == 50 and {r.desktop for r in rows} == {f"D{i}" for i in range(50)}

    target = desktops[0]
    mark = await audit_mark(store)
    done = await asyncio.gather(*(cases.catalog.assign(me, target.id, user_id=p.id)
                                  for p in people))
    assert {d.user.id for d in done if d.user} == {p.id for p in people}
    rows = await audit_since(store, mark)
    assert len(rows) == 50 and all(r.detail.endswith("(by root)") for r in rows)
    assert sorted(r.user or "" for r in rows) == sorted(p.name for p in people)
    view = await cases.catalog.desktop_view(target.id)
    assert sorted(view.users) == sorted(p.name for p in people)
    # Assigning again changes nothing but is still one row each.
    await asyncio.gather(*(cases.catalog.assign(me, target.id, user_id=p.id) for p in people))
    assert len((await cases.catalog.desktop_view(target.id)).users) == 50
