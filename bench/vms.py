"""VM bench: desktop VMs through the real gateway on a real libvirtd + QEMU (the tests' tiny
busybox guest under TCG), each figure beside a baseline measured in the same run.

Over 400 lines as one script, like the other benches: a bench is run and read as one file.

**Phase ``click``: click -> first frame.** One AutoStop desktop VM (``deskgate bundle add`` with
``--ready-text`` = the guest's banner, ``deskgate vm add``, ``assign``), one gateway (``deskgate
serve``), one person signed in once over HTTP (password + TOTP enrolment, as ``bench/relay.py``
does); a click is ``POST /desktops/{id}/connect``, the websocket, the browser's side of the RFB
3.8 handshake and a first non-incremental FramebufferUpdateRequest (noVNC's encodings,
``bench/rdp.py``'s ``FrameCounter``); the time runs from the POST to the whole first
FramebufferUpdate. Rounds alternate (a) and (b), ``--rounds`` of each:

- (a) the VM is **running**: the click, and as its baseline a direct RFB
  connection to the VM's console socket ``<socket_dir>/<id>/screen.sock`` to its first
  FramebufferUpdate;
- (b) the VM is **stopped** (``deskgate vm stop``, waited for): the click starts it (start on
  connect; the connect waits until the screen answers and the banner is on the serial console).
  Its baseline is the same start without the gateway: the stopped domain started
  with libvirt-python (``create()``), its serial log ``<storage_dir>/<id>/console.log`` read every
  10 ms until the banner shows, then a direct RFB connection to its first FramebufferUpdate; the
  domain is then powered off again (libvirt ``destroy()``) for the gateway's round.

Odd rounds measure each baseline just before its gateway figure, even rounds just after (then
the VM is stopped again for the baseline's start, and ``deskgate vm start`` takes over the
domain the baseline started, for the next (a)). The gateway runs with ``vm_reconcile_seconds`` =
3600 in this phase so that it never sees the baseline's starts.

**Phase ``reconcile``: the gateway's CPU keeping 50 desktop VMs in step.** 50 desktop VMs are
made (``deskgate vm add`` x50, one bundle; defined and stopped, never started). The same gateway
(same data) is then run in windows of ``--window`` seconds, alternating A/B/A/B: A with
``DESKGATE_VMS_VM_RECONCILE_SECONDS=1``, B with 3600 (no reconcile in the window; the one at
start-up is over before the window opens). Measured: the gateway process's utime+stime from
``/proc/PID/stat`` over each window, and libvirtd's. Reconcile rounds in an A window are counted
as bursts of the gateway's CPU (its threads' ``/proc/PID/task/*/schedstat`` read every 20 ms; CPU
closer than 0.4 s is one burst) larger than any burst the same gateway shows in B (its
background) and than a quarter of the median burst in A. Reported: (CPU A - CPU B) per round and
per domain. The 50 VMs are deleted at the end (``deskgate vm delete NAME --confirm NAME``) and
``virsh list --all`` is read to show that none of the bench's domains is left.

Domains are named ``deskgate-<desktop id>``; so that the bench's never meet those of another
gateway on the same libvirtd (tests), its desktop ids start at a random offset above 1,000,000.

Timings are printed, never asserted. Needs root, libvirt (libvirtd, virtlogd, virsh), QEMU,
libvirt-python and the test guest (``make test`` installs them; ``tests/vms/hypervisor.py``
builds the guest once, starts libvirtd unless one answers and stops only what it started). Every
process started here is stopped by its PID; every loop is bounded in count and time.

    .venv/bin/python bench/vms.py                    # 5 rounds, 4 windows of 20 s: 4-5 minutes
    .venv/bin/python bench/vms.py --quick            # 2 rounds, 4 windows of 5 s: 2.5 minutes
    .venv/bin/python bench/vms.py --phases click --rounds 9
    .venv/bin/python bench/vms.py --phases reconcile --vms 50 --window 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for extra in (str(BENCH), str(REPO / "tests" / "vms"), str(REPO / "tests"), str(REPO)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import rdp as rdpb  # noqa: E402 - bench/rdp.py: FrameCounter (noVNC's encodings, updates counted)
import relay as rb  # noqa: E402 - bench/relay.py: gateway, sign-in, links, RFB client, /proc
from hypervisor import (  # noqa: E402 - tests/vms/
    BANNER,
    SOCKET,
    GuestImage,
    _answers,
    guest_image,
    hypervisor,
)

CMDLINE = "console=tty0 console=ttyS0 quiet"
VM_NAME = "bench-vm"
IDLE_PREFIX = "bench-idle-"
BOOT_LIMIT = 120.0  # seconds: a start (ours or the gateway's) until the banner and first frame
FRAME_LIMIT = 20.0  # seconds: a connection to a running VM until its first frame
BURST_GAP = 0.4  # seconds without CPU that end one reconcile burst
SAMPLE_EVERY = 0.02  # seconds between two readings of the gateway's schedstat
LOG_POLL = 0.01  # seconds between two reads of the serial log (the baseline's start)


# --- the gateway with desktop VMs -----------------------------------------------------------------
@dataclass
class VmGateway:
    """A gateway data folder with a ``[hypervisors.default]`` on the bench's libvirtd, the test
    guest's bundle, and the person ``bench``; served by ``rb.Gateway`` (its ``serve``/``stop``)."""

    gw: rb.Gateway
    folder: Path  # /tmp/...: the VMs' disks and screens (0711: the qemu user passes through)
    made: dict[str, int] = field(default_factory=dict)  # desktop VMs made here: name -> id

    @property
    def storage(self) -> Path:
        return self.folder / "disks"

    @property
    def screens(self) -> Path:
        return self.folder / "screens"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """``deskgate --config ... ARGS``; its output, or RuntimeError with all it said."""
        if args[0] in ("vm", "bundle"):  # libvirtd between two owners (see keep_libvirtd)
            for _ in range(150):
                if SOCKET.exists():
                    break
                time.sleep(0.2)
        cmd = [rb.deskgate_exe(), "--config", str(self.gw.config), *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120,
                              cwd=REPO, check=False)
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()[-800:]
            raise RuntimeError(f"deskgate {' '.join(args)} exited {done.returncode}: {said}")
        return done.stdout

    @classmethod
    def make(cls, tmp: Path, uri: str, image: GuestImage) -> VmGateway:
        gw = rb.Gateway(tmp / "data", rb.free_port())
        folder = Path(tempfile.mkdtemp(prefix="dg-bench-vms-", dir="/tmp"))  # noqa: S108
        folder.chmod(0o711)  # noqa: S103 - the qemu user passes through to disks and screens
        me = cls(gw, folder)
        rb.cli(None, "init", "--data", str(gw.data), "--port", str(gw.port), "--no-demo")
        with gw.config.open("a") as f:
            # The guest has no ACPI: a stop is a power-off after 1 s (the CLI's and the gateway's).
            f.write(f'\n[vms]\nvm_stop_timeout_seconds = 1\nvm_start_timeout_seconds = {BOOT_LIMIT:g}\n'
                    f'\n[hypervisors.default]\nuri = "{uri}"\ndomain_type = "qemu"\n'
                    f'storage_dir = "{me.storage}"\nsocket_dir = "{me.screens}"\n')
        me.cli("user", "add", "bench", "--password-stdin", stdin=gw.password + "\n")
        me.skip_ids()
        gw.users["bench"] = gw.password
        me.cli("bundle", "add", "tiny", "--base-image", str(image.base), "--kernel",
               str(image.kernel), "--initrd", str(image.initrd), "--cmdline", CMDLINE,
               "--vcpus", "1", "--memory", "128", "--root-size", "32", "--user-size", "16",
               "--ready-text", BANNER)
        return me

    async def acli(self, *args: str) -> str:
        """``cli`` on a thread: the event loop goes on (``keep_libvirtd``)."""
        return await asyncio.to_thread(self.cli, *args)

    def skip_ids(self) -> None:
        """Domains are named ``deskgate-<desktop id>`` and ids start at 1 in a new data folder:
        on a libvirtd that other gateways (tests) share, the bench's ids start at a random
        offset instead. A placeholder static desktop takes the offset (the next id is the
        highest plus one) and stays; it is assigned to no one."""
        out = self.cli("desktop", "add", "bench-ids", "--provider", "static", "--vnc",
                       f"{rb.HOST}:1")
        found = re.search(r"Desktop (\d+)", out)
        if found is None:
            raise RuntimeError(f"no desktop id in {out!r}")
        offset = 1_000_000 + secrets.randbelow(8_000_000)
        with contextlib.closing(sqlite3.connect(self.gw.data / "deskgate.db")) as db, db:
            db.execute("UPDATE desktops SET id = ? WHERE id = ?", (offset, int(found.group(1))))

    def add_vm(self, name: str, auto_stop: int = 3600) -> int:
        out = self.cli("vm", "add", name, "--bundle", "tiny", "--auto-stop", str(auto_stop))
        found = re.search(rf"^\s*(\d+)\s+{re.escape(name)}\s+(\S+)", out, re.M)
        if found is None:
            raise RuntimeError(f"no desktop VM in {out!r}")
        self.made[name] = int(found.group(1))
        if found.group(2) != "stopped":
            raise RuntimeError(f"{name} made {found.group(2)}, not stopped: {out.strip()}")
        return int(found.group(1))

    def delete_vm(self, name: str) -> None:
        self.cli("vm", "delete", name, "--confirm", name)
        self.made.pop(name, None)

    def delete_all(self, uri: str) -> list[str]:
        """Every desktop VM made here deleted; then the names of the bench's domains libvirt
        still lists (each forced away with virsh if one is)."""
        ids = set(self.made.values())
        for name in list(self.made):
            try:
                self.delete_vm(name)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"cleanup: {name}: {exc}", file=sys.stderr)
        left = bench_domains(uri, ids)
        if left is None:
            return [f"(libvirtd at {uri} does not answer: cannot tell)"]
        for domain in left:
            for verb in ("destroy", "undefine"):
                subprocess.run(["virsh", "-c", uri, verb, domain], capture_output=True,
                               timeout=30, check=False)
        return left

    def serve(self, reconcile_seconds: int) -> int:
        self.gw.serve({"DESKGATE_VMS_VM_RECONCILE_SECONDS": str(reconcile_seconds)})
        assert self.gw.proc is not None
        return self.gw.proc.pid

    def screen_socket(self, desktop_id: int) -> Path:
        return self.screens / str(desktop_id) / "screen.sock"

    def console_log(self, desktop_id: int) -> Path:
        return self.storage / str(desktop_id) / "console.log"


