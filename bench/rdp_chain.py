"""Where the RDP bridge's frames go: full screens/s at each hop, one xrdp session, one run.

The source: an xrdp session (tests/rdp_servers.py ``start_xrdp``, Xvnc backend) whose whole
screen is an xterm printing ``base64 /dev/urandom`` as fast as it can. Measured, one after the
other against the same running session, at WxH (default 1024x768), with bench/xdamage.py:

- ``source``: DAMAGE on the session's own X display;
- ``native``: xfreerdp on an Xvfb (DAMAGE on the Xvfb);
- ``bridge``: xfreerdp drawing into an Xvnc started as gateway/xdisplay/xvnc.py does (DAMAGE on
  that Xvnc), and (``rfb-*``) an RFB client reading that Xvnc's unix socket as fast as it can,
  one incremental request outstanding: area of the rectangles per second / screen area, for
  Tight+JPEG q6 (noVNC's choice), ZRLE, Raw;
- CPU (of one core) of xfreerdp, the Xvnc, and xrdp (+ the session's Xvnc) over each window;
- connect: xfreerdp start -> first damage on its display.

    python bench/rdp_chain.py                                  # default flags
    python bench/rdp_chain.py --variant "/gfx" --variant "/network:lan" --xvnc-arg "-FrameRate=120"

Every process started here is stopped by its PID; the xrdp account is removed.

One module (just over 400 lines): the hops are measured in one run against one session, with a
minimal RFB reader of its own (it counts rectangles, it does not decode them). bench/rdp.py uses
its process and CPU helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for extra in (str(BENCH), str(REPO / "tests"), str(REPO)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import relay as rb  # noqa: E402 - bench/relay.py: /proc figures
from rdp_servers import free_display, pids_of_uid, start_xrdp, stop_group  # noqa: E402
from xdamage import DamageCounter  # noqa: E402

from gateway.rdp.freerdp import XFREERDP  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BRIDGE_FLAGS = ["/f", "/dynamic-resolution", "/bpp:24"]
PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
ENCODINGS = {
    "tight": [7, 16, 1, 0, -32 + 6, -256 + 2, -224],
    "zrle": [16, 0, -224],
    "raw": [0, -224],
}


def cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process; 0 once it is gone."""
    try:
        return rb.ProcStat.of(pid).cpu
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy (not idle or waiting), /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


class Cpu:
    """CPU seconds per wall second of named groups of processes over a window, and of the
    whole machine (``machine``)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.start = {k: {p: cpu(p) for p in pids} for k, pids in groups.items()}

    def end(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        used = {
            k: sum(max(0.0, cpu(p) - self.start[k][p]) for p in pids) / dt for k, pids in self.groups.items()
        }
        used["machine"] = (machine_busy() - self.busy0) / dt
        return used


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def named(names: tuple[str, ...]) -> list[int]:
    """Live processes whose command name is one of ``names``."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(int(p)) in names]


