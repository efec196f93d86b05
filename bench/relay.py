"""Relay benchmark: a VNC-like stream through the real gateway, socat and a direct TCP connection.

Everything runs on loopback. The bench starts, in this order, and stops each by its PID:

- a fake RFB 3.8 server (this script with ``--fake-server``, its own process): security None,
  ServerInit, then on each FramebufferUpdateRequest it streams ``x`` raw 256x256 updates as fast
  as the reader takes them; it answers every ClientFence with a ServerFence and echoes a
  ClientCutText as ServerCutText;
- socat as a baseline relay (if installed): one connection, ``-b`` sized like the gateway's reads;
- the real gateway: ``deskgate init`` / ``user add`` / ``desktop add`` / ``assign`` / ``serve`` in a
  temporary data folder, signed in over HTTP (password, TOTP enrolment), ``POST .../connect``, then
  the websocket with the browser's side of the RFB handshake.

For each path (direct, socat, gateway) the same client does the same work: the RFB handshake,
``--fences`` ClientFence round trips one at a time (p50 / p99), then ``--mb`` MB of framebuffer
updates counted as they arrive (MB/s), ``--repeat`` times. The relay's CPU seconds per GB and minor
page faults per MB come from /proc/PID/stat of the relay process (socat or the gateway) before and
after the stream; the fake server and the client are not counted there.

    .venv/bin/python bench/relay.py            # about 10 s
    .venv/bin/python bench/relay.py --quick    # smoke run, under 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MB = 1 << 20

# One framebuffer update: header, one raw rectangle of 256x256 pixels at 32 bpp.
RECT_W = RECT_H = 256
_UPDATE_HEAD = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, RECT_W, RECT_H, 0)
UPDATE_SIZE = len(_UPDATE_HEAD) + RECT_W * RECT_H * 4
MAX_UPDATES_PER_REQUEST = 0xFFFF

PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_NAME = b"deskgate-bench"
SERVER_INIT = (struct.pack(">HH", 1920, 1080) + PIXEL_FORMAT + struct.pack(">I", len(SERVER_NAME))
               + SERVER_NAME)

FENCE_REQUEST = 1 << 31
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- fake RFB server -----------------------------------------------------------------------------
def _update_block() -> bytes:
    """One framebuffer update with pseudo-random pixels (nothing on the path compresses)."""
    pixels = (secrets.token_bytes(4096) * (RECT_W * RECT_H * 4 // 4096))
    return _UPDATE_HEAD + pixels


async def _fake_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, block: bytes) -> None:
    async def read(n: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(n), 120)

    writer.write(b"RFB 003.008\n")
    await read(12)
    writer.write(b"\x01\x01")  # one security type: None
    if (await read(1)) != b"\x01":
        return
    writer.write(b"\0\0\0\0")
    await read(1)  # ClientInit
    writer.write(SERVER_INIT)
    fixed = {0: 19, 3: 9, 4: 7, 5: 5, 150: 9, 250: 3}  # bytes after the type byte
    while True:
        kind = (await read(1))[0]
        if kind == 3:  # FramebufferUpdateRequest: x = number of updates to stream
            rest = await read(9)
            (count,) = struct.unpack_from(">H", rest, 1)
            for _ in range(count):
                writer.write(block)
                await writer.drain()
        elif kind == 248:  # ClientFence -> ServerFence with the same payload
            head = await read(8)
            flags, size = struct.unpack_from(">IB", head, 3)
            payload = await read(size)
            writer.write(struct.pack(">BxxxIB", 248, flags & ~FENCE_REQUEST, size) + payload)
        elif kind == 6:  # ClientCutText -> ServerCutText with the same text
            head = await read(7)
            (size,) = struct.unpack_from(">i", head, 3)
            text = await read(abs(size))
            writer.write(struct.pack(">Bxxxi", 3, size) + text)
        elif kind == 2:  # SetEncodings
            (count,) = struct.unpack(">xH", await read(3))
            await read(4 * count)
        elif kind in fixed:
            await read(fixed[kind])
        else:
            return


async def fake_server_main(max_seconds: float) -> None:
    block = _update_block()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _fake_session(reader, writer, block)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    # The parent holds our stdin: when it goes away, so do we.
    def on_stdin() -> None:
        if not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin_closed, max_seconds)
    server.close()


# --- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
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


@dataclass(frozen=True)
class ProcStat:
    cpu: float  # seconds, user + system, all threads
    minflt: int

    @classmethod
    def of(cls, pid: int) -> ProcStat:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        return cls((int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[7]))


def deskgate_exe() -> str:
    exe = Path(sys.executable).parent / "deskgate"
    return str(exe) if exe.exists() else "deskgate"


def cli(config: Path | None, *args: str, stdin: str | None = None) -> str:
    cmd = [deskgate_exe(), *(["--config", str(config)] if config else []), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout:g} s")
        time.sleep(0.05)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# --- the client side -----------------------------------------------------------------------------
class Link(Protocol):
    """A byte pipe to the RFB server: raw TCP or the gateway's websocket."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...


