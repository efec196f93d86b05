"""The "ssh" desktop provider against real sshd hosts in network namespaces: a desktop started
on demand as the host's account, reached only through SSH with a real VncAuth login, taken
over rather than started twice, stopped by its recorded pids; two desktops on one host on one
SSH connection; a host whose sshd is gone is a clear DesktopUnavailable and state "unknown"."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sshhosts import SshHost as NsHost
from sshhosts import needs_desktops, needs_ssh_hosts, ssh_hosts

from gateway.errors import DesktopUnavailable
from gateway.model import Endpoint, Secret
from gateway.providers import PROVIDERS, DesktopSpec, ProviderContext
from gateway.providers.ssh import SshProvider
from gateway.proxy.rfb import DesktopHandshake
from gateway.ssh.connections import SshConnections, SshHost

__all__ = ["ssh_hosts"]  # the fixture, used by name

pytestmark = [needs_ssh_hosts, needs_desktops, pytest.mark.timeout(120)]

XVNC_NAMES = ("Xvnc", "Xtigervnc")


def spec_of(host: NsHost) -> SshHost:
    return SshHost(host.name, host.address, host.port, host.user, Secret(host.client_key),
                   host.host_key_line)


def desktop(desktop_id: int, host: NsHost, geometry: str = "1024x768") -> DesktopSpec:
    return DesktopSpec(id=desktop_id, name=f"remote{desktop_id}", provider="ssh",
                       geometry=geometry, via=host.name)


@pytest.fixture
async def ssh(tmp_path: Path) -> AsyncIterator[SshConnections]:
    connections = SshConnections(tmp_path, keepalive=1.0, connect_timeout=5.0)
    yield connections
    await connections.close()


def provider_for(ssh: SshConnections, *hosts: NsHost, tmp: Path) -> SshProvider:
    specs = {h.name: spec_of(h) for h in hosts}

    async def reach(name: str) -> tuple[SshConnections, SshHost]:
        return ssh, specs[name]
    return SshProvider(ProviderContext(tmp, ssh=reach))


def xvnc_processes(host: NsHost) -> dict[int, str]:
    """Xvnc processes in the host's namespace run by its account: pid -> command line."""
    found = {}
    for pid in _netns_pids(host):
        proc = Path(f"/proc/{pid}")
        try:
            if proc.stat().st_uid != host.uid:
                continue
            if (proc / "comm").read_text().strip() not in XVNC_NAMES:
                continue
            found[pid] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def _netns_pids(host: NsHost) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return [int(p) for p in out.split()]


def xvnc_of(host: NsHost, desktop_id: int) -> tuple[int, str]:
    mine = [(pid, cmd) for pid, cmd in xvnc_processes(host).items()
            if f"/deskgate/{desktop_id}/vnc.sock" in cmd]
    assert len(mine) == 1, mine
    return mine[0]


async def vnc_login(endpoint: Endpoint) -> str:
    """A whole VncAuth login through the endpoint's socket, up to ServerInit: the desktop's
    size."""
    assert endpoint.unix_path and endpoint.password is not None
    reader, writer = await asyncio.open_unix_connection(endpoint.unix_path)
    try:
        handshake = DesktopHandshake(endpoint.password)
        async with asyncio.timeout(10):
            while not handshake.authenticated:
                data = await reader.read(4096)
                if not data:
                    raise handshake.eof_error()
                writer.write(handshake.feed(data))
            writer.write(handshake.client_init())
            while not handshake.done:
                data = await reader.read(65536)
                if not data:
                    raise handshake.eof_error()
                handshake.feed(data)
        assert handshake.server_init is not None
        assert handshake.security_type == 2  # VncAuth
        return f"{handshake.server_init.width}x{handshake.server_init.height}"
    finally:
        writer.close()