def virsh_names(uri: str) -> list[str] | None:
    """``virsh list --all --name``; None when libvirtd does not answer."""
    done = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        return None
    return [n.strip() for n in done.stdout.splitlines() if n.strip()]


def bench_domains(uri: str, ids: set[int]) -> list[str] | None:
    """Domains libvirt lists that belong to desktop VMs this bench made (by id); None when
    libvirtd does not answer."""
    names = {f"deskgate-{i}" for i in ids}
    listed = virsh_names(uri)
    return None if listed is None else [n for n in listed if n in names]


# --- RFB: the first frame ---------------------------------------------------------------------------
async def handshake(client: rb.RfbClient) -> tuple[int, int]:
    """``rb.RfbClient.handshake`` that keeps the screen's size from ServerInit."""
    async with asyncio.timeout(10):
        if await client._read(12) != b"RFB 003.008\n":  # noqa: SLF001 - relay.py's reader
            raise RuntimeError("not an RFB 3.8 server")
        await client.link.send(b"RFB 003.008\n")
        count = (await client._read(1))[0]  # noqa: SLF001
        if 1 not in await client._read(count):  # noqa: SLF001
            raise RuntimeError("security type None not offered")
        await client.link.send(b"\x01")
        if await client._read(4) != b"\0\0\0\0":  # noqa: SLF001
            raise RuntimeError("security result: failed")
        await client.link.send(b"\x01")  # ClientInit, shared
        head = await client._read(24)  # noqa: SLF001
        width, height = struct.unpack_from(">HH", head, 0)
        (name_len,) = struct.unpack_from(">I", head, 20)
        await client._read(name_len)  # noqa: SLF001
    return width, height