class _TcpProtocol(asyncio.Protocol):
    """Every read of the socket becomes one bytes chunk, as every websocket message does."""

    def __init__(self) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class TcpLink:
    def __init__(self, transport: asyncio.Transport, protocol: _TcpProtocol) -> None:
        self._transport, self._protocol = transport, protocol

    @classmethod
    async def open(cls, port: int, timeout: float = 5) -> TcpLink:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:  # socat may still be starting: it accepts exactly one connection
            try:
                transport, protocol = await loop.create_connection(_TcpProtocol, HOST, port)
                transport.set_write_buffer_limits(high=1 << 16)
                return cls(transport, protocol)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def send(self, data: bytes) -> None:
        self._transport.write(data)  # only small messages: no backpressure needed

    async def recv(self) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.closed:
                raise ConnectionError("the server closed the connection")
            protocol.waiter = asyncio.get_running_loop().create_future()
            await protocol.waiter
        return protocol.chunks.popleft()

    async def close(self) -> None:
        self._transport.close()


class WsLink:
    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, data: bytes) -> None:
        await self._ws.send(data)

    async def recv(self) -> bytes:
        data = await self._ws.recv()
        if not isinstance(data, bytes):
            raise ConnectionError("text message on an RFB websocket")
        return data

    async def close(self) -> None:
        await self._ws.close()