def tcp_closed(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:
        return True


def test_registered() -> None:
    assert PROVIDERS["ssh"] is SshProvider


async def test_start_reach_take_over_and_stop(ssh_hosts, ssh: SshConnections,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    host = ssh_hosts(1)
    provider = provider_for(ssh, host, tmp=tmp_path)
    d = desktop(101, host)
    assert await provider.state(d) == "stopped"

    await provider.ensure_running(d)
    assert await provider.state(d) == "running"
    pid, cmd = xvnc_of(host, 101)
    assert " -rfbport -1 " in cmd and "-nolisten tcp" in cmd and "VncAuth" in cmd
    # No TCP listener of Xvnc in the namespace; nothing answers from outside but sshd.
    listening = host.exec("ss", "-Hltnp").stdout
    assert not any(name.lower() in listening.lower() for name in XVNC_NAMES), listening
    assert f"pid={pid}," not in listening
    display = int(cmd.split()[1].lstrip(":"))
    assert tcp_closed(host.address, 5900 + display) and tcp_closed(host.address, 5900)
    assert tcp_closed(host.address, 6000 + display)
    # Its folder is private, the account's; the socket and password file are 0600.
    remote_sock = cmd.split("-rfbunixpath ")[1].split()[0]
    folder = str(Path(remote_sock).parent)
    modes = host.exec("stat", "-c", "%a %U %n", folder, remote_sock, f"{folder}/vnc.passwd",
                      user=host.user).stdout.split("\n")
    assert modes[0].startswith(f"700 {host.user} ") and modes[1].startswith(f"600 {host.user} ")
    assert modes[2].startswith(f"600 {host.user} ")

    endpoint = await provider.endpoint(d)
    assert endpoint.unix_path and not endpoint.port
    assert Path(endpoint.unix_path).stat().st_mode & 0o777 == 0o600
    assert await vnc_login(endpoint) == "1024x768"

    # Again: taken over, not started twice.
    await provider.ensure_running(d)
    assert xvnc_of(host, 101)[0] == pid
    # A fresh provider (the gateway restarted) reads the password back from the host.
    other = provider_for(ssh, host, tmp=tmp_path)
    assert await other.state(d) == "running"
    assert await vnc_login(await other.endpoint(d)) == "1024x768"
    await other.ensure_running(d)
    assert xvnc_of(host, 101)[0] == pid

    # A wrong password is refused (the socket really wants VncAuth).
    with pytest.raises(Exception, match="(?i)password|auth|refused"):
        await vnc_login(Endpoint(host="", unix_path=endpoint.unix_path,
                                 password=Secret("wrong123")))

    await provider.stop(d)
    assert not Path(endpoint.unix_path).exists()  # its forward is gone too: refused here
    assert not [p for p, c in xvnc_processes(host).items() if "/deskgate/101/" in c]
    assert await provider.state(d) == "stopped"
    left = host.exec("ls", "-A", folder, user=host.user, check=False).stdout.split()
    assert "vnc.sock" not in left and "vnc.passwd" not in left
    assert not [p for p in _netns_pids(host) if _desktop_of(p) == folder]
    with pytest.raises(DesktopUnavailable):
        await provider.endpoint(d)
    await provider.stop(d)  # stopping a stopped desktop is fine
    await provider.close()


def _desktop_of(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for item in env:
        if item.startswith(b"DESKGATE_DESKTOP="):
            return item.split(b"=", 1)[1].decode()
    return ""


async def test_two_desktops_share_one_connection(ssh_hosts, ssh: SshConnections,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    host = ssh_hosts(1)
    provider = provider_for(ssh, host, tmp=tmp_path)
    a, b = desktop(201, host), desktop(202, host, geometry="800x600")
    try:
        await asyncio.gather(provider.ensure_running(a), provider.ensure_running(b))
        (pid_a, cmd_a), (pid_b, cmd_b) = xvnc_of(host, 201), xvnc_of(host, 202)
        assert pid_a != pid_b and cmd_a.split()[1] != cmd_b.split()[1]  # their displays
        sizes = await asyncio.gather(vnc_login(await provider.endpoint(a)),
                                     vnc_login(await provider.endpoint(b)))
        assert sizes == ["1024x768", "800x600"]
        assert host.connections() == 1
        # Each desktop's processes: Xvnc, openbox and xterm, all the account's.
        for folder_id in (201, 202):
            mine = [p for p in _netns_pids(host) if _desktop_of(p).endswith(f"/deskgate/{folder_id}")]
            names = sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in mine)
            assert any(n in XVNC_NAMES for n in names) and "openbox" in names and "xterm" in names
    finally:
        await provider.stop(a)
        await provider.stop(b)
    assert await provider.state(a) == "stopped" and await provider.state(b) == "stopped"
    assert host.connections() == 1


async def test_host_down_is_unavailable_and_unknown(ssh_hosts, ssh: SshConnections,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    host = ssh_hosts(2)
    host.stop_sshd()
    try:
        provider = provider_for(ssh, host, tmp=tmp_path)
        d = desktop(301, host)
        with pytest.raises(DesktopUnavailable,
                           match=f"^desktop remote301: {host.name} cannot be reached over SSH$"):
            await provider.ensure_running(d)
        assert await provider.state(d) == "unknown"
        with pytest.raises(DesktopUnavailable):
            await provider.endpoint(d)
    finally:
        host.start_sshd()


async def test_no_via_and_no_ssh_are_clear(tmp_path: Path) -> None:
    provider = SshProvider(ProviderContext(tmp_path))
    d = DesktopSpec(id=1, name="x", provider="ssh", via="somewhere")
    with pytest.raises(DesktopUnavailable, match="does not reach desktops over SSH"):
        await provider.ensure_running(d)
    assert await provider.state(d) == "unknown"
    with pytest.raises(DesktopUnavailable, match="names no SSH host"):
        await provider.ensure_running(DesktopSpec(id=1, name="x", provider="ssh"))


async def test_runtime_folder_under_run_user(ssh_hosts, ssh: SshConnections,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    """With /run/user/<uid> there (no XDG_RUNTIME_DIR over SSH without PAM), the desktop's
    folder is <it>/deskgate/<id>; else ~/.cache/deskgate/<id> (the other tests)."""
    host = ssh_hosts(1)
    runtime = host.runtime_dir()
    provider = provider_for(ssh, host, tmp=tmp_path)
    d = desktop(401, host)
    try:
        await provider.ensure_running(d)
        _, cmd = xvnc_of(host, 401)
        assert f"-rfbunixpath {runtime}/deskgate/401/vnc.sock " in cmd
        assert await vnc_login(await provider.endpoint(d)) == "1024x768"
    finally:
        await provider.stop(d)
    assert await provider.state(d) == "stopped"
