"""The DesktopProvider contract (gateway/providers/base.py), one suite run over every provider.

Each provider comes with a harness that knows how to give the suite what it needs from that
provider with real parts only: a desktop that can run (the static provider's is a TigerVNC Xvnc
the harness starts on a loopback port; the local provider starts its own), a desktop that is not
there, a desktop the provider cannot make reachable, and what the provider documents about
stopping. A new provider (libvirt, ssh) is one more harness appended to ``HARNESSES``; every
contract check then runs over it.

Every desktop a harness or a provider started is stopped by PID in the harness's teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest
import sshhosts
from provider_support import pid_gone

from gateway.config import HypervisorConfig
from gateway.errors import DesktopUnavailable
from gateway.model import Bundle, DesktopVm, Endpoint, Secret
from gateway.providers import DesktopProvider, DesktopSpec, ProviderContext, make_provider
from gateway.providers.local import LocalProvider
from gateway.proxy.rfb import DesktopHandshake
from gateway.ssh.connections import SshConnections, SshHost
from gateway.xdisplay.numbers import free_tcp_port, xvnc_serving
from gateway.xdisplay.xvnc import XvncDisplay, start_display

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vms"))
import hypervisor as hypervisor_support  # noqa: E402 (the test libvirtd and guest, found above)

pytestmark = pytest.mark.timeout(120)

STATES = {"running", "stopped", "unknown"}  # what DesktopProvider.state documents
RFB_VERSION = re.compile(rb"RFB 003\.00[3-8]\n")


def require_xvnc() -> None:
    if shutil.which("Xvnc") is None:
        pytest.skip("TigerVNC Xvnc missing")


class Harness:
    """One provider under the contract. Subclasses fill in how to reach each situation."""

    name = ""
    can_stop = True  # False: stop() leaves the desktop running, as the provider documents
    absent_state = "stopped"  # state() of a desktop that is not there / was never started

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.provider: DesktopProvider = self.make()

    def make(self) -> DesktopProvider:
        raise NotImplementedError

    async def desktop(self, n: int) -> DesktopSpec:
        """A desktop ``ensure_running`` can make reachable (skips where that is impossible)."""
        raise NotImplementedError

    def absent(self) -> DesktopSpec:
        """A desktop that is not there (nothing serves it, nothing started it)."""
        raise NotImplementedError

    async def broken(self) -> tuple[DesktopProvider, DesktopSpec, str]:
        """(provider, spec, reason pattern): ``ensure_running`` must raise DesktopUnavailable
        with a reason matching the pattern."""
        raise NotImplementedError

    async def servers(self, spec: DesktopSpec) -> int:
        """How many servers serve ``spec`` right now (a second one would be a double start)."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """What must run before any test (the fixture awaits it once)."""

    async def teardown(self) -> None:
        await self.provider.close()


class StaticHarness(Harness):
    """Static desktops exist by themselves: the harness starts a real Xvnc (VncAuth) on a free
    loopback port for each desktop; the provider knows its stored password, as the gateway's
    does, so that its state probe logs in."""

    name = "static"
    can_stop = False  # static.py: "A static desktop is not ours to stop: nothing happens."
    PASSWORD = "secret12"  # noqa: S105 - the test desktop's VNC password

    def __init__(self, data_dir: Path) -> None:
        self.displays: list[XvncDisplay] = []
        super().__init__(data_dir)

    def make(self) -> DesktopProvider:
        async def stored(desktop_id: int) -> Secret | None:
            return Secret(self.PASSWORD)

        return make_provider("static", ProviderContext(data_dir=self.data_dir, credentials=stored))

    async def desktop(self, n: int) -> DesktopSpec:
        require_xvnc()
        d = await start_display(rfbport=free_tcp_port(), password=self.PASSWORD,
                                name=f"static {n}", window_manager=False, xterm=False)
        self.displays.append(d)
        assert d.rfbport is not None
        return DesktopSpec(id=n, name=f"static {n}", provider="static", host="127.0.0.1",
                           port=d.rfbport, password=Secret(self.PASSWORD))

    def absent(self) -> DesktopSpec:
        return DesktopSpec(id=90, name="static absent", provider="static", host="127.0.0.1",
                           port=free_tcp_port(), password=Secret(self.PASSWORD))

    async def broken(self) -> tuple[DesktopProvider, DesktopSpec, str]:
        # A VNC desktop is not checked by ensure_running (the session's own handshake tells,
        # with the reason; a banner-only check would count towards TigerVNC's blacklist): the
        # desktop that cannot be reached is one the provider checks by TCP connect.
        spec = DesktopSpec(id=91, name="static unreachable", provider="static",
                           host="127.0.0.1", port=free_tcp_port(), protocol="rdp")
        return self.provider, spec, r"^desktop static unreachable is not answering$"

    async def servers(self, spec: DesktopSpec) -> int:
        return sum(1 for d in self.displays if d.rfbport == spec.port and d.alive())

    async def teardown(self) -> None:
        try:
            await self.provider.close()
        finally:
            for d in self.displays:
                pids = list(d.pids)
                await d.stop()
                assert all(pid_gone(pid) for pid in pids)


class LocalHarness(Harness):
    """Local desktops are started by the provider itself (as ``deskgate-desktop``); it stops
    them when closed (``stop_on_exit``), and the teardown checks every process is gone."""

    name = "local"
    USER = "deskgate-desktop"

    def __init__(self, data_dir: Path) -> None:
        self.started: list[DesktopSpec] = []  # specs handed out: their sockets are checked
        self.extra: list[DesktopProvider] = []  # providers of broken(), closed in teardown
        super().__init__(data_dir)

    def make(self) -> DesktopProvider:
        return self._local(self.data_dir)

    def _local(self, data_dir: Path) -> LocalProvider:
        return LocalProvider(ProviderContext(data_dir=data_dir, run_as_user=self.USER,
                                             stop_on_exit=True))

    async def desktop(self, n: int) -> DesktopSpec:
        require_xvnc()
        if os.geteuid() != 0:
            pytest.skip("local desktops run as a system user the tests create: needs root")
        spec = DesktopSpec(id=n, name=f"local {n}", provider="local", geometry="1024x768")
        self.started.append(spec)
        return spec

    def absent(self) -> DesktopSpec:
        return DesktopSpec(id=90, name="local absent", provider="local")

    async def broken(self) -> tuple[DesktopProvider, DesktopSpec, str]:
        # Its runtime folder under a folder the desktop user cannot enter (pytest-like 0700).
        if os.geteuid() != 0:
            pytest.skip("a folder closed to the desktop user needs root to matter")
        closed = self.data_dir / "closed"
        closed.mkdir(mode=0o700)
        p = self._local(closed / "data")
        self.extra.append(p)
        spec = DesktopSpec(id=91, name="local closed", provider="local")
        return p, spec, (r"^desktop local closed could not be started \(runtime folder"
                         r" permissions: see desktops\.runtime_dir\)$")

    async def servers(self, spec: DesktopSpec) -> int:
        assert isinstance(self.provider, LocalProvider)
        return len(xvnc_serving(self.provider.socket_path(spec)))

    async def teardown(self) -> None:
        p = self.provider
        assert isinstance(p, LocalProvider)
        pids = [pid for d in p._displays.values() for pid in d.pids]
        try:
            for other in self.extra:
                await other.close()
            await p.close()
        finally:
            # Whatever still serves a desktop's socket (it should be nothing) is stopped by PID.
            left = [x.pid for s in self.started for x in xvnc_serving(p.socket_path(s))]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        assert not left, f"Xvnc still serving after close: {left}"
        assert all(pid_gone(pid) for pid in pids)


class LibvirtHarness(Harness):
    """Desktop VMs on a real libvirtd + QEMU (started here unless one already answers) with the
    tiny test guest of tests/vms/hypervisor.py; every VM a test made is deleted with its
    volumes in the teardown."""

    name = "libvirt"

    def __init__(self, data_dir: Path) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.specs: list[DesktopSpec] = []
        self.up = False  # libvirtd answers (started here, or someone else's)
        # Short paths the qemu user can pass through (pytest's own folders are 0700).
        self.folder = Path(tempfile.mkdtemp(prefix="dg-contract-", dir="/tmp"))  # noqa: S108
        self.folder.chmod(0o711)
        self.uri = hypervisor_support.URI
        super().__init__(data_dir)

    def _context(self, uri: str) -> ProviderContext:
        config = HypervisorConfig("test", uri, "qemu", str(self.folder / "disks"),
                                  str(self.folder / "screens"))
        return ProviderContext(data_dir=self.data_dir, hypervisors={"test": config},
                               vm_stop_timeout=1.0, vm_start_timeout=40.0)

    def make(self) -> DesktopProvider:
        return make_provider("libvirt", self._context(self.uri))

    def _spec(self, n: int) -> DesktopSpec:
        image = hypervisor_support.guest_image()
        bundle = Bundle(1, "contract", 1, 128, 32, 16, str(image.base), kernel=str(image.kernel),
                        initrd=str(image.initrd), cmdline="console=tty0 console=ttyS0 quiet",
                        ready_text=hypervisor_support.BANNER)
        spec = DesktopSpec(id=900 + n, name=f"contract vm {n}", provider="libvirt",
                           vm=DesktopVm(900 + n, bundle, "test", "stopped"))
        self.specs.append(spec)
        return spec

    async def prepare(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("libvirtd's system instance needs root")
        await self.stack.enter_async_context(hypervisor_support.hypervisor())
        self.up = True

    async def desktop(self, n: int) -> DesktopSpec:
        return self._spec(n)

    def absent(self) -> DesktopSpec:
        return self._spec(90)  # never defined on the hypervisor: no domain, "stopped"

    async def broken(self) -> tuple[DesktopProvider, DesktopSpec, str]:
        gone = make_provider("libvirt", self._context(
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock"))
        self.stack.push_async_callback(gone.close)
        return gone, self._spec(91), r"/nonexistent/libvirt-sock"

    async def servers(self, spec: DesktopSpec) -> int:
        conn = libvirt.open(self.uri)
        try:
            names = {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        finally:
            conn.close()
        return int(f"deskgate-{spec.id}" in names)

    async def teardown(self) -> None:
        provider = self.make()
        try:
            if self.up:
                for spec in self.specs:
                    with contextlib.suppress(Exception):
                        await provider.delete(spec)  # type: ignore[attr-defined]
        finally:
            await provider.close()
            await self.provider.close()
            await self.stack.aclose()
            shutil.rmtree(self.folder, ignore_errors=True)


class SshHarness(Harness):
    """Desktops started by the provider on a real SSH host: a network namespace with its own
    sshd and account (tests/sshhosts.py), started for the test and cleaned up (every process
    in it ended by PID) in the teardown."""

    name = "ssh"

    def __init__(self, data_dir: Path) -> None:
        self.host: sshhosts.SshHost | None = None
        self.tmp: Path | None = None
        self.connections = SshConnections(data_dir, keepalive=1.0, connect_timeout=5.0)
        self.specs: dict[str, SshHost] = {}
        super().__init__(data_dir)

    def make(self) -> DesktopProvider:
        async def reach(name: str) -> tuple[SshConnections, SshHost]:
            if name not in self.specs:
                raise DesktopUnavailable(f"no SSH host {name}")
            return self.connections, self.specs[name]

        return make_provider("ssh", ProviderContext(data_dir=self.data_dir, ssh=reach))

    async def prepare(self) -> None:
        if os.geteuid() != 0 or not Path(sshhosts.SSHD).is_file():
            pytest.skip("SSH hosts in namespaces need root and sshd")
        require_xvnc()
        self.tmp = sshhosts.short_tmp()
        self.host = sshhosts._start_indexed(self.tmp)
        h = self.host
        self.specs[h.name] = SshHost(h.name, h.address, h.port, h.user, Secret(h.client_key),
                                     h.host_key_line)
        # A host nothing answers on: the namespace's address, a closed port.
        self.specs["gone"] = SshHost("gone", h.address, 1, h.user, Secret(h.client_key),
                                     h.host_key_line)

    def _spec(self, n: int, via: str = "") -> DesktopSpec:
        assert self.host is not None
        return DesktopSpec(id=800 + n, name=f"ssh {n}", provider="ssh", geometry="1024x768",
                           via=via or self.host.name)

    async def desktop(self, n: int) -> DesktopSpec:
        return self._spec(n)

    def absent(self) -> DesktopSpec:
        return self._spec(90)

    async def broken(self) -> tuple[DesktopProvider, DesktopSpec, str]:
        return self.provider, self._spec(91, via="gone"), r"gone cannot be reached over SSH"

    async def servers(self, spec: DesktopSpec) -> int:
        assert self.host is not None
        pids = sshhosts._run(["ip", "netns", "pids", self.host.netns]).stdout.split()
        mark = f"/deskgate/{spec.id}".encode()
        count = 0
        for pid in pids:
            proc = Path("/proc") / pid
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() in ("Xvnc", "Xtigervnc") and any(
                        e.startswith(b"DESKGATE_DESKTOP=") and e.endswith(mark)
                        for e in (proc / "environ").read_bytes().split(b"\0")):
                    count += 1
        return count

    async def teardown(self) -> None:
        try:
            await self.provider.close()
            await self.connections.close()
        finally:
            if self.host is not None:
                assert self.tmp is not None
                sshhosts._cleanup_all([self.host], self.tmp)  # ends every process it holds
            elif self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)


# Every provider the contract runs over; a new provider appends its harness here.
HARNESSES: list[type[Harness]] = [StaticHarness, LocalHarness, LibvirtHarness, SshHarness]


@pytest.fixture(params=HARNESSES, ids=lambda h: h.name)
async def harness(request: pytest.FixtureRequest, data_dir: Path) -> AsyncIterator[Harness]:
    h: Harness = request.param(data_dir)
    try:
        await h.prepare()
        yield h
    finally:
        await h.teardown()


async def rfb_login(ep: Endpoint) -> bytes:
    """Open the endpoint, read the server's 12-byte RFB version, then log in with the
    endpoint's password as a session does (TigerVNC blacklists peers that close before a
    login). Returns the version."""
    if ep.unix_path is not None:
        reader, writer = await asyncio.open_unix_connection(ep.unix_path)
    else:
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
    try:
        version = await asyncio.wait_for(reader.readexactly(12), 5)
        shake = DesktopHandshake(ep.password)
        data = version
        while True:
            writer.write(shake.feed(data))
            if shake.authenticated:
                return version
            data = await asyncio.wait_for(reader.read(4096), 5)
            if not data:
                raise shake.eof_error()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def refuses_connections(ep: Endpoint) -> bool:
    try:
        if ep.unix_path is not None:
            _, writer = await asyncio.open_unix_connection(ep.unix_path)
        else:
            _, writer = await asyncio.open_connection(ep.host, ep.port)
    except OSError:
        return True
    writer.close()
    return False


# -- the contract -------------------------------------------------------------------------------


async def test_a_running_desktop_serves_rfb_at_its_endpoint(harness: Harness) -> None:
    """ensure_running, then endpoint: an address where a real RFB server answers and lets the
    gateway in with the endpoint's credentials; state says "running"."""
    spec = await harness.desktop(1)
    await harness.provider.ensure_running(spec)
    ep = await harness.provider.endpoint(spec)
    assert (ep.unix_path is not None) != (ep.port != 0), ep
    assert RFB_VERSION.fullmatch(await rfb_login(ep))
    state = await harness.provider.state(spec)
    assert state in STATES and state == "running"


