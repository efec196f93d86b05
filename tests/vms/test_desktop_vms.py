"""Desktop VMs as the use cases run them, on a real store and a real libvirtd + QEMU: made from a
bundle, started on connect (once, however many connect at the same minute), stopped by AutoStop,
started again by AlwaysOn, rebuilt and deleted with a typed confirmation, self-service allowed and
refused by policy, drift behind Deskgate's back, and an unreachable hypervisor."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import libvirt
import pytest
import pytest_asyncio
from hypervisor import BANNER, GuestImage, guest_image, hypervisor

from gateway.app import Cases, build_cases
from gateway.cases.actor import Actor
from gateway.cases.vms import VmUnavailable
from gateway.config import HypervisorConfig, Settings
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.model import ALWAYS_ON, Bundle, Desktop, Session, SessionState
from gateway.providers.libvirt.domain import domain_name
from gateway.store.sqlite import SQLiteStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

CMDLINE = "console=tty0 console=ttyS0 quiet"
ADMIN = Actor.cli()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    async with hypervisor() as found:
        yield found


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return guest_image()


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="deskgate-vms-") as tmp:
        Path(tmp).chmod(0o711)  # the qemu user passes through to the disks and screen sockets
        yield Path(tmp)


def vm_settings(settings: Settings, folder: Path, uri: str, **changes: object) -> Settings:
    hypervisors = (HypervisorConfig("default", uri, "qemu", str(folder / "disks"),
                                    str(folder / "screens")),
                   # a hypervisor whose libvirtd is not there: what "libvirtd stopped" looks like
                   HypervisorConfig("gone", "qemu+unix:///system?socket=/nonexistent/sock",
                                    "qemu", str(folder / "gone-disks"),
                                    str(folder / "gone-screens")))
    values: dict[str, object] = {"hypervisors": hypervisors, "vm_stop_timeout_seconds": 1.0,
                                 "vm_start_timeout_seconds": 40.0,
                                 "vm_reconcile_seconds": 3600.0, **changes}
    return dataclasses.replace(settings, **values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="module")
async def vms(settings: Settings, folder: Path, uri: str) -> AsyncIterator[Cases]:
    store = SQLiteStore(settings.database_path)
    await store.open()
    cases = build_cases(vm_settings(settings, folder, uri), store)
    try:
        yield cases
    finally:
        await cases.vms.close()
        for d in await store.list_desktop_vms():  # nothing left on the hypervisor
            if d.vm is not None and d.vm.hypervisor == "default":
                await cases.providers.get("libvirt").delete(  # type: ignore[attr-defined]
                    cases.vms._spec(d))
        await cases.providers.close()
        await store.close()


async def make_bundle(cases: Cases, image: GuestImage, **changes: object) -> Bundle:
    values: dict[str, object] = {
        "id": 0, "name": "tiny", "vcpus": 1, "memory_mib": 128, "root_mib": 32, "user_mib": 16,
        "base_image": str(image.base), "kernel": str(image.kernel), "initrd": str(image.initrd),
        "cmdline": CMDLINE, "hourly_rate": 0.5, "monthly_rate": 30.0, **changes}
    return await cases.bundles.create(ADMIN, Bundle(**values))  # type: ignore[arg-type]


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.2)


async def state_of(cases: Cases, desktop: Desktop) -> str:
    d = await cases.vms.desktop(desktop.id)
    assert d.vm is not None
    return d.vm.state


def domain_state(uri: str, desktop_id: int) -> int | None:
    conn = libvirt.open(uri)
    try:
        return int(conn.lookupByName(domain_name(desktop_id)).state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def test_many_connects_at_the_same_minute_start_a_stopped_vm_once(
        vms: Cases, image: GuestImage, uri: str) -> None:
    bundle = await make_bundle(vms, image, ready_text=BANNER)  # a start waits for the guest
    desktop = await vms.vms.create(ADMIN, "vm-one", bundle)
    assert await state_of(vms, desktop) == "stopped"
    assert domain_state(uri, desktop.id) == libvirt.VIR_DOMAIN_SHUTOFF

    # The stage each provider step runs in, as the client page's progress would show it.
    stages: list[str | None] = []
    provider = vms.providers.get("libvirt")
    for step in ("start", "wait_screen"):
        real = getattr(provider, step)

        async def seen(*args: object, _real: Callable[..., Awaitable[None]] = real) -> None:
            progress = vms.vms.progress(desktop.id)
            stages.append(progress.stage if progress else None)
            await _real(*args)

        setattr(provider, step, seen)
    fresh = await vms.vms.desktop(desktop.id)
    try:
        await asyncio.gather(*(vms.vms.ready(fresh) for _ in range(12)))
    finally:
        for step in ("start", "wait_screen"):
            delattr(provider, step)
    assert await state_of(vms, desktop) == "running"
    assert domain_state(uri, desktop.id) == libvirt.VIR_DOMAIN_RUNNING
    assert stages == ["starting", "screen"]  # once each: one start for twelve connects
    assert len(await vms.store.vm_start_seconds(desktop.id)) == 1  # started once
    assert await vms.vms.estimate(desktop.id) is not None
    runs = await vms.store.vm_runs(0, time.time() + 1, desktop.id)
    assert [(r.ended_at, r.mode) for r in runs] == [(None, "auto_stop")]
    # Running already: ready at once, nothing started again.
    await vms.vms.ready(await vms.vms.desktop(desktop.id))
    assert len(await vms.store.vm_start_seconds(desktop.id)) == 1


async def test_auto_stop_stops_the_vm_after_its_last_session_and_the_next_connect_starts_it(
        vms: Cases, image: GuestImage, uri: str) -> None:
    bundle = await make_bundle(vms, image)
    desktop = await vms.vms.create(ADMIN, "vm-auto", bundle, auto_stop_seconds=2)
    await vms.vms.ready(await vms.vms.desktop(desktop.id))
    user = await vms.store.create_user("alice", None, False)
    session = Session("s-auto", user.id, desktop.id, "ws", SessionState.ACTIVE, time.time())
    await vms.store.create_session(session)
    vms.providers.connected(desktop.id, session.id)
    await asyncio.sleep(3)  # longer than its AutoStop time, but a session is open
    await vms.vms.reconcile()
    assert await state_of(vms, desktop) == "running"
    await vms.store.close_session(session.id, time.time(), "closed", False, 0, 0)
    vms.providers.disconnected(desktop.id, session.id)  # the last session ended
    await until(lambda: _is(vms, desktop, "stopped"), 20)
    await until(lambda: _off(uri, desktop.id), 5)  # libvirt's own end of the power-off
    run, = await vms.store.vm_runs(0, time.time() + 1, desktop.id)
    assert run.ended_at is not None
    trail = [e.detail for e in await vms.store.list_audit(desktop="vm-auto")]
    assert any("stopped by its running mode (AutoStop)" in line for line in trail)
    await vms.vms.ready(await vms.vms.desktop(desktop.id))  # the next connect
    assert await state_of(vms, desktop) == "running"


async def _off(uri: str, desktop_id: int) -> bool:
    return domain_state(uri, desktop_id) == libvirt.VIR_DOMAIN_SHUTOFF


async def _is(cases: Cases, desktop: Desktop, state: str) -> bool:
    return await state_of(cases, desktop) == state


async def test_always_on_is_started_again_when_it_stops(
        vms: Cases, image: GuestImage, uri: str) -> None:
    bundle = await make_bundle(vms, image)
    desktop = await vms.vms.create(ADMIN, "vm-always", bundle, mode=ALWAYS_ON)
    await until(lambda: _is(vms, desktop, "running"), 40)
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(domain_name(desktop.id)).destroy()  # stopped behind its back
    finally:
        conn.close()
    await vms.vms.reconcile()
    trail = [e.detail for e in await vms.store.list_audit(desktop="vm-always")]
    assert any("running -> stopped" in line for line in trail)
    await until(lambda: _is(vms, desktop, "running"), 40)
    run_modes = {r.mode for r in await vms.store.vm_runs(0, time.time() + 1, desktop.id)}
    assert run_modes == {"always_on"}


async def test_drift_behind_deskgates_back_shows_in_the_state_with_the_reason(
        vms: Cases, image: GuestImage, uri: str) -> None:
    bundle = await make_bundle(vms, image)
    desktop = await vms.vms.create(ADMIN, "vm-drift", bundle)
    await vms.vms.ready(await vms.vms.desktop(desktop.id))
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(domain_name(desktop.id)).destroy()
        await vms.vms.reconcile()
        d = await vms.vms.desktop(desktop.id)
        assert d.vm is not None
        assert (d.vm.state, d.vm.reason) == ("stopped", "the VM stopped outside Deskgate")
        conn.lookupByName(domain_name(desktop.id)).undefine()
    finally:
        conn.close()
    await vms.vms.reconcile()
    d = await vms.vms.desktop(desktop.id)
    assert d.vm is not None
    assert (d.vm.state, d.vm.reason) == ("error", "the VM was deleted outside Deskgate")
    # Starting it again defines it again: the hypervisor's truth is put right by an action.
    await vms.vms.power(ADMIN, desktop.id, "start")
    assert await state_of(vms, desktop) == "running"


async def test_rebuild_and_delete_need_the_typed_name_and_delete_removes_everything(
        vms: Cases, image: GuestImage, uri: str, folder: Path) -> None:
    bundle = await make_bundle(vms, image)
    desktop = await vms.vms.create(ADMIN, "vm-rebuild", bundle)
    with pytest.raises(BadRequest, match="type its name"):
        await vms.vms.power(ADMIN, desktop.id, "rebuild", confirm="vm-rebuil")
    d = await vms.vms.power(ADMIN, desktop.id, "rebuild", confirm="vm-rebuild")
    assert d.vm is not None and d.vm.state == "stopped"
    with pytest.raises(BadRequest, match="type its name"):
        await vms.vms.power(ADMIN, desktop.id, "delete")
    await vms.vms.power(ADMIN, desktop.id, "delete", confirm="vm-rebuild")
    assert await vms.store.get_desktop(desktop.id) is None
    assert domain_state(uri, desktop.id) is None
    assert not (folder / "disks" / str(desktop.id)).exists()
    trail = [e.detail for e in await vms.store.list_audit(desktop="vm-rebuild")]
    assert any("rebuild asked (by the command line)" in line for line in trail)
    assert any("deleted with its volumes" in line for line in trail)


async def test_an_action_the_state_does_not_allow_is_a_conflict(
        vms: Cases, image: GuestImage) -> None:
    bundle = await make_bundle(vms, image)
    desktop = await vms.vms.create(ADMIN, "vm-conflict", bundle)
    with pytest.raises(Conflict, match="cannot reboot a VM that is stopped"):
        await vms.vms.power(ADMIN, desktop.id, "reboot")
    with pytest.raises(BadRequest, match="power actions are"):
        await vms.vms.power(ADMIN, desktop.id, "explode")


async def test_self_service_follows_the_policy_and_every_action_is_audited(
        vms: Cases, image: GuestImage) -> None:
    bundle = await make_bundle(vms, image, self_service=("restart",))
    desktop = await vms.vms.create(ADMIN, "vm-self", bundle)
    alice = await vms.store.create_user("alice", None, False)
    bob = await vms.store.create_user("bob", None, False)
    await vms.store.assign(desktop.id, alice.id)
    me, stranger = Actor.of(alice, "10.0.0.7"), Actor.of(bob, "10.0.0.8")
    await vms.vms.ready(await vms.vms.desktop(desktop.id))

    with pytest.raises(NotFound):  # not theirs: the same answer as no desktop at all
        await vms.vms.power(stranger, desktop.id, "restart")
    with pytest.raises(Forbidden, match="rebuild"):
        await vms.vms.power(me, desktop.id, "rebuild", confirm="vm-self")
    with pytest.raises(Forbidden, match="running mode"):
        await vms.vms.set_mode(me, desktop.id, ALWAYS_ON)
    with pytest.raises(Forbidden):
        await vms.vms.power(me, desktop.id, "stop")  # not a self-service action at all
    d = await vms.vms.power(me, desktop.id, "restart")
    assert d.vm is not None and d.vm.state == "running"

    await vms.vms.set_self_service(ADMIN, desktop.id, ("mode", "rebuild"))
    await vms.vms.set_mode(me, desktop.id, ALWAYS_ON)
    with pytest.raises(Forbidden):
        await vms.vms.power(me, desktop.id, "restart")  # the desktop's own policy now

    rows = await vms.store.list_audit(desktop="vm-self")
    lines = [(e.kind, e.user, e.client_ip, e.detail) for e in rows]
    assert ("vm", "alice", "10.0.0.7", "desktop VM reboot asked (by alice)") in lines
    assert ("vm", "alice", "10.0.0.7", "running mode set: AlwaysOn (by alice)") in lines
    refused = [line for line in lines if line[0] == "admin.denied"]
    assert [r[1] for r in refused] == ["alice"] * 4  # rebuild, mode, stop, then restart


async def test_an_unreachable_hypervisor_is_a_clear_error_and_others_keep_working(
        vms: Cases, image: GuestImage) -> None:
    bundle = await make_bundle(vms, image)
    lost = await vms.vms.create(ADMIN, "vm-lost", bundle, hypervisor="gone")
    assert lost.vm is not None and lost.vm.state == "error"
    assert "nonexistent" in lost.vm.reason  # libvirt's own words, for the admin
    fine = await vms.vms.create(ADMIN, "vm-fine", bundle)
    await vms.vms.reconcile()
    problem = vms.vms.hypervisor_problem("gone")
    assert problem is not None and "nonexistent" in problem
    with pytest.raises(VmUnavailable, match="cannot be reached"):
        await vms.vms.ready(await vms.vms.desktop(lost.id))
    await vms.vms.ready(await vms.vms.desktop(fine.id))
    assert await state_of(vms, fine) == "running"


async def test_a_start_that_fails_says_why_to_the_admin_and_is_final_for_the_person(
        vms: Cases, image: GuestImage) -> None:
    bundle = await make_bundle(vms, image, memory_mib=64, kernel="/nonexistent/vmlinuz",
                               initrd="/nonexistent/initrd")
    desktop = await vms.vms.create(ADMIN, "vm-broken", bundle)
    with pytest.raises(VmUnavailable) as raised:
        await vms.vms.ready(await vms.vms.desktop(desktop.id))
    assert raised.value.final
    assert "administrator" in raised.value.reason
    d = await vms.vms.desktop(desktop.id)
    assert d.vm is not None and d.vm.state == "error"
    assert "/nonexistent/vmlinuz" in d.vm.reason


async def test_a_stop_asked_while_the_vm_starts_runs_after_the_start_and_stops_it(
        vms: Cases, image: GuestImage, uri: str) -> None:
    bundle = await make_bundle(vms, image, ready_text=BANNER)  # its start takes a boot
    desktop = await vms.vms.create(ADMIN, "vm-start-stop", bundle)
    starting = asyncio.create_task(vms.vms.power(ADMIN, desktop.id, "start"))
    await until(lambda: _is(vms, desktop, "starting"), 10)
    stopped = await vms.vms.power(ADMIN, desktop.id, "stop")  # allowed from starting
    assert stopped.vm is not None and stopped.vm.state == "stopped"
    await starting
    assert await state_of(vms, desktop) == "stopped"
    await until(lambda: _off(uri, desktop.id), 5)
    assert await vms.store.vm_runs(0, time.time() + 1, desktop.id) == [] or all(
        r.ended_at is not None for r in await vms.store.vm_runs(0, time.time() + 1, desktop.id))
