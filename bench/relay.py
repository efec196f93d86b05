"""Deskgate bench: the relay's cost against socat and direct TCP, connect storms, idle sessions,
shutdown — one run, every figure (``bench/README.md`` says what each phase measures and why).

Everything runs on loopback. This module holds the relay phase and the parts every phase and
``bench/rdp.py`` share (the fake RFB desktop, the gateway as a subprocess with its sign-in, the
RFB client, /proc readings); ``bench/sessions.py`` holds the phases with many sessions and the
closing summary. It stays one module because ``rdp.py`` imports these parts as ``relay``.

- a fake RFB 3.8 server (this script with ``--fake-server``, its own process): security None,
  ServerInit, then on each FramebufferUpdateRequest it streams ``x`` raw 256x256 updates as fast
  as the reader takes them; it answers every ClientFence with a ServerFence and echoes a
  ClientCutText as ServerCutText;
- socat as a baseline relay (if installed): one connection, ``-b`` sized like the gateway's reads;
- the real gateway: ``deskgate init`` / ``user add`` / ``desktop add`` / ``assign`` / ``serve`` in a
  temporary data folder, signed in over HTTP (password, TOTP enrolment), ``POST .../connect``, then
  the websocket with the browser's side of the RFB handshake.

Relay phase: interleaved rounds (direct, socat, gateway, ...), a fresh relay process per run, the
same client doing the same work per run: the RFB handshake, ``--fences`` ClientFence round trips
(p50 / p99), then ``--mb`` MB of framebuffer updates (MB/s). The headline is the relay's own CPU
seconds per GB: utime+stime of its whole process tree from /proc, before and after the stream.

    .venv/bin/python bench/relay.py            # every phase, about 6-8 minutes on 2 CPUs
    .venv/bin/python bench/relay.py --quick    # every phase at a tiny scale, under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import re
import resource
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
# Every gateway the bench starts: many people sign in from one address (127.0.0.1) within a minute.
GATEWAY_ENV = {"DESKGATE_SECURITY_IP_THROTTLE_PER_MINUTE": "100000"}

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
IDLE_READ_LIMIT = 1800.0
# The soft fd limit this bench was started with: the gateway gets this one, not the bench's
# raised one, so that whether the gateway raises its own limit shows in the figures.
ORIGINAL_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def per_user_limits_lifted() -> dict[str, str]:
    """A few signed-in people stand in for thousands here: any per-user session limit the
    gateway has (a ``[relay]`` or ``[security]`` setting named ``*per_user*``) is set high. Per-node
    capacity limits are left as they are: refusing above capacity is part of what is measured."""
    try:
        from gateway.config import SECTIONS
    except ImportError:
        return {}
    return {f"DESKGATE_{section}_{key}".upper(): "1000000"
            for section, keys in SECTIONS.items() for key in keys
            if "per_user" in key and section in ("relay", "security")}


def _original_fd_limit() -> None:  # preexec_fn: the gateway starts with the usual soft limit
    resource.setrlimit(resource.RLIMIT_NOFILE, ORIGINAL_NOFILE)


# --- fake RFB server -----------------------------------------------------------------------------
def _update_block() -> bytes:
    """One framebuffer update with pseudo-random pixels (nothing on the path compresses)."""
    pixels = (secrets.token_bytes(4096) * (RECT_W * RECT_H * 4 // 4096))
    return _UPDATE_HEAD + pixels


async def _fake_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, block: bytes) -> None:
    async def read(n: int) -> bytes:
        # Idle sessions send nothing for minutes: the bound is the fake server's own lifetime.
        return await asyncio.wait_for(reader.readexactly(n), IDLE_READ_LIMIT)

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
        if kind == 3:  # FramebufferUpdateRequest
            rest = await read(9)
            incremental, count = struct.unpack_from(">BH", rest, 0)
            if not incremental:
                # Non-incremental (the gateway's liveness probe asks for one pixel): answered at
                # once with the area asked for, as a real desktop does however idle it is.
                x, y, w, h = struct.unpack_from(">HHHH", rest, 1)
                writer.write(struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", x, y, w, h, 0)
                             + bytes(w * h * 4))
                continue
            for _ in range(count):  # incremental: x = number of updates to stream
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

    raise_fd_limit()
    # bench/ssh.py runs it in a network namespace, reachable on the namespace's address too.
    bind = os.environ.get("DESKGATE_BENCH_BIND", HOST)
    server = await asyncio.start_server(handle, bind, 0, backlog=4096)
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
        fields = _stat_fields(pid)
        return cls((int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[7]))

    @classmethod
    def tree(cls, pid: int) -> ProcStat:
        """The process and all its descendants: utime+stime of each live one plus cutime+cstime
        (the children each has already reaped), so nothing is counted twice or left out."""
        cpu, faults = 0, 0
        for member in process_tree(pid):
            try:
                f = _stat_fields(member)
            except (OSError, IndexError):
                continue  # exited meanwhile: its parent's cutime has it once reaped
            cpu += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            faults += int(f[7])
        return cls(cpu / CLK_TCK, faults)


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; [0] is the state


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        member = todo.pop()
        out.append(member)
        todo.extend(children.get(member, ()))
    return out


def uss_bytes(pid: int) -> int:
    """Unique set size: Private_Clean + Private_Dirty from /proc/PID/smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft}/{hard}"
    return "?"


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
    users: dict[str, str] = field(default_factory=dict)  # name -> password

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
        self.users["bench"] = self.password
        self.serve(extra_env)

    def add_users(self, count: int) -> list[str]:
        """``count`` more people with the bench desktop, made as an admin would: the CLI with
        ``--password-stdin`` (run before ``serve``, or beside it: the CLI shares the database)."""
        names = []
        for i in range(count):
            name, password = f"bench{i + 1}", secrets.token_urlsafe(18)
            cli(self.config, "user", "add", name, "--password-stdin", stdin=password + "\n")
            cli(self.config, "assign", "bench-desk", name)
            self.users[name] = password
            names.append(name)
        return names

    def serve(self, extra_env: dict[str, str] | None = None) -> None:
        self.log = open(self.data / "gateway.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **per_user_limits_lifted(), **GATEWAY_ENV, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(self.config), "--log-level", "WARNING", "serve"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
            env=env, start_new_session=True, preexec_fn=_original_fd_limit)
        wait_until(lambda: healthy(self.url) or self.proc is None or self.proc.poll() is not None,
                   30, "the gateway")
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

    async def sign_in(self, http: Any, name: str = "bench") -> str:
        """Sign ``name`` in on ``http`` (an aiohttp session with a cookie jar) as a browser does:
        password, TOTP enrolment, the desktop page. Returns the page's CSRF token for connect."""
        import pyotp

        def hidden(html: str, field_name: str = "_csrf") -> str:
            match = re.search(rf'name="{field_name}" value="([^"]*)"', html)
            if match is None:
                raise RuntimeError(f"no {field_name} field in the page")
            return match.group(1)

        async with http.get("/login") as resp:
            page = await resp.text()
        async with http.post("/login", data={"_csrf": hidden(page), "username": name,
                                             "password": self.users.get(name, self.password)}
                             ) as resp:
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
        return match.group(1)

    async def open_link(self) -> WsLink:
        import aiohttp
        from websockets.asyncio.client import connect
        from websockets.typing import Origin, Subprotocol

        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(self.url, cookie_jar=jar, timeout=timeout) as http:
            csrf = await self.sign_in(http)
            async with http.post(f"/desktops/{self.desktop_id}/connect",
                                 headers={"X-CSRF-Token": csrf}) as resp:
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


