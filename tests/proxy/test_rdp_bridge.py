"""The RDP bridge against real servers: xrdp (TLS) and FreeRDP's shadow server (NLA).

Each test drives ``RdpBridges`` and looks at what a browser would get through ``relay_vnc``:
ServerInit, then the remote xterm's background colour decoded from a raw FramebufferUpdate.
Timings are printed (run with ``-s``), never asserted beyond generous bounds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from rdp_servers import RdpServer, free_port, make_test_ca, needs_rdp, pid_alive

from gateway.errors import WS_UPSTREAM_AUTH
from gateway.model import Endpoint, RelayCounters, RelayPolicy, Secret
from gateway.proxy import relay_vnc
from gateway.rdp.bridges import RdpBridges
from gateway.rdp.errors import BridgeError
from gateway.rdp.target import RdpTarget
from gateway.xdisplay.numbers import free_display, free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay, start_display, x_client_output

if TYPE_CHECKING:
    from conftest import MemoryChannel

pytestmark = [needs_rdp, pytest.mark.timeout(120)]

BRIDGE_USER = "deskgate-desktop"
W, H = 1024, 768
SAMPLE = (200, 600)  # below the xterm's text, away from the pointer in the middle


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class PixelFormat:
    bpp: int
    big_endian: bool
    shifts: tuple[int, int, int]
    maxes: tuple[int, int, int]

    def rgb(self, raw: bytes) -> tuple[int, int, int]:
        value = int.from_bytes(raw, "big" if self.big_endian else "little")
        return tuple(  # type: ignore[return-value]
            ((value >> s) & m) * 255 // m for s, m in zip(self.shifts, self.maxes, strict=True)
        )


async def rfb_open(channel: MemoryChannel) -> tuple[int, int, PixelFormat]:
    """A minimal RFB 3.8 client up to ServerInit: (width, height, pixel format)."""
    assert await channel.read(12) == b"RFB 003.008\n"
    channel.push(b"RFB 003.008\n")
    assert await channel.read(2) == b"\x01\x01"
    channel.push(b"\x01")
    assert await channel.read(4) == b"\0\0\0\0"
    channel.push(b"\x01")
    head = await channel.read(24, timeout=20)
    width, height = struct.unpack(">HH", head[:4])
    bpp, _depth, big, _true, rmax, gmax, bmax, rs, gs, bs = struct.unpack(">BBBBHHHBBB", head[4:17])
    (name_length,) = struct.unpack(">I", head[20:])
    await channel.read(name_length)
    return width, height, PixelFormat(bpp, bool(big), (rs, gs, bs), (rmax, gmax, bmax))


async def read_update(channel: MemoryChannel, pf: PixelFormat) -> dict[tuple[int, int], bytes]:
    """The next FramebufferUpdate (raw rectangles only): top-left -> (w, h, pixels) packed."""
    rects: dict[tuple[int, int], bytes] = {}
    while True:
        kind = (await channel.read(1, timeout=20))[0]
        if kind == 0:
            break
        if kind == 2:  # Bell
            continue
        if kind == 3:  # ServerCutText
            _, length = struct.unpack(">3sI", await channel.read(7))
            await channel.read(length)
            continue
        raise AssertionError(f"unexpected server message {kind}")
    (count,) = struct.unpack(">xH", await channel.read(3))
    for _ in range(count):
        x, y, w, h, enc = struct.unpack(">4Hi", await channel.read(12))
        if enc == 0:
            rects[(x, y)] = struct.pack(">HH", w, h) + await channel.read(w * h * pf.bpp // 8, timeout=20)
        elif enc == -308:  # ExtendedDesktopSize
            (screens,) = struct.unpack(">B3x", await channel.read(4))
            await channel.read(16 * screens)
        elif enc == -223:  # DesktopSize
            pass
        else:
            raise AssertionError(f"unexpected encoding {enc}")
    return rects


def close_to(a: tuple[int, int, int], b: tuple[int, int, int], slack: int = 12) -> bool:
    return all(abs(x - y) <= slack for x, y in zip(a, b, strict=True))


async def wait_for_colour(
    channel: MemoryChannel, pf: PixelFormat, colour: tuple[int, int, int], timeout: float = 20.0
) -> float:
    """Ask for the pixel at SAMPLE until it shows ``colour``; returns the seconds it took."""
    t0 = time.monotonic()
    channel.push(b"\x02\x00" + struct.pack(">Hi", 1, 0))  # SetEncodings: Raw
    seen: tuple[int, int, int] | None = None
    while time.monotonic() - t0 < timeout:
        channel.push(b"\x03\x00" + struct.pack(">4H", SAMPLE[0], SAMPLE[1], 1, 1))
        rects = await read_update(channel, pf)
        for (x, y), data in rects.items():
            w, _h = struct.unpack(">HH", data[:4])
            sx, sy = SAMPLE[0] - x, SAMPLE[1] - y
            offset = 4 + (sy * w + sx) * pf.bpp // 8
            seen = pf.rgb(data[offset : offset + pf.bpp // 8])
            if close_to(seen, colour):
                return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise AssertionError(f"remote colour {colour} never showed; last pixel {seen}")


def bridge_processes(runtime_dir: Path) -> list[int]:
    """Every live process whose command line or environment mentions ``runtime_dir``."""
    marker = str(runtime_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_alive(int(entry.name)):
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in blob:
            found.append(int(entry.name))
    return found


BRIDGE_COMMANDS = ("Xvnc", "xfreerdp3", "xdotool", "vncpasswd")


def zombie_children() -> list[str]:
    """Unreaped children of this test process that the bridge started (other fixtures' are
    not ours to judge)."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.find("(") + 1 : stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] == "Z" and int(fields[1]) == me and comm in BRIDGE_COMMANDS:
                out.append(f"{entry.name} {comm}")
    return out


async def wait_no_zombies(timeout: float = 3.0) -> None:
    """asyncio reaps children from a watcher thread: allow it a moment."""
    deadline = time.monotonic() + timeout
    while zombies := zombie_children():
        assert time.monotonic() < deadline, f"unreaped: {zombies}"
        await asyncio.sleep(0.05)


async def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if pid_alive(p)]}"
        await asyncio.sleep(0.1)


