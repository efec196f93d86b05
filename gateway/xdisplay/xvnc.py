"""Start and stop a TigerVNC ``Xvnc`` display with openbox and an xterm.

Used by the local provider, the RDP bridges and test fixtures. Every process is started in its
own process group and stopped by its PID (checked against its start time, so a reused PID is never
signalled). A ``detached`` display (local desktops) is not a child of the gateway at all: it
outlives the gateway process and can be taken over by the next one (``XvncDisplay.adopted``).

One socket, one server: a display is never started on a unix socket path that a live Xvnc
serves, and a stopped display removes its socket and files only when no live Xvnc serves that
path (an old server must not delete a newer one's socket).

One module (over 400 lines): starting, watching and stopping a display share its process
bookkeeping (``XvncDisplay``'s process lists, filled as each client starts); display numbers are
in ``numbers``, its files in ``files``, the user it runs as in ``sysuser``, process identity in
``procs``.

Readiness is observed, never slept for: the RFB banner on the VNC socket, then the window
manager's ``_NET_SUPPORTING_WM_CHECK`` on the root window (an xterm started before openbox is up
may never appear), then the xterm window mapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gateway.model import Secret
from gateway.probe import probe_rfb
from gateway.xdisplay import XvncStartError, procs
from gateway.xdisplay.files import create_private_file, write_vnc_password_file, write_xauthority
from gateway.xdisplay.numbers import (
    _STARTING,
    GEOMETRY_RE,
    UNIX_PATH_MAX,
    display_taken,
    ensure_x11_unix_dir,
    free_display,
    pid_alive,
    xvnc_serving,
)
from gateway.xdisplay.procs import ProcessId
from gateway.xdisplay.sysuser import RunAs, client_env

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
_FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))


def xterm_font_args() -> list[str]:
    """A big, readable TrueType font when one is installed, else a large core font."""
    for d in _FONT_DIRS:
        if d.is_dir() and any(d.rglob("*Mono*.[ot]tf")):
            return ["-fa", "Monospace", "-fs", "14"]
    return ["-fn", "10x20"]


async def _run_quiet(argv: Sequence[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a short X client; (exit status, stdout). Killed if it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1, ""
    return proc.returncode or 0, out.decode(errors="replace")


@dataclass
class XvncDisplay:
    """A running Xvnc display and the clients started on it.

    ``pids`` lists Xvnc first, then openbox and xterm when they were started. Use as
    ``async with await start_display(...) as d:`` or call ``await d.stop()``.
    """

    display: int
    rfbport: int | None
    unix_path: Path | None
    pids: list[int]
    state_dir: Path
    password: Secret | None = field(default=None, repr=False)
    xauthority: Path | None = None
    password_file: Path | None = None
    detached: bool = False  # not our children: they outlive the gateway (see start_display)
    idents: list[ProcessId] = field(default_factory=list)  # parallel to pids
    _procs: list[asyncio.subprocess.Process] = field(default_factory=list, repr=False)
    _owns_state_dir: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def xvnc_pid(self) -> int:
        return self.pids[0]

    @classmethod
    def adopted(cls, *, display: int, unix_path: Path, idents: Sequence[ProcessId], state_dir: Path,
                password: Secret | None, xauthority: Path | None,
                password_file: Path | None) -> XvncDisplay:
        """A detached display started by an earlier gateway run (``idents``: Xvnc first), as
        if this run had started it. The caller has checked that the processes are its own."""
        return cls(display=display, rfbport=None, unix_path=unix_path,
                   pids=[i.pid for i in idents], state_dir=state_dir, password=password,
                   xauthority=xauthority, password_file=password_file, detached=True,
                   idents=list(idents))

    def env(self) -> dict[str, str]:
        """Environment for an X client on this display (DISPLAY, XAUTHORITY when used)."""
        env = dict(os.environ)
        env["DISPLAY"] = f":{self.display}"
        if self.xauthority is not None:
            env["XAUTHORITY"] = str(self.xauthority)
        else:
            env.pop("XAUTHORITY", None)
        return env

    def alive(self) -> bool:
        """True while the Xvnc process runs (cheap: no connection is made)."""
        if self._stopped:
            return False
        return self.idents[0].alive() if self.idents else pid_alive(self.xvnc_pid)

    async def answers(self, timeout: float = 2.0) -> bool:
        """True when the VNC socket answers with an RFB banner."""
        if not self.alive():
            return False
        if self.unix_path is not None:
            return await probe_rfb(unix_path=self.unix_path, timeout=timeout)
        assert self.rfbport is not None
        return await probe_rfb(port=self.rfbport, timeout=timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every process group (clients first), SIGKILL after ``timeout``, clean up."""
        if self._stopped:
            return
        self._stopped = True
        if self.detached:
            left = await procs.terminate(list(reversed(self.idents)), timeout)
            if left:
                log.error("display :%d: processes %s did not stop", self.display,
                          [p.pid for p in left])
        else:
            await _terminate(list(reversed(self._procs)), timeout)
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        # The socket path and the files beside it may already belong to a newer server (an
        # earlier one that outlived its gateway is stopped later): leave them to it.
        newer = self.unix_path is not None and any(
            p.pid != self.xvnc_pid for p in xvnc_serving(self.unix_path))
        paths = [] if newer else [self.password_file, self.xauthority, self.unix_path]
        for p in paths:
            if p is not None:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        # Xvnc removes its lock and X socket on SIGTERM; after SIGKILL they stay behind, and
        # are removed as any stale lock is (the number is free again).
        display_taken(self.display)
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def __aenter__(self) -> XvncDisplay:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _terminate(procs: Sequence[asyncio.subprocess.Process], timeout: float) -> None:
    """Stop each process group led by one of ``procs``: SIGTERM, wait, then SIGKILL."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=timeout)
    if pending:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait(pending, timeout=timeout)
    for w in pending:
        w.cancel()


def _fatal_error(path: Path) -> str:
    """The lines after "Fatal server error:" in an X server log (or its last lines)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and ln != "(EE)"]
    for i, line in enumerate(lines):
        if "Fatal server error" in line:
            return " ".join(lines[i + 1 : i + 3]).removeprefix("(EE) ")
    return " ".join(lines[-2:])