class RfbClient:
    """The browser's side of RFB 3.8 with security None, over any Link."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._buf = bytearray()

    async def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += await self.link.recv()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def handshake(self) -> None:
        async with asyncio.timeout(10):
            if await self._read(12) != b"RFB 003.008\n":
                raise RuntimeError("not an RFB 3.8 server")
            await self.link.send(b"RFB 003.008\n")
            count = (await self._read(1))[0]
            if 1 not in await self._read(count):
                raise RuntimeError("security type None not offered")
            await self.link.send(b"\x01")
            if await self._read(4) != b"\0\0\0\0":
                raise RuntimeError("security result: failed")
            await self.link.send(b"\x01")  # ClientInit, shared
            head = await self._read(24)
            (name_len,) = struct.unpack_from(">I", head, 20)
            await self._read(name_len)

    async def fences(self, count: int, time_limit: float) -> list[float]:
        """Round trips of ClientFence -> ServerFence, one at a time; seconds each."""
        times: list[float] = []
        deadline = time.perf_counter() + time_limit
        async with asyncio.timeout(time_limit + 10):
            for seq in range(count):
                payload = struct.pack(">I", seq)
                t0 = time.perf_counter()
                await self.link.send(struct.pack(">BxxxIB", 248, FENCE_REQUEST, 4) + payload)
                reply = await self._read(13)
                times.append(time.perf_counter() - t0)
                if reply[0] != 248 or reply[9:] != payload:
                    raise RuntimeError(f"unexpected fence reply {reply!r}")
                if time.perf_counter() > deadline:
                    break
        return times

    async def stream(self, updates: int, time_limit: float) -> int:
        """Ask for ``updates`` framebuffer updates and count the bytes until all arrived."""
        expected = updates * UPDATE_SIZE
        got = len(self._buf)
        self._buf.clear()
        async with asyncio.timeout(time_limit):
            while updates > 0:
                n = min(updates, MAX_UPDATES_PER_REQUEST)
                await self.link.send(struct.pack(">BBHHHH", 3, 1, n, 0, 1, 1))
                updates -= n
            while got < expected:
                got += len(await self.link.recv())
        if got != expected:
            raise RuntimeError(f"received {got} bytes, expected {expected}")
        return got


# --- gateway ------------------------------------------------------------------------------------
@dataclass
class Gateway:
    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    desktop_id: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def config(self) -> Path:
        return self.data / "deskgate.toml"

    def start(self, fake_port: int, extra_env: dict[str, str] | None = None) -> None:
        cli(None, "init", "--data", str(self.data), "--port", str(self.port), "--no-demo")
        cli(self.config, "user", "add", "bench", "--password-stdin", stdin=self.password + "\n")
        out = cli(self.config, "desktop", "add", "bench-desk", "--provider", "static",
                  "--vnc", f"{HOST}:{fake_port}")
        match = re.search(r"Desktop (\d+)", out)
        if match is None:
            raise RuntimeError(f"no desktop id in {out!r}")
        self.desktop_id = int(match.group(1))
        cli(self.config, "assign", "bench-desk", "bench")
        self.log = open(self.data / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(self.config), "--log-level", "WARNING", "serve"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(extra_env or {})}, start_new_session=True)
        wait_until(lambda: healthy(self.url) or self.proc is None or self.proc.poll() is not None,
                   20, "the gateway")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data / "gateway.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        stop(self.proc)
        if self.log is not None:
            self.log.close()

    async def open_link(self) -> WsLink:
        import aiohttp
        import pyotp
        from websockets.asyncio.client import connect
        from websockets.typing import Origin, Subprotocol

        def hidden(html: str, name: str = "_csrf") -> str:
            match = re.search(rf'name="{name}" value="([^"]*)"', html)
            if match is None:
                raise RuntimeError(f"no {name} field in the page")
            return match.group(1)

        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(self.url, cookie_jar=jar, timeout=timeout) as http:
            async with http.get("/login") as resp:
                page = await resp.text()
            async with http.post("/login", data={"_csrf": hidden(page), "username": "bench",
                                                 "password": self.password}) as resp:
                page = await resp.text()
                if not str(resp.url).endswith("/login/totp"):
                    raise RuntimeError(f"password sign-in failed ({resp.status} at {resp.url})")
            match = re.search(r'id="totp-secret"[^>]*>(.*?)</code>', page, re.S)
            if match is None:
                raise RuntimeError("no TOTP secret on the enrolment page")
            code = pyotp.TOTP(re.sub(r"<[^>]*>|\s", "", match.group(1))).now()
            async with http.post("/login/totp", data={"_csrf": hidden(page), "code": code}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"TOTP sign-in failed ({resp.status})")
            async with http.get(f"/desktops/{self.desktop_id}") as resp:
                page = await resp.text()
            match = re.search(r'data-csrf="([^"]+)"', page)
            if match is None:
                raise RuntimeError("no data-csrf on the desktop page")
            async with http.post(f"/desktops/{self.desktop_id}/connect",
                                 headers={"X-CSRF-Token": match.group(1)}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"connect failed ({resp.status}): {await resp.text()}")
                ticket = await resp.json()
            cookie = next((c.value for c in jar if c.key == "deskgate_session"), None)
            if cookie is None:
                raise RuntimeError("no deskgate_session cookie")
        ws = await connect(
            f"ws://{HOST}:{self.port}{ticket['ws_url']}", origin=Origin(self.url),
            additional_headers={"Cookie": f"deskgate_session={cookie}"},
            subprotocols=[Subprotocol("binary")], compression=None, max_size=None, proxy=None,
            ping_interval=None, open_timeout=10, close_timeout=2)
        return WsLink(ws)


# --- the runs -----------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    mbps: list[float] = field(default_factory=list)
    cpu_per_gb: list[float] = field(default_factory=list)  # the relay's; None for direct
    faults_per_mb: list[float] = field(default_factory=list)
    client_cpu_per_gb: list[float] = field(default_factory=list)
    server_cpu_per_gb: list[float] = field(default_factory=list)  # the fake RFB server's
    rtt: list[float] = field(default_factory=list)

    @staticmethod
    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def rtt_pct(self, q: float) -> float | None:
        if not self.rtt:
            return None
        ordered = sorted(self.rtt)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(name: str, open_link: Callable[[], Awaitable[Link]], relay_pid: int | None,
                  server_pid: int, args: argparse.Namespace) -> Result:
    result = Result(name)
    updates = max(1, round(args.mb * MB / UPDATE_SIZE))
    link = await open_link()
    try:
        client = RfbClient(link)
        await client.handshake()
        result.rtt = await client.fences(args.fences, args.time_limit / 3)
        await client.stream(min(updates, 32), args.time_limit)  # warm-up
        for _ in range(args.repeat):
            before = ProcStat.of(relay_pid) if relay_pid else None
            server_before = ProcStat.of(server_pid)
            c0, t0 = time.process_time(), time.perf_counter()
            got = await client.stream(updates, args.time_limit)
            t1, c1 = time.perf_counter(), time.process_time()
            result.mbps.append(got / MB / (t1 - t0))
            result.client_cpu_per_gb.append((c1 - c0) / (got / (1 << 30)))
            server_cpu = ProcStat.of(server_pid).cpu - server_before.cpu
            result.server_cpu_per_gb.append(server_cpu / (got / (1 << 30)))
            if relay_pid and before is not None:
                after = ProcStat.of(relay_pid)
                result.cpu_per_gb.append((after.cpu - before.cpu) / (got / (1 << 30)))
                result.faults_per_mb.append((after.minflt - before.minflt) / (got / MB))
    finally:
        await link.close()
    return result


def fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(f"stream {args.mb} MB x {args.repeat} (median), {args.fences} fences, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    head = f"{'path':10s} {'MB/s':>8s} {'relay CPU s/GB':>15s} {'relay faults/MB':>16s} " \
           f"{'client s/GB':>12s} {'server s/GB':>12s} {'RTT p50 us':>11s} {'RTT p99 us':>11s}"
    print(head)
    print("-" * len(head))
    for r in results:
        p50, p99 = r.rtt_pct(0.5), r.rtt_pct(0.99)
        cells = [fmt(r.med(r.mbps), "8.0f"), fmt(r.med(r.cpu_per_gb), "15.2f"),
                 fmt(r.med(r.faults_per_mb), "16.1f"), fmt(r.med(r.client_cpu_per_gb), "12.2f"),
                 fmt(r.med(r.server_cpu_per_gb), "12.2f"),
                 fmt(None if p50 is None else p50 * 1e6, "11.0f"),
                 fmt(None if p99 is None else p99 * 1e6, "11.0f")]
        print(f"{r.name:10s} " + " ".join(cells))
    by = {r.name: r for r in results}
    gw = by.get("gateway")
    if gw is None:
        return
    print()
    for base in ("direct", "socat"):
        other = by.get(base)
        if other is None:
            continue
        line = f"gateway/{base}: throughput {ratio(gw.med(gw.mbps), other.med(other.mbps))}"
        if base == "socat":
            line += f", relay CPU/GB {ratio(gw.med(gw.cpu_per_gb), other.med(other.cpu_per_gb))}"
        line += f", RTT p50 {ratio(gw.rtt_pct(0.5), other.rtt_pct(0.5))}"
        line += f", RTT p99 {ratio(gw.rtt_pct(0.99), other.rtt_pct(0.99))}"
        print(line)


@contextlib.contextmanager
def fake_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--fake-server"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the fake server did not start: {line!r}")
        yield proc, int(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        stop(proc, 5)


async def run(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with fake_server() as (server, fake_port):
        if "direct" in args.paths:
            results.append(await measure("direct", lambda: TcpLink.open(fake_port), None, server.pid,
                                          args))

        socat = shutil.which("socat")
        if "socat" in args.paths and socat is None:
            print("socat not installed: no baseline relay (apt-get install -y socat)", file=sys.stderr)
        elif "socat" in args.paths and socat is not None:
            port = free_port()
            proc = subprocess.Popen(
                [socat, f"-b{args.socat_buffer}", f"TCP-LISTEN:{port},bind={HOST},reuseaddr,nodelay",
                 f"TCP:{HOST}:{fake_port},nodelay"], stdin=subprocess.DEVNULL)
            try:
                results.append(await measure("socat", lambda: TcpLink.open(port), proc.pid,
                                              server.pid, args))
            finally:
                stop(proc, 5)

        if "gateway" in args.paths:
            with tempfile.TemporaryDirectory(prefix="deskgate-bench-") as tmp:
                gw = Gateway(Path(tmp) / "data", free_port())
                try:
                    gw.start(fake_port)
                    if args.profile:
                        profiler = start_profiler(gw, args)
                    assert gw.proc is not None
                    try:
                        results.append(await measure("gateway", gw.open_link, gw.proc.pid,
                                                              server.pid, args))
                    except Exception:
                        print(gw.log_tail(), file=sys.stderr)
                        raise
                    finally:
                        if args.profile:
                            stop_profiler(profiler, args)
                finally:
                    gw.stop()
    return results


def start_profiler(gw: Gateway, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found (pip install py-spy): no profile", file=sys.stderr)
        return None
    assert gw.proc is not None
    out = Path(args.profile).resolve()
    fmt_ = "speedscope" if out.suffix == ".json" else "raw" if out.suffix == ".txt" else "flamegraph"
    proc = subprocess.Popen([pyspy, "record", "--pid", str(gw.proc.pid), "--rate", "250",
                             "--format", fmt_, "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None, args: argparse.Namespace) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        stop(proc, 5)
    print(f"profile written to {args.profile}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--mb", type=int, default=512, help="MB streamed per measurement (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="streams per path; the median is shown")
    p.add_argument("--fences", type=int, default=2000, help="fence round trips per path")
    p.add_argument("--paths", default="direct,socat,gateway", help="comma-separated subset")
    p.add_argument("--socat-buffer", type=int, default=65536, help="socat -b (default: 64 KiB)")
    p.add_argument("--time-limit", type=float, default=60.0, help="bound on each stream, seconds")
    p.add_argument("--profile", metavar="FILE",
                   help="record the gateway with py-spy (.svg flamegraph, .json speedscope, .txt raw)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 MB once, 200 fences")
    p.add_argument("--fake-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.repeat, args.fences = 64, 1, 200
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fake_server:
        asyncio.run(fake_server_main(max_seconds=900))
        return 0
    started = time.monotonic()
    results = asyncio.run(run(args))
    report(results, args)
    print(f"\n(bench took {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