async def first_frame(link: rb.Link) -> None:
    """The RFB handshake, noVNC's pixel format and encodings, one full request, and its whole
    FramebufferUpdate read."""
    client = rb.RfbClient(link)
    width, height = await handshake(client)
    counter = rdpb.FrameCounter(client)
    counter.width, counter.height = width, height
    await counter.start()
    await counter.next_update()


async def unix_link(path: Path) -> rb.TcpLink:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_unix_connection(rb._TcpProtocol, str(path))  # noqa: SLF001
    assert isinstance(transport, asyncio.Transport)
    return rb.TcpLink(transport, protocol)


async def direct_first_frame(socket_path: Path) -> float:
    """Seconds from connecting to the console socket to the whole first FramebufferUpdate."""
    t0 = time.perf_counter()
    async with asyncio.timeout(FRAME_LIMIT):
        link = await unix_link(socket_path)
        try:
            await first_frame(link)
        finally:
            await link.close()
    return time.perf_counter() - t0


class Person:
    """``bench`` signed in once (the session's cookie kept): each click is a connect."""

    def __init__(self, gw: rb.Gateway, desktop_id: int) -> None:
        self.gw, self.desktop_id = gw, desktop_id
        self.http: Any = None
        self.csrf = ""

    async def sign_in(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            self.gw.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=BOOT_LIMIT + 30))
        self.csrf = await self.gw.sign_in(self.http)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def click(self) -> tuple[float, float]:
        """``POST .../connect`` (the click), the websocket, the first frame; seconds from the
        click to the connect's answer and to the whole first FramebufferUpdate."""
        from websockets.asyncio.client import connect
        from websockets.typing import Origin, Subprotocol

        t0 = time.perf_counter()
        async with self.http.post(f"/desktops/{self.desktop_id}/connect",
                                  headers={"X-CSRF-Token": self.csrf}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"connect failed ({resp.status}): {await resp.text()}")
            ticket = await resp.json()
        answered = time.perf_counter() - t0
        cookie = next((c.value for c in self.http.cookie_jar if c.key == "deskgate_session"), None)
        if cookie is None:
            raise RuntimeError("no deskgate_session cookie")
        async with asyncio.timeout(FRAME_LIMIT):
            ws = await connect(
                f"ws://{rb.HOST}:{self.gw.port}{ticket['ws_url']}", origin=Origin(self.gw.url),
                additional_headers={"Cookie": f"deskgate_session={cookie}"},
                subprotocols=[Subprotocol("binary")], compression=None, max_size=None,
                proxy=None, ping_interval=None, open_timeout=10, close_timeout=2)
            link = rb.WsLink(ws)
            try:
                await first_frame(link)
            finally:
                await link.close()
        return answered, time.perf_counter() - t0