# --- the relay phase ----------------------------------------------------------------------------
PATHS = ("direct", "socat", "gateway")


@dataclass
class Run:
    """One path in one round: a fresh relay process, the same bytes as every other run."""
    path: str
    round: int
    mbps: float = 0.0
    cpu_per_gb: float | None = None  # the relay's process tree; None for direct
    faults_per_mb: float | None = None
    client_cpu_per_gb: float = 0.0
    server_cpu_per_gb: float = 0.0  # the fake RFB server's
    rtt_p50: float = 0.0  # seconds
    rtt_p99: float = 0.0
    error: str = ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


async def measure(run: Run, open_link: Callable[[], Awaitable[Link]], relay_pid: int | None,
                  server_pid: int, args: argparse.Namespace) -> Run:
    updates = max(1, round(args.mb * MB / UPDATE_SIZE))
    link = await open_link()
    try:
        client = RfbClient(link)
        await client.handshake()
        rtt = await client.fences(args.fences, args.time_limit / 3)
        run.rtt_p50, run.rtt_p99 = pct(rtt, 0.5), pct(rtt, 0.99)
        await client.stream(min(updates, 32), args.time_limit)  # warm-up
        before = ProcStat.tree(relay_pid) if relay_pid else None
        server_before = ProcStat.of(server_pid)
        c0, t0 = time.process_time(), time.perf_counter()
        got = await client.stream(updates, args.time_limit)
        t1, c1 = time.perf_counter(), time.process_time()
        gb = got / (1 << 30)
        run.mbps = got / MB / (t1 - t0)
        run.client_cpu_per_gb = (c1 - c0) / gb
        run.server_cpu_per_gb = (ProcStat.of(server_pid).cpu - server_before.cpu) / gb
        if relay_pid and before is not None:
            after = ProcStat.tree(relay_pid)
            run.cpu_per_gb = (after.cpu - before.cpu) / gb
            run.faults_per_mb = (after.minflt - before.minflt) / (got / MB)
    finally:
        await link.close()
    return run


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


