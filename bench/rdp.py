"""RDP bench: how smooth an RDP desktop is in the browser, next to a VNC desktop and a native
RDP client, under the same full-screen change, in one run.

The change (``--source``), the same on every desktop:

- ``screen`` (default): bench/screen_flood.py paints the whole screen 60 times a second
  (``--fps``) with new pixels, every pixel different from the frame before; nothing on the
  screen is copied, so no protocol can send a frame as a scroll;
- ``terminal``: an xterm (10x20 font) over the whole screen printing ``base64 /dev/urandom`` as
  fast as it can (it scrolls: most of each screen is redrawn, few of its pixels change).

The desktops:

- **RDP**: a real xrdp 0.9 session (tests/rdp_servers.py ``start_xrdp``) whose ``.xsession`` is
  the source; reached through a real ``deskgate serve`` (RDP bridge: xfreerdp inside a private
  Xvnc) by headless Chromium on the desktop's page;
- **VNC**: a TigerVNC Xvnc running the source, a static VNC desktop of the same gateway, opened
  in the same Chromium;
- **native**: ``xfreerdp`` on an Xvfb against the same xrdp session, with the bridge's own command
  line (``gateway.rdp.freerdp.xfreerdp_argv``): what a person with a native client gets.

Counted in rounds that take turns (native, RDP, VNC; then RDP, VNC, native; ...), ``--seconds``
each after 2 s of settling:

- **source**: full screens/s drawn on the desktop's own X display (the xrdp session's Xvnc or the
  VNC desktop's), from X DAMAGE (bench/xdamage.py), the union of what was drawn polled at 60 Hz;
- **changed** (the headline): in the browser, the pixels of noVNC's canvas whose value differs
  from the previous animation frame, per second, divided by the canvas area
  (bench/page_counter.js, added to the page before its own scripts; see there); for the native
  client, the same on its Xvfb's framebuffer (``-fbdir``) read 60 times a second. A pixel sent
  again with the same value does not count, so resending unchanged areas cannot raise it;
- **drawn**: what was drawn whether it changed or not (the union of noVNC's rectangles per
  animation frame; DAMAGE on the native client's Xvfb), and for RDP what the bridge's xfreerdp
  drew into the bridge's Xvnc (DAMAGE there): where frames go missing;
- **CPU** (cores, from /proc, over the window): the bridge (its xfreerdp + Xvnc), the gateway
  process, Chromium (all its processes), xrdp with the session's processes or the VNC
  desktop's Xvnc, the native client and its Xvfb, and the whole machine (/proc/stat).

Then **click to first frame**, ``--clicks`` times for each desktop, taking turns: from the
navigation to the desktop's page (what the Connect link does; ``performance.timeOrigin``) to the
moment the pixels noVNC has drawn cover the whole canvas. The gateway's bridge grace time is 0
here and each click waits until the previous click's bridge has stopped, so every RDP click
starts a bridge (the xrdp session itself stays, as a person's remote session does).

Everything runs on this machine: on 2 cores the browser, the gateway, the bridge, xrdp and the
source share the CPU, which a real deployment spreads over three machines. Every figure is
printed (medians over the rounds; each round as it happens); none is asserted. Needs root, xrdp,
freerdp3-x11, Xvnc, Xvfb, xterm, numpy and Chromium (`make test` installs them). Every process
started here is stopped by its PID, and the xrdp test account is removed.

    .venv/bin/python bench/rdp.py                    # 1024x768, 3 rounds of 5 s, 20 clicks: ~5 min
    .venv/bin/python bench/rdp.py --quick            # 1 round of 2 s, 3 clicks
    .venv/bin/python bench/rdp.py --source terminal --rounds 5 --seconds 8 --size 1280x800
    .venv/bin/python bench/rdp.py --paths rdp --clicks 0 --json figures.json

One module (over 400 lines): the three paths share one lab (the xrdp session, the VNC desktop,
the gateway, the browser) and one round structure, and each figure is only comparable because
they are measured by the same code in the same run. What it reuses: bench/rdp_chain.py (processes,
CPU, the first paint), bench/xdamage.py, bench/relay.py (the process tree), tests/ (the servers,
the gateway, the sign-in).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import mmap
import os
import pwd
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for extra in (str(BENCH), str(REPO / "tests"), str(REPO / "tests" / "e2e"), str(REPO)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import relay as rb  # noqa: E402 - bench/relay.py: the process tree
from e2e_support import CHROMIUM, CHROMIUM_ARGS, sign_in  # noqa: E402 - tests/e2e/
from rdp_chain import Cpu, comm, first_damage, named, spawn, wait_display  # noqa: E402 - bench/
from rdp_e2e_support import bridge_processes, rdp_gateway, remote_display_env  # noqa: E402
from rdp_servers import RdpServer, free_display, free_port, pids_of_uid, start_xrdp, stop_group  # noqa: E402
from xdamage import DamageCounter  # noqa: E402 - bench/

from gateway.rdp.freerdp import xfreerdp_argv  # noqa: E402

COUNTER_JS = (BENCH / "page_counter.js").read_text()
POLL_HZ = 60.0  # X DAMAGE polls per second: the browser's animation frame rate
SETTLE = 2.0
GRACE = 0.0  # the bridges' grace time: each click starts a bridge (a connect still hands its own over)


def flood_xterm(width: int, height: int) -> list[str]:
    """The source: an xterm over the whole screen (no window manager), printing as fast as it can."""
    cols, rows = (width - 4) // 10, (height - 4) // 20
    return [
        "xterm",
        "-fn",
        "10x20",
        "-b",
        "2",
        "-bg",
        "#203040",
        "-fg",
        "white",
        "-geometry",
        f"{cols}x{rows}+0+0",
        "-e",
        "base64 -w 100 /dev/urandom",
    ]


# --- processes -------------------------------------------------------------------------------
def descendants(root: int) -> list[int]:
    return rb.process_tree(root)[1:]  # [0] is root itself


def chromium_pids(kind: str = "") -> list[int]:
    """Chromium's processes; ``kind``: only its renderers, its GPU process, or the rest."""
    found = []
    for pid in descendants(os.getpid()):
        if "chrom" not in comm(pid):
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            role = "renderer" if b"--type=renderer" in argv else "other"
            role = "gpu" if b"--type=gpu-process" in argv else role
            if kind in ("", role):
                found.append(pid)
    return found


