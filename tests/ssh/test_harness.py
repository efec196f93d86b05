"""The SSH host harness itself: a host answers only on its SSH port, a desktop inside is reached
through direct-tcpip and direct-streamlocal channels, a changed host key is refused, connections
are counted from inside, and sshd stops and starts by PID."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sshhosts import (
    RFB_BANNER,
    NsDesktop,
    SshHost,
    needs_desktops,
    needs_ssh_hosts,
    ssh_banner,
    ssh_host,
    ssh_hosts,
    start_xvnc_in,
)

asyncssh = pytest.importorskip("asyncssh")

__all__ = ["ssh_host", "ssh_hosts"]  # fixtures, used by name

pytestmark = [
    needs_ssh_hosts,
    pytest.mark.filterwarnings("ignore:DSA is deprecated"),
]


def connect(host: SshHost, known_hosts: str | None = None, **kwargs: object) -> object:
    return asyncssh.connect(
        host.address,
        port=host.port,
        username=host.user,
        client_keys=[asyncssh.import_private_key(host.client_key)],
        known_hosts=asyncssh.import_known_hosts(known_hosts or host.host_key_line),
        connect_timeout=10,
        **kwargs,
    )


@pytest.fixture(scope="module")
def desktop(ssh_hosts: Callable[[int], SshHost]) -> Iterator[NsDesktop]:
    """Host 1 of this module with a desktop on its loopback TCP and on a unix socket."""
    d = start_xvnc_in(ssh_hosts(1), tcp=True, unix=True)
    try:
        yield d
    finally:
        d.stop()


async def read_banner(reader: asyncssh.SSHReader[bytes]) -> bytes:
    return await asyncio.wait_for(reader.readexactly(len(RFB_BANNER)), 10)


@needs_desktops
def test_only_ssh_answers_from_outside(desktop: NsDesktop) -> None:
    host = desktop.host
    assert desktop.banner_inside() == RFB_BANNER  # the desktop is up, on the host's loopback
    # The PID held is Xvnc's own, run by the host account, in the host's namespace.
    proc = Path(f"/proc/{desktop.xvnc_pid}")
    assert (proc / "comm").read_text().strip() == "Xvnc"
    assert proc.stat().st_uid == host.uid
    assert (proc / "ns" / "net").stat().st_ino == Path(f"/run/netns/{host.netns}").stat().st_ino
    assert desktop.port is not None
    with pytest.raises(OSError), socket.create_connection((host.address, desktop.port), timeout=3):
        pass
    assert ssh_banner(host.address, host.port).startswith("SSH-2.0-")
    # The host has no way out: its one route is the /24 it shares with this machine.
    routes = host.exec("ip", "-4", "route").stdout.splitlines()
    assert len(routes) == 1 and routes[0].startswith(f"{host.address.rsplit('.', 1)[0]}.0/24 dev eth0 ")


@needs_desktops
async def test_a_command_and_the_desktop_through_ssh(desktop: NsDesktop) -> None:
    host = desktop.host
    assert desktop.port is not None and desktop.unix_path is not None
    async with connect(host) as conn:
        result = await conn.run("id -un", check=True, timeout=10)
        assert result.stdout.strip() == host.user

        reader, writer = await conn.open_connection("127.0.0.1", desktop.port, encoding=None)
        assert await read_banner(reader) == RFB_BANNER
        writer.close()

        reader, writer = await conn.open_unix_connection(str(desktop.unix_path), encoding=None)
        assert await read_banner(reader) == RFB_BANNER
        writer.close()


@needs_desktops
async def test_many_channels_ride_one_connection(desktop: NsDesktop) -> None:
    host = desktop.host
    port = desktop.port
    assert port is not None
    before = host.connections()
    # Twenty connects at once overflow Xvnc's listen backlog (5); with SYN cookies some of them
    # would hang for good (see SshHost.set_syncookies). Without, they are retried in a second.
    host.set_syncookies(False)
    try:
        await many_channels(host, port, before)
    finally:
        host.set_syncookies(True)
    deadline = time.monotonic() + 5
    while host.connections() != before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert host.connections() == before


async def many_channels(host: SshHost, port: int, before: int) -> None:
    async with connect(host) as conn:

        async def one() -> bytes:
            reader, writer = await conn.open_connection("127.0.0.1", port, encoding=None)
            try:
                return await read_banner(reader)
            finally:
                writer.close()

        banners = await asyncio.gather(*(one() for _ in range(20)))
        assert banners == [RFB_BANNER] * 20
        assert host.connections() == before + 1


async def test_a_changed_host_key_is_refused(ssh_host: SshHost) -> None:
    old = ssh_host.host_key_line
    new = ssh_host.rotate_host_key()
    assert new != old and new.startswith(f"[{ssh_host.address}]:{ssh_host.port} ssh-ed25519 ")
    ssh_host.restart_sshd()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(ssh_host, known_hosts=old):
            pass
    async with connect(ssh_host) as conn:
        assert (await conn.run("id -un", check=True, timeout=10)).stdout.strip() == ssh_host.user


async def test_sshd_stops_and_starts_by_pid(ssh_host: SshHost) -> None:
    pid = ssh_host.sshd_pid
    assert pid is not None
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"  # the PID held is sshd's own
    ssh_host.stop_sshd()
    assert ssh_host.sshd_pid is None
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        async with connect(ssh_host):
            pass
    assert time.monotonic() - started < 2
    ssh_host.start_sshd()
    assert ssh_host.sshd_pid not in (None, pid)
    async with connect(ssh_host) as conn:
        assert (await conn.run("id -un", check=True, timeout=10)).stdout.strip() == ssh_host.user