# --- libvirt directly (the start baseline) -----------------------------------------------------------
class Libvirt:
    """libvirt-python on a thread of its own: the baseline's start and power-off."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self.uri = uri
        self.conn = libvirt.open(uri)

    async def call(self, op: Callable[[], Any]) -> Any:
        """``op()`` on a thread; once more on a new connection when libvirtd was replaced."""
        import libvirt

        try:
            return await asyncio.wait_for(asyncio.to_thread(op), 60)
        except libvirt.libvirtError:
            if self.conn.isAlive():
                raise
        await wait_libvirtd()
        self.close()
        self.conn = libvirt.open(self.uri)
        return await asyncio.wait_for(asyncio.to_thread(op), 60)

    def domain(self, desktop_id: int) -> Any:
        return self.conn.lookupByName(f"deskgate-{desktop_id}")

    async def active(self, desktop_id: int) -> bool:
        return bool(await self.call(lambda: self.domain(desktop_id).isActive()))

    async def wait_inactive(self, desktop_id: int, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while await self.active(desktop_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"deskgate-{desktop_id} still running after {limit:g} s")
            await asyncio.sleep(0.1)

    async def power_off(self, desktop_id: int) -> None:
        def op() -> None:
            dom = self.domain(desktop_id)
            if dom.isActive():
                dom.destroy()
        await self.call(op)
        await self.wait_inactive(desktop_id)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


async def baseline_start(lv: Libvirt, vg: VmGateway, desktop_id: int) -> tuple[float, float]:
    """The stopped domain started without the gateway: seconds to the banner on its serial log,
    and to the whole first FramebufferUpdate of a direct RFB connection after it. As the
    gateway's start does, last run's serial log and screen socket are removed first."""
    log_path, socket_path = vg.console_log(desktop_id), vg.screen_socket(desktop_id)
    log_path.unlink(missing_ok=True)
    socket_path.unlink(missing_ok=True)
    banner = BANNER.encode()
    t0 = time.perf_counter()
    await lv.call(lambda: lv.domain(desktop_id).create())
    deadline = time.monotonic() + BOOT_LIMIT
    while True:
        with contextlib.suppress(FileNotFoundError):
            if banner in log_path.read_bytes():
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no banner on {log_path} within {BOOT_LIMIT:g} s")
        await asyncio.sleep(LOG_POLL)
    at_banner = time.perf_counter() - t0
    await direct_first_frame(socket_path)
    return at_banner, time.perf_counter() - t0


# --- phase click ------------------------------------------------------------------------------------
@dataclass
class ClickRound:
    round: int
    a_direct: float = 0.0  # (a) direct RFB to the console socket: first frame
    a_gateway: float = 0.0  # (a) click -> first frame
    a_answer: float = 0.0  # (a) click -> the connect's answer
    stop: float = 0.0  # deskgate vm stop, until stopped
    b_banner: float = 0.0  # (b) baseline: libvirt start -> banner on the serial log
    b_direct: float = 0.0  # (b) baseline: ... + direct RFB first frame
    b_gateway: float = 0.0  # (b) click -> first frame (start on connect)
    b_answer: float = 0.0  # (b) click -> the connect's answer (the start, ready text seen)


async def click_phase(args: argparse.Namespace, vg: VmGateway, uri: str) -> list[ClickRound]:
    desktop_id = vg.gw.desktop_id = vg.add_vm(VM_NAME)  # the page rb.Gateway.sign_in reads
    await vg.acli("assign", VM_NAME, "bench")
    rounds: list[ClickRound] = []
    # The first start formats the user volume; the bench starts it once before any round.
    t0 = time.monotonic()
    await vg.acli("vm", "start", VM_NAME)
    print(f"  {VM_NAME} (desktop {desktop_id}) first start, user volume formatted: "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    lv = Libvirt(uri)
    # The gateway never reconciles during the phase: the baseline's start stays unseen by it.
    vg.serve(reconcile_seconds=3600)
    person = Person(vg.gw, desktop_id)
    try:
        await person.sign_in()
        await direct_first_frame(vg.screen_socket(desktop_id))  # warm-up, not counted
        await person.click()
        for n in range(1, args.rounds + 1):
            r = ClickRound(n)
            # Odd rounds measure the baseline first, even rounds the gateway first.
            if n % 2:
                r.a_direct = await direct_first_frame(vg.screen_socket(desktop_id))
                r.a_answer, r.a_gateway = await person.click()
            else:
                r.a_answer, r.a_gateway = await person.click()
                r.a_direct = await direct_first_frame(vg.screen_socket(desktop_id))
            r.stop = await cli_stop(vg, lv, desktop_id)
            if n % 2:
                r.b_banner, r.b_direct = await baseline_start(lv, vg, desktop_id)
                await lv.power_off(desktop_id)
                r.b_answer, r.b_gateway = await person.click()
            else:
                r.b_answer, r.b_gateway = await person.click()
                await cli_stop(vg, lv, desktop_id)
                r.b_banner, r.b_direct = await baseline_start(lv, vg, desktop_id)
                # The gateway's store says stopped: ``vm start`` takes the running domain
                # over (it redefines it and sees the banner already there) for the next (a).
                await vg.acli("vm", "start", VM_NAME)
            rounds.append(r)
            print(f"  round {n}: (a) gateway {r.a_gateway:.3f} s, direct {r.a_direct:.3f} s; "
                  f"(b) gateway {r.b_gateway:.2f} s, baseline {r.b_direct:.2f} s "
                  f"(vm stop {r.stop:.1f} s)", flush=True)
    except Exception:
        print(vg.gw.log_tail(), file=sys.stderr)
        raise
    finally:
        await person.close()
        lv.close()
        vg.gw.stop()
        await asyncio.to_thread(vg.delete_vm, VM_NAME)
    return rounds


async def cli_stop(vg: VmGateway, lv: Libvirt, desktop_id: int) -> float:
    """``deskgate vm stop`` (the guest has no ACPI: powered off after 1 s), until libvirt says
    the domain is off; seconds."""
    t0 = time.monotonic()
    await vg.acli("vm", "stop", VM_NAME)
    await lv.wait_inactive(desktop_id)
    return time.monotonic() - t0


def p90(values: list[float]) -> float:
    """Nearest rank: with 5 values, the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]