def assert_secret_hidden(pids: list[int], secret: str) -> None:
    for pid in pids:
        for name in ("cmdline", "environ"):
            assert secret.encode() not in Path(f"/proc/{pid}/{name}").read_bytes(), (pid, name)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def private_bytes(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class Relay:
    """relay_vnc to a bridge over an in-memory channel, as the websocket handler would run it."""

    def __init__(self, channel: MemoryChannel, endpoint: Endpoint) -> None:
        self.channel = channel
        self.task = asyncio.create_task(relay_vnc(channel, endpoint, RelayPolicy(), RelayCounters()))

    async def close(self) -> None:
        self.channel.close()
        try:
            await asyncio.wait_for(self.task, 10)
        except Exception:  # noqa: S110 - the bridge may already be gone
            pass


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def bridges(rdp_runtime_dir: Path) -> AsyncIterator[RdpBridges]:
    b = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None, grace_seconds=1.0)
    yield b
    await b.close()
    assert len(b) == 0
    await wait_gone(bridge_processes(rdp_runtime_dir), 10)
    assert bridge_processes(rdp_runtime_dir) == []
    await wait_no_zombies()
    assert [p.name for p in rdp_runtime_dir.iterdir() if p.name.startswith("rdp-")] == []


@pytest.fixture
def rdp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="gateway.rdp")
    return caplog


# -- tests -----------------------------------------------------------------------------------