async def _exec_as(d: XvncDisplay, run_as: RunAs, argv: Sequence[str], env: dict[str, str],
                   home: Path, stdin: int | None, stdout: int | None,
                   stderr: int | None) -> asyncio.subprocess.Process | None:
    """Start a program of display ``d`` as ``run_as`` (primary group only, umask 077), in its
    own process group (stopped by killpg), and make it one of ``d``'s processes. For a detached
    display it is not our child (``procs.spawn_detached``) and None is returned."""
    if d.detached:
        out = stderr if isinstance(stderr, int) and stderr >= 0 else None
        try:
            ident = await procs.spawn_detached(argv, env=env, cwd=home, output=out,
                                               uid=run_as.uid if run_as.switch else None,
                                               gid=run_as.gid if run_as.switch else None)
        except OSError as e:
            raise XvncStartError(f"{argv[0]} could not be started: {e}") from None
        d.idents.append(ident)
        d.pids.append(ident.pid)
        return None
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=str(home),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        user=run_as.uid if run_as.switch else None,
        group=run_as.gid if run_as.switch else None,
        extra_groups=[] if run_as.switch else None,
        umask=0o077,
    )
    d._procs.append(proc)
    d.pids.append(proc.pid)
    d.idents.append(procs.identify(proc.pid) or ProcessId(proc.pid, -1, argv[0], -1))
    return proc


