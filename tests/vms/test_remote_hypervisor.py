"""A hypervisor on another machine, reached only through an SSH host: libvirtd's socket, the
VM's files and its screen all go through the host's one SSH connection.

The "other machine" is this one's libvirtd, seen from a network-namespace SSH host that logs in
as root (as libvirt's own qemu+ssh://root@host/system would). The gateway side runs in a child
process in a mount namespace of its own where /run/libvirt and the VM folders are empty tmpfs
mounts: it cannot reach libvirtd, a disk or the screen socket except through SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import libvirt
import pytest
import pytest_asyncio
from hypervisor import BANNER, GuestImage, guest_image, hypervisor
from sshhosts import SshHost, cleanup_ssh_host, free_index, short_tmp, start_ssh_host
from web.websupport import CLI, app_client, base_url, connect, rfb_handshake, sign_in

from gateway.config import HypervisorConfig, Settings, load_settings, remote_libvirt_socket
from gateway.errors import ConfigError
from gateway.keys import BUNDLES, CATALOG, SSH_CONNECTIONS, SSH_HOSTS, VMS
from gateway.model import Bundle

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
DESKTOP_ID = 7301
ANSWER_TIMEOUT = 60.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance and namespaces need root")
    async with hypervisor() as found:
        yield found


@pytest.fixture(scope="module")
def far_host() -> Iterator[SshHost]:
    tmp = short_tmp()
    host = start_ssh_host(free_index(), tmp, user="root", name="hv-host")
    try:
        yield host
    finally:
        cleanup_ssh_host(host)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="deskgate-far-vms-") as tmp:
        Path(tmp).chmod(0o711)
        yield Path(tmp)


class Gateway:
    """The child process (tests/vms/remote_gateway.py), spoken to one line at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, line: str) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await asyncio.wait_for(self.proc.stdout.readline(), ANSWER_TIMEOUT)
        assert answer, "the gateway process ended"
        found = json.loads(answer)
        assert isinstance(found, dict)
        return found


@contextlib.asynccontextmanager
async def hidden_gateway(given: dict[str, object], hide: list[Path]) -> AsyncIterator[Gateway]:
    """remote_gateway.py in a mount namespace where every folder of ``hide`` is empty."""
    mounts = " && ".join(f"mount -t tmpfs -o size=1m,mode=0700 deskgate-hidden {p}"
                         for p in hide)
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f'{mounts} && exec "$0" -m tests.vms.remote_gateway', sys.executable,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    gateway = Gateway(proc)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(given).encode() + b"\n")
        yield gateway
    finally:
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await gateway.ask("quit")
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def given_for(host: SshHost, image: GuestImage, folder: Path, runtime: Path) -> dict[str, object]:
    config = HypervisorConfig("far", "qemu:///system", "qemu", str(folder / "disks"),
                              str(folder / "screens"), "libvirt-qemu", via=host.name)
    bundle = {"id": 1, "name": "tiny", "vcpus": 1, "memory_mib": 128, "root_mib": 32,
              "user_mib": 16, "base_image": str(image.base), "kernel": str(image.kernel),
              "initrd": str(image.initrd), "cmdline": "console=tty0 console=ttyS0 quiet",
              "ready_text": BANNER}
    return {"hypervisor": dataclasses.asdict(config), "bundle": bundle,
            "desktop_id": DESKTOP_ID, "runtime": str(runtime),
            "host": {"name": host.name, "address": host.address, "port": host.port,
                     "user": "root", "private_key": host.client_key,
                     "host_key": host.host_key_line}}