# --- the figures ------------------------------------------------------------------------------
@dataclass
class Round:
    path: str
    source: float  # full screens/s on the desktop's own display
    changed: float  # full screens/s of changed pixels in the browser (or on the native client's Xvfb)
    extra: str  # animation frames, draws
    cpu: dict[str, float]


@dataclass
class Figures:
    rounds: list[Round] = field(default_factory=list)
    clicks: dict[str, list[float]] = field(default_factory=dict)

    def median(self, path: str, what: str) -> float:
        values = [
            getattr(r, what) if what in ("source", "changed") else r.cpu.get(what, 0.0)
            for r in self.rounds
            if r.path == path
        ]
        return statistics.median(values) if values else float("nan")


def show_profile(path: str, profile: dict[str, Any]) -> None:
    """The page's JavaScript functions by self time (a CDP CPU profile of the window)."""
    samples = collections.Counter(profile.get("samples", []))
    total = sum(samples.values()) or 1
    by_name: collections.Counter[str] = collections.Counter()
    for node in profile["nodes"]:
        frame = node["callFrame"]
        where = frame["url"].rsplit("/", 1)[-1]
        name = f"{frame['functionName'] or '(anonymous)'} {where}:{frame['lineNumber']}"
        by_name[name] += samples[node["id"]]
    print(f"  {path}: the page's time by function (self, {total} samples)")
    for name, n in by_name.most_common(14):
        print(f"    {100 * n / total:5.1f}%  {name}")


def show_round(r: Round) -> None:
    cpus = "  ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())
    print(
        f"  {r.path:7s} source {r.source:5.1f}  changed {r.changed:5.1f} full screens/s  {r.extra}"
        f"\n          CPU (cores): {cpus}",
        flush=True,
    )