async def one_run(path: str, rnd: int, server: subprocess.Popen[str], fake_port: int,
                  args: argparse.Namespace) -> Run:
    run = Run(path, rnd)
    if path == "direct":
        return await measure(run, lambda: TcpLink.open(fake_port), None, server.pid, args)
    if path == "socat":
        socat = shutil.which("socat")
        if socat is None:
            run.error = "socat not installed (apt-get install -y socat)"
            return run
        port = free_port()
        proc = subprocess.Popen(
            [socat, f"-b{args.socat_buffer}", f"TCP-LISTEN:{port},bind={HOST},reuseaddr,nodelay",
             f"TCP:{HOST}:{fake_port},nodelay"], stdin=subprocess.DEVNULL)
        try:
            return await measure(run, lambda: TcpLink.open(port), proc.pid, server.pid, args)
        finally:
            stop(proc, 5)
    with tempfile.TemporaryDirectory(prefix="deskgate-bench-") as tmp:
        gw = Gateway(Path(tmp) / "data", free_port())
        profiler = None
        try:
            gw.start(fake_port)
            assert gw.proc is not None
            if args.profile:
                profiler = start_profiler(gw, args)
            return await measure(run, gw.open_link, gw.proc.pid, server.pid, args)
        except Exception:
            print(gw.log_tail(), file=sys.stderr)
            raise
        finally:
            if args.profile:
                stop_profiler(profiler, args)
            gw.stop()


async def relay_phase(args: argparse.Namespace) -> list[Run]:
    """Interleaved rounds: direct, socat, gateway, direct, socat, gateway, ..."""
    runs: list[Run] = []
    with fake_server() as (server, fake_port):
        for rnd in range(1, args.rounds + 1):
            for path in args.paths:
                runs.append(await one_run(path, rnd, server, fake_port, args))
    return runs


def fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def relay_summary(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    """Medians over rounds per path, and the gateway's ratios to socat and direct."""
    out: dict[str, dict[str, float | None]] = {}
    for path in PATHS:
        mine = [r for r in runs if r.path == path and not r.error]
        if not mine:
            continue
        out[path] = {
            "mbps": med([r.mbps for r in mine]),
            "cpu_per_gb": med([r.cpu_per_gb for r in mine]),
            "faults_per_mb": med([r.faults_per_mb for r in mine]),
            "client_cpu_per_gb": med([r.client_cpu_per_gb for r in mine]),
            "server_cpu_per_gb": med([r.server_cpu_per_gb for r in mine]),
            "rtt_p50": med([r.rtt_p50 for r in mine]),
            "rtt_p99": med([r.rtt_p99 for r in mine]),
            "rounds": float(len(mine)),
        }
    return out


def report_relay(runs: list[Run], args: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    print(f"\n== relay: {args.mb} MB per run, {args.fences} fences, {args.rounds} interleaved "
          f"rounds, a fresh relay process per run ==")
    head = (f"{'round':>5s} {'path':8s} {'relay CPU s/GB':>14s} {'MB/s':>7s} {'RTT p50 us':>10s} "
            f"{'RTT p99 us':>10s} {'faults/MB':>9s} {'client s/GB':>11s} {'server s/GB':>11s}")
    print(head)
    print("-" * len(head))

    def row(label: str, path: str, cpu: float | None, mbps: float | None, p50: float | None,
            p99: float | None, faults: float | None, client: float | None,
            server: float | None) -> None:
        print(f"{label:>5s} {path:8s} {fmt(cpu, '14.2f')} {fmt(mbps, '7.0f')} "
              f"{fmt(None if p50 is None else p50 * 1e6, '10.0f')} "
              f"{fmt(None if p99 is None else p99 * 1e6, '10.0f')} {fmt(faults, '9.1f')} "
              f"{fmt(client, '11.2f')} {fmt(server, '11.2f')}")

    for r in runs:
        if r.error:
            print(f"{r.round:>5d} {r.path:8s} {r.error}")
            continue
        row(str(r.round), r.path, r.cpu_per_gb, r.mbps, r.rtt_p50, r.rtt_p99, r.faults_per_mb,
            r.client_cpu_per_gb, r.server_cpu_per_gb)
    summary = relay_summary(runs)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) / 2:
        print(f"NOTE: load average {load:.2f} on {os.cpu_count()} CPUs: other work shares the "
              "cores; MB/s and RTT suffer most, and the relay's CPU/GB drops too (busier "
              "buffers, fewer and fuller reads). Compare ratios from the same run, at low load.")
    print("-" * len(head))
    for path, s in summary.items():
        row("med", path, s["cpu_per_gb"], s["mbps"], s["rtt_p50"], s["rtt_p99"],
            s["faults_per_mb"], s["client_cpu_per_gb"], s["server_cpu_per_gb"])
    gw = summary.get("gateway")
    if gw is not None:
        for base in ("socat", "direct"):
            other = summary.get(base)
            if other is None:
                continue
            parts = [f"throughput {fmt(ratio(gw['mbps'], other['mbps']), '.2f')}x"]
            if base == "socat":
                parts.insert(0, "relay CPU/GB "
                             f"{fmt(ratio(gw['cpu_per_gb'], other['cpu_per_gb']), '.2f')}x")
            parts.append(f"RTT p50 {fmt(ratio(gw['rtt_p50'], other['rtt_p50']), '.2f')}x")
            parts.append(f"RTT p99 {fmt(ratio(gw['rtt_p99'], other['rtt_p99']), '.2f')}x")
            print(f"gateway/{base} (medians): " + ", ".join(parts))
    return summary


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


# --- the whole run -----------------------------------------------------------------------------
ALL_PHASES = ("relay", "storm", "idle", "shutdown")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--phases", default=",".join(ALL_PHASES),
                   help="comma-separated subset of relay,storm,idle,shutdown (default: all)")
    p.add_argument("--mb", type=int, default=512, help="MB streamed per relay run (default 512)")
    p.add_argument("--rounds", type=int, default=9,
                   help="interleaved relay rounds (direct, socat, gateway each; default 9)")
    p.add_argument("--repeat", type=int, dest="rounds", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the former name of --rounds
    p.add_argument("--fences", type=int, default=1000, help="fence round trips per relay run")
    p.add_argument("--paths", default=",".join(PATHS), help="relay paths, comma-separated subset")
    p.add_argument("--socat-buffer", type=int, default=65536, help="socat -b (default: 64 KiB)")
    p.add_argument("--time-limit", type=float, default=60.0, help="bound on each stream, seconds")
    p.add_argument("--storm", type=int, default=1000, help="connects per storm (default 1000)")
    p.add_argument("--in-flight", default="16,64", help="storm concurrency levels (default 16,64)")
    p.add_argument("--sessions", default="1000,5000,9000",
                   help="idle session counts, ascending (default 1000,5000,9000)")
    p.add_argument("--idle-window", type=float, default=30.0,
                   help="seconds of gateway CPU measured at each idle level (default 30)")
    p.add_argument("--shutdown-sessions", type=int, default=1000,
                   help="live sessions when the gateway gets SIGTERM (default 1000)")
    p.add_argument("--users", type=int, default=8,
                   help="signed-in people whose web sessions hold the many sessions (default 8)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for every gateway, e.g. DESKGATE_RELAY_...=...")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--profile", metavar="FILE",
                   help="record the gateway with py-spy (.svg flamegraph, .json speedscope, .txt raw)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run for CI: every phase at a tiny scale, under a minute")
    p.add_argument("--fake-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.rounds, args.fences = 32, 1, 100
        args.storm, args.sessions, args.idle_window = 30, "20,40", 1.5
        args.shutdown_sessions, args.users = 20, 2
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = set(args.phases) - set(ALL_PHASES) or set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown phase or path: {', '.join(sorted(unknown))}")
    args.in_flight, args.sessions = _ints(args.in_flight), sorted(_ints(args.sessions))
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("DESKGATE_"):
            p.error(f"--gateway-env wants DESKGATE_NAME=VALUE, not {item!r}")
        GATEWAY_ENV[name] = value
    return args


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"Python {sys.version.split()[0]}, fd limit {ORIGINAL_NOFILE[0]}/{ORIGINAL_NOFILE[1]}"
            f" (the bench raises its own to {raise_fd_limit()})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fake_server:
        asyncio.run(fake_server_main(max_seconds=1800))
        return 0
    sys.modules.setdefault("relay", sys.modules[__name__])  # one copy of this module's state
    import sessions  # bench/sessions.py: the phases with many sessions

    started = time.monotonic()
    print(f"Deskgate bench: phases {', '.join(args.phases)}; {machine_line()}", flush=True)
    summary: dict[str, Any] = {}
    broken: list[str] = []
    for phase in args.phases:
        print(f"\n[{time.monotonic() - started:6.1f} s] phase {phase} "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
        try:
            if phase == "relay":
                runs = asyncio.run(relay_phase(args))
                summary["relay"] = report_relay(runs, args)
                summary["relay_runs"] = [dataclasses.asdict(r) for r in runs]
            else:
                summary[phase] = asyncio.run(sessions.PHASES[phase](args))
        except Exception as exc:  # the bench itself broke: say so, go on, exit non-zero
            broken.append(f"{phase}: {type(exc).__name__}: {exc}")
            print(f"phase {phase} BROKE: {type(exc).__name__}: {exc}", file=sys.stderr)
    sessions.final_summary(summary, args)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine_line(), "phases": summary, "broken": broken}, indent=2) + "\n")
    for line in broken:
        print(f"BENCH BROKEN in {line}")
    print(f"\n(bench took {time.monotonic() - started:.1f} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