async def test_xrdp_session_through_the_bridge(
    bridges: RdpBridges,
    xrdp_server: RdpServer,
    channel: MemoryChannel,
    rdp_log: pytest.LogCaptureFixture,
    rdp_runtime_dir: Path,
) -> None:
    target = xrdp_server.target(cert_policy="fingerprint", cert_fingerprint=xrdp_server.certificate_sha256())
    t0 = time.monotonic()
    endpoint = await bridges.acquire("xrdp-1", target, W, H)
    connected = time.monotonic() - t0
    assert endpoint.unix_path is not None and endpoint.password is not None
    assert Path(endpoint.unix_path).is_socket()

    relay = Relay(channel, endpoint)
    width, height, pf = await rfb_open(channel)
    assert (width, height) == (W, H)
    first_pixels = await wait_for_colour(channel, pf, xrdp_server.colour)

    [stats] = bridges.stats()
    pids = stats["pids"]
    # Xvnc, the clipboard go-between (gateway.rdp.clipboard), xfreerdp3
    assert stats["key"] == "xrdp-1" and stats["clients"] == 1 and len(pids) == 3
    assert comm_of(pids[0]) == "Xvnc" and comm_of(pids[2]) == "xfreerdp3"
    assert comm_of(pids[1]).startswith("python")
    assert stats["rss_bytes"] > 0 and stats["started_at"] <= time.time()
    assert_secret_hidden(pids, xrdp_server.password)
    if os.geteuid() == 0:
        bridge_uid = pwd.getpwnam(BRIDGE_USER).pw_uid
        assert all(uid_of(p) == bridge_uid for p in pids)
        home = Path(endpoint.unix_path).parent / "home"
        assert home.stat().st_uid == bridge_uid and home.stat().st_mode & 0o777 == 0o700
    print(
        f"\nxrdp: acquire {connected:.2f} s, first remote pixels +{first_pixels:.2f} s; "
        f"Xvnc private {private_bytes(pids[0]) / 2**20:.1f} MiB, "
        f"clipboard private {private_bytes(pids[1]) / 2**20:.1f} MiB, "
        f"xfreerdp private {private_bytes(pids[2]) / 2**20:.1f} MiB, rss {stats['rss_bytes'] / 2**20:.0f} MiB"
    )

    await relay.close()
    bridges.release("xrdp-1")
    assert all(pid_alive(p) for p in pids)  # the grace period
    await wait_gone(pids, 8)
    assert len(bridges) == 0 and not Path(endpoint.unix_path).exists()
    assert xrdp_server.password not in rdp_log.text
    assert "[bridge=xrdp-1]" in rdp_log.text


async def test_shadow_nla_session(
    bridges: RdpBridges, shadow_server: RdpServer, channel: MemoryChannel, rdp_log: pytest.LogCaptureFixture
) -> None:
    t0 = time.monotonic()
    endpoint = await bridges.acquire("shadow-1", shadow_server.target(), W, H)
    connected = time.monotonic() - t0
    relay = Relay(channel, endpoint)
    assert (await rfb_open(channel))[:2] == (W, H)
    await relay.close()
    # a second browser connection to the same bridge (a reconnect) sees the remote screen
    channel2 = type(channel)()
    relay = Relay(channel2, await bridges.acquire("shadow-1", shadow_server.target(), W, H))
    _, _, pf2 = await rfb_open(channel2)
    took = await wait_for_colour(channel2, pf2, shadow_server.colour)
    [stats] = bridges.stats()
    assert_secret_hidden(stats["pids"], shadow_server.password)
    print(f"\nshadow+NLA: acquire {connected:.2f} s, remote pixels after {took:.2f} s")
    await relay.close()
    assert "signed in: NLA" in rdp_log.text
    assert shadow_server.password not in rdp_log.text


async def test_nla_wrong_password_is_refused_quickly(
    bridges: RdpBridges, shadow_server: RdpServer, rdp_log: pytest.LogCaptureFixture, rdp_runtime_dir: Path
) -> None:
    t0 = time.monotonic()
    with pytest.raises(BridgeError) as caught:
        await bridges.acquire("bad-pw", shadow_server.target(password=Secret("Wrong-pw-123")))
    took = time.monotonic() - t0
    assert caught.value.reason == "the remote desktop refused the user name or password"
    assert caught.value.kind == "credentials" and caught.value.ws_code == WS_UPSTREAM_AUTH
    assert took < 5, took
    print(f"\nwrong NLA password refused in {took:.2f} s")
    assert len(bridges) == 0
    await wait_gone(bridge_processes(rdp_runtime_dir), 5)
    assert "Wrong-pw-123" not in rdp_log.text