# --- a minimal RFB reader ---------------------------------------------------------------------
class Rfb:
    def __init__(self, path: str, encodings: list[int]) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = bytearray()
        self.bytes = 0
        self.read(12)
        self.sock.sendall(b"RFB 003.008\n")
        n = self.read(1)[0]
        types = self.read(n)
        if 1 not in types:
            raise RuntimeError(f"no security None: {list(types)}")
        self.sock.sendall(b"\x01")
        if struct.unpack(">I", self.read(4))[0] != 0:
            raise RuntimeError("security failed")
        self.sock.sendall(b"\x01")  # shared
        self.w, self.h = struct.unpack(">HH", self.read(4))
        self.read(16)
        self.read(struct.unpack(">I", self.read(4))[0])
        self.sock.sendall(b"\x00\x00\x00\x00" + PIXEL_FORMAT)
        self.sock.sendall(
            struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings)
        )
        self.request(False)
        self.bytes = 0

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.bytes += n
        return out

    def request(self, incremental: bool = True) -> None:
        self.sock.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.w, self.h))

    def clen(self) -> int:
        b = self.read(1)[0]
        n = b & 0x7F
        if b & 0x80:
            b = self.read(1)[0]
            n |= (b & 0x7F) << 7
            if b & 0x80:
                n |= self.read(1)[0] << 14
        return n

    def update(self) -> int:
        while True:
            kind = self.read(1)[0]
            if kind == 0:
                break
            if kind == 2 or kind == 150:
                continue
            if kind == 3:
                self.read(self.read_len7())
            elif kind == 248:
                head = self.read(8)
                self.read(head[7])
            else:
                raise RuntimeError(f"server message {kind}")
        (count,) = struct.unpack(">xH", self.read(3))
        pixels = 0
        for _ in range(count):
            x, y, w, h, enc = struct.unpack(">4Hi", self.read(12))
            if enc == -224:
                break
            if enc == -223:
                self.w, self.h = w, h
                continue
            if enc == 0:
                self.read(w * h * 4)
            elif enc == 1:
                self.read(4)
            elif enc == 16:
                self.read(struct.unpack(">I", self.read(4))[0])
            elif enc == 7:
                self.tight(w, h)
            else:
                raise RuntimeError(f"encoding {enc}")
            pixels += w * h
        return pixels

    def read_len7(self) -> int:
        return struct.unpack(">xxxI", self.read(7))[0]

    def tight(self, w: int, h: int) -> None:
        ctl = self.read(1)[0] >> 4
        if ctl == 8:
            self.read(3)
            return
        if ctl == 9:
            self.read(self.clen())
            return
        filter_id = self.read(1)[0] if ctl & 4 else 0
        size = w * h * 3
        if filter_id == 1:
            colours = self.read(1)[0] + 1
            self.read(colours * 3)
            size = (w + 7) // 8 * h if colours == 2 else w * h
        if size < 12:
            self.read(size)
        else:
            self.read(self.clen())

    def measure(self, seconds: float) -> tuple[float, float, float]:
        """(screens/s, updates/s, MB/s) with one incremental request outstanding."""
        self.update()
        self.request()
        t0 = time.monotonic()
        b0 = self.bytes
        pixels = updates = 0
        while time.monotonic() - t0 < seconds:
            p = self.update()
            self.request()
            if p:
                pixels += p
                updates += 1
        dt = time.monotonic() - t0
        return pixels / (self.w * self.h) / dt, updates / dt, (self.bytes - b0) / dt / 1e6

    def close(self) -> None:
        self.sock.close()


# --- processes ----------------------------------------------------------------------------------
def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    if stdin is not None:
        assert p.stdin is not None
        p.stdin.write(stdin)
        p.stdin.close()
    return p


