"""Idle sessions: memory (USS) per relayed session and CPU of the gateway while they sit idle.

Everything runs on loopback; every process is started here and stopped by its PID:

- a fake RFB 3.8 desktop (this script with ``--fake-desktop``, its own process): one asyncio
  server holding every connection, security None, ServerInit, and a 1x1 raw update for each
  FramebufferUpdateRequest (so the gateway's one-pixel liveness probe is answered, as an idle
  Xvnc answers it);
- the real gateway: ``deskgate init`` / ``user add`` / ``desktop add`` / ``assign`` / ``serve`` in a
  temporary data folder, with its soft fd limit raised to the hard one;
- N websocket clients in this process, opened ``--in-flight`` at a time: each ``POST
  .../connect`` (as ``static/client.js`` does), the websocket, the browser's side of the RFB
  handshake; then idle, reading (aiohttp answers the gateway's PINGs).

Figures: the gateway's USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) after the
first ``--warm`` sessions and after all N, divided by the sessions in between; the gateway's CPU
(utime + stime of /proc/PID/stat) over ``--idle-seconds`` of idleness, as % of one core per 1,000
sessions; and whether every session still answers a FramebufferUpdateRequest at the end.

    .venv/bin/python bench/idle.py --sessions 1000
    .venv/bin/python bench/idle.py --sessions 9000 --idle-seconds 30
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/idle.py   # A/B another gateway tree
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_INIT = struct.pack(">HH", 1280, 800) + PIXEL_FORMAT + struct.pack(">I", 4) + b"idle"
ONE_PIXEL = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 1, 1, 0) + b"\0\0\0\0"
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- fake RFB desktop ----------------------------------------------------------------------------
class FakeDesktop(asyncio.Protocol):
    """RFB 3.8, security None; answers each FramebufferUpdateRequest with one pixel."""

    SIZES = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 248: 0, 250: 0, 6: 0, 2: 0}

    def __init__(self) -> None:
        self.buf = bytearray()
        self.step = 0  # 0 version, 1 security choice, 2 ClientInit, 3 messages
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"RFB 003.008\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            if self.step == 0 and len(self.buf) >= 12:
                del self.buf[:12]
                self.transport.write(b"\x01\x01")
                self.step = 1
            elif self.step == 1 and len(self.buf) >= 1:
                del self.buf[:1]
                self.transport.write(b"\0\0\0\0")
                self.step = 2
            elif self.step == 2 and len(self.buf) >= 1:
                del self.buf[:1]
                self.transport.write(SERVER_INIT)
                self.step = 3
            elif self.step == 3 and self.buf:
                size = self._message_size()
                if size is None or len(self.buf) < size:
                    return
                if self.buf[0] == 3:
                    self.transport.write(ONE_PIXEL)
                del self.buf[:size]
            else:
                return

    def _message_size(self) -> int | None:
        kind = self.buf[0]
        if kind == 2:
            return None if len(self.buf) < 4 else 4 + 4 * struct.unpack_from(">H", self.buf, 2)[0]
        if kind == 6:
            return None if len(self.buf) < 8 else 8 + abs(struct.unpack_from(">i", self.buf, 4)[0])
        if kind == 248:
            return None if len(self.buf) < 9 else 9 + self.buf[8]
        size = self.SIZES.get(kind)
        if size is None:
            assert self.transport is not None
            self.transport.close()
        return size


async def fake_desktop_main(max_seconds: float) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeDesktop, HOST, 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    gone = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: gone.done() or gone.set_result(None))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone, max_seconds)
    server.close()


# --- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    """SIGTERM the process we started (by PID), SIGKILL if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def uss(pid: int) -> int:
    """Private (unshared) memory of the process, bytes."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def deskgate(config: Path | None, *args: str, stdin: str | None = None) -> str:
    exe = Path(sys.executable).parent / "deskgate"
    cmd = [str(exe) if exe.exists() else "deskgate",
           *(["--config", str(config)] if config else []), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_gateway(data: Path, port: int, desktop_port: int, password: str
                  ) -> tuple[subprocess.Popen[bytes], int]:
    deskgate(None, "init", "--data", str(data), "--port", str(port), "--no-demo")
    config = data / "deskgate.toml"
    deskgate(config, "user", "add", "bench", "--password-stdin", stdin=password + "\n")
    out = deskgate(config, "desktop", "add", "idle-desk", "--provider", "static",
                   "--vnc", f"{HOST}:{desktop_port}")
    match = re.search(r"Desktop (\d+)", out)
    if match is None:
        raise RuntimeError(f"no desktop id in {out!r}")
    deskgate(config, "assign", "idle-desk", "bench")
    exe = Path(sys.executable).parent / "deskgate"
    log = open(data / "gateway.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "deskgate", "--config", str(config), "--log-level",
         "WARNING", "serve"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=REPO, preexec_fn=raise_fd_limit,  # noqa: PLW1509 - no threads yet in this process
        env={**os.environ, "DESKGATE_RELAY_MAX_SESSIONS_PER_USER": "100000"})
    log.close()
    deadline = time.monotonic() + 30
    while not healthy(f"http://{HOST}:{port}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the gateway did not start: "
                               + (data / "gateway.log").read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    return proc, int(match.group(1))


# --- the clients ---------------------------------------------------------------------------------
async def sign_in(http: Any, password: str) -> None:
    import pyotp

    def hidden(html: str) -> str:
        found = re.search(r'name="_csrf" value="([^"]*)"', html)
        if found is None:
            raise RuntimeError("no _csrf field in the page")
        return found.group(1)

    async with http.get("/login") as resp:
        page = await resp.text()
    async with http.post("/login", data={"_csrf": hidden(page), "username": "bench",
                                         "password": password}) as resp:
        page = await resp.text()
    found = re.search(r'id="totp-secret"[^>]*>(.*?)</code>', page, re.S)
    if found is None:
        raise RuntimeError("no TOTP enrolment page after the password")
    code = pyotp.TOTP(re.sub(r"<[^>]*>|\s", "", found.group(1))).now()
    async with http.post("/login/totp", data={"_csrf": hidden(page), "code": code}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"TOTP sign-in failed ({resp.status})")


class Session:
    """One idle browser: its websocket, read in the background (aiohttp answers PINGs)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buf = bytearray()
        self.got = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        import aiohttp
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.buf += msg.data
                self.got.set()

    async def take(self, n: int, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            while len(self.buf) < n:
                self.got.clear()
                if self.reader.done():
                    raise ConnectionError("the websocket closed")
                await self.got.wait()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


async def open_session(http: Any, base: str, desktop_id: int, csrf: str) -> Session:
    for attempt in range(20):  # a busy store answers 500/503: try again, bounded
        async with http.post(f"/desktops/{desktop_id}/connect",
                             headers={"X-CSRF-Token": csrf}) as resp:
            if resp.status == 200:
                ticket = await resp.json()
                break
            text = await resp.text()
        if resp.status not in (500, 503) or attempt == 19:
            raise RuntimeError(f"connect failed ({resp.status}): {text[:200]}")
        await asyncio.sleep(0.05 * (attempt + 1))
    ws = await http.ws_connect(ticket["ws_url"], origin=base, protocols=("binary",),
                               autoping=True, heartbeat=None, max_msg_size=0, compress=0)
    session = Session(ws)
    if await session.take(12, 20) != b"RFB 003.008\n":
        raise RuntimeError("not RFB 3.8")
    await ws.send_bytes(b"RFB 003.008\n")
    count = (await session.take(1, 20))[0]
    await session.take(count, 20)
    await ws.send_bytes(b"\x01")
    if await session.take(4, 20) != b"\0\0\0\0":
        raise RuntimeError("security result: failed")
    await ws.send_bytes(b"\x01")
    head = await session.take(24, 20)
    await session.take(struct.unpack_from(">I", head, 20)[0], 20)
    return session


async def open_many(http: Any, base: str, desktop_id: int, csrf: str, count: int,
                    in_flight: int, sessions: list[Session]) -> int:
    """Open ``count`` sessions, ``in_flight`` at a time; returns how many failed."""
    failed = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal failed
        for _ in queue:
            try:
                sessions.append(await open_session(http, base, desktop_id, csrf))
            except Exception as exc:  # counted and shown, the run goes on
                failed += 1
                if failed <= 5:
                    print(f"  connect failed: {exc!r}", file=sys.stderr)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return failed


async def all_answer(sessions: list[Session], timeout: float) -> int:
    """How many sessions answer a FramebufferUpdateRequest within ``timeout``."""
    async def one(s: Session) -> bool:
        try:
            s.buf.clear()
            await s.ws.send_bytes(UPDATE_REQUEST)
            while True:  # skip probe answers already on the way: any 1x1 update will do
                if await s.take(len(ONE_PIXEL), timeout) == ONE_PIXEL:
                    return True
        except Exception:
            return False
    results = []
    for i in range(0, len(sessions), 500):
        results += await asyncio.gather(*(one(s) for s in sessions[i:i + 500]))
    return sum(results)


async def run(args: argparse.Namespace) -> None:
    import aiohttp

    raise_fd_limit()
    password = secrets.token_urlsafe(18)
    desktop = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--fake-desktop"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        assert desktop.stdout is not None
        desktop_port = int(desktop.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="deskgate-idle-") as tmp:
            port = free_port()
            base = f"http://{HOST}:{port}"
            gateway, desktop_id = start_gateway(Path(tmp) / "data", port, desktop_port, password)
            pid = gateway.pid
            jar = aiohttp.CookieJar(unsafe=True)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=60)
            sessions: list[Session] = []
            async with aiohttp.ClientSession(base, cookie_jar=jar, connector=connector,
                                             timeout=timeout) as http:
                await sign_in(http, password)
                async with http.get(f"/desktops/{desktop_id}") as resp:
                    found = re.search(r'data-csrf="([^"]+)"', await resp.text())
                if found is None:
                    raise RuntimeError("no data-csrf on the desktop page")
                csrf = found.group(1)
                failed = await open_many(http, base, desktop_id, csrf, args.warm,
                                         args.in_flight, sessions)
                await asyncio.sleep(args.settle)
                uss0, n0 = uss(pid), len(sessions)
                t0 = time.monotonic()
                failed += await open_many(http, base, desktop_id, csrf, args.sessions - args.warm,
                                          args.in_flight, sessions)
                opened_s = time.monotonic() - t0
                await asyncio.sleep(args.settle)
                uss1, n1 = uss(pid), len(sessions)
                c0, w0 = cpu_seconds(pid), time.monotonic()
                await asyncio.sleep(args.idle_seconds)
                c1, w1 = cpu_seconds(pid), time.monotonic()
                answering = await all_answer(sessions, 30)
                per_session = (uss1 - uss0) / max(1, n1 - n0)
                core = (c1 - c0) / (w1 - w0)
                print(f"sessions open {n1} (failed {failed}), opened {n1 - n0} in {opened_s:.1f} s"
                      f" with {args.in_flight} in flight")
                print(f"gateway USS {uss0 / 2**20:.1f} MiB at {n0} -> {uss1 / 2**20:.1f} MiB at"
                      f" {n1}: {per_session / 1024:.1f} KiB per session")
                print(f"gateway CPU while idle {args.idle_seconds:g} s: {core * 100:.2f} % of a"
                      f" core, {core * 100 * 1000 / max(1, n1):.2f} % per 1,000 sessions")
                print(f"answering at the end: {answering} of {n1}")
                for s in sessions:
                    s.reader.cancel()
                await asyncio.gather(*(s.reader for s in sessions), return_exceptions=True)
    finally:
        stop(gateway)
        if desktop.stdin is not None:
            desktop.stdin.close()
        stop(desktop, 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=1000, help="idle sessions (default 1000)")
    p.add_argument("--warm", type=int, default=32, help="sessions before the first USS reading")
    p.add_argument("--in-flight", type=int, default=16, help="connects in flight (default 16)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="CPU measured over this")
    p.add_argument("--settle", type=float, default=3.0, help="pause before each USS reading")
    p.add_argument("--fake-desktop", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake_desktop:
        asyncio.run(fake_desktop_main(max_seconds=3600))
        return 0
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(run(args), 3000))
    print(f"(bench took {time.monotonic() - started:.1f} s; {os.cpu_count()} CPUs shared with"
          f" whatever else runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