@pytest.mark.parametrize("security", ["tls", "negotiate"])
async def test_xrdp_wrong_password_without_nla_is_refused_not_shown(
    rdp_runtime_dir: Path, xrdp_server: RdpServer, rdp_log: pytest.LogCaptureFixture, security: str
) -> None:
    """xrdp over TLS keeps the connection after a refused login and shows its own login dialog:
    the bridge must refuse instead of handing that screen over."""
    wrong = f"Wrong-{time.time_ns()}"
    attempts = 5  # at once, each its own bridge
    b = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None,
                   grace_seconds=1.0, logon_timeout=8.0)  # fmt: skip
    try:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(b.acquire(f"xrdp-bad-{i}", xrdp_server.target(password=Secret(wrong), security=security))
              for i in range(attempts)),
            return_exceptions=True,
        )  # fmt: skip
        took = time.monotonic() - t0
        for caught in results:
            assert isinstance(caught, BridgeError), caught
            assert caught.reason == "the remote desktop refused the user name or password"
            assert caught.kind == "credentials" and caught.ws_code == WS_UPSTREAM_AUTH
        assert len(b) == 0
        await wait_gone(bridge_processes(rdp_runtime_dir), 10)
        assert [p.name for p in rdp_runtime_dir.iterdir() if p.name.startswith("rdp-")] == []
        print(f"\nxrdp ({security}) {attempts} wrong passwords at once refused in {took:.2f} s")
        assert f"did not sign {xrdp_server.username} in" in rdp_log.text
        assert wrong not in rdp_log.text

        # The right password over the same security signs in, confirmed by the session itself.
        await b.acquire("xrdp-good", xrdp_server.target(security=security))
        assert "signed in: the session's clipboard channel is ready" in rdp_log.text
        assert xrdp_server.password not in rdp_log.text
    finally:
        await b.close()
    await wait_gone(bridge_processes(rdp_runtime_dir), 10)


async def test_right_password_over_rdp_security_is_never_called_refused(
    bridges: RdpBridges, xrdp_server: RdpServer, rdp_log: pytest.LogCaptureFixture
) -> None:
    """Standard RDP security to this xrdp 0.9.21 from FreeRDP 2.11 ends in xrdp's "MAC checksum
    error" right after the client info, right password or not (exit 131, port open). Without NLA
    an open port that drops the connection has not refused the account: never say it did."""
    try:
        await bridges.acquire("xrdp-rdp-sec", xrdp_server.target(security="rdp"))
    except BridgeError as e:
        print(f"\nxrdp with RDP security: {e.kind}: {e.reason}")
        assert e.kind != "credentials", e.reason
        assert e.reason == "the remote desktop closed the connection before the sign-in"
    else:
        assert "signed in: the session's clipboard channel is ready" in rdp_log.text


async def test_server_down_cannot_be_reached(bridges: RdpBridges, rdp_runtime_dir: Path) -> None:
    target = RdpTarget("127.0.0.1", free_port(), "nobody", password=Secret("whatever-1"))
    t0 = time.monotonic()
    with pytest.raises(BridgeError, match="the remote desktop cannot be reached") as caught:
        await bridges.acquire("down", target)
    assert caught.value.kind == "unreachable"
    assert time.monotonic() - t0 < 5
    assert len(bridges) == 0 and bridge_processes(rdp_runtime_dir) == []


async def test_wrong_certificate_fingerprint_is_refused(bridges: RdpBridges, xrdp_server: RdpServer) -> None:
    right = xrdp_server.certificate_sha256().replace(":", "")
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    with pytest.raises(BridgeError, match="certificate was refused"):
        await bridges.acquire("cert", xrdp_server.target(cert_policy="fingerprint", cert_fingerprint=wrong))
    assert len(bridges) == 0