def wait_display(n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(f"/tmp/.X11-unix/X{n}").exists():  # noqa: S108 - the X server's socket
            with contextlib.suppress(RuntimeError):
                DamageCounter(f":{n}").close()
                return
        time.sleep(0.05)
    raise RuntimeError(f"display :{n} not up")


def first_damage(display: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> float:
    """Seconds until the display is damaged continuously (5 polls of 10 ms in a row, the
    first of them counted): the remote screen's flood arrives; a window map paints once."""
    counter = DamageCounter(display)
    t0 = time.monotonic()
    run_start, run = 0.0, 0
    try:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"xfreerdp exited {proc.returncode}")
            now = time.monotonic()
            px, _ = counter.poll()
            if px:
                if run == 0:
                    run_start = now
                run += 1
                if run >= 5:
                    return run_start - t0
            else:
                run = 0
            time.sleep(0.01)
    finally:
        counter.close()
    raise RuntimeError("no paint")


def xfreerdp(server, display: int, flags: list[str], log: Path) -> subprocess.Popen[bytes]:  # noqa: ANN001
    argv = [
        XFREERDP,
        f"/v:127.0.0.1:{server.port}",
        f"/u:{server.username}",
        "/cert:ignore",
        *flags,
        "/from-stdin:force",
    ]
    return spawn(argv, log, {"DISPLAY": f":{display}"}, stdin=(server.password + "\n").encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--variant", action="append", default=[], help="extra xfreerdp flags (a run each)")
    ap.add_argument("--xvnc-variant", action="append", default=[], help="extra bridge Xvnc args (a run each)")
    ap.add_argument("--no-native", action="store_true")
    ap.add_argument("--encodings", default="tight,zrle,raw")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="dg-chain-"))
    server = start_xrdp(work / "xrdp")
    started: list[subprocess.Popen[bytes]] = []
    rows: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        rows.append(line)

    try:
        import pwd

        entry = pwd.getpwnam(server.username)
        xs = Path(entry.pw_dir) / ".xsession"
        xs.write_text(
            "#!/bin/sh\nexec xterm -fn 10x20 -bg '#2a7a3b' -fg white -maximized "
            "-e sh -c 'base64 -w 100 /dev/urandom'\n"
        )
        # native first: it creates the session (at WxH) and is the reference
        n_native = free_display(300, 400)
        xvfb = spawn(
            ["Xvfb", f":{n_native}", "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"], work / "xvfb.log"
        )
        started.append(xvfb)
        wait_display(n_native)
        session_display = None

        def find_session() -> tuple[int, list[int]]:
            for pid in pids_of_uid(server.uid):
                if comm(pid) == "Xvnc":
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    return int(cmd[1].decode().lstrip(":")), [pid]
            raise RuntimeError("no session Xvnc")

        def run_client(
            display: int, flags: list[str], tag: str, rfb_path: str | None, xvnc_pid: int | None
        ) -> None:
            nonlocal session_display
            p = xfreerdp(
                server,
                display,
                flags,
                work / ("xfreerdp-" + "".join(c if c.isalnum() else "_" for c in tag) + ".log"),
            )
            started.append(p)
            try:
                t = first_damage(f":{display}", p)
                out(f"connect {tag}: {t:.2f} s to first paint  flags={' '.join(flags)}")
                time.sleep(2.0)
                sd, spids = find_session()
                session_display = sd
                env_auth = str(Path(entry.pw_dir) / ".Xauthority")
                os.environ["XAUTHORITY"] = env_auth
                src = DamageCounter(f":{sd}")
                os.environ.pop("XAUTHORITY")
                groups = {"xfreerdp": [p.pid], "xrdp": named(("xrdp",)), "sessXvnc": spids}
                if xvnc_pid:
                    groups["bridgeXvnc"] = [xvnc_pid]
                r_src = src.measure(args.seconds)
                src.close()
                dst = DamageCounter(f":{display}")
                c = Cpu(groups)
                r_dst = dst.measure(args.seconds)
                c_dst = c.end()
                dst.close()
                cpus = " ".join(f"{k}={v:.2f}" for k, v in c_dst.items())
                out(
                    f"{tag:40s} source {r_src.screens_per_s:6.1f}  drawn {r_dst.screens_per_s:6.1f} "
                    f"screens/s  cpu[{cpus}]  flags={' '.join(flags)}"
                )
                if rfb_path:
                    for enc in filter(None, args.encodings.split(",")):
                        rfb = Rfb(rfb_path, ENCODINGS[enc])
                        c = Cpu(groups)
                        sps, ups, mbs = rfb.measure(args.seconds)
                        cc = c.end()
                        rfb.close()
                        cpus = " ".join(f"{k}={v:.2f}" for k, v in cc.items())
                        out(
                            f"{tag:40s} rfb-{enc:5s} {sps:6.1f} screens/s {ups:6.1f} updates/s "
                            f"{mbs:6.1f} MB/s  cpu[{cpus}]"
                        )
            finally:
                stop_group(p)
                started.remove(p)
                time.sleep(1.0)

        if not args.no_native:
            run_client(n_native, ["/f", "/bpp:24"], "native-xvfb", None, None)
        variants = [""] + args.variant
        xvnc_variants = [""] + args.xvnc_variant
        for xv in xvnc_variants:
            for v in variants if xv == "" else [""]:
                n = free_display(300, 400)
                sock = work / f"bridge{n}.sock"
                xargv = [
                    "Xvnc",
                    f":{n}",
                    "-geometry",
                    f"{w}x{h}",
                    "-depth",
                    "24",
                    "-nolisten",
                    "tcp",
                    "-AlwaysShared",
                    "-rfbport",
                    "-1",
                    "-rfbunixpath",
                    str(sock),
                    "-rfbunixmode",
                    "0600",
                    "-UseBlacklist=0",
                    "-SecurityTypes",
                    "None",
                    *shlex.split(xv),
                ]
                xvnc = spawn(xargv, work / f"xvnc{n}.log")
                started.append(xvnc)
                try:
                    wait_display(n)
                    flags = BRIDGE_FLAGS + shlex.split(v)
                    run_client(n, flags, f"bridge[{v or '-'}][{xv or '-'}]", str(sock), xvnc.pid)
                except (RuntimeError, OSError, EOFError) as e:
                    out(f"bridge[{v or '-'}][{xv or '-'}] failed: {e}")
                finally:
                    stop_group(xvnc)
                    started.remove(xvnc)
        print(f"(session display :{session_display})")
    finally:
        for p in reversed(started):
            stop_group(p)
        server.stop()
        print("\n".join(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
