"""Fixtures for the byte path: an in-memory browser channel and real TigerVNC desktops."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.xdisplay.numbers import display_taken

XVNC = "/usr/bin/Xvnc"
VNCPASSWD = "/usr/bin/vncpasswd"


class MemoryChannel:
    """A ClientChannel backed by queues; the test plays the browser through it."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()  # browser -> gateway
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()  # gateway -> browser
        self.sent: list[bytes] = []  # every message the gateway sent, for inspection
        self._pending = bytearray()

    # the ClientChannel side, used by relay_vnc
    async def receive(self) -> bytes | None:
        return await self.inbox.get()

    async def send(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.sent.append(data)
        await self.outbox.put(data)

    # the browser side, used by the test
    def push(self, data: bytes) -> None:
        self.inbox.put_nowait(data)

    def close(self) -> None:
        self.inbox.put_nowait(None)

    async def read(self, n: int, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while len(self._pending) < n:
                self._pending += await self.outbox.get()
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    async def handshake(self) -> tuple[int, int, str]:
        """Be a minimal RFB 3.8 client up to ServerInit; returns (width, height, name)."""
        assert await self.read(12) == b"RFB 003.008\n"
        self.push(b"RFB 003.008\n")
        assert await self.read(2) == b"\x01\x01"
        self.push(b"\x01")
        assert await self.read(4) == b"\0\0\0\0"
        self.push(b"\x01")  # ClientInit, shared
        head = await self.read(24)
        width, height = struct.unpack(">HH", head[:4])
        (name_length,) = struct.unpack(">I", head[20:])
        name = (await self.read(name_length)).decode()
        return width, height, name


@pytest.fixture
def channel() -> MemoryChannel:
    return MemoryChannel()


@dataclass
class Desktop:
    process: subprocess.Popen[bytes]
    display: int
    port: int
    name: str
    password: str | None
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_display() -> int:
    candidates = list(range(40, 100))
    random.shuffle(candidates)  # other test runs on this machine pick from the same range
    for n in candidates:
        if not display_taken(n):
            return n
    raise RuntimeError("no free X display in :40-:99")


def _wait_for_banner(process: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(12) == b"RFB 003.008\n":
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_xvnc(workdir: Path, password: str | None, name: str = "deskgate test") -> Desktop:
    """Start Xvnc 800x600 on a free display and port; VncAuth when a password is given."""
    if shutil.which(XVNC) is None:
        pytest.skip("TigerVNC Xvnc is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    security = ["-SecurityTypes", "None"]
    if password is not None:
        passwd = workdir / "passwd"
        result = subprocess.run(
            [VNCPASSWD, "-f"], input=f"{password}\n".encode(), capture_output=True, check=True
        )
        passwd.write_bytes(result.stdout)
        os.chmod(passwd, 0o600)
        security = ["-SecurityTypes", "VncAuth", "-PasswordFile", str(passwd)]
    for _attempt in range(5):
        display, port = _free_display(), _free_port()
        log = workdir / f"Xvnc-{display}.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [XVNC, f":{display}", "-geometry", "800x600", "-depth", "24",
                 "-rfbport", str(port), "-localhost", "-interface", "127.0.0.1",
                 "-nolisten", "tcp", "-AlwaysShared", "-desktop", name, *security],
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        desktop = Desktop(process, display, port, name, password, log)
        if _wait_for_banner(process, port):
            return desktop
        desktop.stop()  # display or port taken by someone else meanwhile: try another
    raise RuntimeError(f"Xvnc did not start; see {log}")


@pytest.fixture
def start_desktop(tmp_path: Path) -> Iterator[Callable[..., Desktop]]:
    """``start_desktop(password, name=...)``: an Xvnc of the test's own, stopped after it."""
    started: list[Desktop] = []

    def start(password: str | None, name: str = "deskgate test") -> Desktop:
        desktop = start_xvnc(tmp_path / f"xvnc{len(started)}", password, name)
        started.append(desktop)
        return desktop

    yield start
    for desktop in started:
        desktop.stop()


@pytest.fixture
def new_channel() -> Callable[[], MemoryChannel]:
    return MemoryChannel


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def vncauth_desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    desktop = start_xvnc(tmp_path_factory.mktemp("xvnc-auth"), password="s3cr3tpw")
    yield desktop
    desktop.stop()


@pytest.fixture(scope="module")
def none_desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    desktop = start_xvnc(tmp_path_factory.mktemp("xvnc-none"), password=None, name="open desk")
    yield desktop
    desktop.stop()


# Real RDP servers and a runtime folder for the RDP bridge tests (see tests/rdp_servers.py).
from rdp_servers import (  # noqa: E402, F401 - fixtures, found by pytest by name
    rdp_runtime_dir,
    rdp_server_factory,
    shadow_server,
    xrdp_server,
)