# --- the parts --------------------------------------------------------------------------------
@contextlib.contextmanager
def x_env(env: dict[str, str] | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("XAUTHORITY",)}
    if env and "XAUTHORITY" in env:
        os.environ["XAUTHORITY"] = env["XAUTHORITY"]
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SourceRate(threading.Thread):
    """X DAMAGE on a display, for ``seconds``, in a thread of its own."""

    def __init__(self, display: str, seconds: float, env: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        with x_env(env):
            self.counter = DamageCounter(display, hz=POLL_HZ)
        self.seconds = seconds
        self.rate = 0.0

    def run(self) -> None:
        try:
            self.rate = self.counter.measure(self.seconds).screens_per_s
        finally:
            self.counter.close()


class ScreenChanges:
    """Changed pixels of an Xvfb screen: its framebuffer (``-fbdir``: an XWD file Xvfb draws
    into) read 60 times a second and compared with the previous read, as the page compares its
    canvas at each animation frame."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.np = np
        self.file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        order = ">" if struct.unpack_from(">I", self.map, 4)[0] == 7 else "<"  # XWD_FILE_VERSION
        head = struct.unpack_from(order + "25I", self.map, 0)
        header_size, width, height, bits, line, ncolors = (
            head[0],
            head[4],
            head[5],
            head[11],
            head[12],
            head[19],
        )
        if bits != 32:
            raise RuntimeError(f"Xvfb framebuffer of {bits} bits per pixel")
        rows = np.frombuffer(
            self.map, dtype=np.uint32, count=line // 4 * height, offset=header_size + 12 * ncolors
        ).reshape(height, line // 4)
        self.pixels = rows[:, :width]
        self.area = width * height

    def measure(self, seconds: float) -> float:
        """Full screens/s of changed pixels over ``seconds``."""
        period = 1.0 / POLL_HZ
        prev = self.pixels.copy()
        start = next_at = time.monotonic()
        changed = 0
        while (now := time.monotonic()) < start + seconds:
            next_at += period
            if next_at > now:
                time.sleep(next_at - now)
            cur = self.pixels.copy()
            changed += int(self.np.count_nonzero(cur != prev))
            prev = cur
        return changed / self.area / (time.monotonic() - start)

    def close(self) -> None:
        del self.pixels
        with contextlib.suppress(BufferError):
            self.map.close()
        self.file.close()


@dataclass
class Lab:
    args: argparse.Namespace
    work: Path
    width: int
    height: int
    server: RdpServer
    vnc_display: int
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rdp: Any = None  # rdp_e2e_support.RdpGateway
    page: Any = None
    urls: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[float | None, float | None, float]] = field(default_factory=list)

    def session_env(self) -> dict[str, str]:
        env = remote_display_env(self.server)
        if env is None:
            raise RuntimeError("the xrdp session's display is not running")
        return env

    def xrdp_side(self) -> list[int]:
        assert self.server.uid is not None
        return named(("xrdp", "xrdp-sesman")) + [
            p for p in pids_of_uid(self.server.uid) if comm(p) in ("Xvnc", "Xorg")
        ]

    def bridge(self) -> list[int]:
        return list(bridge_processes(self.rdp.runtime_dir))

    def bridge_display(self) -> tuple[str, dict[str, str]]:
        """DISPLAY and XAUTHORITY of the (one) running bridge's Xvnc, from its command line."""
        for pid in self.bridge():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if comm(pid) == "Xvnc":
                return argv[1], {"XAUTHORITY": argv[argv.index("-auth") + 1]}
        raise RuntimeError("no bridge Xvnc")

    def desktop_side(self) -> list[int]:
        """The desktops' own processes: xrdp, the xrdp session (its Xvnc, xterm, base64) and
        the VNC desktop (its Xvnc, xterm, base64)."""
        assert self.server.uid is not None
        vnc = [self.started[0].pid, self.started[1].pid, *descendants(self.started[1].pid)]
        return named(("xrdp", "xrdp-sesman")) + pids_of_uid(self.server.uid) + vnc

    def sources(self) -> list[int]:
        """The processes that change the desktops' screens (not their X servers or xrdp)."""
        assert self.server.uid is not None
        painting = ("python3", "xterm", "base64", "sh", "bash", "cat", "head", "tr")
        rdp = [p for p in pids_of_uid(self.server.uid) if comm(p) in painting]
        return rdp + [self.started[1].pid, *descendants(self.started[1].pid)]

    def pause_sources(self, paused: bool) -> None:
        for pid in self.sources():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def renice(self, level: int) -> None:
        for pid in self.desktop_side():
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.setpriority(os.PRIO_PROCESS, int(tid), level)

    # -- the browser --------------------------------------------------------------------------
    def open(self, path: str, timeout: float = 60) -> float:
        """Navigate to the desktop's page; wait for the first full frame. Returns ms from the
        navigation start to it."""
        self.page.goto(self.urls[path])
        self.page.wait_for_function(
            "() => window.__deskgateDrawn.read().firstFrame !== null", timeout=timeout * 1000
        )
        got = self.page.evaluate(
            """() => {
                const posts = performance.getEntriesByType("resource")
                    .filter(e => e.name.endsWith("/connect"));
                const d = window.__deskgateDrawn.read();
                return [d.firstFrame, d.firstDraw, posts.length ? posts[posts.length - 1].responseEnd : null];
            }"""
        )
        self.steps.append((got[2], got[1], got[0]))
        return float(got[0])

    def close_page(self) -> None:
        self.page.goto("about:blank")
        deadline = time.monotonic() + 20
        while self.bridge() and time.monotonic() < deadline:
            time.sleep(0.05)

    def browser_round(self, path: str) -> Round:
        self.open(path)
        time.sleep(SETTLE)
        env = self.session_env() if path == "rdp" else None
        display = env["DISPLAY"] if env else f":{self.vnc_display}"
        source = SourceRate(display, self.args.seconds, env)
        groups = {
            "gateway": [self.rdp.proc.pid],
            "chromium": chromium_pids(),
            "(renderer": chromium_pids("renderer"),
            "gpu": chromium_pids("gpu"),
            "other)": chromium_pids("other"),
        }
        inner = None
        if path == "rdp":
            groups = {"bridge": self.bridge(), **groups, "xrdp+session": self.xrdp_side()}
            bridge_display, bridge_env = self.bridge_display()
            inner = SourceRate(bridge_display, self.args.seconds, bridge_env)
        else:
            groups["desktop Xvnc"] = [self.started[0].pid]
        meter = Cpu(groups)
        self.page.evaluate("() => window.__deskgateDrawn.reset()")
        cdp = None
        if self.args.js_profile:
            cdp = self.page.context.new_cdp_session(self.page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.start")
        source.start()
        if inner:
            inner.start()
        time.sleep(self.args.seconds)
        got = self.page.evaluate("() => window.__deskgateDrawn.read()")
        used = meter.end()
        if cdp is not None:
            show_profile(path, cdp.send("Profiler.stop")["profile"])
            cdp.detach()
        source.join()
        if inner:
            inner.join()
        self.close_page()
        area = got["width"] * got["height"]
        per_s = area * got["seconds"]
        changed, drawn = (got["changed"] / per_s, got["drawn"] / per_s) if area else (0.0, 0.0)
        extra = (
            f"[drawn {drawn:.1f}]"
            + (f" [into the bridge's display {inner.rate:.1f}]" if inner else "")
            + f" [{got['width']}x{got['height']}, {got['frames'] / got['seconds']:.0f} animation frames/s,"
            f" {got['changedFrames'] / got['seconds']:.0f} with change,"
            f" {got['draws'] / got['seconds']:.0f} draws/s, {got['flips'] / got['seconds']:.0f} updates/s]"
        )
        return Round(path, source.rate, changed, extra, used)

    def native_round(self) -> Round:
        n = free_display(300, 400)
        fbdir = Path(tempfile.mkdtemp(prefix="fb-", dir=self.work))
        xvfb = spawn(
            [
                "Xvfb",
                f":{n}",
                "-screen",
                "0",
                f"{self.width}x{self.height}x24",
                "-nolisten",
                "tcp",
                "-fbdir",
                str(fbdir),
            ],
            self.work / "xvfb.log",
        )
        self.started.append(xvfb)
        client = None
        try:
            wait_display(n)
            argv = xfreerdp_argv(
                self.server.target(  # as the gateway's bridge connects
                    security="tls",
                    cert_policy="fingerprint",
                    cert_fingerprint=self.server.certificate_sha256(),
                )
            )
            client = spawn(
                argv,
                self.work / "native.log",
                {"DISPLAY": f":{n}", "HOME": str(self.work)},
                stdin=(self.server.password + "\n").encode(),
            )
            self.started.append(client)
            first_damage(f":{n}", client)
            time.sleep(SETTLE)
            env = self.session_env()
            source = SourceRate(env["DISPLAY"], self.args.seconds, env)
            native_pids = [client.pid, *descendants(client.pid)]
            meter = Cpu({"xfreerdp": native_pids, "Xvfb": [xvfb.pid], "xrdp+session": self.xrdp_side()})
            drawn = SourceRate(f":{n}", self.args.seconds)
            screen = ScreenChanges(fbdir / "Xvfb_screen0")
            source.start()
            drawn.start()
            changed = screen.measure(self.args.seconds)
            used = meter.end()
            screen.close()
            drawn.join()
            source.join()
            return Round(
                "native",
                source.rate,
                changed,
                f"[drawn {drawn.rate:.1f}] [{self.width}x{self.height} Xvfb]",
                used,
            )
        finally:
            if client is not None:
                stop_group(client)
                self.started.remove(client)
            stop_group(xvfb)
            self.started.remove(xvfb)
            time.sleep(0.5)


def source_argv(args: argparse.Namespace, flood_script: Path, width: int, height: int) -> list[str]:
    if args.source == "terminal":
        return flood_xterm(width, height)
    return ["python3", str(flood_script), "--fps", f"{args.fps:g}"]


def start_vnc_desktop(
    lab_work: Path, width: int, height: int, source: list[str]
) -> tuple[int, int, list[subprocess.Popen[bytes]]]:
    n, port = free_display(300, 400), free_port()
    xvnc = spawn(
        [
            "Xvnc",
            f":{n}",
            "-geometry",
            f"{width}x{height}",
            "-depth",
            "24",
            "-nolisten",
            "tcp",
            "-rfbport",
            str(port),
            "-localhost",
            "-SecurityTypes",
            "None",
            "-AlwaysShared",
        ],
        lab_work / "vnc-desktop.log",
    )
    wait_display(n)
    term = spawn(source, lab_work / "vnc-source.log", {"DISPLAY": f":{n}"})
    return n, port, [xvnc, term]


def run(args: argparse.Namespace) -> Figures:
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="dg-bench-rdp-"))
    os.chmod(work, 0o755)  # noqa: S103 - the native client's HOME is private below; Xvfb logs only
    figures = Figures()
    server = start_xrdp(work / "xrdp", session=args.xrdp_session)
    lab: Lab | None = None
    pw = None
    try:
        entry = pwd.getpwnam(server.username)
        home = Path(entry.pw_dir)
        shutil.copy(BENCH / "screen_flood.py", home / "screen_flood.py")
        os.chown(home / "screen_flood.py", entry.pw_uid, entry.pw_gid)
        (home / ".xsession").write_text(
            "#!/bin/sh\nexec "
            + " ".join(f"'{a}'" for a in source_argv(args, home / "screen_flood.py", width, height))
            + "\n"
        )
        vnc_display, vnc_port, vnc_procs = start_vnc_desktop(
            work, width, height, source_argv(args, BENCH / "screen_flood.py", width, height)
        )
        lab = Lab(args, work, width, height, server, vnc_display, started=list(vnc_procs))
        with rdp_gateway(work / "gateway", ("bench",), grace=GRACE, log_level="INFO") as rdp:
            lab.rdp = rdp
            gw = rdp.gw
            rdp_id = rdp.add_rdp_desktop(
                "rdp flood",
                server.port,
                server.username,
                server.password,
                "--security",
                "tls",
                "--cert-fingerprint",
                server.certificate_sha256(),
                assign=("bench",),
            )
            out = gw.cli(
                "desktop", "add", "vnc flood", "--provider", "static", "--vnc", f"127.0.0.1:{vnc_port}"
            )
            match = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
            assert match, f"no 'Desktop <id>' in {out!r}"
            vnc_id = match.group(1)
            gw.cli("assign", "vnc flood", "bench")
            lab.urls = {"rdp": f"{gw.base_url}/desktops/{rdp_id}", "vnc": f"{gw.base_url}/desktops/{vnc_id}"}

            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": width, "height": height + 100})
            ctx.add_init_script(COUNTER_JS)
            lab.page = ctx.new_page()
            sign_in(lab.page, gw, gw.accounts["bench"])
            # The desktop area is the window under the toolbar: make it WxH, then every bridge
            # starts at WxH and the VNC desktop is asked for WxH.
            lab.page.goto(lab.urls["vnc"])
            box = lab.page.locator("#screen").bounding_box()
            assert box is not None
            lab.page.set_viewport_size({"width": width, "height": height + round(box["y"])})
            lab.close_page()
            print(
                f"RDP bench at {width}x{height}: {args.rounds} round(s) of {args.seconds:g} s; "
                f"first the RDP session's own first connect",
                flush=True,
            )
            ms = lab.open("rdp", timeout=90)
            print(f"  first connect (new xrdp session): {ms / 1000:.2f} s to the first full frame")
            lab.close_page()

            if args.desktop_nice:
                lab.renice(args.desktop_nice)
            orders = [("native", "rdp", "vnc"), ("rdp", "vnc", "native"), ("vnc", "native", "rdp")]
            for i in range(args.rounds):
                print(f"round {i + 1}", flush=True)
                for path in (p for p in orders[i % 3] if p in args.paths.split(",")):
                    r = lab.native_round() if path == "native" else lab.browser_round(path)
                    figures.rounds.append(r)
                    show_round(r)

            still = args.clicks_on == "still"
            print(
                f"click to first frame, {args.clicks} clicks each (taking turns), on desktops "
                + ("whose sources are paused" if still else "whose sources keep painting"),
                flush=True,
            )
            lab.pause_sources(still)
            figures.clicks = {"rdp": [], "vnc": []}
            for _ in range(args.clicks):
                for path in (p for p in ("rdp", "vnc") if p in args.paths.split(",")):
                    figures.clicks[path].append(lab.open(path) / 1000)
                    posted, drawn, full = lab.steps[-1]
                    print(
                        f"  {path}: connect answered {(posted or 0) / 1000:.2f} s, first draw "
                        f"{(drawn or 0) / 1000:.2f} s, whole canvas {full / 1000:.2f} s",
                        flush=True,
                    )
                    lab.close_page()
            lab.pause_sources(False)
            ctx.close()
            browser.close()
    finally:
        if pw is not None:
            pw.stop()
        if lab is not None:
            for p in reversed(lab.started):
                stop_group(p)
        server.stop()
    report(figures, width, height)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rounds": [r.__dict__ for r in figures.rounds], "clicks": figures.clicks}, indent=2)
        )
    return figures


