"""Helpers for browser tests: a real gateway process, real Xvnc desktops, real Chromium.

Every process is started here and stopped by its PID. The static desktop sits behind a small
TCP relay whose live connections a test can cut, to simulate a dropped upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyotp
import pytest
from pngpixels import Image, bounding_box, count, decode, is_dark, is_white

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
# VncAuth takes at most 8 characters; distinctive so a leak is unmistakable.
STATIC_VNC_PASSWORD = "Qz7vKp3w"
STATIC_DESKTOP = "Static desktop"
LOCAL_DESKTOP = "Local desktop"
CONNECT_TIMEOUT_MS = 30_000

T = TypeVar("T")


def need(path_or_cmd: str) -> None:
    if not (Path(path_or_cmd).exists() or shutil.which(path_or_cmd)):
        pytest.skip(f"{path_or_cmd} is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class LoopThread:
    """Runs coroutines on one long-lived loop, so subprocess transports outlive each call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Desktop:
    display: int
    rfbport: int
    env: dict[str, str]


class Relay:
    """127.0.0.1:port -> target, one pair of pump threads per connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="relay", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            down.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._live.update((down, up))
            for src, dst in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                if s in self._live:
                    self._live.discard(s)
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live) // 2

    def cut(self) -> int:
        """Abruptly end every live connection; returns how many there were."""
        with self._lock:
            socks = list(self._live)
        n = len(socks) // 2
        self._drop(*socks)
        return n

    def close(self) -> None:
        self._closed = True
        self._acceptor.join(5)
        self._listener.close()
        self.cut()
        for t in self._threads:
            t.join(5)


@dataclass
class Account:
    name: str
    password: str
    totp_secret: str | None = None
    recovery_codes: list[str] = field(default_factory=list)


@dataclass
class Gateway:
    base_url: str
    data_dir: Path
    config: Path
    log_path: Path
    admin: Account
    accounts: dict[str, Account]
    desktop_ids: dict[str, str]
    pid: int

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return run_cli("--config", str(self.config), *args, stdin=stdin)

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def deskgate_exe() -> str:
    exe = Path(sys.executable).parent / "deskgate"
    return str(exe) if exe.exists() else "deskgate"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        [deskgate_exe(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"deskgate {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc.stdout


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process we started, SIGKILL its group if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: started with a new session
            proc.wait(5)
    # Anything else left in its process group. (Local desktops are not in it: they outlive
    # the gateway unless it runs with --stop-desktops-on-exit.)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)


def private_runtime_dir() -> Path:
    """A runtime folder for one gateway's local desktops: short (unix socket paths) and open to
    the desktop user for passing through, not for listing."""
    d = Path(tempfile.mkdtemp(prefix="dg-rt-", dir="/tmp"))  # noqa: S108 - private, 0711
    os.chmod(d, 0o711)  # noqa: S103 - traverse only
    return d


def sign_in(page: Any, gw: Gateway, account: Account, shots: Path | None = None) -> None:
    """Password, then TOTP: enrols on first use (keeping secret and recovery codes)."""
    page.goto(gw.base_url + "/")
    page.wait_for_url(re.compile(r"/login(\?.*)?$"))
    if shots:
        page.screenshot(path=str(shots / "login.png"))
    page.fill("#username", account.name)
    page.fill("#password", account.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/login/totp"))
    if page.locator("#totp-secret").count():
        secret = page.locator("#totp-secret").text_content()
        assert secret and re.fullmatch(r"[A-Z2-7]+=*", secret), f"bad secret text {secret!r}"
        account.totp_secret = secret
        if shots:
            page.screenshot(path=str(shots / "totp-enrol.png"), full_page=True)
        page.fill("#totp-code", pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Confirm").click()
        # The codes come in the answer to the confirming code (at /login/totp or after a
        # redirect to /login/recovery): wait for the page, not for a URL.
        page.locator("#continue").wait_for()
        account.recovery_codes = [c.strip() for c in page.locator(".recovery-code").all_text_contents()]
        if shots:
            page.screenshot(path=str(shots / "recovery.png"), full_page=True)
        page.locator("#continue").click()
    else:
        assert account.totp_secret, "asked to verify TOTP for an account never enrolled"
        code = pyotp.TOTP(account.totp_secret).now()
        page.fill("#totp-code", code)
        page.get_by_role("button", name="Verify").click()
    page.wait_for_url(gw.base_url + "/")


def signed_in_state(browser: Any, gw: Gateway, name: str) -> dict[str, Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        page = ctx.new_page()
        sign_in(page, gw, gw.accounts[name])
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


@dataclass
class Watched:
    """A page with everything the browser received and logged recorded."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)
    ws_frames: list[bytes] = field(default_factory=list)
    ws_urls: list[str] = field(default_factory=list)

    def real_console_errors(self) -> list[str]:
        return [e for e in self.console_errors if "favicon" not in e]

    def received_bodies(self) -> list[tuple[str, bytes]]:
        bodies = []
        for r in self.responses:
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                continue  # server-sent events never end: their body would never arrive
            try:
                bodies.append((r.url, r.body()))
            except Exception:  # noqa: BLE001, S112 - redirects and evicted bodies have none
                continue
        return bodies


