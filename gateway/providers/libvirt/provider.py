"""Desktop VMs on libvirt: made, started, stopped, rebuilt and deleted for their desktops.

A desktop VM's files, on the hypervisor's host (the gateway's: see ``volumes``):

- ``<storage_dir>/<desktop id>/``: ``root.qcow2`` (an overlay on the bundle's base image,
  replaced by a rebuild), ``user.qcow2`` (the user volume, kept until the desktop is deleted)
  and ``console.log`` (the guest's serial console). The qemu user must reach the folder.
- ``<socket_dir>/<desktop id>/screen.sock``: the VNC console, a unix socket QEMU makes. Its
  folder belongs to the qemu user and the gateway's group, mode 0750: only QEMU writes there
  and only the gateway reads; ``socket_dir`` itself is 0711, so no one can list the desktops.

Two faces: the ``DesktopProvider`` seam the broker uses (``ensure_running`` and the rest, whose
failures are ``DesktopUnavailable``), and the VM operations the VM use cases call (``create``,
``start``, ``shutdown``, ``rebuild``, ``delete``, ``observe``...), whose failures are
``HypervisorError`` with libvirt's or qemu-img's own message. One desktop's operations run one
at a time (an asyncio lock per desktop); different desktops' run side by side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.config import HypervisorConfig
from gateway.errors import ConfigError, DesktopUnavailable
from gateway.model import Bundle, Endpoint
from gateway.probe import probe_rfb
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log
from gateway.providers.libvirt.domain import DomainSpec, domain_name, domain_xml
from gateway.providers.libvirt.hostfiles import LocalFiles, SshFiles, vm_files
from gateway.providers.libvirt.hypervisor import (
    CALL_TIMEOUT,
    Hypervisor,
    HypervisorError,
    Observation,
)
from gateway.providers.libvirt.lifecycle import Seen
from gateway.xdisplay.numbers import UNIX_PATH_MAX

log = logging.getLogger(__name__)

ROOT_NAME = "root.qcow2"
USER_NAME = "user.qcow2"
CONSOLE_NAME = "console.log"
SOCKET_NAME = "screen.sock"
PROBE_TIMEOUT = 2.0  # one look at the screen while waiting for it
CHECK_EVERY = 1.0  # while waiting for the screen: how often to ask whether the VM still runs
POLL = 0.25  # while waiting for a shutdown


@dataclass(frozen=True)
class Layout:
    """Where one desktop VM's files are."""

    folder: Path  # <storage_dir>/<desktop id>
    screen_dir: Path  # <socket_dir>/<desktop id>

    @property
    def root(self) -> Path:
        return self.folder / ROOT_NAME

    @property
    def user(self) -> Path:
        return self.folder / USER_NAME

    @property
    def console_log(self) -> Path:
        return self.folder / CONSOLE_NAME

    @property
    def screen_socket(self) -> Path:
        return self.screen_dir / SOCKET_NAME


def layout(config: HypervisorConfig, desktop_id: int) -> Layout:
    """The files of desktop ``desktop_id`` on hypervisor ``config`` (its folders filled in)."""
    for key, value in (("storage_dir", config.storage_dir), ("socket_dir", config.socket_dir)):
        if not value or not Path(value).is_absolute():
            raise HypervisorError(f"hypervisor {config.name}: {key} must be an absolute path")
    found = Layout(Path(config.storage_dir) / str(desktop_id),
                   Path(config.socket_dir) / str(desktop_id))
    if len(os.fsencode(found.screen_socket)) > UNIX_PATH_MAX:
        raise HypervisorError(f"hypervisor {config.name}: socket_dir {config.socket_dir} is too "
                              f"long for a unix socket path")
    return found


