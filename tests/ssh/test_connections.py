"""The gateway's SSH connections against real sshd hosts in network namespaces: one connection
per host shared by many forwarded sessions, host keys pinned or trusted on first use, a changed
key refused, sshd stopped and back, a host behind a jump host, and the VNC port never reachable
but through SSH."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sshhosts import SshHost as NsHost
from sshhosts import needs_desktops, needs_ssh_hosts, ssh_host, ssh_hosts, start_xvnc_in

from gateway.model import Secret
from gateway.ssh.connections import (
    CONNECTED,
    DOWN,
    KEY_CHANGED,
    TOFU,
    HostKeyChanged,
    SshConnections,
    SshError,
    SshHost,
)

RFB_BANNER = b"RFB 003.008\n"

__all__ = ["ssh_host", "ssh_hosts"]  # fixtures, used by name

pytestmark = [needs_ssh_hosts, needs_desktops, pytest.mark.timeout(120)]


def spec(host: NsHost, *, pinned: bool = True, jump: SshHost | None = None,
         address: str | None = None) -> SshHost:
    return SshHost(host.name, address or host.address, host.port, host.user,
                   Secret(host.client_key), host.host_key_line if pinned else "",
                   "pinned" if pinned else TOFU, jump)


@pytest.fixture
async def ssh(tmp_path: Path) -> AsyncIterator[SshConnections]:
    connections = SshConnections(tmp_path, keepalive=1.0, connect_timeout=5.0)
    yield connections
    await connections.close()


async def banner(path: Path) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        return await asyncio.wait_for(reader.readexactly(12), 10)
    finally:
        writer.close()


def host_sshd_sessions(host: NsHost) -> list[int]:
    """The sshd processes in the host's network namespace (its sessions: the listener was
    stopped by PID). Only this host's: ``ip netns pids`` lists that namespace's processes."""
    done = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True,
                          timeout=10, check=True)
    pids = [int(p) for p in done.stdout.split()]
    return [p for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "sshd"]


def direct_connect_fails(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:
        return True


async def test_twenty_sessions_share_one_connection_and_the_vnc_port_stays_closed(
        ssh_hosts, ssh: SshConnections) -> None:  # type: ignore[no-untyped-def]
    host = ssh_hosts(1)
    desktop = start_xvnc_in(host, xterm=False, window_manager=False)
    assert desktop.port is not None and desktop.unix_path is not None
    assert direct_connect_fails(host.address, desktop.port)
    target = spec(host)
    over_unix = await ssh.local_path(target, dest_path=str(desktop.unix_path))
    over_tcp = await ssh.local_path(target, "127.0.0.1", desktop.port)
    assert oct(over_unix.stat().st_mode & 0o777) == "0o600"
    assert await ssh.local_path(target, dest_path=str(desktop.unix_path)) == over_unix  # shared
    # 20 sessions open at the same time. Xvnc accepts 5 connections at a time (its listen
    # backlog), so they are opened a few at a time and then all held open together.
    gate = asyncio.Semaphore(4)
    opened: list[asyncio.StreamWriter] = []

    async def session(path: Path) -> bytes:
        async with gate:
            reader, writer = await asyncio.open_unix_connection(str(path))
            opened.append(writer)
            return await asyncio.wait_for(reader.readexactly(12), 10)

    try:
        banners = await asyncio.gather(*(session(over_unix) for _ in range(19)),
                                       session(over_tcp))
        assert banners == [RFB_BANNER] * 20
        assert host.connections() == 1  # every session on the one connection
    finally:
        for writer in opened:
            writer.close()
    assert ssh.health[host.name].state == CONNECTED
    done = await ssh.run(target, ["id", "-un"])
    assert done.exit_status == 0 and str(done.stdout).strip() == host.user


async def test_a_first_use_key_is_recorded_and_a_changed_key_is_refused(
        ssh_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recorded: list[str] = []
    refused: list[str] = []

    async def first(_: SshHost, line: str) -> None:
        recorded.append(line)

    async def changed(_: SshHost, offered: str) -> None:
        refused.append(offered)

    ssh = SshConnections(tmp_path, on_first_key=first, on_key_changed=changed)
    try:
        await ssh.run(spec(ssh_host, pinned=False), ["true"])
        assert len(recorded) == 1
        assert recorded[0].split()[1:] == ssh_host.host_key_line.split()[1:]
        await ssh.drop(ssh_host.name)
        ssh_host.rotate_host_key()
        ssh_host.restart_sshd()
        pinned = SshHost(ssh_host.name, ssh_host.address, ssh_host.port, ssh_host.user,
                         Secret(ssh_host.client_key), recorded[0])
        with pytest.raises(HostKeyChanged) as refusal:
            await ssh.run(pinned, ["true"])
        assert refusal.value.final and "changed" in refusal.value.reason
        assert ssh.health[ssh_host.name].state == KEY_CHANGED
        assert refused and refused[0].split()[1] != recorded[0].split()[2]
    finally:
        await ssh.close()


async def test_sshd_gone_then_back(ssh_hosts, ssh: SshConnections) -> None:  # type: ignore[no-untyped-def]
    host, other = ssh_hosts(1), ssh_hosts(2)
    desktop = start_xvnc_in(host, xterm=False, window_manager=False, tcp=False)
    other_desktop = start_xvnc_in(other, xterm=False, window_manager=False, tcp=False)
    path = await ssh.local_path(spec(host), dest_path=str(desktop.unix_path))
    other_path = await ssh.local_path(spec(other), dest_path=str(other_desktop.unix_path))
    assert await banner(path) == RFB_BANNER
    # Every sshd process of the host goes (the listener and the gateway's session).
    host.stop_sshd()
    for pid in host_sshd_sessions(host):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # keepalives every 1 s, three missed: down
        if ssh.health[host.name].state == DOWN:
            break
        await asyncio.sleep(0.1)
    assert ssh.health[host.name].state == DOWN
    with pytest.raises(SshError):
        await ssh.local_path(spec(host), dest_path=str(desktop.unix_path))
    assert await banner(other_path) == RFB_BANNER  # the other host carries on
    host.start_sshd()
    path = await ssh.local_path(spec(host), dest_path=str(desktop.unix_path))
    assert await banner(path) == RFB_BANNER
    assert ssh.health[host.name].state == CONNECTED and ssh.health[host.name].connects == 2


async def test_a_host_reachable_only_through_its_jump_host(
        ssh_hosts, ssh: SshConnections) -> None:  # type: ignore[no-untyped-def]
    jump = ssh_hosts(3)
    hidden = ssh_hosts(4, behind=3)
    desktop = start_xvnc_in(hidden, xterm=False, window_manager=False)
    assert desktop.port is not None
    # This machine is not on its network: no address of this machine is on that /24 (nothing
    # is sent to it from here: without a link, it would go out by the default route).
    subnet = hidden.address.rsplit(".", 1)[0] + "."
    addresses = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                               text=True, timeout=10, check=True).stdout
    assert subnet not in addresses
    assert subnet in jump.exec("ip", "-o", "-4", "addr", "show").stdout
    through = spec(hidden, jump=spec(jump))
    done = await ssh.run(through, ["id", "-un"])
    assert str(done.stdout).strip() == hidden.user
    path = await ssh.local_path(through, "127.0.0.1", desktop.port)
    assert await banner(path) == RFB_BANNER
    assert jump.connections() == 1 and hidden.connections() == 1