async def test_ca_policy_trusts_that_ca_for_the_host_name_and_nothing_else(
    bridges: RdpBridges, xrdp_server: RdpServer, tmp_path: Path
) -> None:
    target = xrdp_server.target(cert_policy="ca", cert_ca=xrdp_server.ca_pem)
    endpoint = await bridges.acquire("ca", target, 800, 600)
    assert endpoint.unix_path is not None
    folder = Path(endpoint.unix_path).parent
    assert (folder / "trusted-ca.pem").read_text() == xrdp_server.ca_pem
    [stats] = bridges.stats()
    cmdline = Path(f"/proc/{stats['pids'][-1]}/cmdline").read_bytes().split(b"\0")
    assert b"/cert:deny" in cmdline and not any(a.startswith(b"/cert:ignore") for a in cmdline)
    bridges.release("ca")
    await wait_gone(stats["pids"], 8)
    # A certificate from another CA, or from this CA for another name, is refused.
    other_ca, _cert, _key = make_test_ca(tmp_path / "other")
    with pytest.raises(BridgeError, match="certificate was refused") as caught:
        await bridges.acquire("ca-other", xrdp_server.target(cert_policy="ca", cert_ca=other_ca.read_text()))
    assert caught.value.kind == "certificate"
    with pytest.raises(BridgeError, match="certificate was refused"):
        await bridges.acquire("ca-name", xrdp_server.target(host="localhost", cert_policy="ca",
                                                            cert_ca=xrdp_server.ca_pem))
    assert len(bridges) == 0


async def test_killed_server_fires_watch_exit(
    bridges: RdpBridges, rdp_server_factory: Callable[[str], RdpServer]
) -> None:
    server = rdp_server_factory("shadow")
    await bridges.acquire("doomed", server.target(), 800, 600)
    pids = bridges.stats()[0]["pids"]
    reasons: list[str] = []
    fired = asyncio.Event()

    def on_exit(reason: str) -> None:
        reasons.append(reason)
        fired.set()

    bridges.watch_exit("doomed", on_exit)
    t0 = time.monotonic()
    server.kill()
    await asyncio.wait_for(fired.wait(), 15)
    print(f"\nserver killed: watch_exit after {time.monotonic() - t0:.2f} s: {reasons[0]!r}")
    assert reasons and reasons[0].startswith("the ")
    await wait_gone(pids, 10)
    assert len(bridges) == 0
    await asyncio.sleep(0.2)
    assert len(reasons) == 1


async def test_same_key_reuses_the_bridge_until_the_grace_period_ends(
    bridges: RdpBridges, shadow_server: RdpServer
) -> None:
    target = shadow_server.target()
    first = await bridges.acquire("k", target, 800, 600)
    pids = bridges.stats()[0]["pids"]
    t0 = time.monotonic()
    again = await bridges.acquire("k", target, 800, 600)
    assert time.monotonic() - t0 < 0.5
    assert again == first and bridges.stats()[0]["pids"] == pids and bridges.stats()[0]["clients"] == 2
    bridges.release("k")
    await asyncio.sleep(1.5)
    assert all(pid_alive(p) for p in pids)  # one client is still there
    bridges.release("k")
    await asyncio.sleep(0.5)
    assert await bridges.acquire("k", target, 800, 600) == first  # back within the grace period
    await asyncio.sleep(1.5)
    assert all(pid_alive(p) for p in pids) and len(bridges) == 1
    bridges.release("k")
    await wait_gone(pids, 8)
    assert len(bridges) == 0


async def test_a_connect_hands_its_bridge_to_the_ticket_even_with_no_grace_time(
    rdp_runtime_dir: Path, shadow_server: RdpServer
) -> None:
    """The connect starts the bridge and releases it for the ticket's holder: with a grace time
    of 0 it must still wait for the websocket, or every click would start two bridges."""
    b = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None,
                   grace_seconds=0.0, handover_seconds=5.0)  # fmt: skip
    try:
        target = shadow_server.target()
        first = await b.acquire("k", target, 800, 600)
        pids = b.stats()[0]["pids"]
        b.release("k", handover=True)
        await asyncio.sleep(1.0)
        assert all(pid_alive(p) for p in pids) and len(b) == 1
        assert await b.acquire("k", target, 800, 600) == first  # the websocket: the same bridge
        assert b.stats()[0]["pids"] == pids
        b.release("k")  # the person leaves: no grace time
        await wait_gone(pids, 8)
        assert len(b) == 0
    finally:
        await b.close()