class LibvirtProvider:
    """Desktop VMs on the configured hypervisors; see the module docstring."""

    def __init__(self, ctx: ProviderContext, *, call_timeout: float = CALL_TIMEOUT) -> None:
        self._ctx = ctx
        self._call_timeout = call_timeout
        self._hypervisors: dict[str, Hypervisor] = {}
        self._files: dict[str, LocalFiles | SshFiles] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    # -- where things are --------------------------------------------------------------------

    def config(self, name: str) -> HypervisorConfig:
        try:
            return self._ctx.hypervisors[name]
        except KeyError:
            raise HypervisorError(f"no hypervisor {name!r} is configured") from None

    def hypervisor(self, name: str) -> Hypervisor:
        """The connection to hypervisor ``name`` (opened on first use)."""
        config = self.config(name)
        hv = self._hypervisors.get(name)
        if hv is None:
            files = self.files(name)
            route = files.libvirt_uri if isinstance(files, SshFiles) else None
            where = f"{config.uri} on SSH host {config.via}" if config.via else config.uri
            hv = self._hypervisors[name] = Hypervisor(where, call_timeout=self._call_timeout,
                                                      route=route)
        return hv

    def files(self, name: str) -> LocalFiles | SshFiles:
        """Where hypervisor ``name``'s VM files are: this machine, or its SSH host's."""
        found = self._files.get(name)
        if found is None:
            found = self._files[name] = vm_files(self.config(name), self._ctx.ssh)
        return found

    def layout(self, spec: DesktopSpec) -> Layout:
        return layout(self.config(_bundle_of(spec)[1]), spec.id)

    def _hv(self, spec: DesktopSpec) -> Hypervisor:
        return self.hypervisor(_bundle_of(spec)[1])

    def _files_of(self, spec: DesktopSpec) -> LocalFiles | SshFiles:
        return self.files(_bundle_of(spec)[1])

    def _lock(self, desktop_id: int) -> asyncio.Lock:
        return self._locks.setdefault(desktop_id, asyncio.Lock())

    def _domain(self, spec: DesktopSpec, files: Layout) -> DomainSpec:
        bundle, hv_name = _bundle_of(spec)
        try:
            return DomainSpec(
                desktop_id=spec.id, vcpus=bundle.vcpus, memory_mib=bundle.memory_mib,
                root_disk=files.root, user_volume=files.user, screen_socket=files.screen_socket,
                kernel=Path(bundle.kernel) if bundle.kernel else None,
                initrd=Path(bundle.initrd) if bundle.initrd else None, cmdline=bundle.cmdline,
                virt_type=self.config(hv_name).domain_type, serial_log=files.console_log,
                network=None if bundle.protocol == "console" else self.config(hv_name).network)
        except ValueError as exc:
            raise HypervisorError(f"bundle {bundle.name}: {exc}") from None

    # -- DesktopProvider -----------------------------------------------------------------------

    async def ensure_running(self, spec: DesktopSpec) -> None:
        """Start the VM unless it runs, then wait (up to ``ctx.vm_start_timeout``) until its
        screen answers."""
        try:
            async with self._lock(spec.id):
                if not await self._hv(spec).is_running(spec.id):
                    await self._start(spec)
            await self.wait_screen(spec, self._ctx.vm_start_timeout)
        except HypervisorError as exc:
            desktop_log(log, spec.name).warning("not available: %s", exc.reason)
            raise DesktopUnavailable(f"desktop {spec.name} could not be started: {exc.reason}"
                                     ) from None

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        """The console's unix socket, or the guest's own VNC or RDP server."""
        try:
            bundle, _ = _bundle_of(spec)
            if bundle.protocol == "console":
                screen = await self._files_of(spec).screen(self.layout(spec).screen_socket)
                return Endpoint(unix_path=str(screen), password=spec.password, protocol="vnc")
        except HypervisorError as exc:
            raise DesktopUnavailable(exc.reason) from None
        return Endpoint(host=spec.host, port=spec.port, password=spec.password,
                        protocol=spec.protocol)

    async def state(self, spec: DesktopSpec) -> str:
        """What libvirt says: "running" while QEMU runs (the screen may still be coming up),
        "stopped" when the domain is off or missing, "unknown" when libvirt cannot tell."""
        try:
            seen = (await self._hv(spec).observation(spec.id)).seen
        except (HypervisorError, ConfigError) as exc:
            desktop_log(log, spec.name).info("state unknown: %s", exc.reason)
            return "unknown"
        return "running" if seen is Seen.RUNNING else "stopped"

    async def stop(self, spec: DesktopSpec) -> None:
        """Shut the VM down, hard after ``ctx.vm_stop_timeout``."""
        try:
            await self.shutdown(spec, self._ctx.vm_stop_timeout)
        except HypervisorError as exc:
            raise DesktopUnavailable(exc.reason) from None

    async def close(self) -> None:
        """Application shutdown: the connections close; the VMs run on."""
        hypervisors, self._hypervisors = list(self._hypervisors.values()), {}
        for hv in hypervisors:
            await hv.close()

    # -- VM operations -------------------------------------------------------------------------

    async def create(self, spec: DesktopSpec) -> None:
        """The VM's disks (a fresh root overlay; the user volume only if there is none), its
        screen folder and its domain, defined and stopped."""
        async with self._lock(spec.id):
            if await self._hv(spec).is_running(spec.id):
                raise HypervisorError(f"{domain_name(spec.id)} is running; it is not made again")
            await self._define(spec, fresh_root=True)
            desktop_log(log, spec.name).info("VM created")

    async def start(self, spec: DesktopSpec) -> None:
        """Define the domain as the spec now says, then start it; does not wait for the
        screen (``wait_screen``)."""
        async with self._lock(spec.id):
            await self._start(spec)

    async def wait_screen(self, spec: DesktopSpec, timeout: float) -> None:
        """Until the screen answers: an RFB banner on the console socket, or (a guest's own VNC
        or RDP server) a TCP connection; and, when its bundle names one, the ready text is on
        the guest's serial console. Fails early when the VM stops meanwhile."""
        dlog = desktop_log(log, spec.name)
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + CHECK_EVERY
        while True:
            left = deadline - time.monotonic()
            if await self._screen_answers(spec, max(0.1, min(PROBE_TIMEOUT, left))) \
                    and await self._ready_text_seen(spec):
                dlog.info("screen answers")
                return
            if time.monotonic() >= next_check:
                observed = await self._hv(spec).observation(spec.id)
                if observed.seen is not Seen.RUNNING:
                    raise HypervisorError(f"the VM is not running: {observed.detail}")
                next_check = time.monotonic() + CHECK_EVERY
            if time.monotonic() >= deadline:
                raise HypervisorError(f"the VM's screen did not answer within {timeout:g} s")
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def shutdown(self, spec: DesktopSpec, timeout: float) -> bool:
        """Ask the guest to shut down (ACPI), then power it off after ``timeout`` seconds; True
        when it had to be powered off."""
        async with self._lock(spec.id):
            return await self._shutdown(spec, timeout)

    async def reboot(self, spec: DesktopSpec) -> None:
        """Shut down (as ``shutdown``, with ``ctx.vm_stop_timeout``), then start."""
        async with self._lock(spec.id):
            await self._shutdown(spec, self._ctx.vm_stop_timeout)
            await self._start(spec)

    async def rebuild(self, spec: DesktopSpec) -> None:
        """Stop the VM, give it a fresh root overlay on its bundle's base image and define it
        anew; the user volume is kept. It stays stopped."""
        async with self._lock(spec.id):
            await self._shutdown(spec, self._ctx.vm_stop_timeout)
            await self._define(spec, fresh_root=True)
            desktop_log(log, spec.name).info("VM rebuilt")

    async def delete(self, spec: DesktopSpec) -> None:
        """Power off and undefine the domain, then remove its disks, log and screen folder."""
        async with self._lock(spec.id):
            hv, files, where = self._hv(spec), self.layout(spec), self._files_of(spec)
            await hv.destroy(spec.id)
            await hv.undefine(spec.id)
            await where.forget_screen(files.screen_socket)
            left = await where.remove((files.root, files.user, files.console_log), files.folder,
                                      files.screen_dir)
            if left:  # files someone else put there: left alone
                desktop_log(log, spec.name).warning("%s", left)
            desktop_log(log, spec.name).info("VM deleted")

    async def observe(self, hypervisor_name: str) -> dict[int, Observation]:
        """Deskgate's domains on that hypervisor by desktop id (one missing is not listed)."""
        return await self.hypervisor(hypervisor_name).owned()

    # -- the steps (the desktop's lock held) --------------------------------------------------

    async def _start(self, spec: DesktopSpec) -> None:
        hv = self._hv(spec)
        running = await hv.is_running(spec.id)  # (refuses a domain that is not Deskgate's)
        files = await self._define(spec, fresh_root=False)
        if running:
            return  # the new definition applies at its next start
        # An earlier run's screen socket (QEMU binds a new one) and serial log: a start waits
        # for the bundle's ready text in this run's.
        await self._files_of(spec).new_run(files.screen_socket, files.console_log)
        await hv.start(spec.id)
        desktop_log(log, spec.name).info("VM started")

    async def _define(self, spec: DesktopSpec, *, fresh_root: bool) -> Layout:
        """Disks (the root overlay fresh, or only when missing; the user volume only when
        missing), the screen folder, and the domain defined as the spec says."""
        bundle, hv_name = _bundle_of(spec)
        config = self.config(hv_name)
        files = layout(config, spec.id)
        domain = self._domain(spec, files)
        where = self.files(hv_name)
        await where.prepare(files.folder, files.screen_dir)
        await where.root_disk(files.root, Path(bundle.base_image), bundle.root_mib,
                              fresh=fresh_root)
        await where.user_volume(files.user, bundle.user_mib)
        await self._hv(spec).define(domain_xml(domain))
        return files

    async def _shutdown(self, spec: DesktopSpec, timeout: float) -> bool:
        hv, dlog = self._hv(spec), desktop_log(log, spec.name)
        if not await hv.is_running(spec.id):
            return False
        await hv.shutdown(spec.id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            if not await hv.is_running(spec.id):
                dlog.info("VM shut down")
                return False
        hard = await hv.destroy(spec.id)
        if hard:
            dlog.info("VM powered off: no shutdown within %g s", timeout)
        return hard

    async def _ready_text_seen(self, spec: DesktopSpec) -> bool:
        """The bundle's ready text is in this run's serial console log (or it has none)."""
        bundle, _ = _bundle_of(spec)
        if not bundle.ready_text:
            return True
        return await self._files_of(spec).console_has(self.layout(spec).console_log,
                                                       bundle.ready_text)

    async def _screen_answers(self, spec: DesktopSpec, timeout: float) -> bool:
        bundle, _ = _bundle_of(spec)
        if bundle.protocol == "console":
            screen = await self._files_of(spec).screen(self.layout(spec).screen_socket)
            return await probe_rfb(unix_path=screen, timeout=timeout)
        if not spec.host or not 0 < spec.port < 65536:
            raise HypervisorError(f"desktop {spec.name} has no address for its {bundle.protocol}"
                                  " server")
        # A connection only: a guest's VNC server may count a banner read without a login as
        # a failed login (see gateway.providers.static).
        return await probe_rfb(host=spec.host, port=spec.port, timeout=timeout,
                               banner_required=False)


def _bundle_of(spec: DesktopSpec) -> tuple[Bundle, str]:
    """The desktop's bundle and hypervisor name; ``HypervisorError`` for a desktop that is not
    a VM."""
    if spec.vm is None:
        raise HypervisorError(f"desktop {spec.name} is not a VM")
    return spec.vm.bundle, spec.vm.hypervisor
