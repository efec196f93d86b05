"""RDP bench: an RDP desktop (real xrdp, bridged by xfreerdp in a private Xvnc) side by side with
a plain VNC desktop (TigerVNC Xvnc), both showing the same continuous full-screen change and
both read through the real gateway path by an RFB client, in one run.

The change on both desktops: an xterm (10x20 font, 128x40 cells = 1280x800) running
``while :; do head -c 3000 /dev/urandom | base64 -w 127; sleep 0.05; done`` — the whole screen
scrolls about 20 times a second.

Per desktop, one gateway of its own (``bench/relay.py``'s ``Gateway``: ``deskgate init`` / ``user
add`` / ``desktop add`` / ``assign`` / ``serve`` in a temporary folder, signed in over HTTP with
password + TOTP, ``POST /desktops/{id}/connect``, the websocket). The client then asks for Tight
(JPEG quality 6, compression 2, as noVNC does), ZRLE, CopyRect and Raw, and keeps one incremental
FramebufferUpdateRequest outstanding, as noVNC does. Reported:

- **click -> first FBU**: from the ``POST .../connect`` (the click) to the first FramebufferUpdate
  header; for RDP that includes starting the bridge and the xrdp login;
- **FPS** and **Mpx/s**: FramebufferUpdates with pixels per second, and the rectangles' area;
  **MB/s** on the websocket;
- **CPU %** (of one core, over the measurement) and **RSS** of the bridge's xfreerdp and Xvnc (RDP
  only, PIDs from /proc), of the gateway process, and of the desktop server side (VNC: its Xvnc;
  RDP: xrdp, sesman and the session's processes).

Timings are printed, never asserted. Needs root, xrdp, xorgxrdp, freerdp2-x11, Xvnc and xterm (`make
test` installs them). Every process started here is stopped by its PID.

    .venv/bin/python bench/rdp.py             # 8 s per desktop, about 25 s in all
    .venv/bin/python bench/rdp.py --quick     # 2 s per desktop, under 15 s in all
    .venv/bin/python bench/rdp.py --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for extra in (str(BENCH), str(REPO / "tests"), str(REPO)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import relay as rb  # noqa: E402 - bench/relay.py: gateway, sign-in, websocket link, RFB handshake
from rdp_servers import RdpServer, pid_alive, pids_of_uid, start_xrdp  # noqa: E402 - tests/

W, H = 1280, 800  # the gateway's default desktop_geometry: the bridge's size when the POST has none
CHANGE_LOOP = "while :; do head -c 3000 /dev/urandom | base64 -w 127; sleep 0.05; done"
XTERM = ["xterm", "-fn", "10x20", "-bg", "#202830", "-fg", "white", "-geometry", "128x40+0+0"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# RFB encodings the client asks for, in noVNC's order of preference.
ENC_RAW, ENC_COPYRECT, ENC_TIGHT, ENC_ZRLE = 0, 1, 7, 16
ENC_DESKTOP_SIZE, ENC_LAST_RECT = -223, -224
ENC_JPEG_QUALITY_6, ENC_COMPRESS_2 = -32 + 6, -256 + 2
ENCODINGS = [ENC_TIGHT, ENC_ZRLE, ENC_COPYRECT, ENC_RAW, ENC_JPEG_QUALITY_6, ENC_COMPRESS_2,
             ENC_DESKTOP_SIZE, ENC_LAST_RECT]


# --- processes from /proc ----------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    try:
        return rb.ProcStat.of(pid).cpu
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def bridge_pids(runtime_dir: Path) -> dict[str, list[int]]:
    """The bridges' xfreerdp and Xvnc (by name): processes of that name whose command line or
    working folder is under ``runtime_dir`` (this bench's gateway only)."""
    out: dict[str, list[int]] = {"xfreerdp": [], "Xvnc": []}
    marker = str(runtime_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        name = comm(pid)
        if name not in out or not pid_alive(pid):
            continue
        text = ""
        with contextlib.suppress(OSError):
            text = (entry / "cmdline").read_bytes().decode(errors="replace") + os.readlink(entry / "cwd")
        if marker in text:
            out[name].append(pid)
    return out


def process_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Usage:
    """CPU seconds of a set of processes between two points, and their RSS at the end."""

    pids: Callable[[], list[int]]
    start: dict[int, float] = field(default_factory=dict)
    cpu: float = 0.0
    rss: int = 0

    def begin(self) -> None:
        self.start = {p: cpu_seconds(p) for p in self.pids()}

    def end(self) -> None:
        now = {p: cpu_seconds(p) for p in self.pids()}
        self.cpu = sum(now[p] - self.start.get(p, 0.0) for p in now)
        self.rss = sum(rss_bytes(p) for p in now)


# --- the RFB client: framebuffer updates counted, not decoded ----------------------------------
def _compact_length(read_byte: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    async def length() -> int:
        b = await read_byte()
        n = b & 0x7F
        if b & 0x80:
            b = await read_byte()
            n |= (b & 0x7F) << 7
            if b & 0x80:
                n |= (await read_byte()) << 14
        return n

    return length


class FrameCounter:
    """Reads FramebufferUpdates (Tight, ZRLE, CopyRect, Raw at 32 bpp) through ``rb.RfbClient``."""

    def __init__(self, client: rb.RfbClient) -> None:
        self.client = client
        self.frames = 0
        self.pixels = 0
        self.bytes = 0
        self.width, self.height = W, H

    async def read(self, n: int) -> bytes:
        data = await self.client._read(n)  # noqa: SLF001 - reuse relay.py's buffered reader
        self.bytes += n
        return data

    async def byte(self) -> int:
        return (await self.read(1))[0]

    async def start(self) -> None:
        link = self.client.link
        await link.send(b"\x00\x00\x00\x00" + rb.PIXEL_FORMAT)  # SetPixelFormat: 32 bpp, depth 24
        encodings = b"".join(struct.pack(">i", e) for e in ENCODINGS)
        await link.send(struct.pack(">BxH", 2, len(ENCODINGS)) + encodings)
        await self.request(incremental=False)

    async def request(self, incremental: bool = True) -> None:
        message = struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height)
        await self.client.link.send(message)

    async def next_update(self) -> int:
        """Skip other server messages up to the next FramebufferUpdate, read it: its pixels."""
        while True:
            kind = await self.byte()
            if kind == 0:
                break
            if kind == 1:  # SetColourMapEntries
                (n,) = struct.unpack(">xxxH", await self.read(5))
                await self.read(6 * n)
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText
                (n,) = struct.unpack(">xxxI", await self.read(7))
                await self.read(n)
            elif kind == 150:  # EndOfContinuousUpdates
                continue
            elif kind == 248:  # ServerFence
                head = await self.read(8)
                await self.read(head[7])
            else:
                raise RuntimeError(f"unexpected server message {kind}")
        (count,) = struct.unpack(">xH", await self.read(3))
        pixels = 0
        for _ in range(count):
            x, y, w, h, enc = struct.unpack(">4Hi", await self.read(12))
            if enc == ENC_LAST_RECT:
                break
            if enc == ENC_DESKTOP_SIZE:
                self.width, self.height = w, h
                continue
            if enc == ENC_RAW:
                await self.read(w * h * 4)
            elif enc == ENC_COPYRECT:
                await self.read(4)
            elif enc == ENC_ZRLE:
                (n,) = struct.unpack(">I", await self.read(4))
                await self.read(n)
            elif enc == ENC_TIGHT:
                await self.skip_tight(w, h)
            else:
                raise RuntimeError(f"unexpected encoding {enc}")
            pixels += w * h
        return pixels

    async def skip_tight(self, w: int, h: int) -> None:
        """One Tight rectangle (TPIXEL = 3 bytes at 32 bpp, depth 24), skipped unread."""
        length = _compact_length(self.byte)
        ctl = (await self.byte()) >> 4
        if ctl == 8:  # fill
            await self.read(3)
            return
        if ctl == 9:  # JPEG
            await self.read(await length())
            return
        if ctl > 9:
            raise RuntimeError(f"unexpected Tight compression {ctl}")
        filter_id = await self.byte() if ctl & 4 else 0
        size = w * h * 3
        if filter_id == 1:  # palette
            colours = await self.byte() + 1
            await self.read(colours * 3)
            size = (w + 7) // 8 * h if colours == 2 else w * h
        if size < 12:
            await self.read(size)
        else:
            await self.read(await length())

    async def run(self, seconds: float) -> float:
        """Count updates for ``seconds``, one request outstanding; returns the elapsed time."""
        t0 = time.perf_counter()
        self.frames = self.pixels = 0
        self.bytes = 0
        async with asyncio.timeout(seconds + 30):
            while time.perf_counter() - t0 < seconds:
                pixels = await self.next_update()
                await self.request()
                if pixels:
                    self.frames += 1
                    self.pixels += pixels
        return time.perf_counter() - t0


# --- one measured desktop -------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    first_update: float = 0.0
    fps: float = 0.0
    mpx: float = 0.0
    mbps: float = 0.0
    usage: dict[str, Usage] = field(default_factory=dict)
    seconds: float = 0.0


@contextlib.contextmanager
def clock_connect_posts(marks: list[float]) -> Iterator[None]:
    """Notes when relay.py's sign-in code sends ``POST .../connect`` (the person's click)."""
    import aiohttp

    original = aiohttp.ClientSession.post

    def post(self: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if str(url).endswith("/connect"):
            marks.append(time.perf_counter())
        return original(self, url, *args, **kwargs)

    aiohttp.ClientSession.post = post  # type: ignore[method-assign]
    try:
        yield
    finally:
        aiohttp.ClientSession.post = original  # type: ignore[method-assign]


async def measure(name: str, gw: rb.Gateway, seconds: float, usage: dict[str, Usage]) -> Row:
    row = Row(name, usage=usage)
    marks: list[float] = []
    with clock_connect_posts(marks):
        link = await gw.open_link()
    try:
        client = rb.RfbClient(link)
        await client.handshake()
        counter = FrameCounter(client)
        await counter.start()
        await counter.next_update()
        row.first_update = time.perf_counter() - marks[-1]
        await counter.request()
        await counter.run(1.0)  # warm-up: the first full frames, the remote loop under way
        for u in usage.values():
            u.begin()
        elapsed = await counter.run(seconds)
        for u in usage.values():
            u.end()
        row.seconds = elapsed
        row.fps = counter.frames / elapsed
        row.mpx = counter.pixels / elapsed / 1e6
        row.mbps = counter.bytes / elapsed / rb.MB
    finally:
        await link.close()
    return row


def write_xsession(server: RdpServer) -> None:
    """The xrdp account's session: the same xterm and loop as the VNC desktop's."""
    assert server.uid is not None
    xsession = Path(pwd.getpwuid(server.uid).pw_dir) / ".xsession"
    args = " ".join(f"'{a}'" for a in XTERM)
    xsession.write_text(f"#!/bin/sh\nexec {args} -e sh -c '{CHANGE_LOOP}'\n")  # owner and mode kept


async def run_vnc(args: argparse.Namespace, tmp: Path) -> Row:
    from gateway.xdisplay.numbers import free_tcp_port
    from gateway.xdisplay.xvnc import start_display

    display = await start_display(rfbport=free_tcp_port(), password=None, name="bench-vnc",
                                  geometry=f"{W}x{H}", window_manager=False, xterm=False)
    term: subprocess.Popen[bytes] | None = None
    gw = rb.Gateway(tmp / "vnc", rb.free_port())
    try:
        term = subprocess.Popen([*XTERM, "-e", "sh", "-c", CHANGE_LOOP], env=display.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        assert display.rfbport is not None
        gw.start(display.rfbport)
        assert gw.proc is not None
        gw_pid = gw.proc.pid
        server_pids = [display.xvnc_pid, term.pid]
        usage = {"gateway": Usage(lambda: [gw_pid]),
                 "desktop server": Usage(lambda: [p for p in server_pids if pid_alive(p)])}
        return await measure("VNC (Xvnc)", gw, args.seconds, usage)
    except Exception:
        print(gw.log_tail(), file=sys.stderr)
        raise
    finally:
        gw.stop()
        if term is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(term.pid, signal.SIGTERM)
            term.wait(5)
        await display.stop()


async def run_rdp(args: argparse.Namespace, tmp: Path, server: RdpServer) -> Row:
    runtime = Path(tempfile.mkdtemp(prefix="dg-bench-rdp-", dir="/tmp"))
    os.chmod(runtime, 0o711)  # noqa: S103 - the bridge user must traverse it
    gw = rb.Gateway(tmp / "rdp", rb.free_port())
    try:
        # relay.py's Gateway adds a VNC desktop; it is never used here: the RDP one is added next.
        gw.start(rb.free_port(), extra_env={"DESKGATE_DESKTOPS_RUNTIME_DIR": str(runtime)})
        out = rb.cli(gw.config, "desktop", "add", "bench-rdp", "--provider", "static",
                     "--rdp", f"127.0.0.1:{server.port}", "--user", server.username, "--security", "tls",
                     "--password-stdin", stdin=server.password + "\n")  # fmt: skip
        gw.desktop_id = int(out.split()[1])
        rb.cli(gw.config, "assign", "bench-rdp", "bench")
        assert gw.proc is not None
        gw_pid = gw.proc.pid
        xrdp_group = server.procs[-1].pid  # xrdp and the children it forks per connection
        assert server.uid is not None
        uid = server.uid
        usage = {
            "bridge xfreerdp": Usage(lambda: bridge_pids(runtime)["xfreerdp"]),
            "bridge Xvnc": Usage(lambda: bridge_pids(runtime)["Xvnc"]),
            "gateway": Usage(lambda: [gw_pid]),
            "desktop server": Usage(lambda: process_group(xrdp_group) + [server.procs[0].pid]
                                    + pids_of_uid(uid)),
        }
        return await measure("RDP (xrdp)", gw, args.seconds, usage)
    except Exception:
        print(gw.log_tail(), file=sys.stderr)
        raise
    finally:
        gw.stop()  # the gateway stops its bridges on the way out
        deadline = time.monotonic() + 10
        while any(bridge_pids(runtime).values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [p for pids in bridge_pids(runtime).values() for p in pids]
        if left:
            print(f"bridge processes left after the gateway stopped: {left} (stopping them)", file=sys.stderr)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(runtime, ignore_errors=True)


# --- the report ---------------------------------------------------------------------------------
def report(rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(f"{args.seconds:g} s per desktop after a 1 s warm-up, {W}x{H}, one request outstanding, "
          f"Tight/ZRLE/CopyRect/Raw, {os.cpu_count()} CPUs")
    head = f"{'':28s}" + "".join(f"{r.name:>16s}" for r in rows)
    if len(rows) == 2:
        head += f"{'RDP/VNC':>10s}"
    print(head)
    print("-" * len(head))

    def line(label: str, values: list[float | None], spec: str) -> None:
        cells = "".join(f"{'-':>16s}" if v is None else f"{format(v, spec):>16s}" for v in values)
        ratio = ""
        if len(values) == 2:
            a, b = values
            ratio = f"{a / b:9.2f}x" if a is not None and b else f"{'-':>10s}"
        print(f"{label:28s}{cells}{ratio}")

    line("click -> first FBU (s)", [r.first_update for r in rows], ".2f")
    line("frames/s", [r.fps for r in rows], ".1f")
    line("Mpx/s", [r.mpx for r in rows], ".1f")
    line("websocket MB/s", [r.mbps for r in rows], ".2f")
    names = ["bridge xfreerdp", "bridge Xvnc", "gateway", "desktop server"]
    for n in names:
        line(f"{n} CPU %", [100 * r.usage[n].cpu / r.seconds if n in r.usage else None for r in rows], ".0f")
    for n in names:
        line(f"{n} RSS MiB", [r.usage[n].rss / 2**20 if n in r.usage else None for r in rows], ".1f")
    rdp = next((r for r in rows if r.name.startswith("RDP")), None)
    if rdp is not None:
        bridge_cpu = sum(rdp.usage[n].cpu for n in names[:2]) / rdp.seconds * 100
        bridge_rss = sum(rdp.usage[n].rss for n in names[:2]) / 2**20
        print(f"\nRDP bridge per session: {bridge_cpu:.0f} % of a core, {bridge_rss:.0f} MiB RSS "
              f"(xfreerdp + Xvnc); CPU % is of one core over the measurement.")


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="deskgate-bench-rdp-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_xrdp(tmp / "xrdp")
        try:
            write_xsession(server)
            rows.append(await run_rdp(args, tmp, server))
        finally:
            server.stop()
        rows.append(await run_vnc(args, tmp))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=8.0, help="measurement per desktop (default 8)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s per desktop")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (xrdp test account, bridge user)", file=sys.stderr)
        return 2
    tools = ("xrdp", "xrdp-sesman", "xfreerdp", "Xvnc", "xterm", "xdotool")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)} (make test installs them)", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows = asyncio.run(run(args))
    report(rows, args)
    print(f"\n(bench took {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
