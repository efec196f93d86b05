"""A real `deskgate serve` process with many people and one real Xvnc desktop they all use.

For the tests that need the process itself (its open files limit, its log, SIGTERM): the gateway
is made with the command line (`init`, `desktop add`), its people are written to the database
beforehand (one password hash for all: making accounts is not what is tested), and it is started
in its own session with the open files limit the test gives, and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from served import REPO, cli, free_port
from websupport import PASSWORD, rfb_handshake, sign_in

from gateway.config import load_settings
from gateway.crypto import hash_password
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_display

XVNC_PIDS: dict[int, int] = {}  # port -> pid of the Xvnc that shared_xvnc started


@contextlib.contextmanager
def shared_xvnc(folder: Path) -> Iterator[int]:
    """One Xvnc (security None) that everybody connects to; its TCP port. TigerVNC counts every
    connection still in its handshake against its blacklist, so it runs with UseBlacklist off."""
    port = free_port()
    with open(folder / "Xvnc.log", "wb") as log:
        xvnc = subprocess.Popen(
            ["Xvnc", f":{free_display(70)}", "-geometry", "320x240", "-depth", "24",
             "-rfbport", str(port), "-localhost", "-interface", "127.0.0.1", "-nolisten", "tcp",
             "-AlwaysShared", "-SecurityTypes", "None", "-UseBlacklist=0", "-desktop", "crowd"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket_to(port) as s:
                    if s.recv(12) == b"RFB 003.008\n":
                        break
            except OSError:
                pass
            assert xvnc.poll() is None and time.monotonic() < deadline, "Xvnc did not start"
            time.sleep(0.05)
        XVNC_PIDS[port] = xvnc.pid
        yield port
    finally:
        XVNC_PIDS.pop(port, None)
        xvnc.terminate()
        xvnc.wait(10)


def socket_to(port: int) -> contextlib.closing:  # type: ignore[type-arg]
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    return contextlib.closing(s)


@dataclass
class Gateway:
    base: str
    metrics_base: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    people: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(self.config),
                               *args], capture_output=True, text=True, timeout=60, cwd=REPO)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and its exit status (killed if it does not exit in ``timeout`` s)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        import requests

        text = requests.get(self.metrics_base + "/metrics", timeout=10).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r"^(deskgate_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def _nofile(soft: int, hard: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def _healthy(base: str) -> bool:
    import requests

    try:
        return requests.get(base + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def gateway(data: Path, vnc_port: int, people: int, *,
            nofile: tuple[int, int] | None = None) -> Iterator[Gateway]:
    """`deskgate serve` with ``people`` accounts (person0, ...; PASSWORD), each assigned the
    desktop "VM" (1) on ``vnc_port``; ``nofile`` = (soft, hard) open files limit to start with."""
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
        "--public-url", base, "--no-demo")
    config = data / "deskgate.toml"
    cli("--config", str(config), "desktop", "add", "VM", "--provider", "static", "--vnc",
        f"127.0.0.1:{vnc_port}")
    names = [f"person{n}" for n in range(people)]

    async def populate() -> None:
        store = SQLiteStore(load_settings(config, env={}).database_path)
        await store.open()
        try:
            pw_hash = await asyncio.to_thread(hash_password, PASSWORD)
            for name in names:
                user = await store.create_user(name, pw_hash, False)
                await store.assign(1, user.id)
        finally:
            await store.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may run an event loop
        pool.submit(asyncio.run, populate()).result()
    env = {**os.environ, "DESKGATE_METRICS_METRICS_PORT": str(metrics_port),
           "DESKGATE_SECURITY_IP_THROTTLE_PER_MINUTE": "1000000"}
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            start_new_session=True, preexec_fn=_nofile(*nofile) if nofile else None)
    gw = Gateway(base, f"http://127.0.0.1:{metrics_port}", config, log_path, proc, names)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(base):
            assert proc.poll() is None, f"deskgate serve exited:\n{gw.log()}"
            assert time.monotonic() < deadline, f"deskgate serve did not answer:\n{gw.log()}"
            time.sleep(0.1)
        yield gw
    finally:
        gw.stop(30)


def browser() -> aiohttp.ClientSession:
    """A person's browser; every HTTP request on its own connection (closed after it), so that
    the gateway's descriptors are the sessions' own."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(force_close=True))


@contextlib.asynccontextmanager
async def browsers(gw: Gateway, count: int) -> AsyncIterator[list[tuple[aiohttp.ClientSession,
                                                                          str]]]:
    """``count`` people signed in at once (both factors): (browser, CSRF token) each."""
    opened = [browser() for _ in range(count)]
    try:
        csrfs = await asyncio.gather(*(sign_in(b, gw.people[n], base=gw.base)
                                       for n, b in enumerate(opened)))
        yield list(zip(opened, csrfs, strict=True))
    finally:
        await asyncio.gather(*(b.close() for b in opened))


async def click_connect(gw: Gateway, b: aiohttp.ClientSession, csrf: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = await b.post(f"{gw.base}/desktops/1/connect",
                        headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    return resp.status, json.loads(await resp.text())


async def open_relay(gw: Gateway, b: aiohttp.ClientSession, answer: dict,  # type: ignore[type-arg]
                     ) -> aiohttp.ClientWebSocketResponse:
    """The client page's websocket, through the RFB handshake to the desktop's ServerInit."""
    ws = await b.ws_connect(gw.base + answer["ws_url"], origin=gw.base, protocols=("binary",))
    await rfb_handshake(ws)
    return ws
