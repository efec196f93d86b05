"""Local desktops: a TigerVNC Xvnc display with openbox and an xterm on this host, on demand.

Each desktop gets a private folder ``<data_dir>/desktops/<id>`` (mode 0700) that is its HOME and
holds its VNC unix socket ``vnc.sock`` (mode 0600), its password file and its Xauthority. Xvnc
listens on nothing but that socket (no TCP for VNC or X11) and requires a fresh random VncAuth
password on every start plus an X cookie for X clients. When the gateway runs as root, every
desktop process runs as ``ctx.run_as_user`` (created on first use), never as root.

Desktops outlive the gateway process: they are started detached from it, their processes are
recorded in the folder (``local_state``), and the next run takes over the ones still running
(``recover`` at start-up, or on first use) and cleans up what is dead. They are stopped only on
an explicit stop, or at shutdown when ``ctx.stop_on_exit`` says so. One desktop has one socket
served by exactly one Xvnc: a live Xvnc on the socket is taken over or, when it cannot be (it
does not answer), stopped before another starts; an Xvnc on it that is not ours is never
signalled, and the desktop then does not start. Within one gateway an asyncio lock per desktop,
across processes (a CLI command, a second gateway) a file lock per desktop orders these steps.

One module: starting, taking over and stopping a desktop share its locks and checks; the record
format is in ``local_state``; the display itself, process identity and the desktop user are in
``gateway.xdisplay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.errors import ConfigError, DesktopUnavailable
from gateway.model import Endpoint, Secret
from gateway.probe import probe_rfb
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log
from gateway.providers.local_state import (
    DesktopRecord,
    read_record,
    remove_record,
    write_record,
)
from gateway.xdisplay import XvncStartError, procs
from gateway.xdisplay.files import random_vnc_password, read_vnc_password_file
from gateway.xdisplay.numbers import GEOMETRY_RE, UNIX_PATH_MAX, xvnc_serving
from gateway.xdisplay.sysuser import ensure_system_user, first_closed_folder
from gateway.xdisplay.xvnc import XvncDisplay, start_display

log = logging.getLogger(__name__)

SOCKET_NAME = "vnc.sock"
PASSWORD_NAME = "vnc.passwd"  # noqa: S105 - a file name (written by start_display)
XAUTHORITY_NAME = "Xauthority"
READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
FILE_LOCK_TIMEOUT = 60.0  # another process starting or stopping this desktop holds its lock
CLIENTS = ("openbox", "xterm")  # what a desktop runs beside Xvnc (see start_display)
RUNTIME_KEY = "desktops.runtime_dir"  # the setting that names the runtime folder, for messages


class LocalProvider:
    """Starts, watches and stops one Xvnc display per desktop; see the module docstring."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._locks: dict[int, asyncio.Lock] = {}
        self._displays: dict[int, XvncDisplay] = {}
        self._probes: dict[int, asyncio.Future[bool]] = {}
        self._user_lock = asyncio.Lock()
        self._closed = False

    # -- paths -----------------------------------------------------------------------------

    @property
    def desktops_dir(self) -> Path:
        return self._ctx.data_dir / "desktops"

    def desktop_dir(self, spec: DesktopSpec) -> Path:
        return self.desktops_dir / str(spec.id)

    def socket_path(self, spec: DesktopSpec) -> Path:
        return self.desktop_dir(spec) / SOCKET_NAME

    def _lock(self, desktop_id: int) -> asyncio.Lock:
        return self._locks.setdefault(desktop_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _exclusive(self, spec: DesktopSpec) -> AsyncIterator[None]:
        """This desktop to ourselves: its asyncio lock, then its file lock (other processes)."""
        async with self._lock(spec.id):
            self.desktops_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.desktops_dir / f".{spec.id}.lock",
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                deadline = time.monotonic() + FILE_LOCK_TIMEOUT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise DesktopUnavailable(f"desktop {spec.name} is busy") from None
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the lock

    # -- DesktopProvider -------------------------------------------------------------------

    async def ensure_running(self, spec: DesktopSpec) -> None:
        """Take over or start the display unless it runs and answers; replace it if it died
        or stopped answering. Idempotent."""
        self._check_open()
        async with self._exclusive(spec):
            self._check_open()
            dlog = desktop_log(log, spec.name)
            current = self._displays.get(spec.id)
            if current is not None and not current.alive():
                del self._displays[spec.id]
                await current.stop()  # its leftovers: clients, a stale lock and socket
                current = None
            if current is None:
                current = await self._take_over(spec)
                if current is not None:
                    self._displays[spec.id] = current
            if current is not None:
                # A busy server may be slow to accept: restarting it would end the user's work,
                # so a live process gets a generous probe before it is replaced.
                if await current.answers(timeout=PROBE_TIMEOUT):
                    return
                dlog.warning("display :%d no longer answers; restarting", current.display)
                del self._displays[spec.id]
                await current.stop()
            remove_record(self.desktop_dir(spec))
            self._displays[spec.id] = await self._start(spec)

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        """The unix socket and this start's password. Does not start anything: call
        ``ensure_running`` first; ``DesktopUnavailable`` if the display is not running."""
        d = self._displays.get(spec.id)
        if d is None or not d.alive() or d.unix_path is None or d.password is None:
            raise DesktopUnavailable(f"desktop {spec.name} is not running")
        return Endpoint(unix_path=str(d.unix_path), password=d.password)

    async def state(self, spec: DesktopSpec) -> str:
        """"running" when the display's socket answers. Concurrent asks (a portal and an admin
        page at once) share one probe: a burst of them must not fill the server's backlog."""
        d = self._displays.get(spec.id)
        if d is None or not d.alive():
            return "stopped"
        probe = self._probes.get(spec.id)
        if probe is None or probe.done():
            probe = self._probes[spec.id] = asyncio.ensure_future(d.answers())
        return "running" if await asyncio.shield(probe) else "stopped"

    async def stop(self, spec: DesktopSpec) -> None:
        """Stop the desktop's processes (also ones an earlier gateway run left running)."""
        async with self._exclusive(spec):
            d = self._displays.pop(spec.id, None)
            if d is not None and not d.alive():
                await d.stop()
                d = None
            if d is None:
                d = await self._take_over(spec)
            if d is not None:
                await d.stop()
                desktop_log(log, spec.name).info("stopped display :%d", d.display)
            remove_record(self.desktop_dir(spec))

    async def recover(self) -> None:
        """At start-up: take over every desktop an earlier run left running and clean up what
        is dead (``_take_over`` for each desktop folder)."""
        try:
            ids = sorted(int(n) for n in os.listdir(self.desktops_dir) if n.isdigit())
        except FileNotFoundError:
            return
        for desktop_id in ids:
            spec = DesktopSpec(id=desktop_id, name=f"#{desktop_id}", provider="local")
            try:
                async with self._exclusive(spec):
                    if desktop_id in self._displays:
                        continue
                    d = await self._take_over(spec, stop_unusable=False)
                    if d is not None:
                        self._displays[desktop_id] = d
            except (DesktopUnavailable, OSError) as exc:
                desktop_log(log, spec.name).error("not taken over: %s", exc)

    async def close(self) -> None:
        """Shutdown: later ``ensure_running`` calls fail; a start in progress finishes. The
        desktops keep running (the next run takes them over) unless ``ctx.stop_on_exit``."""
        self._closed = True
        for probe in self._probes.values():
            probe.cancel()

        async def settle(desktop_id: int) -> None:
            async with self._lock(desktop_id):
                d = self._displays.pop(desktop_id, None)
                if d is None:
                    return
                if self._ctx.stop_on_exit:
                    await d.stop()
                    remove_record(d.state_dir)
                else:
                    log.info("[desktop=#%d] left running on display :%d (Xvnc pid %d)",
                             desktop_id, d.display, d.xvnc_pid)

        # Every id that ever had a lock: a start still in progress finishes first.
        await asyncio.gather(*(settle(i) for i in list(self._locks)))

    # -- taking over what an earlier run left -------------------------------------------------

    async def _take_over(self, spec: DesktopSpec, *, stop_unusable: bool = True,
                         ) -> XvncDisplay | None:
        """The desktop's display if an Xvnc of ours serves its socket and answers: taken over
        (with the password from its password file and the clients its record names). An Xvnc
        of ours that does not answer is stopped (``stop_unusable``; at start-up it is left for
        the desktop's first use to decide); dead processes' files are removed. Raises
        ``DesktopUnavailable`` when a process that is not ours serves the socket."""
        dlog = desktop_log(log, spec.name)
        home = self.desktop_dir(spec)
        sock = home / SOCKET_NAME
        uid = (await self._desktop_user()).pw_uid if os.geteuid() == 0 else os.geteuid()
        serving = xvnc_serving(sock)
        foreign = [p for p in serving if p.uid != uid]
        if foreign:
            dlog.error("Xvnc pid %d (uid %d) serves %s and is not ours: not touched",
                       foreign[0].pid, foreign[0].uid, sock)
            raise DesktopUnavailable(f"desktop {spec.name} could not be started (its socket is"
                                     " in use by another process)")
        record = read_record(home)
        usable = record is not None and record.this_boot() and (
            record.socket, record.password_file, record.xauthority) == (
            str(sock), str(home / PASSWORD_NAME), str(home / XAUTHORITY_NAME))
        if not serving:
            if record is not None or sock.exists():
                dlog.info("cleaned up after a display that is no longer running")
                await self._stop_recorded(record if usable else None, uid)
                remove_record(home)
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
            return None
        xvnc = serving[0]
        display = _display_of(procs.cmdline(xvnc.pid))
        adopted = None
        if len(serving) == 1 and display is not None and await probe_rfb(unix_path=sock,
                                                                         timeout=PROBE_TIMEOUT):
            try:
                password = read_vnc_password_file(home / PASSWORD_NAME, owner=uid)
            except (OSError, ValueError) as exc:
                dlog.warning("cannot read the password of display :%d: %s", display, exc)
            else:
                clients = []
                if usable and record is not None and record.processes[0] == xvnc:
                    clients = [p for p in record.processes[1:]
                               if p.name in CLIENTS and p.uid == uid and _is(p)]
                adopted = XvncDisplay.adopted(
                    display=display, unix_path=sock, idents=[xvnc, *clients], state_dir=home,
                    password=password, xauthority=home / XAUTHORITY_NAME,
                    password_file=home / PASSWORD_NAME)
        if adopted is None and not stop_unusable:
            dlog.warning("Xvnc pid(s) %s on %s cannot be taken over now; left for the desktop's"
                         " next use", [p.pid for p in serving], sock)
            return None
        if adopted is None:
            dlog.warning("stopping Xvnc pid(s) %s on %s: it cannot be taken over",
                         [p.pid for p in serving], sock)
            await self._stop_recorded(record if usable else None, uid, extra=serving)
            remove_record(home)
            return None
        write_record(home, DesktopRecord.now(adopted.display, sock, home / PASSWORD_NAME,
                                             home / XAUTHORITY_NAME, adopted.idents))
        dlog.info("took over display :%d (pids %s) left running by an earlier run",
                  adopted.display, adopted.pids)
        return adopted

    async def _stop_recorded(self, record: DesktopRecord | None, uid: int,
                             extra: list[procs.ProcessId] | None = None) -> None:
        """Stop what a record names (clients first) and ``extra``: only live processes that are
        exactly the recorded ones (start time), run as the desktop user."""
        targets = [p for p in (record.processes if record else ()) if p.uid == uid and _is(p)]
        targets += [p for p in extra or [] if p not in targets]
        if targets:
            left = await procs.terminate(list(reversed(targets)), 5.0)
            if left:
                log.error("processes %s did not stop", [p.pid for p in left])

    def _check_open(self) -> None:
        if self._closed:
            raise DesktopUnavailable("the gateway is shutting down")

    async def _start(self, spec: DesktopSpec) -> XvncDisplay:
        dlog = desktop_log(log, spec.name)
        if not GEOMETRY_RE.match(spec.geometry):
            raise ConfigError(f"desktop {spec.name}: bad geometry {spec.geometry!r}")
        sock = self.socket_path(spec)
        if len(os.fsencode(sock)) > UNIX_PATH_MAX:
            raise ConfigError(f"desktop {spec.name}: the runtime folder path ({RUNTIME_KEY})"
                              " is too long for a unix socket")
        user = await self._desktop_user() if os.geteuid() == 0 else None
        home = self._prepare_dir(spec, user)
        password = random_vnc_password()
        try:
            d = await start_display(
                unix_path=sock,
                password=password,
                geometry=spec.geometry,
                name=spec.name,
                user=user.pw_name if user is not None else None,
                home=home,
                state_dir=home,
                xauth=True,
                display_base=self._ctx.display_base,
                ready_timeout=READY_TIMEOUT,
                detached=True,
            )
        except XvncStartError as e:
            dlog.error("could not start: %s", e.reason)
            raise DesktopUnavailable(f"desktop {spec.name} could not be started") from None
        dlog.info(
            "started display :%d as %s (pids %s)",
            d.display,
            user.pw_name if user is not None else "the gateway user",
            d.pids,
        )
        assert d.password == Secret(password)
        assert d.password_file is not None and d.xauthority is not None
        try:
            write_record(home, DesktopRecord.now(d.display, sock, d.password_file, d.xauthority,
                                                 d.idents))
        except OSError as e:
            dlog.error("could not record the display's processes: %s", e)
            await d.stop()
            raise DesktopUnavailable(f"desktop {spec.name} could not be started") from None
        return d

    def _prepare_dir(self, spec: DesktopSpec, user: pwd.struct_passwd | None) -> Path:
        """Create ``desktops/<id>`` (0700, owned by the desktop user) and make sure that user
        can reach it; ``DesktopUnavailable`` if a parent folder is closed to that user."""
        desktops = self._ctx.data_dir / "desktops"
        desktops.mkdir(parents=True, exist_ok=True)
        home = desktops / str(spec.id)
        home.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            # Others may pass through "desktops" (not list it) to reach their own folder.
            os.chmod(desktops, 0o711)  # noqa: S103 - traverse only: no listing, no writing
            os.chown(home, user.pw_uid, user.pw_gid)
            closed = first_closed_folder(desktops, user)
            if closed is not None:
                desktop_log(log, spec.name).error(
                    "%s cannot enter %s, a parent of the runtime folder %s (%s): grant it o+x"
                    " or choose another runtime folder", user.pw_name, closed, desktops.parent,
                    RUNTIME_KEY)
                raise DesktopUnavailable(
                    f"desktop {spec.name} could not be started (runtime folder permissions:"
                    f" see {RUNTIME_KEY})"
                )
        os.chmod(home, 0o700)
        return home

    async def _desktop_user(self) -> pwd.struct_passwd:
        async with self._user_lock:
            return await ensure_system_user(self._ctx.run_as_user)


def _display_of(argv: list[str]) -> int | None:
    """The display number an Xvnc command line names (its first argument, ``:N``)."""
    match = re.fullmatch(r":(\d{1,5})", argv[1]) if len(argv) > 1 else None
    return int(match.group(1)) if match else None


def _is(p: procs.ProcessId) -> bool:
    """``p`` still runs, as the same program (name and uid as recorded)."""
    now = procs.identify(p.pid)
    return now is not None and now.start == p.start and now.uid == p.uid and now.name == p.name
