"""The libvirt provider against a real libvirtd and QEMU: a desktop VM made, started, its
console reached, stopped, rebuilt and deleted; what libvirt is seen to do behind its back; an
unreachable or hung libvirtd; domains that are not Deskgate's left alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import libvirt
import pytest
import pytest_asyncio
from hypervisor import (
    BANNER,
    BASE_MARKER,
    ROOT_FILE,
    SOCKET,
    USER_FILE,
    GuestImage,
    guest_image,
    hypervisor,
)

from gateway.config import HypervisorConfig
from gateway.errors import ConfigError, DesktopUnavailable
from gateway.model import Bundle, DesktopVm
from gateway.probe import probe_rfb
from gateway.providers import make_provider
from gateway.providers.base import DesktopSpec, ProviderContext
from gateway.providers.libvirt.hypervisor import (
    MISSING,
    Hypervisor,
    HypervisorError,
    HypervisorUnreachable,
    Observation,
    describe,
)
from gateway.providers.libvirt.lifecycle import Seen
from gateway.providers.libvirt.provider import LibvirtProvider

pytestmark = pytest.mark.asyncio(loop_scope="module")

QEMU_USER = "libvirt-qemu"
HV = "test"
CMDLINE = "console=tty0 console=ttyS0 quiet"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    async with hypervisor() as uri:
        yield uri


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return guest_image()


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """A folder the qemu user can pass through (pytest's own temporary folders are 0700)."""
    with tempfile.TemporaryDirectory(prefix="deskgate-vms-") as tmp:
        Path(tmp).chmod(0o711)
        yield Path(tmp)


def context(folder: Path, uri: str) -> ProviderContext:
    config = HypervisorConfig(HV, uri, "qemu", str(folder / "disks"), str(folder / "screens"),
                              QEMU_USER)
    return ProviderContext(data_dir=folder, hypervisors={HV: config}, vm_stop_timeout=1.0,
                           vm_start_timeout=30.0)


def bundle(image: GuestImage, **changes: object) -> Bundle:
    values: dict[str, object] = {
        "id": 1, "name": "tiny", "vcpus": 1, "memory_mib": 128, "root_mib": 32, "user_mib": 16,
        "base_image": str(image.base), "kernel": str(image.kernel), "initrd": str(image.initrd),
        "cmdline": CMDLINE, **changes}
    return Bundle(**values)  # type: ignore[arg-type]


def desktop(desktop_id: int, vm_bundle: Bundle, hv: str = HV) -> DesktopSpec:
    return DesktopSpec(id=desktop_id, name=f"vm-{desktop_id}", provider="libvirt",
                       vm=DesktopVm(desktop_id, vm_bundle, hv, "creating"))


@pytest_asyncio.fixture(loop_scope="module")
async def provider(uri: str, folder: Path) -> AsyncIterator[LibvirtProvider]:
    made = make_provider("libvirt", context(folder, uri))
    assert isinstance(made, LibvirtProvider)
    yield made
    await made.close()


@pytest_asyncio.fixture(loop_scope="module")
async def spec_for(provider: LibvirtProvider,
                   image: GuestImage) -> AsyncIterator[Callable[..., DesktopSpec]]:
    """Desktop specs for the test; whatever they left on the hypervisor is deleted after it."""
    specs: list[DesktopSpec] = []

    def make(desktop_id: int, **changes: object) -> DesktopSpec:
        spec = desktop(desktop_id, bundle(image, **changes))
        specs.append(spec)
        return spec
    yield make
    for spec in specs:
        with contextlib.suppress(HypervisorError):
            await provider.delete(spec)


async def booted(log: Path) -> str:
    """The guest's serial output once it has booted, its last line (the file it writes on
    its root disk at every boot) included; bounded at 30 s."""
    text = ""
    for _ in range(300):
        text = log.read_text(errors="replace") if log.exists() else ""
        if f"root disk: {ROOT_FILE} written" in text.split(BANNER, 1)[-1]:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"the guest did not boot: {text[-500:]}")


