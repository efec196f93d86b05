"""Access on the store: a person's desktops, and the check before a connect (a refusal is the
one audit row; a desktop that is not theirs and one that does not exist answer alike)."""

from __future__ import annotations

import asyncio

import pytest
from casesupport import CLI, PASSWORD, audit_mark, audit_since

from gateway.app import Cases
from gateway.errors import NotFound


async def test_a_person_reaches_their_desktops_only(cases: Cases) -> None:
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    mine = await cases.catalog.add_desktop(CLI, "Mine", "static", host="127.0.0.1", port=9)
    theirs = await cases.catalog.add_desktop(CLI, "Theirs", "static", host="127.0.0.1", port=9)
    await cases.catalog.assign(CLI, mine.id, user_id=alice.id)

    listed = await cases.access.desktops_for(alice)
    assert [(d.name, state) for d, state in listed] == [("Mine", "stopped")]  # nothing on :9
    mark = await audit_mark(cases.store)
    assert (await cases.access.check_access(alice, mine.id, "10.0.0.1")).id == mine.id
    assert await audit_since(cases.store, mark) == []  # allowed: nothing to record here

    for desktop_id, why in ((theirs.id, "not assigned"), (999, "no such desktop")):
        mark = await audit_mark(cases.store)
        with pytest.raises(NotFound) as refused:
            await cases.access.check_access(alice, desktop_id, "10.0.0.1")
        assert refused.value.reason == "no such desktop"  # the same answer for both
        [row] = await audit_since(cases.store, mark)
        assert (row.kind, row.user, row.client_ip, row.detail) == (
            "session.denied", "alice", "10.0.0.1", f"desktop {desktop_id}: {why}")


async def test_fifty_refusals_at_once_are_one_row_each(cases: Cases) -> None:
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    mark = await audit_mark(cases.store)
    results = await asyncio.gather(*(cases.access.check_access(alice, 1000 + i, "10.0.0.1")
                                     for i in range(50)), return_exceptions=True)
    assert all(isinstance(r, NotFound) for r in results)
    rows = await audit_since(cases.store, mark)
    assert sorted(r.detail for r in rows) == sorted(f"desktop {1000 + i}: no such desktop"
                                                    for i in range(50))
