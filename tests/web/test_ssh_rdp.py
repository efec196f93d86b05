"""A static RDP desktop behind a jump host, through the real app: xrdp runs inside an SSH host (a
network namespace of tests/sshhosts.py) on that namespace's own loopback, which this machine
cannot reach; the RDP bridge's xfreerdp connects to a socket that forwards over the host's SSH
connection, and a person's websocket shows the remote xterm's colour.

The certificate is still checked, and fails closed: a pinned fingerprint, a CA-issued
certificate for the desktop's configured host name (not the socket's path), a certificate
trusted on first use remembered under that name. A changed jump host takes effect for new
connections while the open session goes on; without one, the server cannot be reached.

xrdp gives one client per session: the tests connect one at a time and wait for each bridge to
stop (a short grace period) before the next."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rdp_servers import RdpServer, free_display, needs_rdp, pid_alive, start_xrdp
from sshhosts import SshHost, needs_ssh_hosts, ssh_hosts
from websupport import CLI, Client, app_client, base_url, connect, rfb_handshake, sign_in

from gateway.config import Settings
from gateway.keys import CATALOG, RDP_BRIDGES, SSH_HOSTS, STORE
from gateway.rdp.errors import REASON_CERTIFICATE, REASON_UNREACHABLE

__all__ = ["ssh_hosts"]  # a fixture, used by name

pytestmark = [needs_ssh_hosts, needs_rdp, pytest.mark.timeout(300)]

BRIDGE_USER = "deskgate-desktop"  # Settings.run_as_user's default
GRACE = 1.5  # seconds a released bridge waits for its browser
TICKET_SECONDS = 3  # and a connect's bridge for its ticket's holder (at least the grace time)
SAMPLE = (200, 600)  # a pixel of the remote xterm's background, below its text


@pytest.fixture(scope="module")
def behind(ssh_hosts: Callable[..., SshHost]) -> Iterator[tuple[SshHost, RdpServer]]:
    """Host 1 of this module, with an xrdp listening on its own 127.0.0.1 only."""
    host = ssh_hosts(1)
    server = start_xrdp(netns=host.netns)
    try:
        yield host, server
    finally:
        server.stop()


@pytest.fixture
async def gateway(settings: Settings, behind: tuple[SshHost, RdpServer]) -> AsyncIterator[Client]:
    """The app with SSH hosts "bastion" and "bastion2" (the same sshd, two connections), RDP
    bridges as the unprivileged bridge user in a short runtime folder it may pass."""
    host, _server = behind
    runtime = Path(tempfile.mkdtemp(prefix="dg-sshrdp-", dir="/tmp"))
    os.chmod(runtime, 0o711)  # noqa: S103 - traverse only: the bridge user reaches its folders
    try:
        async with await app_client(settings, {"root": True, "alice": False},
                                    runtime_dir=str(runtime), rdp_grace_seconds=GRACE,
                                    ticket_ttl_seconds=TICKET_SECONDS,
                                    rdp_display_base=free_display(300, 400)) as c:
            for name in ("bastion", "bastion2"):
                await c.server.app[SSH_HOSTS].add(
                    CLI, name=name, address=host.address, port=host.port, user=host.user,
                    private_key=host.client_key, host_key=host.host_key_line)
            c.runtime = runtime  # type: ignore[attr-defined]
            yield c
            await no_bridges(c)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


async def add_rdp(client: Client, server: RdpServer, name: str, *, host: str = "127.0.0.1",
                  via: str | None = "bastion", **options: str) -> int:
    catalog = client.server.app[CATALOG]
    desktop = await catalog.add_desktop(
        CLI, name, "static", host=host, port=server.port, password=server.password,
        protocol="rdp", options={"username": server.username, **options}, via=via)
    await catalog.assign(CLI, desktop.id, user_ref="alice")
    return int(desktop.id)


async def try_connect(client: Client, csrf: str, desktop_id: int) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/desktops/{desktop_id}/connect",
                             headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    return resp.status, await resp.json()


async def no_bridges(client: Client, timeout: float = TICKET_SECONDS + 10) -> None:
    """Every bridge of the app has stopped (its grace period over)."""
    bridges = client.server.app[RDP_BRIDGES]
    deadline = time.monotonic() + timeout
    while len(bridges):
        assert time.monotonic() < deadline, bridges.stats()
        await asyncio.sleep(0.1)


def xfreerdp_args(runtime: Path) -> list[str]:
    """The command line of the one xfreerdp of this gateway's bridges."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            try:
                args = (entry / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if args[0] == "xfreerdp3" and str(runtime) in (entry / "environ").read_text(
                    errors="replace"):
                found.append(args)
    assert len(found) == 1, found
    return found[0]


class Screen:
    """The browser's side of the RFB stream after ServerInit: asks for one pixel at a time
    (32-bit true colour, raw) and reads the answers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buf = b""

    async def need(self, n: int) -> bytes:
        while len(self.buf) < n:
            msg = await self.ws.receive(timeout=20)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            self.buf += msg.data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def start(self) -> None:
        # SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, red 16, green 8, blue 0
        await self.ws.send_bytes(b"\x00\x00\x00\x00" + struct.pack(
            ">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        await self.ws.send_bytes(b"\x02\x00" + struct.pack(">Hi", 1, 0))  # SetEncodings: Raw

    async def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        await self.ws.send_bytes(b"\x03\x00" + struct.pack(">4H", x, y, 1, 1))
        while True:
            kind = (await self.need(1))[0]
            if kind == 0:
                break
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                _, length = struct.unpack(">3sI", await self.need(7))
                await self.need(length)
                continue
            raise AssertionError(f"unexpected server message {kind}")
        (count,) = struct.unpack(">xH", await self.need(3))
        colour: tuple[int, int, int] | None = None
        for _ in range(count):
            rx, ry, w, h, enc = struct.unpack(">4Hi", await self.need(12))
            if enc == 0:
                data = await self.need(w * h * 4)
                offset = ((y - ry) * w + (x - rx)) * 4
                if 0 <= offset < len(data):
                    b, g, r = data[offset : offset + 3]
                    colour = (r, g, b)
            elif enc == -308:  # ExtendedDesktopSize
                (screens,) = struct.unpack(">B3x", await self.need(4))
                await self.need(16 * screens)
            elif enc != -223:  # DesktopSize has no data
                raise AssertionError(f"unexpected encoding {enc}")
        assert colour is not None
        return colour

    async def shows(self, colour: tuple[int, int, int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = await self.pixel(*SAMPLE)
            if all(abs(a - b) <= 12 for a, b in zip(seen, colour, strict=True)):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the remote colour {colour} never showed; last pixel {seen}")


async def open_screen(client: Client, conn: dict[str, str]) -> tuple[Screen, tuple[int, int]]:
    ws = await client.ws_connect(conn["ws_url"], origin=base_url(client))
    init = await rfb_handshake(ws)
    screen = Screen(ws)
    await screen.start()
    return screen, struct.unpack(">HH", init[:4])


def refused_here(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:
        return True


async def test_an_rdp_desktop_behind_a_jump_host(gateway: Client,
                                                 behind: tuple[SshHost, RdpServer]) -> None:
    host, server = behind
    # xrdp answers inside the host only: from this machine, not at all.
    assert refused_here(host.address, server.port) and refused_here("127.0.0.1", server.port)
    did = await add_rdp(gateway, server, "Win", cert_fingerprint=server.certificate_sha256())
    csrf = await sign_in(gateway, "alice")
    conn = await connect(gateway, csrf, did)
    screen, size = await open_screen(gateway, conn)
    try:
        assert size[0] > 0 and size[1] > 0
        await screen.shows(server.colour)
        assert host.connections() == 1  # the bridge's connection rides on the one SSH connection
        # The bridge's xfreerdp opened the forwarded socket, as the desktop's host and port.
        args = xfreerdp_args(gateway.runtime)  # type: ignore[attr-defined]
        [where] = [a[3:] for a in args if a.startswith("/v:")]
        sock = Path(where)
        bridge_uid = pwd.getpwnam(BRIDGE_USER).pw_uid
        assert sock.parent == gateway.runtime / f"ssh-{bridge_uid}"  # type: ignore[attr-defined]
        assert sock.name.startswith("bastion-") and sock.is_socket()
        assert (sock.stat().st_uid, stat.S_IMODE(sock.stat().st_mode)) == (bridge_uid, 0o600)
        folder = sock.parent.stat()
        assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (bridge_uid, 0o700)
        assert f"/port:{server.port}" in args
        [cert] = [a for a in args if a.startswith("/cert:")]
        assert cert.startswith("/cert:deny,fingerprint:sha256:") and cert.endswith(
            ",name:127.0.0.1")
        assert server.password not in " ".join(args)
    finally:
        await screen.ws.close()
    audit = [e.detail for e in await gateway.server.app[STORE].list_audit(limit=50)]
    assert any("through SSH host bastion" in d and "certificates: fingerprint" in d
               for d in audit), audit
    assert any(d.startswith(f"session {conn['session_id']}") for d in audit), audit


async def test_certificates_are_checked_through_the_jump_host(
        gateway: Client, behind: tuple[SshHost, RdpServer]) -> None:
    _host, server = behind
    right = server.certificate_sha256().replace(":", "")
    wrong = await add_rdp(gateway, server, "Pinned wrong",
                          cert_fingerprint=("0" if right[0] != "0" else "1") + right[1:])
    # CA-issued for 127.0.0.1: the name checked is the desktop's configured host, so the same
    # server named "localhost" (which the jump host reaches just as well) is refused.
    by_name = await add_rdp(gateway, server, "CA localhost", host="localhost",
                            cert_ca=server.ca_pem)
    by_ca = await add_rdp(gateway, server, "CA", cert_ca=server.ca_pem)
    tofu = await add_rdp(gateway, server, "Tofu", cert_policy="tofu")
    csrf = await sign_in(gateway, "alice")
    for did in (wrong, by_name):
        status, body = await try_connect(gateway, csrf, did)
        assert (status, body["error"]) == (424, REASON_CERTIFICATE), body
    for did in (by_ca, tofu):
        status, body = await try_connect(gateway, csrf, did)  # the bridge signed in
        assert status == 200, body
        await no_bridges(gateway)  # its ticket unused: it stops when the ticket would expire
    # Trusted on first use under the desktop's host and port, not the socket's path.
    store = gateway.runtime / "rdp" / "freerdp-tofu" / "freerdp" / "server"  # type: ignore[attr-defined]
    assert [p.name for p in store.iterdir()] == [f"127.0.0.1_{server.port}.pem"]


async def test_a_changed_jump_host_is_taken_by_new_connections(
        gateway: Client, behind: tuple[SshHost, RdpServer]) -> None:
    host, server = behind
    app = gateway.server.app
    did = await add_rdp(gateway, server, "Moving", cert_fingerprint=server.certificate_sha256())
    csrf = await sign_in(gateway, "alice")
    screen, _ = await open_screen(gateway, await connect(gateway, csrf, did))
    try:
        await screen.shows(server.colour)
        await app[CATALOG].update_desktop(CLI, did, via="bastion2")
        # The open session goes on, on its way through bastion.
        await screen.shows(server.colour)
        assert host.connections() == 1 and not app[SSH_HOSTS].connections.connected("bastion2")
    finally:
        await screen.ws.close()
    await no_bridges(gateway)
    screen, _ = await open_screen(gateway, await connect(gateway, csrf, did))
    try:
        await screen.shows(server.colour)
        args = xfreerdp_args(gateway.runtime)  # type: ignore[attr-defined]
        [where] = [a[3:] for a in args if a.startswith("/v:")]
        assert Path(where).name.startswith("bastion2-")
        assert app[SSH_HOSTS].connections.connected("bastion2") and host.connections() == 2
    finally:
        await screen.ws.close()
    await no_bridges(gateway)
    # No jump host: this machine tries the address itself, where nothing answers.
    await app[CATALOG].update_desktop(CLI, did, via="")
    status, body = await try_connect(gateway, csrf, did)
    assert (status, body["error"]) == (503, "desktop Moving is not answering"), body
    audit = [e.detail for e in await app[STORE].list_audit(limit=50, desktop="Moving")]
    assert "desktop changed: through SSH host bastion2 (by the command line)" in audit
    assert "desktop changed: no jump host (by the command line)" in audit


async def test_a_server_the_jump_host_cannot_reach_is_unreachable_not_a_refused_account(
        gateway: Client, behind: tuple[SshHost, RdpServer]) -> None:
    """The forwarded socket accepts the bridge's connection, then closes it: FreeRDP exits as
    for a refused NLA sign-in, and only an RDP answer through the socket tells them apart."""
    host, server = behind
    closed = server.port + 1 if server.port < 65535 else server.port - 1
    assert not host.exec("ss", "-Hltn", f"( sport = :{closed} )").stdout.strip()
    did = await add_rdp(gateway, server, "Nowhere", security="nla",
                        cert_fingerprint=server.certificate_sha256())
    await gateway.server.app[CATALOG].update_desktop(CLI, did, port=closed)
    csrf = await sign_in(gateway, "alice")
    t0 = time.monotonic()
    status, body = await try_connect(gateway, csrf, did)
    assert (status, body["error"]) == (503, REASON_UNREACHABLE), body
    assert time.monotonic() - t0 < 10
    assert host.connections() == 1