async def start_display(
    *,
    display: int | None = None,
    rfbport: int | None = None,
    unix_path: Path | None = None,
    password: str | None = None,
    geometry: str = "1024x768",
    name: str = "desktop",
    user: str | None = None,
    home: Path | None = None,
    window_manager: bool = True,
    xterm: bool = True,
    xterm_args: Sequence[str] = (),
    ready_timeout: float = 15.0,
    display_base: int = 20,
    state_dir: Path | None = None,
    xauth: bool = False,
    detached: bool = False,
) -> XvncDisplay:
    """Start Xvnc (+ openbox, + xterm) and return once each is ready.

    - ``rfbport``: VNC over TCP on 127.0.0.1 only; ``unix_path``: VNC on a unix socket (mode
      0600, owned by the desktop user). At least one of them is required.
    - ``password`` None: security type None; else VncAuth with a ``vncpasswd -f`` file.
    - ``display`` None: the first free display >= ``display_base`` (retried on a race).
    - ``user``: when we are root, every process runs as this user (and its primary group, no
      supplementary groups); ``home`` becomes their HOME (default: the user's home).
    - ``state_dir``: where the password file, Xauthority and xvnc.log go; a private
      temporary folder (removed by ``stop``) when None.
    - ``xauth``: require an MIT-MAGIC-COOKIE (``-auth``); X clients then need ``d.env()``.
      Without it any local user can open the X display, which only suits tests.
    - ``detached``: the processes are not children of the gateway (own sessions, no pipes):
      they keep running when the gateway exits or dies, until ``stop``.
    - ``unix_path`` served by a live Xvnc already: ``XvncStartError`` (never a second server
      on one socket; the caller stops or takes over the first).

    Raises ``XvncStartError`` (a ``DesktopUnavailable``) naming the step that failed; every
    process already started is stopped first.
    """
    if rfbport is None and unix_path is None:
        raise ValueError("start_display needs rfbport or unix_path")
    if not GEOMETRY_RE.match(geometry):
        raise ValueError(f"bad geometry {geometry!r}, expected WIDTHxHEIGHT")
    if unix_path is not None and len(os.fsencode(unix_path)) > UNIX_PATH_MAX:
        raise ValueError(f"unix socket path too long ({unix_path})")
    run_as = RunAs.resolve(user)
    owns_state_dir = state_dir is None
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="deskgate-xvnc-"))
        run_as.chown(state_dir)
    ensure_x11_unix_dir()

    attempts = 1 if display is not None else 20
    number = display if display is not None else free_display(display_base)
    deadline = time.monotonic() + ready_timeout
    try:
        for attempt in range(attempts):
            _STARTING.add(number)
            try:
                return await _start_once(
                    number=number,
                    rfbport=rfbport,
                    unix_path=unix_path,
                    password=password,
                    geometry=geometry,
                    name=name,
                    run_as=run_as,
                    home=home or run_as.home,
                    window_manager=window_manager,
                    xterm=xterm,
                    xterm_args=xterm_args,
                    deadline=deadline,
                    state_dir=state_dir,
                    owns_state_dir=owns_state_dir,
                    xauth=xauth,
                    detached=detached,
                )
            except _DisplayTaken:
                if attempt + 1 == attempts:
                    raise XvncStartError(f"display :{number} is in use") from None
                taken, number = number, free_display(number + 1)
                _STARTING.discard(taken)
            finally:
                _STARTING.discard(number)
        raise AssertionError("unreachable")
    except BaseException:
        if owns_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
        raise


class _DisplayTaken(Exception):
    pass