def report_click(rounds: list[ClickRound]) -> None:
    print(f"\n== click -> first frame: desktop VM, {len(rounds)} interleaved rounds of (a) and (b) ==")
    head = (f"{'round':>5s} {'(a) direct':>11s} {'(a) gateway':>12s} {'(a) answer':>11s} "
            f"{'(b) banner':>11s} {'(b) base':>9s} {'(b) gateway':>12s} {'(b) answer':>11s} "
            f"{'vm stop':>8s}")
    print(head)
    print("-" * len(head))
    for r in rounds:
        print(f"{r.round:>5d} {r.a_direct:11.3f} {r.a_gateway:12.3f} {r.a_answer:11.3f} "
              f"{r.b_banner:11.2f} {r.b_direct:9.2f} {r.b_gateway:12.2f} {r.b_answer:11.2f} "
              f"{r.stop:8.1f}")
    print("(seconds; answer = click -> the connect's answer; banner = libvirt start -> banner "
          "on the serial log; base = banner + direct first frame)")

    def row(label: str, values: list[float], spec: str) -> tuple[float, float]:
        m, p = statistics.median(values), p90(values)
        print(f"{label:46s} {format(m, spec):>9s} {format(p, spec):>9s}")
        return m, p

    print(f"\n{'':46s} {'median':>9s} {'p90':>9s}")
    am, ap = row("(a) running VM: gateway click -> first frame", [r.a_gateway for r in rounds], ".3f")
    row("    of which click -> connect answered", [r.a_answer for r in rounds], ".3f")
    dm, dp = row("(a) baseline: direct RFB -> first frame", [r.a_direct for r in rounds], ".3f")
    bm, bp = row("(b) stopped VM: gateway click -> first frame", [r.b_gateway for r in rounds], ".2f")
    row("    of which click -> connect answered", [r.b_answer for r in rounds], ".2f")
    row("(b) baseline: libvirt start -> banner", [r.b_banner for r in rounds], ".2f")
    sm, sp = row("(b) baseline: ... + direct RFB first frame", [r.b_direct for r in rounds], ".2f")
    row("deskgate vm stop (CLI), until stopped", [r.stop for r in rounds], ".2f")
    print(f"(a) gateway/direct:   median {am / dm:.2f}x, p90 {ap / dp:.2f}x "
          f"(+{(am - dm) * 1000:.0f} ms at the median)")
    print(f"(b) gateway/baseline: median {bm / sm:.2f}x, p90 {bp / sp:.2f}x "
          f"(+{bm - sm:.2f} s at the median)")


