"""The Store contract for desktop VMs: bundles, a desktop's VM, its runs, start times and use."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import Conflict, NotFound
from gateway.model import ALWAYS_ON, AUTO_STOP, Bundle, Desktop, DesktopVm, Session, SessionState
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite import SQLiteStore

SMALL = Bundle(0, "small", 2, 2048, 10_240, 5_120, "/var/lib/deskgate/base.qcow2", "console",
               hourly_rate=0.25, monthly_rate=40.0, self_service=("mode", "restart"),
               kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="console=ttyS0")


def _vm(bundle: Bundle, **changes: object) -> DesktopVm:
    vm = DesktopVm(0, bundle, "local", "stopped", "", 10.0)
    return dataclasses.replace(vm, **changes)  # type: ignore[arg-type]


async def _vm_desktop(store: SQLiteStore, name: str = "vm1", bundle: Bundle | None = None,
                      **changes: object) -> Desktop:
    if bundle is None:
        bundle = await store.get_bundle_by_name("small") or await store.create_bundle(SMALL)
    return await store.create_desktop_vm(name, _vm(bundle, **changes))


async def _count(store: SQLiteStore, table: str) -> int:
    return int((await store._one(f"SELECT COUNT(*) FROM {table}"))[0])  # noqa: S608


# bundles --------------------------------------------------------------------------------------
async def test_bundles_round_trip_and_are_unique_by_name(store: SQLiteStore) -> None:
    small = await store.create_bundle(dataclasses.replace(SMALL, id=999))
    assert small.id != 999 and small == dataclasses.replace(SMALL, id=small.id)
    large = await store.create_bundle(Bundle(0, "large", 8, 16_384, 40_960, 20_480, "/b.qcow2"))
    assert large.self_service == () and (large.protocol, large.kernel) == ("console", "")
    assert await store.get_bundle(small.id) == small
    assert await store.get_bundle_by_name("large") == large
    assert await store.get_bundle(12345) is None and await store.get_bundle_by_name("x") is None
    assert [b.name for b in await store.list_bundles()] == ["large", "small"]

    with pytest.raises(Conflict, match="bundle 'small' already exists"):
        await store.create_bundle(dataclasses.replace(SMALL, vcpus=4))
    assert await store.list_bundles() == [large, small]  # nothing half written

    changed = Bundle(small.id, "medium", 4, 4096, 20_480, 10_240, "/other.qcow2", "rdp", 0.5,
                     80.0, ("rebuild", "restart"), "", "", "")
    await store.update_bundle(changed)
    assert await store.get_bundle(small.id) == changed
    with pytest.raises(Conflict, match="bundle 'large' already exists"):
        await store.update_bundle(dataclasses.replace(changed, name="large", vcpus=1))
    assert await store.get_bundle(small.id) == changed


async def test_a_bundle_in_use_cannot_be_deleted(store: SQLiteStore) -> None:
    small = await store.create_bundle(SMALL)
    spare = await store.create_bundle(dataclasses.replace(SMALL, name="spare"))
    one = await _vm_desktop(store, "one", small)
    assert await store.bundle_use_count(small.id) == 1
    with pytest.raises(Conflict, match="bundle 'small' is used by 1 desktop$"):
        await store.delete_bundle(small.id)
    await _vm_desktop(store, "two", small)
    assert await store.bundle_use_count(small.id) == 2
    with pytest.raises(Conflict, match="bundle 'small' is used by 2 desktops"):
        await store.delete_bundle(small.id)
    assert await store.get_bundle(small.id) == small
    assert [d.name for d in await store.list_desktop_vms()] == ["one", "two"]

    assert await store.bundle_use_count(spare.id) == 0
    assert await store.delete_bundle(spare.id)
    assert not await store.delete_bundle(spare.id)
    assert await store.get_bundle(spare.id) is None

    assert await store.delete_desktop(one.id)
    d2 = await store.get_desktop_by_name("two")
    assert d2 is not None and await store.delete_desktop(d2.id)
    assert await store.bundle_use_count(small.id) == 0
    assert await store.delete_bundle(small.id)
    assert await store.list_bundles() == []


# desktop VMs ----------------------------------------------------------------------------------
async def test_a_desktop_vm_round_trips_and_desktop_reads_carry_it(store: SQLiteStore) -> None:
    bundle = await store.create_bundle(SMALL)
    user = await store.create_user("ann", None, False)
    plain = await store.create_desktop("plain", "static", "10.0.0.9", 5901, None)
    assert plain.vm is None
    vm = DesktopVm(4242, bundle, "rack-1", "stopped", "created", 12.5, ALWAYS_ON, 0, ("mode",))
    desk = await store.create_desktop_vm("vm1", vm, protocol="rdp", host="10.0.0.5", port=3389,
                                         password_enc="enc", options={"security": "nla"})
    assert (desk.name, desk.provider, desk.host, desk.port, desk.protocol, desk.has_password,
            desk.maintenance, desk.options) == (
        "vm1", "libvirt", "10.0.0.5", 3389, "rdp", True, False, (("security", "nla"),))
    assert desk.vm == dataclasses.replace(vm, desktop_id=desk.id)
    assert desk.vm is not None and desk.vm.self_service == ("mode",)
    assert await store.get_desktop_password(desk.id) == "enc"
    assert await store.get_desktop(desk.id) == desk
    assert await store.get_desktop_by_name("vm1") == desk

    # Defaults: the console on no address, the bundle's self-service policy.
    console = await store.create_desktop_vm("vm0", DesktopVm(0, bundle, "local", "defining"))
    assert (console.host, console.port, console.protocol, console.has_password,
            console.options) == ("", 0, "vnc", False, ())
    assert console.vm is not None and (console.vm.mode, console.vm.auto_stop_seconds,
                                       console.vm.own_self_service, console.vm.self_service) == (
        AUTO_STOP, 3600, None, ("mode", "restart"))

    assert [(d.name, d.vm is not None) for d in await store.list_desktops()] == [
        ("plain", False), ("vm0", True), ("vm1", True)]
    assert await store.list_desktop_vms() == [console, desk]
    await store.assign(desk.id, user.id)
    await store.assign_group(plain.id, "staff")
    await store.set_user_groups(user.id, ["staff"])
    assert await store.desktops_for_user(user.id) == [plain, desk]

    # Desktop changes leave the VM as it is; a bundle change shows on its desktops.
    await store.update_desktop(desk.id, name="vm-one", host="10.0.0.6", port=3390,
                               maintenance=True)
    renamed = await store.get_desktop(desk.id)
    assert renamed is not None and renamed.vm == desk.vm and renamed.maintenance
    await store.update_bundle(dataclasses.replace(bundle, vcpus=6))
    again = await store.get_desktop(desk.id)
    assert again is not None and again.vm is not None and again.vm.bundle.vcpus == 6


async def test_a_taken_desktop_name_writes_nothing(store: SQLiteStore) -> None:
    bundle = await store.create_bundle(SMALL)
    await store.create_desktop("taken", "static", "h", 1, None)
    with pytest.raises(Conflict, match="desktop 'taken' already exists"):
        await store.create_desktop_vm("taken", _vm(bundle))
    first = await _vm_desktop(store, "vm1", bundle)
    with pytest.raises(Conflict, match="desktop 'vm1' already exists"):
        await store.create_desktop_vm("vm1", _vm(bundle, hypervisor="other"))
    assert (await _count(store, "desktops"), await _count(store, "desktop_vms")) == (2, 1)
    assert await store.get_desktop(first.id) == first
    # A bundle that is gone: neither the desktop nor its VM is written.
    gone = dataclasses.replace(bundle, id=bundle.id + 100)
    with pytest.raises(NotFound):
        await store.create_desktop_vm("vm2", _vm(gone))
    assert await store.get_desktop_by_name("vm2") is None
    assert (await _count(store, "desktops"), await _count(store, "desktop_vms")) == (2, 1)


async def test_vm_state_moves_by_compare_and_set(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    assert await store.move_vm_state(desk.id, ("stopped", "error"), "starting", "asked", 20.0)
    moved = await store.get_desktop(desk.id)
    assert moved is not None and moved.vm is not None
    assert (moved.vm.state, moved.vm.reason, moved.vm.since) == ("starting", "asked", 20.0)
    # Not from an unexpected state, nor from none, nor for a desktop without a VM.
    assert not await store.move_vm_state(desk.id, ("stopped",), "starting", "again", 21.0)
    assert not await store.move_vm_state(desk.id, (), "running", "", 21.0)
    plain = await store.create_desktop("plain", "static", "h", 1, None)
    assert not await store.move_vm_state(plain.id, ("stopped",), "starting", "", 21.0)
    same = await store.get_desktop(desk.id)
    assert same is not None and same.vm == moved.vm
    assert await store.move_vm_state(desk.id, {"starting"}, "running", "", 22.0)


async def test_of_many_concurrent_moves_from_one_state_exactly_one_wins(
        store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    results = await asyncio.gather(*(
        store.move_vm_state(desk.id, ("stopped",), "starting", f"request {i}", 30.0 + i)
        for i in range(50)))
    assert results.count(True) == 1
    winner = results.index(True)
    after = await store.get_desktop(desk.id)
    assert after is not None and after.vm is not None
    assert (after.vm.state, after.vm.reason, after.vm.since) == (
        "starting", f"request {winner}", 30.0 + winner)


async def test_concurrent_moves_across_connections_let_one_win(store: SQLiteStore) -> None:
    """Two stores on one database file stand for two gateway processes."""
    desk = await _vm_desktop(store)
    other = SQLiteStore(store.path)
    await other.open()
    try:
        results = await asyncio.gather(*(
            s.move_vm_state(desk.id, ("stopped",), "starting", "", 1.0)
            for _ in range(25) for s in (store, other)))
        assert results.count(True) == 1
        opened = await asyncio.gather(*(s.open_vm_run(desk.id, "vm1", 1.0, AUTO_STOP, 0.1, 0.0)
                                        for _ in range(15) for s in (store, other)))
        assert opened.count(True) == 1
    finally:
        await other.close()


async def test_mode_and_self_service_policy(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    await store.set_vm_mode(desk.id, ALWAYS_ON, 0)
    d = await store.get_desktop(desk.id)
    assert d is not None and d.vm is not None and (d.vm.mode, d.vm.auto_stop_seconds) == (
        ALWAYS_ON, 0)
    await store.set_vm_mode(desk.id, AUTO_STOP, 900)
    # None: the bundle's policy; (): nothing at all; a policy is kept sorted.
    for policy, own, effective in ((None, None, ("mode", "restart")), ((), (), ()),
                                   (("restart", "rebuild"), ("rebuild", "restart"),
                                    ("rebuild", "restart")),
                                   (("mode",), ("mode",), ("mode",)),
                                   (None, None, ("mode", "restart"))):
        await store.set_vm_self_service(desk.id, policy)
        d = await store.get_desktop(desk.id)
        assert d is not None and d.vm is not None
        assert (d.vm.mode, d.vm.auto_stop_seconds) == (AUTO_STOP, 900)
        assert d.vm.own_self_service == own and d.vm.self_service == effective
    # A bundle's policy round-trips the same way ('' is nothing).
    bundle = d.vm.bundle
    await store.update_bundle(dataclasses.replace(bundle, self_service=()))
    assert (await store.get_bundle(bundle.id)).self_service == ()  # type: ignore[union-attr]
    await store.update_bundle(dataclasses.replace(bundle, self_service=("restart",)))
    assert (await store.get_bundle(bundle.id)).self_service == (  # type: ignore[union-attr]
        "restart",)
    with pytest.raises(ValueError, match="self-service"):
        await store.set_vm_self_service(desk.id, ("mode,restart",))


async def test_deleting_a_desktop_removes_its_vm_but_keeps_its_usage(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    assert await store.open_vm_run(desk.id, "vm1", 100.0, AUTO_STOP, 0.25, 40.0)
    assert await store.close_vm_run(desk.id, 160.0)
    assert await store.open_vm_run(desk.id, "vm1", 200.0, AUTO_STOP, 0.25, 40.0)
    await store.record_vm_start(desk.id, 100.0, 12.5)
    assert await store.delete_desktop(desk.id)
    assert await store.get_desktop(desk.id) is None and await store.list_desktop_vms() == []
    assert await _count(store, "desktop_vms") == 0
    assert [(r.started_at, r.ended_at, r.desktop_name) for r in await store.vm_runs(0, 1000)] == [
        (100.0, 160.0, "vm1"), (200.0, None, "vm1")]
    assert await store.vm_start_seconds(desk.id) == [12.5]
    assert await store.close_vm_run(desk.id, 300.0)  # its last run can still be closed


# usage ----------------------------------------------------------------------------------------
async def test_runs_open_once_and_close(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    assert not await store.close_vm_run(desk.id, 5.0)  # none open
    assert await store.open_vm_run(desk.id, "vm1", 10.0, AUTO_STOP, 0.25, 40.0)
    assert not await store.open_vm_run(desk.id, "vm1", 11.0, ALWAYS_ON, 1.0, 1.0)
    runs = await store.vm_runs(0.0, 100.0)
    assert [(r.desktop_id, r.desktop_name, r.started_at, r.ended_at, r.mode, r.hourly_rate,
             r.monthly_rate) for r in runs] == [(desk.id, "vm1", 10.0, None, AUTO_STOP, 0.25, 40.0)]
    assert await store.close_vm_run(desk.id, 20.0)
    assert not await store.close_vm_run(desk.id, 21.0)
    assert await store.open_vm_run(desk.id, "vm1", 30.0, ALWAYS_ON, 0.5, 80.0)
    assert [(r.started_at, r.ended_at, r.mode) for r in await store.vm_runs(0.0, 100.0)] == [
        (10.0, 20.0, AUTO_STOP), (30.0, None, ALWAYS_ON)]


async def test_of_many_concurrent_run_openers_one_opens(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    other = await _vm_desktop(store, "vm2")
    results = await asyncio.gather(*(store.open_vm_run(desk.id, "vm1", 10.0 + i, AUTO_STOP, 0.25,
                                                       40.0) for i in range(30)))
    assert results.count(True) == 1
    assert await store.open_vm_run(other.id, "vm2", 10.0, AUTO_STOP, 0.25, 40.0)  # its own run
    assert len(await store.vm_runs(0.0, 1000.0, desk.id)) == 1
    assert await _count(store, "vm_runs WHERE ended_at IS NULL") == 2


async def test_runs_overlapping_a_window(store: SQLiteStore) -> None:
    """[since, until) is half open: a run that ends when it begins, or begins when it ends, is
    outside it; an open run overlaps every window from its start on."""
    a = await _vm_desktop(store, "a")
    b = await _vm_desktop(store, "b")
    for did, start, end in ((a.id, 0.0, 100.0), (a.id, 100.0, 200.0), (a.id, 250.0, 260.0),
                            (b.id, 50.0, 300.0)):
        assert await store.open_vm_run(did, "x", start, AUTO_STOP, 0.0, 0.0)
        assert await store.close_vm_run(did, end)
    assert await store.open_vm_run(a.id, "a", 400.0, AUTO_STOP, 0.0, 0.0)

    async def starts(since: float, until: float, desktop_id: int | None = None) -> list[float]:
        return [r.started_at for r in await store.vm_runs(since, until, desktop_id)]

    assert await starts(100.0, 200.0) == [50.0, 100.0]  # ends at since: out; starts at since: in
    assert await starts(200.0, 250.0) == [50.0]  # ends at since, starts at until: both out
    assert await starts(99.0, 101.0) == [0.0, 50.0, 100.0]
    assert await starts(0.0, 1000.0, a.id) == [0.0, 100.0, 250.0, 400.0]
    assert await starts(0.0, 1000.0, b.id) == [50.0]
    assert await starts(300.0, 400.0) == []  # the open run starts at until
    assert await starts(10_000.0, 20_000.0) == [400.0]  # open: runs on
    assert await starts(120.0, 130.0, a.id) == [100.0]  # the window inside a run
    assert await starts(-10.0, 0.0) == []


async def test_start_times_newest_first(store: SQLiteStore) -> None:
    desk = await _vm_desktop(store)
    other = await _vm_desktop(store, "vm2")
    assert await store.vm_start_seconds(desk.id) == []
    for i in range(12):
        await store.record_vm_start(desk.id, 100.0 + i, float(i))
    await store.record_vm_start(other.id, 500.0, 99.0)
    assert await store.vm_start_seconds(desk.id) == [float(i) for i in range(11, 1, -1)]
    assert await store.vm_start_seconds(desk.id, limit=3) == [11.0, 10.0, 9.0]
    assert await store.vm_start_seconds(other.id) == [99.0]


async def _session(store: SQLiteStore, sid: str, user_id: int, desktop_id: int,
                   state: SessionState, started: float, ended: float | None = None) -> None:
    await store.create_session(Session(sid, user_id, desktop_id, "ws", state, started, ended))


async def test_last_use_counts_live_sessions_and_the_last_closed_one(store: SQLiteStore) -> None:
    user = await store.create_user("ann", None, False)
    desk = await _vm_desktop(store)
    other = await _vm_desktop(store, "vm2")
    assert await store.desktop_last_use(desk.id) == (0, None)
    await _session(store, "c1", user.id, desk.id, SessionState.CLOSED, 10.0, 50.0)
    await _session(store, "c2", user.id, desk.id, SessionState.CLOSED, 20.0, 40.0)
    await _session(store, "f1", user.id, desk.id, SessionState.FAILED, 60.0, 70.0)  # never used
    await _session(store, "o1", user.id, other.id, SessionState.CLOSED, 10.0, 90.0)
    assert await store.desktop_last_use(desk.id) == (0, 50.0)
    await _session(store, "s1", user.id, desk.id, SessionState.STARTING, 80.0)
    await _session(store, "a1", user.id, desk.id, SessionState.ACTIVE, 81.0)
    assert await store.desktop_last_use(desk.id) == (2, 50.0)
    assert await store.close_session("a1", 95.0, "done", False, 0, 0)
    assert await store.fail_session("s1", 96.0, "unreachable", False) == 1
    assert await store.desktop_last_use(desk.id) == (0, 95.0)
    assert await store.desktop_last_use(other.id) == (0, 90.0)


async def test_connected_intervals_leave_out_attempts_that_never_connected(
        store: SQLiteStore) -> None:
    ann = await store.create_user("ann", None, False)
    bob = await store.create_user("bob", None, False)
    desk = await _vm_desktop(store)
    other = await _vm_desktop(store, "vm2")
    await _session(store, "c1", ann.id, desk.id, SessionState.CLOSED, 10.0, 20.0)
    await _session(store, "f1", ann.id, desk.id, SessionState.FAILED, 15.0, 16.0)
    await _session(store, "s1", bob.id, desk.id, SessionState.STARTING, 30.0)
    await _session(store, "a1", bob.id, desk.id, SessionState.ACTIVE, 40.0)
    await _session(store, "c2", bob.id, other.id, SessionState.CLOSED, 5.0, 25.0)
    assert await store.connected_intervals(0.0, 100.0) == [
        (other.id, bob.id, 5.0, 25.0), (desk.id, ann.id, 10.0, 20.0), (desk.id, bob.id, 40.0, None)]
    assert await store.connected_intervals(0.0, 100.0, desktop_id=desk.id) == [
        (desk.id, ann.id, 10.0, 20.0), (desk.id, bob.id, 40.0, None)]
    assert await store.connected_intervals(0.0, 100.0, user_id=bob.id, desktop_id=desk.id) == [
        (desk.id, bob.id, 40.0, None)]
    assert await store.connected_intervals(0.0, 100.0, user_id=ann.id) == [
        (desk.id, ann.id, 10.0, 20.0)]
    # Half open, like runs: ended at since or started at until is outside.
    assert await store.connected_intervals(20.0, 40.0) == [(other.id, bob.id, 5.0, 25.0)]
    assert await store.connected_intervals(25.0, 40.0) == []
    assert await store.connected_intervals(1000.0, 2000.0) == [(desk.id, bob.id, 40.0, None)]


# migration ------------------------------------------------------------------------------------
async def test_a_database_at_schema_10_gets_the_vm_tables_and_keeps_its_data(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for steps in MIGRATIONS[:10]:
        for sql in steps:
            db.execute(sql)
    db.execute("INSERT INTO schema_version VALUES (10)")
    db.execute("INSERT INTO users (id, name, created_at) VALUES (1, 'ann', 1.0)")
    db.execute("INSERT INTO desktops (id, name, provider, host, port, created_at, options)"
               " VALUES (1, 'office', 'static', '10.0.0.1', 5900, 1.0, '{\"k\": \"v\"}')")
    db.execute("INSERT INTO desktops (id, name, provider, created_at) VALUES (2, 'demo', 'local',"
               " 1.0)")
    db.execute("INSERT INTO assignments (desktop_id, user_id) VALUES (1, 1)")
    db.execute("INSERT INTO sessions (id, user_id, desktop_id, web_session_id, state, started_at,"
               " ended_at) VALUES ('s1', 1, 1, 'ws', 'closed', 10.0, 20.0)")
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.schema_version() == len(MIGRATIONS) >= 11
        desktops = await store.list_desktops()
        assert [(d.id, d.name, d.provider, d.host, d.port, d.options, d.vm) for d in desktops] == [
            (2, "demo", "local", "", 0, (), None), (1, "office", "static", "10.0.0.1", 5900,
                                                    (("k", "v"),), None)]
        assert [d.name for d in await store.desktops_for_user(1)] == ["office"]
        assert await store.list_bundles() == [] and await store.list_desktop_vms() == []
        session = await store.get_session("s1")
        assert session is not None and (session.state, session.ended_at) == (
            SessionState.CLOSED, 20.0)
        assert await store.desktop_last_use(1) == (0, 20.0)
        assert await store.connected_intervals(0.0, 100.0) == [(1, 1, 10.0, 20.0)]
        # And the new tables work on it.
        bundle = await store.create_bundle(SMALL)
        vm = await store.create_desktop_vm("vm1", _vm(bundle))
        assert vm.vm is not None and vm.vm.bundle == bundle
    finally:
        await store.close()