@dataclass(frozen=True)
class _Started:
    """A process of a display being started: our child (``proc``) or detached (None)."""

    ident: ProcessId
    proc: asyncio.subprocess.Process | None

    def exited(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            return True
        return not self.ident.alive()

    async def status(self) -> str:
        """Its exit status when it was our child; a detached process's is not ours to see."""
        if self.proc is None:
            return "exited"
        return str(await self.proc.wait())


async def _start_once(
    *,
    number: int,
    rfbport: int | None,
    unix_path: Path | None,
    password: str | None,
    geometry: str,
    name: str,
    run_as: RunAs,
    home: Path,
    window_manager: bool,
    xterm: bool,
    xterm_args: Sequence[str],
    deadline: float,
    state_dir: Path,
    owns_state_dir: bool,
    xauth: bool,
    detached: bool,
) -> XvncDisplay:
    d = XvncDisplay(
        display=number,
        rfbport=rfbport,
        unix_path=unix_path,
        pids=[],
        state_dir=state_dir,
        password=Secret(password) if password is not None else None,
        detached=detached,
        _owns_state_dir=False,  # start_display removes it on failure; set below on success
    )
    argv = [
        "Xvnc",
        f":{number}",
        "-geometry",
        geometry,
        "-depth",
        "24",
        "-nolisten",
        "tcp",
        "-AlwaysShared",
        "-desktop",
        name,
    ]
    if rfbport is not None:
        argv += ["-localhost", "-interface", "127.0.0.1", "-rfbport", str(rfbport)]
    else:
        argv += ["-rfbport", "-1"]
    if unix_path is not None:
        serving = xvnc_serving(unix_path)
        if serving:
            raise XvncStartError(f"Xvnc (pid {serving[0].pid}) already serves {unix_path}")
        with contextlib.suppress(FileNotFoundError):
            unix_path.unlink()  # a stale socket from a killed server
        # Only the socket's owner (the gateway) can connect, so TigerVNC's blacklist, which
        # counts every connection that does not finish a login (state probes included), could
        # only ever lock the gateway itself out.
        argv += ["-rfbunixpath", str(unix_path), "-rfbunixmode", "0600", "-UseBlacklist=0"]
    if password is None:
        argv += ["-SecurityTypes", "None"]
    else:
        d.password_file = state_dir / "vnc.passwd"
        await write_vnc_password_file(d.password_file, password, run_as.owner)
        argv += ["-SecurityTypes", "VncAuth", "-PasswordFile", str(d.password_file)]
    if xauth:
        d.xauthority = state_dir / "Xauthority"
        write_xauthority(d.xauthority, number, run_as.owner)
        argv += ["-auth", str(d.xauthority)]

    child_env = client_env(run_as, home, number, d.xauthority)
    tool_env = d.env()

    async def spawn(args: Sequence[str], stderr: int) -> _Started:
        proc = await _exec_as(d, run_as, args, child_env, home, asyncio.subprocess.DEVNULL,
                              stderr, stderr)
        return _Started(d.idents[-1], proc)

    log_path = state_dir / "xvnc.log"
    try:
        log_fd = create_private_file(log_path)
        try:
            xvnc = await spawn(argv, log_fd)
        finally:
            os.close(log_fd)
        log.debug("Xvnc :%d pid %d started", number, xvnc.ident.pid)

        # 1. The VNC socket answers with an RFB banner.
        while True:
            if xvnc.exited():
                status = await xvnc.status()
                detail = _fatal_error(log_path)
                if "already active" in detail or "already running" in detail:
                    raise _DisplayTaken()
                raise XvncStartError(f"Xvnc :{number} exited ({status}): {detail}")
            if await d.answers(timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise XvncStartError(f"Xvnc :{number} did not answer in time")
            await asyncio.sleep(0.05)

        # 2. The window manager owns the root window before any client starts.
        if window_manager:
            wm = await spawn(["openbox"], asyncio.subprocess.DEVNULL)
            while True:
                if wm.exited():
                    raise XvncStartError(f"openbox on :{number} exited")
                rc, out = await _run_quiet(["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], tool_env, 2.0)
                if rc == 0 and "window id #" in out:
                    break
                if time.monotonic() > deadline:
                    raise XvncStartError(f"openbox on :{number} did not come up in time")
                await asyncio.sleep(0.05)

        # 3. The xterm window is mapped.
        if xterm:
            args = [
                "xterm",
                *xterm_font_args(),
                "-geometry",
                "80x24+10+10",
                "-bg",
                "white",
                "-fg",
                "black",
                *xterm_args,
            ]
            term = await spawn(args, asyncio.subprocess.DEVNULL)
            while True:
                if term.exited():
                    raise XvncStartError(f"xterm on :{number} exited")
                if await visible_window(d, term.ident.pid):
                    break
                if time.monotonic() > deadline:
                    raise XvncStartError(f"the xterm on :{number} did not appear in time")
                await asyncio.sleep(0.05)
    except BaseException:
        await d.stop()
        raise
    d._owns_state_dir = owns_state_dir
    return d


async def spawn_on_display(
    d: XvncDisplay,
    argv: Sequence[str],
    *,
    user: str | None = None,
    home: Path,
    extra_env: dict[str, str] | None = None,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    stdout: int | None = asyncio.subprocess.DEVNULL,
    stderr: int | None = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """Start an X client on ``d`` the way ``start_display`` starts its own clients.

    It runs as ``user`` when we are root (primary group only), in its own process group, with
    a minimal environment (HOME=``home``, DISPLAY, XAUTHORITY when the display uses one, plus
    ``extra_env``) and umask 077. It joins ``d``'s processes: ``d.stop()`` stops it (before
    Xvnc) and reaps it, and its PID is appended to ``d.pids``.
    """
    if d.detached:
        raise ValueError("spawn_on_display is for displays the gateway owns (not detached)")
    run_as = RunAs.resolve(user)
    env = client_env(run_as, home, d.display, d.xauthority)
    env.update(extra_env or {})
    proc = await _exec_as(d, run_as, argv, env, home, stdin, stdout, stderr)
    assert proc is not None  # only detached displays start processes that are not children
    return proc


async def x_client_output(d: XvncDisplay, argv: Sequence[str], timeout: float = 3.0) -> tuple[int, str]:
    """Run a short X tool (xdotool, xprop, ...) against ``d`` as the gateway user: (status,
    stdout); status -1 when it outlived ``timeout`` (it is killed and reaped)."""
    return await _run_quiet(argv, d.env(), timeout)


async def visible_window(d: XvncDisplay, pid: int) -> str:
    """The id of a mapped window of process ``pid`` on ``d``, or "" (none yet)."""
    rc, out = await x_client_output(d, ["xdotool", "search", "--onlyvisible", "--pid", str(pid)], 2.0)
    words = out.split() if rc == 0 else []
    return words[0] if words else ""