async def test_connects_at_once_each_hand_their_bridge_over_with_no_grace_time(
    rdp_runtime_dir: Path, shadow_server: RdpServer
) -> None:
    """Three people click at the same moment, one of them twice: every connect's bridge waits
    for its ticket, the double click shares one bridge, and the websockets find them all."""
    b = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None,
                   grace_seconds=0.0, handover_seconds=5.0)  # fmt: skip
    keys = ["a", "b", "c", "a"]
    target = shadow_server.target()

    async def connect(key: str) -> object:
        endpoint = await b.acquire(key, target, 800, 600)
        b.release(key, handover=True)
        return endpoint

    try:
        endpoints = await asyncio.gather(*(connect(k) for k in keys))
        assert endpoints[0] == endpoints[3] and len({id(e) for e in endpoints[:3]}) == 3
        await asyncio.sleep(1.0)
        stats = {s["key"]: s["pids"] for s in b.stats()}
        assert sorted(stats) == ["a", "b", "c"] and all(pid_alive(p) for ps in stats.values() for p in ps)
        again = await asyncio.gather(*(b.acquire(k, target, 800, 600) for k in ("a", "b", "c")))
        assert again == endpoints[:3]  # the websockets: the same bridges
        assert {s["key"]: s["pids"] for s in b.stats()} == stats
        for key in ("a", "b", "c"):
            b.release(key)
        await wait_gone([p for ps in stats.values() for p in ps], 10)
        assert len(b) == 0
    finally:
        await b.close()


async def test_attach_joins_a_running_bridge_and_never_starts_one(
    bridges: RdpBridges, shadow_server: RdpServer
) -> None:
    with pytest.raises(BridgeError):
        await bridges.attach("watched")
    assert len(bridges) == 0
    first = await bridges.acquire("watched", shadow_server.target(), 800, 600)
    pids = bridges.stats()[0]["pids"]
    assert await bridges.attach("watched") == first
    assert bridges.stats()[0]["clients"] == 2 and bridges.stats()[0]["pids"] == pids
    bridges.release("watched")
    bridges.release("watched")
    await wait_gone(pids, 8)
    with pytest.raises(BridgeError):
        await bridges.attach("watched")


async def test_max_bridges_makes_the_gateway_busy(rdp_runtime_dir: Path, shadow_server: RdpServer) -> None:
    bridges = RdpBridges(
        rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None, max_bridges=1
    )
    try:
        await bridges.acquire("one", shadow_server.target(), 800, 600)
        t0 = time.monotonic()
        with pytest.raises(BridgeError, match="busy: too many RDP sessions") as caught:
            await bridges.acquire("two", shadow_server.target(), 800, 600)
        assert caught.value.kind == "busy" and time.monotonic() - t0 < 0.5
        assert len(bridges) == 1
    finally:
        pids = [p for s in bridges.stats() for p in s["pids"]]
        await bridges.close()
    await wait_gone(pids, 5)
    with pytest.raises(BridgeError, match="shutting down"):
        await bridges.acquire("three", shadow_server.target())


async def test_resized_follows_set_desktop_size(
    bridges: RdpBridges, shadow_server: RdpServer, channel: MemoryChannel
) -> None:
    endpoint = await bridges.acquire("rs", shadow_server.target(), W, H)
    display = bridges._bridges["rs"].display
    wid = bridges._bridges["rs"].window

    async def window_size() -> str:
        _, out = await x_client_output(display, ["xdotool", "getwindowgeometry", wid])
        return out.split("Geometry:")[1].strip()

    assert await window_size() == f"{W}x{H}"
    relay = Relay(channel, endpoint)
    await rfb_open(channel)
    channel.push(b"\x02\x00" + struct.pack(">H2i", 2, 0, -308))  # Raw, ExtendedDesktopSize
    channel.push(b"\x03\x01" + struct.pack(">4H", 0, 0, W, H))
    channel.push(struct.pack(">BxHHBx", 251, 800, 600, 1) + struct.pack(">I4HI", 0, 0, 0, 800, 600, 0))
    deadline = time.monotonic() + 10
    while (await x_client_output(display, ["xdotool", "getdisplaygeometry"]))[1].split() != ["800", "600"]:
        assert time.monotonic() < deadline, "the display was not resized"
        await asyncio.sleep(0.1)
    await bridges.resized("rs", 800, 600)
    assert await window_size() == "800x600"
    await relay.close()


