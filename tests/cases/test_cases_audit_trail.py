"""The audit trail as admins read it: filters, the chain's check, and refusals recorded."""

from __future__ import annotations

import asyncio

from casesupport import CLI, PASSWORD, audit_mark, audit_since

from gateway.app import Cases
from gateway.cases.actor import Actor


async def test_filters_verify_and_a_refusal(cases: Cases) -> None:
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    await cases.catalog.add_desktop(CLI, "VM", "local")
    trail = cases.audit_trail
    assert [e.detail for e in await trail.events(desktop="VM")] == [
        "desktop created (local, vnc) (by the command line)"]
    assert [e.user for e in await trail.events(kind="admin", user="alice")] == ["alice"]

    mark = await audit_mark(cases.store)
    await trail.refused(Actor.of(alice, "10.0.0.3"), "GET /admin/users")
    [row] = await audit_since(cases.store, mark)
    assert (row.kind, row.user, row.client_ip, row.detail) == (
        "admin.denied", "alice", "10.0.0.3", "GET /admin/users")
    assert await trail.verify() == (None, 3)


async def test_fifty_refusals_at_once_keep_the_chain(cases: Cases) -> None:
    alice, _ = await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    mark = await audit_mark(cases.store)
    await asyncio.gather(*(cases.audit_trail.refused(Actor.of(alice), f"GET /admin/{i}")
                           for i in range(50)))
    assert len(await audit_since(cases.store, mark)) == 50
    problem, checked = await cases.audit_trail.verify()
    assert problem is None and checked == 51