async def rfb_banner(path: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        return await asyncio.wait_for(reader.readexactly(12), 5)
    finally:
        writer.close()


async def test_a_desktop_vm_is_made_started_stopped_rebuilt_and_deleted(
        provider: LibvirtProvider, spec_for: Callable[..., DesktopSpec], uri: str) -> None:
    spec = spec_for(7101)
    files = provider.layout(spec)
    await provider.create(spec)
    assert files.root.is_file() and files.user.is_file()
    assert await provider.state(spec) == "stopped"
    assert (await provider.observe(HV))[7101].seen is Seen.STOPPED
    # The screen's folder: written by the qemu user only, read by the gateway's group.
    screens = os.stat(files.screen_dir)
    assert (screens.st_uid, screens.st_gid) == (pwd.getpwnam(QEMU_USER).pw_uid, os.getegid())
    assert stat.S_IMODE(screens.st_mode) == 0o750
    assert stat.S_IMODE(os.stat(files.screen_dir.parent).st_mode) == 0o711

    await provider.ensure_running(spec)
    assert await provider.state(spec) == "running"
    endpoint = await provider.endpoint(spec)
    assert endpoint.unix_path == str(files.screen_socket) and endpoint.protocol == "vnc"
    assert re.fullmatch(rb"RFB 003\.00\d\n", await rfb_banner(endpoint.unix_path))
    first = (await booted(files.console_log)).split(BANNER, 1)[1]
    assert "user volume formatted" in (await booted(files.console_log))
    assert f"root disk: {ROOT_FILE} written" in first

    # The busybox guest has no ACPI daemon: it is powered off after the timeout.
    began = time.monotonic()
    assert await provider.shutdown(spec, timeout=1.0) is True
    assert time.monotonic() - began < 10
    assert await provider.state(spec) == "stopped"
    assert await provider.shutdown(spec, timeout=1.0) is False  # already off

    await provider.rebuild(spec)
    assert await provider.state(spec) == "stopped"
    files.console_log.unlink()
    await provider.ensure_running(spec)
    second = await booted(files.console_log)
    assert "user volume formatted" not in second  # the same user volume, with its file
    after = second.split(BANNER, 1)[1]
    assert f"user volume: {USER_FILE} lost+found" in after
    assert f"root disk: {BASE_MARKER} lost+found \n" in after  # a fresh root: no {ROOT_FILE}

    await provider.delete(spec)
    assert not files.folder.exists() and not files.screen_dir.exists()
    assert 7101 not in await provider.observe(HV)
    conn = libvirt.open(uri)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName("deskgate-7101")
    finally:
        conn.close()


async def test_what_is_done_behind_its_back_is_observed(
        provider: LibvirtProvider, spec_for: Callable[..., DesktopSpec], uri: str) -> None:
    spec = spec_for(7102)
    await provider.create(spec)
    await provider.start(spec)
    assert (await provider.observe(HV))[7102] == Observation(Seen.RUNNING, "running (booted)")
    await provider.reboot(spec)  # powered off after 1 s, started again
    assert await provider.state(spec) == "running"
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("deskgate-7102")
        dom.destroy()
        assert (await provider.observe(HV))[7102] == Observation(Seen.STOPPED,
                                                                 "shut off (destroyed)")
        assert await provider.state(spec) == "stopped"
        dom.undefine()
    finally:
        conn.close()
    assert 7102 not in await provider.observe(HV)
    assert await provider.hypervisor(HV).observation(7102) == MISSING
    assert await provider.state(spec) == "stopped"
    await provider.delete(spec)  # nothing left to undefine: the files go
    assert not provider.layout(spec).folder.exists()


async def test_two_desktops_start_side_by_side(
        provider: LibvirtProvider, spec_for: Callable[..., DesktopSpec]) -> None:
    specs = [spec_for(7103), spec_for(7104)]
    await asyncio.gather(*(provider.create(s) for s in specs))
    await asyncio.gather(*(provider.ensure_running(s) for s in specs))
    for spec in specs:
        assert await probe_rfb(unix_path=provider.layout(spec).screen_socket, timeout=5)
    for spec in specs:
        assert BANNER in await booted(provider.layout(spec).console_log)
    await asyncio.gather(*(provider.delete(s) for s in specs))
    assert not {7103, 7104} & set(await provider.observe(HV))


async def test_a_bad_base_image_is_named(provider: LibvirtProvider, folder: Path,
                                         spec_for: Callable[..., DesktopSpec]) -> None:
    with pytest.raises(HypervisorError, match="/nowhere/base.qcow2 does not exist"):
        await provider.create(spec_for(7105, base_image="/nowhere/base.qcow2"))
    with pytest.raises(HypervisorError, match=f"{folder} is not a file"):
        await provider.create(spec_for(7105, base_image=str(folder)))
    not_an_image = folder / "not-an-image.qcow2"
    not_an_image.write_text("hello")
    with pytest.raises(HypervisorError) as caught:  # qemu-img's own words
        await provider.create(spec_for(7105, base_image=str(not_an_image)))
    assert "qemu-img" in caught.value.reason and str(not_an_image) in caught.value.reason
    with pytest.raises(DesktopUnavailable, match="/nowhere/base.qcow2 does not exist"):
        await provider.ensure_running(spec_for(7105, base_image="/nowhere/base.qcow2"))
    assert 7105 not in await provider.observe(HV)


async def test_a_domain_someone_else_defined_is_never_listed_nor_touched(
        provider: LibvirtProvider, spec_for: Callable[..., DesktopSpec], uri: str) -> None:
    xml = ("<domain type='qemu'><name>deskgate-7106</name><memory unit='MiB'>64</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
    conn = libvirt.open(uri)
    theirs = conn.defineXML(xml)
    try:
        before = theirs.XMLDesc(0)
        assert 7106 not in await provider.observe(HV)
        spec = spec_for(7106)
        for action in (provider.create, provider.start, provider.rebuild, provider.delete):
            with pytest.raises(HypervisorError, match="deskgate-7106 was not defined by Deskgate"):
                await action(spec)
        with pytest.raises(DesktopUnavailable, match="not defined by Deskgate"):
            await provider.ensure_running(spec)
        assert await provider.state(spec) == "unknown"
        assert conn.lookupByName("deskgate-7106").XMLDesc(0) == before
        assert not theirs.isActive()
    finally:
        theirs.undefine()
        conn.close()


async def test_an_unreachable_libvirtd_is_said_at_once(folder: Path, image: GuestImage) -> None:
    config = HypervisorConfig("gone", "qemu+unix:///system?socket=/nonexistent/sock", "qemu",
                              str(folder / "disks"), str(folder / "screens"), QEMU_USER)
    provider = LibvirtProvider(ProviderContext(data_dir=folder, hypervisors={"gone": config}))
    spec = desktop(7107, bundle(image), hv="gone")
    began = time.monotonic()
    with pytest.raises(HypervisorUnreachable) as caught:
        await provider.observe("gone")
    assert caught.value.reason == ("Failed to connect socket to '/nonexistent/sock': "
                                   "No such file or directory")
    with pytest.raises(DesktopUnavailable, match="/nonexistent/sock"):
        await provider.ensure_running(spec)
    assert await provider.state(spec) == "unknown"
    assert time.monotonic() - began < 5
    with pytest.raises(HypervisorError, match="no hypervisor 'elsewhere'"):
        await provider.observe("elsewhere")
    await provider.close()


class Relay:
    """A unix socket in front of libvirtd's: its connections can be cut (as when libvirtd
    restarts) or held without an answer (as when it hangs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted = 0
        self.hang = False
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        if self.hang:
            return  # accepted, never answered
        up_reader, up_writer = await asyncio.open_unix_connection(str(SOCKET))
        self._writers.append(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()


async def test_a_dead_connection_is_opened_again_and_a_hung_one_given_up(
        uri: str, folder: Path) -> None:
    async with Relay(folder / "relay.sock") as relay:
        hv = Hypervisor(f"qemu+unix:///system?socket={relay.path}", call_timeout=2.0)
        try:
            await hv.owned()
            relay.cut()  # libvirtd restarted
            await hv.owned()
            assert relay.accepted == 2
            relay.hang = True
            relay.cut()
            began = time.monotonic()
            with pytest.raises(HypervisorUnreachable, match="did not answer within 2 s"):
                await hv.owned()
            assert time.monotonic() - began < 5
            relay.hang = False
            relay.cut()  # the hung call ends; its worker is gone
            await hv.owned()
        finally:
            await hv.close()


async def test_libvirt_states_in_words() -> None:
    assert describe(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == \
        Observation(Seen.RUNNING, "running (booted)")
    assert describe(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == \
        Observation(Seen.STOPPED, "shut off (destroyed)")
    assert describe(libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED) == \
        Observation(Seen.STOPPED, "crashed (panicked)")
    assert describe(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR) == \
        Observation(Seen.RUNNING, "paused (I/O error)")
    assert describe(42, 7) == Observation(Seen.RUNNING, "state 42 (reason 7)")


async def test_without_libvirt_python_the_admin_is_told_what_to_install(
        monkeypatch: pytest.MonkeyPatch, folder: Path, image: GuestImage) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # as if not installed
    provider = LibvirtProvider(context(folder, "qemu:///system"))
    with pytest.raises(ConfigError, match=r"needs libvirt-python: pip install 'deskgate\[vm\]'"):
        await provider.observe(HV)
    assert await provider.state(desktop(7108, bundle(image))) == "unknown"
    await provider.close()