async def test_tofu_trusts_the_first_certificate_and_refuses_a_changed_one(
    bridges: RdpBridges, shadow_server: RdpServer, rdp_runtime_dir: Path, tmp_path: Path
) -> None:
    target = shadow_server.target(cert_policy="tofu")
    await bridges.acquire("tofu", target, 800, 600)
    pids = bridges.stats()[0]["pids"]
    bridges.release("tofu")
    await wait_gone(pids, 8)
    # FreeRDP 3 keeps the certificate it trusted, per host and port
    [store] = list(rdp_runtime_dir.glob("freerdp-tofu/freerdp/server/*.pem"))
    assert store.name == f"127.0.0.1_{shadow_server.port}.pem"
    assert "BEGIN CERTIFICATE" in store.read_text()
    # the same certificate is trusted again
    await bridges.acquire("tofu", target, 800, 600)
    await bridges.close()
    # a server that now shows another certificate is refused
    _ca, other, _key = make_test_ca(tmp_path / "other")
    store.write_text(other.read_text())
    again = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None)
    try:
        with pytest.raises(BridgeError, match="certificate was refused"):
            await again.acquire("tofu", target, 800, 600)
    finally:
        await again.close()


async def test_bridges_and_local_desktops_with_the_same_display_base_never_share_a_display(
    rdp_runtime_dir: Path, shadow_server: RdpServer
) -> None:
    """``rdp_display_base`` equal to ``display_base``: ten bridges and a local desktop (the
    same ``start_display`` the local provider uses) started at the same moment all get displays
    of their own at or above the base, and each bridge's Xvnc runs on the number it reports.

    (Several local desktops started at once may still exhaust ``start_display``'s own five
    tries against each other and the bridges: that retry limit is the local provider's.)"""
    base = free_display(400)
    bridges_at_once, local_at_once = 10, 1
    b = RdpBridges(rdp_runtime_dir, run_as_user=BRIDGE_USER if os.geteuid() == 0 else None,
                   grace_seconds=1.0, display_base=base, max_bridges=bridges_at_once)  # fmt: skip
    local: list[XvncDisplay] = []

    async def local_desktop() -> XvncDisplay:
        d = await start_display(rfbport=free_tcp_port(), display_base=base, xterm=False, window_manager=False)
        local.append(d)
        return d

    try:
        results = await asyncio.gather(
            *(b.acquire(f"same-base-{i}", shadow_server.target(), 640, 480) for i in range(bridges_at_once)),
            *(local_desktop() for _ in range(local_at_once)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], failures
        bridge_displays = sorted(int(st["display"]) for st in b.stats())
        local_displays = sorted(d.display for d in local)
        everything = bridge_displays + local_displays
        print(f"\nbase :{base}: bridges {bridge_displays}, local desktops {local_displays}")
        assert (len(bridge_displays), len(local_displays)) == (bridges_at_once, local_at_once)
        assert len(set(everything)) == len(everything), everything
        assert min(everything) >= base
        for st in b.stats():
            xvnc_argv = Path(f"/proc/{st['pids'][0]}/cmdline").read_bytes().split(b"\0")
            assert xvnc_argv[1] == f":{st['display']}".encode(), xvnc_argv[:2]
        assert all(d.alive() for d in local)
    finally:
        await b.close()
        await asyncio.gather(*(d.stop() for d in local), return_exceptions=True)
    await wait_gone(bridge_processes(rdp_runtime_dir), 10)