def domain_state(uri: str, desktop_id: int = DESKTOP_ID) -> int | None:
    conn = libvirt.open(uri)
    try:
        return int(conn.lookupByName(f"deskgate-{desktop_id}").state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


@MODULE_LOOP
async def test_a_vm_on_a_hypervisor_reached_only_through_ssh(
        uri: str, far_host: SshHost, folder: Path) -> None:
    image = guest_image()
    runtime = Path(tempfile.mkdtemp(prefix="dg-far-gw-"))
    disks, screens = folder / "disks" / str(DESKTOP_ID), folder / "screens" / str(DESKTOP_ID)
    try:
        given = given_for(far_host, image, folder, runtime)
        async with hidden_gateway(given, [Path("/run/libvirt"), folder]) as gateway:
            started = await gateway.ask("start")
            assert "error" not in started, started
            # The gateway's process saw none of it: no libvirt socket, an empty VM folder.
            assert started["sees_libvirt_socket"] is False
            assert started["sees_storage"] == []
            assert re.fullmatch(r"RFB 003\.00\d\n", str(started["banner"]))
            assert str(started["screen"]).startswith(str(runtime))  # a forwarded socket
            assert started["ssh_connects"] == 1  # libvirt, files and screen on one connection
            assert started["reached"] == [far_host.name]
            # On the hypervisor's machine: the domain runs on disks made there, as the
            # local provider makes them, and the guest booted.
            assert domain_state(uri) == libvirt.VIR_DOMAIN_RUNNING
            assert (disks / "root.qcow2").is_file() and (disks / "user.qcow2").is_file()
            assert (screens / "screen.sock").exists()
            assert oct(screens.stat().st_mode & 0o777) == "0o750"
            assert BANNER in (disks / "console.log").read_text(errors="replace")

            seen = await gateway.ask("observe")
            assert seen == {"seen": {str(DESKTOP_ID): "running (booted)"}, "state": "running"}

            # The SSH connection ends: the next call makes it again and reaches libvirt anew.
            assert await gateway.ask("drop") == {"dropped": True}
            again = await gateway.ask("observe")
            assert again["state"] == "running", again

            stopped = await gateway.ask("stop")  # no ACPI in the guest: powered off
            assert stopped == {"state": "stopped"}
            assert domain_state(uri) == libvirt.VIR_DOMAIN_SHUTOFF

            assert await gateway.ask("delete") == {"deleted": True}
        assert domain_state(uri) is None
        assert not disks.exists() and not screens.exists()
        assert far_host.connections() == 0
    finally:
        conn = libvirt.open(uri)
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(f"deskgate-{DESKTOP_ID}")
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()
        conn.close()
        shutil.rmtree(runtime, ignore_errors=True)


@MODULE_LOOP
async def test_an_unreachable_ssh_host_is_said_for_the_hypervisor(
        uri: str, far_host: SshHost, folder: Path) -> None:
    image = guest_image()
    runtime = Path(tempfile.mkdtemp(prefix="dg-far-gw-"))
    try:
        given = given_for(far_host, image, folder, runtime)
        host = dict(given["host"])  # type: ignore[call-overload]
        host["port"] = far_host.port + 1  # nobody listens there
        async with hidden_gateway({**given, "host": host}, [Path("/run/libvirt")]) as gateway:
            answer = await gateway.ask("observe")
        assert answer["error"] == ("HypervisorUnreachable: hypervisor far (through SSH host "
                                   f"{far_host.name}): {far_host.name} cannot be reached over"
                                   " SSH")
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_the_config_of_a_hypervisor_through_ssh(tmp_path: Path) -> None:
    assert remote_libvirt_socket("qemu:///system") == "/var/run/libvirt/libvirt-sock"
    assert remote_libvirt_socket("qemu:///system?socket=/run/x.sock") == "/run/x.sock"
    for bad in ("qemu:///session", "qemu+ssh://root@h/system", "qemu:///system?socket=x",
                "qemu:///system?mode=legacy"):
        with pytest.raises(ValueError, match="through SSH"):
            remote_libvirt_socket(bad)

    def load(table: str) -> None:
        path = tmp_path / "deskgate.toml"
        path.write_text(f"[hypervisors.far]\n{table}\n")
        load_settings(path)

    with pytest.raises(ConfigError, match="names its storage_dir and socket_dir"):
        load('via = "hv-host"')
    with pytest.raises(ConfigError, match="uri qemu:///system"):
        load('via = "hv-host"\nuri = "qemu:///session"\nstorage_dir = "/srv/vms"\n'
             'socket_dir = "/run/dg"')



@MODULE_LOOP
async def test_a_person_works_in_a_vm_on_the_far_hypervisor_through_the_gateway(
        uri: str, far_host: SshHost, folder: Path, settings: Settings) -> None:
    """The whole way: an SSH host added as an admin would, a VM made on the far hypervisor,
    a person's connect starts it and the relay reaches its screen through the SSH host."""
    image = guest_image()
    config = HypervisorConfig("far", "qemu:///system", "qemu", str(folder / "web-disks"),
                              str(folder / "web-screens"), "libvirt-qemu", via=far_host.name)
    made = None
    async with await app_client(settings, {"alice": False}, hypervisors=(config,),
                                vm_stop_timeout_seconds=1.0, vm_start_timeout_seconds=60.0,
                                vm_reconcile_seconds=3600.0) as client:
        app = client.server.app
        await app[SSH_HOSTS].add(CLI, name=far_host.name, address=far_host.address,
                                 port=far_host.port, user="root",
                                 private_key=far_host.client_key,
                                 host_key=far_host.host_key_line)
        bundle = await app[BUNDLES].create(CLI, Bundle(
            0, "tiny", 1, 128, 32, 16, str(image.base), kernel=str(image.kernel),
            initrd=str(image.initrd), cmdline="console=tty0 console=ttyS0 quiet",
            ready_text=BANNER))
        made = await app[VMS].create(CLI, "Far VM", bundle, hypervisor="far")
        assert made.vm is not None and made.vm.state == "stopped", made.vm
        await app[CATALOG].assign(CLI, made.id, user_ref="alice")
        try:
            browser = aiohttp.ClientSession(base_url(client),
                                            cookie_jar=aiohttp.CookieJar(unsafe=True))
            async with browser:
                csrf = await sign_in(browser, "alice", base=base_url(client))
                conn = await connect(browser, csrf, made.id, base=base_url(client))
                ws = await browser.ws_connect(base_url(client) + conn["ws_url"],
                                              origin=base_url(client))
                init = await rfb_handshake(ws)
                width, height = struct.unpack(">HH", init[:4])
                assert width > 0 and height > 0  # the guest's VGA console
                await ws.close()
            assert domain_state(uri, made.id) == libvirt.VIR_DOMAIN_RUNNING
            health = app[SSH_CONNECTIONS].health[far_host.name]
            assert health.connects == 1 and far_host.connections() == 1
        finally:
            provider = app[VMS]._provider()
            with contextlib.suppress(Exception):
                await provider.delete(app[VMS]._spec(made))
    assert domain_state(uri, made.id) is None
