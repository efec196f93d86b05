"""The RDP bridge: per session, FreeRDP's ``xfreerdp`` full screen inside a private ``Xvnc``.

The gateway serves an RDP desktop through the same RFB adapter as a VNC desktop (``relay_vnc``):
``RdpBridges.acquire`` starts a TigerVNC ``Xvnc`` that listens on a unix socket only (mode 0600,
fresh random VncAuth password, X cookie required) and an ``xfreerdp`` that fills it, and returns
that socket as an ``Endpoint``.

- Credentials reach FreeRDP on stdin (``/from-stdin:force``), never on its command line, in its
  environment or in a log line. Every process runs as ``run_as_user`` when the gateway is root,
  with a private HOME (0700) removed when the bridge stops.
- ``acquire`` returns once ``xfreerdp`` has mapped its window and the server has confirmed that
  the account is signed in (see "Sign-in" in ``gateway.rdp.freerdp``): at once when the session
  itself says so (that comes after the window, so an xfreerdp that ends with its window never
  gets that far); with NLA alone (checked before any window) once the window has stayed up with
  a running ``xfreerdp`` for ``SETTLE_SECONDS``. Otherwise it raises ``BridgeError`` with a
  reason for the person (wrong credentials, unreachable, certificate refused, busy). FreeRDP
  exits 147 both for a closed port and for a refused NLA login; a TCP probe of the server
  tells them apart.
- ``release`` starts a grace period: a browser that reconnects within it gets the same bridge and
  so the same remote session. ``watch_exit`` reports an ``xfreerdp`` that ended on its own.
- The clipboard goes between xfreerdp and the Xvnc through a small go-between on the display
  (``gateway.rdp.clipboard``), started before xfreerdp; it is one of the bridge's processes.
- Processes are stopped by PID (their process groups: TERM, wait, KILL) and reaped.
- X displays: from ``display_base`` (``[rdp] rdp_display_base``) up, the first number with no lock
  file or X socket that no other bridge start of this gateway holds; a number another X server
  (a local desktop, whatever its base) takes first is skipped. Bounded by ``DISPLAY_ATTEMPTS``.

One module (over 400 lines): the bridge's life (start, sign-in, reuse, grace, exit) is one state
machine over the same ``_Bridge`` record, and splitting it would spread that state across files.
What xfreerdp is told and what its exits and log lines mean is in ``gateway.rdp.freerdp``; the
reasons and errors in ``gateway.rdp.errors``; the server and account in ``gateway.rdp.target``.

Known limit: a frozen server keeps ``xfreerdp`` running (no no-update timer here).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pwd
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.logs import TaggedLog
from gateway.model import Endpoint, Secret, window_size
from gateway.rdp.errors import (
    REASON_BUSY,
    REASON_CREDENTIALS,
    REASON_ENDED,
    REASON_SHUTDOWN,
    REASON_START,
    REASON_TIMEOUT,
    REASON_UNREACHABLE,
    BridgeError,
)
from gateway.rdp.freerdp import (
    RDP_SELECTION,
    SignIn,
    exit_reason,
    output_line,
    server_reachable,
    start_failure,
    xfreerdp_argv,
)
from gateway.rdp.target import RdpTarget
from gateway.xdisplay import XvncStartError
from gateway.xdisplay.files import random_vnc_password
from gateway.xdisplay.numbers import UNIX_PATH_MAX, display_taken, free_display, pid_alive
from gateway.xdisplay.sysuser import ensure_system_user, first_closed_folder
from gateway.xdisplay.xvnc import (
    XvncDisplay,
    spawn_on_display,
    start_display,
    visible_window,
    x_client_output,
)

log = logging.getLogger(__name__)


CONNECT_TIMEOUT = 30.0  # start of xfreerdp to its window mapped
SETTLE_SECONDS = 0.4  # NLA alone: the window must stay with a running xfreerdp this long
LOGON_TIMEOUT = 15.0  # the window up to the server's sign-in confirmation (see "Sign-in")
STOP_TIMEOUT = 5.0
OUTPUT_LINES = 80  # xfreerdp output kept per bridge for classifying its exit
DISPLAY_ATTEMPTS = 20  # X display numbers tried per bridge when other X servers take them first


@dataclass(eq=False)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(eq=False)
class _Bridge:
    key: str
    target: RdpTarget
    folder: Path
    display: XvncDisplay
    endpoint: Endpoint
    blog: TaggedLog
    started_at: float = field(default_factory=time.time)
    proc: asyncio.subprocess.Process | None = None
    window: str = ""
    stopping: bool = False
    clients: int = 0
    grace: asyncio.TimerHandle | None = None
    watchers: list[Callable[[str], None]] = field(default_factory=list)
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=OUTPUT_LINES))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sign_in: SignIn = field(default_factory=SignIn)

    @property
    def pids(self) -> list[int]:
        return list(self.display.pids)

    def running(self) -> bool:
        return (
            not self.stopping
            and self.proc is not None
            and self.proc.returncode is None
            and self.display.alive()
        )


def _cancel_grace(bridge: _Bridge) -> None:
    if bridge.grace is not None:
        bridge.grace.cancel()
        bridge.grace = None


class RdpBridges:
    """Every RDP bridge of this node, by key (for instance the session id)."""

    def __init__(
        self,
        runtime_dir: Path,
        *,
        run_as_user: str | None,
        max_bridges: int = 20,
        grace_seconds: float = 60.0,
        display_base: int = 60,
        connect_timeout: float = CONNECT_TIMEOUT,
        logon_timeout: float = LOGON_TIMEOUT,
        handover_seconds: float = 30.0,
        max_clipboard_bytes: int = 1 << 20,
    ) -> None:
        if os.geteuid() == 0 and run_as_user is None:
            raise ConfigError("the RDP bridge needs run_as_user when the gateway runs as root")
        self._runtime_dir = runtime_dir
        self._run_as_user = run_as_user if os.geteuid() == 0 else None
        self._max = max_bridges
        self._grace = grace_seconds
        self._handover = handover_seconds  # a connect's bridge waits this long for its ticket
        self._display_base = display_base
        self._displays_starting: set[int] = set()  # display numbers this gateway's bridges are taking
        self._connect_timeout = connect_timeout
        self._logon_timeout = logon_timeout
        self._max_clipboard = max_clipboard_bytes
        self._bridges: dict[str, _Bridge] = {}
        self._starting: set[str] = set()
        self._locks: dict[str, _KeyLock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._user: pwd.struct_passwd | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._bridges)

    async def account(self) -> int | None:
        """The uid the bridges' processes run as (None: the gateway's own), for what they must
        open, such as a jump host's socket to their server."""
        user = await self._desktop_user()
        return None if user is None else user.pw_uid

    # -- the contract ----------------------------------------------------------------------

    async def acquire(self, key: str, target: RdpTarget, width: int = 1280, height: int = 800) -> Endpoint:
        """The bridge for ``key``, started unless a live one exists (then its grace timer is
        cancelled and the same remote session continues). Raises ``BridgeError``."""
        if window_size(width, height) is None:
            raise ValueError("bridge size out of range")
        self._check_open()
        async with self._keyed(key):
            self._check_open()
            current = self._bridges.get(key)
            if current is not None:
                if current.running() and current.target == target:
                    return self._one_more_client(current, "reused")
                current.blog.info("replaced: %s", "target changed" if current.running() else "not running")
                await self._stop(current)
            if len(self._bridges) + len(self._starting) >= self._max:
                TaggedLog(log, {"bridge": key}).warning("refused: %d bridges running", self._max)
                raise BridgeError(REASON_BUSY, "busy")
            self._starting.add(key)
            try:
                bridge = await self._start(key, target, width, height)
            finally:
                self._starting.discard(key)
            if self._closed:
                await self._stop(bridge)
                raise BridgeError(REASON_SHUTDOWN, "shutdown")
            bridge.clients = 1
            self._bridges[key] = bridge
            return bridge.endpoint

    def running(self, key: str) -> bool:
        """Whether a bridge for ``key`` runs now (in use or in its grace period)."""
        bridge = self._bridges.get(key)
        return bridge is not None and bridge.running()

    async def attach(self, key: str) -> Endpoint:
        """One more client of the running bridge for ``key`` (an admin's watch): never starts
        or replaces one, so a watch cannot sign the person in again or with another account.
        Raises ``BridgeError`` when no bridge runs for ``key``."""
        self._check_open()
        async with self._keyed(key):
            current = self._bridges.get(key)
            if current is None or not current.running():
                raise BridgeError(REASON_ENDED, "failed")
            return self._one_more_client(current, "attached")

    @staticmethod
    def _one_more_client(bridge: _Bridge, how: str) -> Endpoint:
        _cancel_grace(bridge)
        bridge.clients += 1
        bridge.blog.info("%s (%d client(s))", how, bridge.clients)
        return bridge.endpoint

    def release(self, key: str, *, handover: bool = False) -> None:
        """One client left; with none left the bridge stops after ``grace_seconds``. With
        ``handover`` (a connect that started it for a ticket's holder) after at least
        ``handover_seconds``, whatever the grace time: the browser's websocket acquires it next,
        and a bridge stopped in between would be started a second time."""
        bridge = self._bridges.get(key)
        if bridge is None or bridge.stopping:
            return
        bridge.clients = max(0, bridge.clients - 1)
        if bridge.clients > 0 or bridge.grace is not None:
            return
        wait = max(self._grace, self._handover) if handover else self._grace
        bridge.blog.info("released: stopping in %g s unless reconnected", wait)
        loop = asyncio.get_running_loop()
        bridge.grace = loop.call_later(
            max(0.0, wait), lambda: self._in_background(self._expire(key, bridge))
        )

    async def resized(self, key: str, width: int, height: int) -> None:
        """Make the full-screen xfreerdp window follow a resized display (it keeps its old size
        otherwise, although ``/dynamic-resolution`` has resized the remote session)."""
        bridge = self._bridges.get(key)
        if bridge is None or not bridge.running():
            return
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise ValueError("bad size")
        wid = bridge.window or await self._find_window(bridge)
        if not wid:
            bridge.blog.warning("resize to %dx%d: no xfreerdp window", width, height)
            return
        rc, _ = await x_client_output(bridge.display, ["xdotool", "windowmove", wid, "0", "0"])
        rc2, _ = await x_client_output(
            bridge.display, ["xdotool", "windowsize", wid, str(width), str(height)]
        )
        if rc or rc2:
            bridge.blog.warning("resize to %dx%d failed (xdotool %d/%d)", width, height, rc, rc2)
        else:
            bridge.blog.info("window resized to %dx%d", width, height)

    def watch_exit(self, key: str, callback: Callable[[str], None]) -> None:
        """``callback(reason)`` once, when xfreerdp ends on its own (not on release/close).
        Called soon with ``REASON_ENDED`` when no live bridge exists for ``key``."""
        bridge = self._bridges.get(key)
        if bridge is None or not bridge.running():
            asyncio.get_running_loop().call_soon(callback, REASON_ENDED)
            return
        bridge.watchers.append(callback)

    def totals(self) -> tuple[int, int, float]:
        """(bridges, resident bytes, CPU seconds) of every running bridge together."""
        stats = self.stats()
        return (len(stats), sum(int(b["rss_bytes"]) for b in stats),
                sum(float(b["cpu_seconds"]) for b in stats))

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for bridge in self._bridges.values():
            pids = [p for p in bridge.pids if pid_alive(p)]
            out.append(
                {
                    "key": bridge.key,
                    "pids": pids,
                    "display": bridge.display.display,
                    "rss_bytes": sum(_rss_bytes(p) for p in pids),
                    "cpu_seconds": round(sum(_cpu_seconds(p) for p in pids), 2),
                    "started_at": bridge.started_at,
                    "clients": bridge.clients,
                    "connected": bridge.running(),
                }
            )
        return out

    async def close(self) -> None:
        """Stop every bridge; later ``acquire`` calls fail."""
        self._closed = True
        bridges = list(self._bridges.values())
        await asyncio.gather(*(self._stop(b) for b in bridges), return_exceptions=True)
        # A grace period that ended just now is stopping its bridge: let it finish (bounded), so
        # that its folder is removed too.
        if self._background:
            await asyncio.wait(list(self._background), timeout=STOP_TIMEOUT + 2)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        # a start still in progress finishes (and is stopped) under its lock
        await asyncio.gather(*(self._wait_lock(k) for k in list(self._locks)))

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BridgeError(REASON_SHUTDOWN, "shutdown")

    @contextlib.asynccontextmanager
    async def _keyed(self, key: str) -> AsyncIterator[None]:
        """One start, stop or reuse at a time per key; the lock goes when nobody uses it."""
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(key) is entry:
                del self._locks[key]

    async def _wait_lock(self, key: str) -> None:
        async with self._keyed(key):
            pass

    def _in_background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _expire(self, key: str, bridge: _Bridge) -> None:
        async with self._keyed(key):
            if self._bridges.get(key) is bridge and bridge.clients == 0 and bridge.grace is not None:
                bridge.grace = None
                bridge.blog.info("grace period over")
                await self._stop(bridge)

    async def _stop(self, bridge: _Bridge) -> None:
        if self._bridges.get(bridge.key) is bridge:
            del self._bridges[bridge.key]
        bridge.stopping = True
        t0 = time.monotonic()
        _cancel_grace(bridge)
        await bridge.display.stop(STOP_TIMEOUT)
        for task in bridge.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        # A process on its way out may still write into its home while the tree is removed.
        for _ in range(10):
            shutil.rmtree(bridge.folder, ignore_errors=True)
            if not bridge.folder.exists():
                break
            await asyncio.sleep(0.1)
        else:
            bridge.blog.warning("could not remove %s", bridge.folder)
        bridge.blog.info("stopped in %.2f s", time.monotonic() - t0)

    async def _desktop_user(self) -> pwd.struct_passwd | None:
        if self._run_as_user is None:
            return None
        if self._user is None:
            self._user = await ensure_system_user(self._run_as_user)
        return self._user

    def _prepare_folder(self, user: pwd.struct_passwd | None, blog: TaggedLog) -> Path:
        """``<runtime_dir>/rdp-XXXX`` (0700, the desktop user's) with ``home`` inside."""
        self._runtime_dir.mkdir(parents=True, exist_ok=True)
        if user is not None and (closed := first_closed_folder(self._runtime_dir, user)):
            blog.error("%s cannot enter %s: grant it o+x", user.pw_name, closed)
            raise BridgeError(REASON_START, "start")
        folder = Path(tempfile.mkdtemp(prefix="rdp-", dir=self._runtime_dir))
        home = folder / "home"
        home.mkdir(mode=0o700)
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
            os.chown(home, user.pw_uid, user.pw_gid)
        if len(os.fsencode(folder / "vnc.sock")) > UNIX_PATH_MAX:
            shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError("RDP bridge runtime_dir path too long for a unix socket")
        return folder

    @staticmethod
    def _trust_only(folder: Path, ca_pem: str) -> dict[str, str]:
        """OpenSSL's trust store for xfreerdp: ``ca_pem`` alone, not the system's CAs (and its
        private XDG_CONFIG_HOME has no FreeRDP certificate store of its own)."""
        ca_file, no_dir = folder / "trusted-ca.pem", folder / "no-other-cas"
        ca_file.write_text(ca_pem)
        ca_file.chmod(0o644)
        no_dir.mkdir(mode=0o755, exist_ok=True)
        return {"SSL_CERT_FILE": str(ca_file), "SSL_CERT_DIR": str(no_dir)}

    def _tofu_store(self, user: pwd.struct_passwd | None) -> Path:
        """The certificates accepted on first use, shared by every bridge (XDG_CONFIG_HOME)."""
        store = self._runtime_dir / "freerdp-tofu"
        store.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(store, user.pw_uid, user.pw_gid, follow_symlinks=False)
        return store

    async def _start(self, key: str, target: RdpTarget, width: int, height: int) -> _Bridge:
        blog = TaggedLog(log, {"bridge": key})
        t0 = time.monotonic()
        user = await self._desktop_user()
        folder = self._prepare_folder(user, blog)
        home = folder / "home"
        vnc_password = random_vnc_password()
        try:
            display = await self._start_display(folder, vnc_password, width, height, user, home)
        except XvncStartError as e:
            blog.error("Xvnc did not start: %s", e.reason)
            shutil.rmtree(folder, ignore_errors=True)
            raise BridgeError(REASON_START, "start") from None
        except BaseException:  # cancelled: start_display stopped what it had started
            shutil.rmtree(folder, ignore_errors=True)
            raise
        bridge = _Bridge(
            key=key,
            target=target,
            folder=folder,
            display=display,
            endpoint=Endpoint(unix_path=str(folder / "vnc.sock"), password=Secret(vnc_password)),
            blog=blog,
        )
        t_display = time.monotonic()
        try:
            await self._connect(bridge, user, home)
        except BaseException:
            await self._stop(bridge)
            raise
        bridge.blog.info(
            "connected to %s:%d%s as %s on display :%d in %.2f s (Xvnc %.2f s); pids %s",
            target.host,
            target.port,
            f" through {target.unix_path}" if target.unix_path else "",
            target.username,
            display.display,
            time.monotonic() - t0,
            t_display - t0,
            bridge.pids,
        )
        return bridge

    async def _start_display(self, folder: Path, vnc_password: str, width: int, height: int,
                             user: pwd.struct_passwd | None, home: Path) -> XvncDisplay:
        """The bridge's Xvnc on the first display >= ``display_base`` that has no lock file or
        X socket and that no other bridge of this gateway is taking; when another X server (a
        local desktop started at the same moment, whatever its base) takes it first, the next
        one. Bounded by ``DISPLAY_ATTEMPTS``."""
        candidate = self._display_base
        for _ in range(DISPLAY_ATTEMPTS):
            number = free_display(candidate)
            while number in self._displays_starting:
                number = free_display(number + 1)
            self._displays_starting.add(number)
            try:
                return await start_display(
                    display=number,
                    unix_path=folder / "vnc.sock",
                    password=vnc_password,
                    geometry=f"{width}x{height}",
                    name="remote desktop",
                    user=user.pw_name if user is not None else None,
                    home=home,
                    state_dir=folder,
                    xauth=True,
                    window_manager=False,
                    xterm=False,
                )
            except XvncStartError as e:
                taken = e.reason.endswith("is in use") or display_taken(number)
                if not taken:
                    raise
                candidate = number + 1
            finally:
                self._displays_starting.discard(number)
        raise XvncStartError(f"no free X display from :{self._display_base} after {DISPLAY_ATTEMPTS} tries")


    async def _connect(self, bridge: _Bridge, user: pwd.struct_passwd | None, home: Path) -> None:
        target = bridge.target
        extra_env = {"XDG_CONFIG_HOME": str(home / ".config")}
        if target.cert_policy == "tofu":
            extra_env["XDG_CONFIG_HOME"] = str(self._tofu_store(user))
        elif target.cert_policy == "ca":
            extra_env.update(self._trust_only(bridge.folder, target.cert_ca))
        await self._start_clipboard(bridge, user, home)
        argv = xfreerdp_argv(target)
        proc = await spawn_on_display(
            bridge.display,
            argv,
            user=user.pw_name if user is not None else None,
            home=home,
            extra_env=extra_env,
            stdin=asyncio.subprocess.PIPE if target.password is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        bridge.proc = proc
        bridge.blog.info("xfreerdp pid %d: %s", proc.pid, " ".join(argv))
        bridge.tasks.append(asyncio.ensure_future(self._read_output(bridge, proc)))
        if target.password is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(target.password.reveal().encode() + b"\n")
                await asyncio.wait_for(proc.stdin.drain(), 5)
            except (ConnectionError, TimeoutError):
                pass  # it exited already: classified below
            finally:
                proc.stdin.close()

        deadline = time.monotonic() + self._connect_timeout
        seen_at: float | None = None
        sign_in = bridge.sign_in
        while True:
            if proc.returncode is not None:
                await self._raise_start_failure(bridge, proc.returncode)
            if sign_in.refused:
                self._refuse_sign_in(bridge, sign_in.refused)
            now = time.monotonic()
            if seen_at is not None and sign_in.confirmed:
                break  # the session itself: it comes after the window (see the module text)
            if seen_at is not None and now - seen_at >= SETTLE_SECONDS:
                if sign_in.nla:
                    break
                if now - seen_at >= self._logon_timeout:
                    self._refuse_sign_in(bridge, f"no sign-in signal within {self._logon_timeout:g} s of"
                                                 " its screen (it shows its own sign-in screen)")
            if seen_at is None:
                if await self._find_window(bridge):
                    seen_at = time.monotonic()
                    continue
                if now > deadline:
                    bridge.blog.warning("no xfreerdp window within %g s", self._connect_timeout)
                    if not await server_reachable(target):
                        raise BridgeError(REASON_UNREACHABLE, "unreachable")
                    raise BridgeError(REASON_TIMEOUT, "timeout")
            sign_in.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sign_in.changed.wait(), 0.1)
        bridge.blog.info("signed in: %s", "NLA" if sign_in.nla else sign_in.confirmed)
        bridge.tasks.append(asyncio.ensure_future(self._watch(bridge, proc)))

    async def _start_clipboard(self, bridge: _Bridge, user: pwd.struct_passwd | None, home: Path) -> None:
        """The go-between of xfreerdp's and Xvnc's clipboards (``gateway.rdp.clipboard``), before
        xfreerdp so that it sees xfreerdp's first copy. Started as the gateway's user (which can
        run this Python), it turns into the desktop user once the display is open."""
        argv = [sys.executable, "-m", "gateway.rdp.clipboard", "--selection", RDP_SELECTION,
                "--max-bytes", str(self._max_clipboard)]
        if user is not None:
            argv += ["--uid", str(user.pw_uid), "--gid", str(user.pw_gid)]
        package_root = str(Path(__file__).resolve().parents[2])
        proc = await spawn_on_display(bridge.display, argv, home=home,
                                      extra_env={"PYTHONPATH": package_root},
                                      stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        bridge.blog.info("clipboard pid %d", proc.pid)
        bridge.tasks.append(asyncio.ensure_future(self._log_clipboard(bridge, proc)))

    @staticmethod
    async def _log_clipboard(bridge: _Bridge, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            bridge.blog.info("clipboard: %s", raw.decode(errors="replace").rstrip())

    @staticmethod
    def _refuse_sign_in(bridge: _Bridge, why: str) -> None:
        """The server did not sign the account in: its own sign-in screen never reaches the person."""
        bridge.blog.warning("the server did not sign %s in: %s", bridge.target.username, why)
        raise BridgeError.of(REASON_CREDENTIALS, "credentials")

    async def _find_window(self, bridge: _Bridge) -> str:
        assert bridge.proc is not None
        wid = await visible_window(bridge.display, bridge.proc.pid)
        if wid:
            bridge.window = wid
        return wid

    async def _read_output(self, bridge: _Bridge, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return
            line = output_line(raw)
            if line:
                bridge.output.append(line)
                bridge.sign_in.note(line)
                bridge.blog.debug("xfreerdp: %s", line)

    async def _drain_output(self, bridge: _Bridge) -> None:
        """Let the output reader catch up with an exited xfreerdp (bounded)."""
        readers = [t for t in bridge.tasks if not t.done()][:1]
        if readers:
            await asyncio.wait(readers, timeout=1.0)

    async def _raise_start_failure(self, bridge: _Bridge, code: int) -> None:
        await self._drain_output(bridge)
        reason, kind, reachable = await start_failure(code, bridge.output, bridge.target,
                                                      bridge.sign_in.nla)
        last = [ln for ln in bridge.output if "ERROR" in ln][-3:]
        bridge.blog.warning(
            "xfreerdp exited %d before connecting (%s%s): %s",
            code,
            kind,
            "" if reachable is None else f", port {'open' if reachable else 'closed'}",
            " | ".join(last) or "no error output",
        )
        raise BridgeError.of(reason, kind)

    async def _watch(self, bridge: _Bridge, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if bridge.stopping:
            return
        await self._drain_output(bridge)
        reason = exit_reason(code)
        bridge.blog.warning("xfreerdp exited %d: %s", code, reason)
        watchers, bridge.watchers = bridge.watchers, []
        for callback in watchers:
            try:
                callback(reason)
            except Exception:
                bridge.blog.exception("exit callback failed")
        async with self._keyed(bridge.key):
            if not bridge.stopping:
                await self._stop(bridge)


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state (field 3): utime and stime are fields 14 and 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