# --- phase reconcile ---------------------------------------------------------------------------------
def schedstat_ns(pid: int) -> int:
    """Time on CPU of all the process's threads, in ns (``/proc/PID/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


def libvirtd_pid() -> int | None:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "comm").read_text().strip() == "libvirtd":
                    return int(entry.name)
    return None


@dataclass
class Window:
    kind: str  # "A" (reconcile every 1 s) or "B" (every 3600 s)
    reconcile_seconds: int
    seconds: float = 0.0
    cpu: float = 0.0  # the gateway's utime+stime, seconds
    libvirtd_cpu: float = 0.0
    bursts: list[tuple[float, float]] = field(default_factory=list)  # (seconds long, CPU s)


async def sample_window(pid: int, seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """Reads the gateway's CPU every ``SAMPLE_EVERY`` s for ``seconds``; returns the elapsed time
    and its bursts: runs of CPU use, closer than ``BURST_GAP`` s merged."""
    t0 = time.perf_counter()
    last = schedstat_ns(pid)
    bursts: list[tuple[float, float]] = []
    start = end = None
    used = 0
    for _ in range(int(seconds / SAMPLE_EVERY) * 3 + 10):  # bounded; the clock ends it
        await asyncio.sleep(SAMPLE_EVERY)
        now, ns = time.perf_counter(), schedstat_ns(pid)
        delta, last = max(0, ns - last), ns
        if delta > 0:
            if start is not None and end is not None and now - end > BURST_GAP:
                bursts.append((end - start, used / 1e9))
                start, used = None, 0
            if start is None:
                start = now - SAMPLE_EVERY
            end, used = now, used + delta
        if now - t0 >= seconds:
            break
    if start is not None and end is not None:
        bursts.append((end - start, used / 1e9))
    return time.perf_counter() - t0, bursts


async def one_window(vg: VmGateway, kind: str, args: argparse.Namespace) -> Window:
    w = Window(kind, 1 if kind == "A" else 3600)
    pid = vg.serve(w.reconcile_seconds)
    try:
        await asyncio.sleep(args.settle)  # start-up and its first reconcile are over
        lv_pid = libvirtd_pid()
        gw0 = rb.ProcStat.of(pid).cpu
        lv0 = rb.ProcStat.of(lv_pid).cpu if lv_pid else 0.0
        w.seconds, w.bursts = await sample_window(pid, args.window)
        w.cpu = rb.ProcStat.of(pid).cpu - gw0
        if lv_pid:
            with contextlib.suppress(OSError):
                w.libvirtd_cpu = rb.ProcStat.of(lv_pid).cpu - lv0
        if vg.gw.proc is not None and vg.gw.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited during the window: {vg.gw.log_tail()}")
    finally:
        vg.gw.stop()
    return w


async def in_parallel(op: Callable[[str], Any], names: list[str], jobs: int) -> None:
    """``op(name)`` for every name (CLI commands), ``jobs`` at a time; the first failure is
    raised once all are done."""
    limit = asyncio.Semaphore(jobs)

    async def one(name: str) -> None:
        async with limit:
            await asyncio.to_thread(op, name)

    results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


async def reconcile_phase(args: argparse.Namespace, vg: VmGateway, uri: str) -> dict[str, Any]:
    t0 = time.monotonic()
    names = [f"{IDLE_PREFIX}{i:02d}" for i in range(1, args.vms + 1)]
    await in_parallel(vg.add_vm, names, args.jobs)
    made = time.monotonic() - t0
    ids = {vg.made[n] for n in vg.made if n.startswith(IDLE_PREFIX)}
    defined = len(bench_domains(uri, ids) or [])
    print(f"  {args.vms} desktop VMs made with deskgate vm add ({args.jobs} at a time) in "
          f"{made:.1f} s; libvirt lists {defined} of their domains", flush=True)
    windows: list[Window] = []
    try:
        for n in range(args.pairs):
            for kind in ("A", "B"):
                w = await one_window(vg, kind, args)
                windows.append(w)
                print(f"  window {n + 1}{kind}: gateway CPU {w.cpu * 1000:.0f} ms in "
                      f"{w.seconds:.1f} s, {len(w.bursts)} bursts", flush=True)
    except Exception:
        print(vg.gw.log_tail(), file=sys.stderr)
        raise
    finally:
        t0 = time.monotonic()
        await in_parallel(vg.delete_vm, [n for n in vg.made if n.startswith(IDLE_PREFIX)],
                          args.jobs)
        deleted = time.monotonic() - t0
    left = bench_domains(uri, ids)
    print(f"  deleted with deskgate vm delete in {deleted:.1f} s; virsh list --all: "
          + ("libvirtd does not answer" if left is None else
             f"{len(left)} of the bench's domains left{': ' + ', '.join(left) if left else ''}"))
    return {"windows": windows, "vms": args.vms, "defined": defined, "left": left}


def report_reconcile(result: dict[str, Any], args: argparse.Namespace) -> None:
    windows: list[Window] = result["windows"]
    vms = result["vms"]
    print(f"\n== reconcile: the gateway with {vms} defined, stopped desktop VMs; windows of "
          f"{args.window:g} s, A = reconcile every 1 s, B = every 3600 s (none in the window) ==")
    head = (f"{'window':>6s} {'gateway CPU ms':>14s} {'% core':>7s} {'bursts':>7s} "
            f"{'burst ms (med)':>14s} {'burst CPU ms (med)':>18s} {'libvirtd CPU ms':>15s}")
    print(head)
    print("-" * len(head))
    for i, w in enumerate(windows):
        lengths = [b[0] * 1000 for b in w.bursts]
        cpus = [b[1] * 1000 for b in w.bursts]
        print(f"{str(i // 2 + 1) + w.kind:>6s} {w.cpu * 1000:14.0f} {100 * w.cpu / w.seconds:7.2f} "
              f"{len(w.bursts):7d} {statistics.median(lengths) if lengths else 0:14.0f} "
              f"{statistics.median(cpus) if cpus else 0:18.1f} {w.libvirtd_cpu * 1000:15.0f}")
    a = [w for w in windows if w.kind == "A"]
    b = [w for w in windows if w.kind == "B"]
    if not a or not b:
        return
    rate_a = sum(w.cpu for w in a) / sum(w.seconds for w in a)  # CPU s per s
    rate_b = sum(w.cpu for w in b) / sum(w.seconds for w in b)
    # A reconcile round is a burst in A larger than any burst of the same gateway in B (its
    # background: a few sub-millisecond wake-ups).
    # background: a few sub-millisecond wake-ups) and than a quarter of A's median burst.
    in_a = [c for w in a for _, c in w.bursts]
    floor = max(max((c for w in b for _, c in w.bursts), default=0.0),
                statistics.median(in_a) / 4 if in_a else 0.0)
    rounds = [x for w in a for x in w.bursts if x[1] > floor]
    rounds_rate = len(rounds) / sum(w.seconds for w in a)
    length = statistics.median([x[0] for x in rounds]) if rounds else 0.0
    per_round = (rate_a - rate_b) / max(1e-9, rounds_rate)
    lv_a = sum(w.libvirtd_cpu for w in a) / sum(w.seconds for w in a)
    lv_b = sum(w.libvirtd_cpu for w in b) / sum(w.seconds for w in b)
    lv_round = (lv_a - lv_b) / max(1e-9, rounds_rate)
    print(f"gateway CPU (utime+stime): A {rate_a * 100:.2f} % of a core, B {rate_b * 100:.2f} %")
    print(f"reconcile rounds in A: {len(rounds)} ({rounds_rate:.2f}/s; at 1 s apart and "
          f"{length * 1000:.0f} ms each, {1 / (1 + length):.2f}/s expected); bursts above "
          f"{floor * 1000:.1f} ms CPU counted")
    print(f"per reconcile round: gateway {per_round * 1000:.1f} ms CPU "
          f"({per_round * 1e6 / vms:.0f} us per domain; schedstat median of the rounds "
          f"{statistics.median([x[1] for x in rounds]) * 1000 if rounds else 0:.1f} ms); "
          f"libvirtd {lv_round * 1000:.1f} ms ({lv_round * 1e6 / vms:.0f} us per domain)")
    print(f"at the default vm_reconcile_seconds (30): {per_round / 30 * 100:.3f} % of a core "
          f"for {vms} desktop VMs")
    left = result["left"]
    print("cleanup: " + ("libvirtd did not answer: not checked" if left is None else
                         f"{len(left)} of the bench's {vms} domains left on libvirt (virsh list --all)"))


# --- the run ------------------------------------------------------------------------------------------
async def keep_libvirtd(stack: contextlib.AsyncExitStack) -> None:
    """A libvirtd someone else started (tests on the same machine) may stop in the middle of the
    run: then one is started here at once (``hypervisor()``), kept to the end and stopped by PID.
    Until the run ends (cancelled), at most 5 times."""
    for _ in range(5):
        while await _answers():
            await asyncio.sleep(0.5)
        print("libvirtd went away: one is started here", file=sys.stderr, flush=True)
        with contextlib.suppress(RuntimeError):  # another one came up meanwhile
            await stack.enter_async_context(hypervisor())


async def wait_libvirtd(limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not await _answers() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> tuple[list[ClickRound], dict[str, Any] | None]:
    image = guest_image()
    clicks: list[ClickRound] = []
    reconciled: dict[str, Any] | None = None
    before = libvirtd_pid()
    async with hypervisor() as uri, contextlib.AsyncExitStack() as kept:
        now = libvirtd_pid()
        print(f"libvirtd: {'already running' if before and before == now else 'started here'}"
              f" (pid {now}){', used and left alone' if before and before == now else ''}",
              flush=True)
        keeper = asyncio.create_task(keep_libvirtd(kept))
        with tempfile.TemporaryDirectory(prefix="deskgate-bench-vms-") as tmp:
            vg = VmGateway.make(Path(tmp), uri, image)
            try:
                if "click" in args.phases:
                    print(f"[{time.monotonic() - args.started:6.1f} s] phase click", flush=True)
                    clicks = await click_phase(args, vg, uri)
                if "reconcile" in args.phases:
                    print(f"[{time.monotonic() - args.started:6.1f} s] phase reconcile", flush=True)
                    reconciled = await reconcile_phase(args, vg, uri)
            finally:
                vg.gw.stop()
                await wait_libvirtd()
                left = vg.delete_all(uri)
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                if left:
                    print(f"cleanup: domains left after the bench, forced away: {left}",
                          file=sys.stderr)
                shutil.rmtree(vg.folder, ignore_errors=True)
    return clicks, reconciled


PHASES = ("click", "reconcile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--phases", default=",".join(PHASES), help="click,reconcile (default: both)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved (a)/(b) rounds (default 5)")
    p.add_argument("--vms", type=int, default=50, help="desktop VMs for reconcile (default 50)")
    p.add_argument("--window", type=float, default=20.0,
                   help="seconds of gateway CPU per reconcile window (default 20)")
    p.add_argument("--pairs", type=int, default=2, help="A/B window pairs (default 2)")
    p.add_argument("--jobs", type=int, default=3,
                   help="deskgate vm add/delete commands run at a time (default 3)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after the gateway answers before a window opens (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, windows of 5 s")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.window = 2, 5.0
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase: {', '.join(sorted(unknown))}")
    if not 1 <= args.rounds <= 100 or not 1 <= args.vms <= 500 or not 1 <= args.pairs <= 10 \
            or not 1 <= args.jobs <= 16:
        p.error("--rounds 1-100, --vms 1-500, --pairs 1-10, --jobs 1-16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (libvirtd's system instance)", file=sys.stderr)
        return 2
    missing = [t for t in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img")
               if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)} (make test installs them)", file=sys.stderr)
        return 2
    args.started = time.monotonic()
    load = os.getloadavg()
    print(f"VM bench: phases {', '.join(args.phases)}; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    clicks, reconciled = asyncio.run(run(args))
    if clicks:
        report_click(clicks)
    if reconciled is not None:
        report_reconcile(reconciled, args)
    print(f"\n(bench took {time.monotonic() - args.started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