def report(f: Figures, width: int, height: int) -> None:
    native, rdp, vnc = (f.median(p, "changed") for p in ("native", "rdp", "vnc"))
    print(f"\n== medians at {width}x{height} (full screens/s; CPU in cores) ==")
    for path in ("native", "rdp", "vnc"):
        cpus = list(dict.fromkeys(k for r in f.rounds if r.path == path for k in r.cpu))
        print(
            f"  {path:7s} source {f.median(path, 'source'):5.1f}  changed {f.median(path, 'changed'):5.1f}  "
            + "  ".join(f"{k} {f.median(path, k):.2f}" for k in cpus)
        )
    if f.rounds:
        print(f"  RDP in the browser / native client: {rdp / native:.2f}x   RDP / VNC: {rdp / vnc:.2f}x")
    for path, values in f.clicks.items():
        if values:
            print(
                f"  click to first frame, {path}: p50 {statistics.median(values):.2f} s  "
                f"min {min(values):.2f}  max {max(values):.2f}  (n={len(values)})"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring window per round and path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument(
        "--xrdp-session",
        choices=("Xvnc", "Xorg"),
        default="Xvnc",
        help="the xrdp session's X server: Xvnc, or Xorg with xorgxrdp",
    )
    ap.add_argument(
        "--clicks-on",
        choices=("busy", "still"),
        default="busy",
        help="busy: the sources keep painting during the clicks (on this machine's cores); "
        "still: they are paused (SIGSTOP) for the clicks, as a desktop on its own machine costs "
        "this one nothing",
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s, 3 clicks")
    ap.add_argument("--paths", default="native,rdp,vnc", help="which of native,rdp,vnc to measure")
    ap.add_argument(
        "--desktop-nice", type=int, default=0, help="run the desktops' own processes at this nice level"
    )
    ap.add_argument(
        "--source",
        choices=("screen", "terminal"),
        default="screen",
        help="screen: every pixel changes every frame (bench/screen_flood.py); terminal: "
        "an xterm printing base64 as fast as it can",
    )
    ap.add_argument("--fps", type=float, default=60.0, help="frames per second of the screen source")
    ap.add_argument("--js-profile", action="store_true", help="print the page's JavaScript profile per round")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.clicks = 1, 2.0, 3
    if os.geteuid() != 0:
        sys.exit("bench/rdp.py needs root (xrdp's test account, the bridge's account)")
    run(args)


if __name__ == "__main__":
    main()