async def test_a_desktop_that_is_not_there(harness: Harness) -> None:
    """state() of a desktop nothing serves: a documented state, never "running"; stopping it
    is harmless."""
    spec = harness.absent()
    state = await harness.provider.state(spec)
    assert state in STATES and state != "running"
    assert state == harness.absent_state
    await harness.provider.stop(spec)
    assert await harness.provider.state(spec) == harness.absent_state


async def test_concurrent_ensure_running_starts_one_desktop(harness: Harness) -> None:
    """Ten callers at once: no error, one desktop, and each caller's endpoint works."""
    spec = await harness.desktop(2)
    p = harness.provider

    async def caller() -> Endpoint:
        await p.ensure_running(spec)
        return await p.endpoint(spec)

    endpoints = await asyncio.gather(*(caller() for _ in range(10)))
    assert await harness.servers(spec) == 1
    assert all(ep == endpoints[0] for ep in endpoints)  # same address, same credentials
    for ep in endpoints:
        assert RFB_VERSION.fullmatch(await rfb_login(ep))
    await p.ensure_running(spec)  # again, later: still the same desktop
    assert await p.endpoint(spec) == endpoints[0]
    assert await harness.servers(spec) == 1
    assert await p.state(spec) == "running"


async def test_stop(harness: Harness) -> None:
    """Where the provider can stop: the desktop stops (not "running", its endpoint refuses).
    Where it cannot (static): stop() changes nothing, as documented."""
    spec = await harness.desktop(3)
    p = harness.provider
    await p.ensure_running(spec)
    ep = await p.endpoint(spec)
    await p.stop(spec)
    if harness.can_stop:
        state = await p.state(spec)
        assert state in STATES and state != "running"
        assert await refuses_connections(ep)
        assert await harness.servers(spec) == 0
        await p.stop(spec)  # stopping again is harmless
    else:
        assert await p.state(spec) == "running"
        assert await harness.servers(spec) == 1
        assert RFB_VERSION.fullmatch(await rfb_login(await p.endpoint(spec)))


async def test_close_is_idempotent(harness: Harness) -> None:
    spec = await harness.desktop(4)
    await harness.provider.ensure_running(spec)
    await harness.provider.close()
    await harness.provider.close()


async def test_close_without_use_is_idempotent(harness: Harness) -> None:
    await harness.provider.close()
    await harness.provider.close()


async def test_a_desktop_that_cannot_be_reached_is_a_clear_error(harness: Harness) -> None:
    """DesktopUnavailable, whose reason (shown to the user) names the desktop and the cause."""
    provider, spec, reason = await harness.broken()
    with pytest.raises(DesktopUnavailable) as raised:
        await provider.ensure_running(spec)
    assert re.search(reason, raised.value.reason), raised.value.reason
    assert spec.name in raised.value.reason
    state = await provider.state(spec)
    assert state in STATES and state != "running"