def watch(page: Any) -> Watched:
    w = Watched(page)
    page.on(
        "console",
        lambda msg: w.console_errors.append(f"{msg.text} @ {msg.location}") if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: w.console_errors.append(f"pageerror: {exc}"))
    page.on("response", lambda r: w.responses.append(r))

    def on_ws(ws: Any) -> None:
        w.ws_urls.append(ws.url)
        ws.on(
            "framereceived",
            lambda payload: w.ws_frames.append(payload if isinstance(payload, bytes) else payload.encode()),
        )

    page.on("websocket", on_ws)
    return w


# -- the desktop in the browser: client state and screenshots ------------------------------------


def shot_to(page: Any, name: str) -> Path:
    """A full-page screenshot into the artifacts directory."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def shot(page: Any, path: Path | None = None) -> Image:
    return decode(page.screenshot(path=str(path) if path else None))


def desktop_url(gw: Gateway, name: str) -> str:
    return f"{gw.base_url}/desktops/{gw.desktop_ids[name]}"


def wait_state(page: Any, state: str, timeout_ms: int = CONNECT_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "s => document.getElementById('deskgate-client').dataset.state === s",
        arg=state,
        timeout=timeout_ms,
    )


def open_desktop(page: Any, gw: Gateway, name: str, timeout_ms: int = CONNECT_TIMEOUT_MS) -> None:
    """Opens the named desktop's client page and waits until it is connected."""
    page.goto(desktop_url(gw, name))
    wait_state(page, "connected", timeout_ms)


def screen_box(page: Any) -> tuple[int, int, int, int]:
    """The desktop area of the client page (below the toolbar), in screenshot pixels."""
    b = page.locator("#screen").bounding_box()
    assert b, "no #screen element"
    return int(b["x"]), int(b["y"]), int(b["x"] + b["width"]), int(b["y"] + b["height"])


def wait_for_xterm(page: Any, timeout: float = 20, failed_shot: str = "failed-xterm-missing.png"
                   ) -> tuple[Image, tuple[int, int, int, int]]:
    """Screenshots until a white xterm with dark text shows in the desktop area."""
    area = screen_box(page)
    last: list[Image] = []

    def xterm_visible() -> tuple[int, int, int, int] | None:
        img = shot(page)
        last[:] = [img]
        box = bounding_box(img, is_white, area, step=4)
        if not box:
            return None
        left, top, right, bottom = box
        big = (right - left) > 300 and (bottom - top) > 200
        has_text = count(img, is_dark, box, step=2) > 50
        return box if big and has_text else None

    try:
        box = wait_until(xterm_visible, timeout, "the xterm to show in the browser", 0.3)
    except AssertionError:
        shot_to(page, failed_shot)
        raise
    return last[0], box


def type_into_xterm(page: Any, box: tuple[int, int, int, int], text: str) -> None:
    left, top, right, bottom = box
    page.mouse.click((left + right) / 2, (top + bottom) / 2)
    page.keyboard.type(text, delay=15)
    page.keyboard.press("Enter")


def wait_for_colour(
    page: Any,
    pred: Callable[[tuple[int, int, int]], bool],
    min_pixels: int,
    what: str,
    timeout: float = 15,
) -> Image:
    """Screenshots until at least ``min_pixels`` of the desktop area match ``pred``."""
    area = screen_box(page)
    found: list[Image] = []

    def coloured() -> bool:
        img = shot(page)
        found[:] = [img]
        return count(img, pred, area, step=4) >= min_pixels

    try:
        wait_until(coloured, timeout, what, 0.3)
    except AssertionError:
        shot_to(page, f"failed-{re.sub(r'[^a-z]+', '-', what)}.png")
        raise
    return found[0]
