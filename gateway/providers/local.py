"""Local desktops: a TigerVNC Xvnc display with openbox and an xterm on this host, on demand.

Each desktop gets a private folder ``<data_dir>/desktops/<id>`` (mode 0700) that is its HOME and
holds its VNC unix socket ``vnc.sock`` (mode 0600), its password file and its Xauthority. Xvnc
listens on nothing but that socket (no TCP for VNC or X11) and requires a fresh random VncAuth
password on every start plus an X cookie for X clients. When the gateway runs as root, every
desktop process runs as ``ctx.run_as_user`` (created on first use), never as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import stat
from pathlib import Path

from gateway.errors import ConfigError, DesktopUnavailable
from gateway.model import Endpoint, Secret
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log
from gateway.providers.xvnc import (
    GEOMETRY_RE,
    UNIX_PATH_MAX,
    XvncDisplay,
    XvncStartError,
    random_vnc_password,
    start_display,
)

log = logging.getLogger(__name__)

SOCKET_NAME = "vnc.sock"
READY_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
NOLOGIN = "/usr/sbin/nologin"
RUNTIME_KEY = "desktops.runtime_dir"  # the setting that names the runtime folder, for messages


class LocalProvider:
    """Starts, watches and stops one Xvnc display per desktop; see the module docstring."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._locks: dict[int, asyncio.Lock] = {}
        self._displays: dict[int, XvncDisplay] = {}
        self._user_lock = asyncio.Lock()
        self._closed = False

    # -- paths -----------------------------------------------------------------------------

    def desktop_dir(self, spec: DesktopSpec) -> Path:
        return self._ctx.data_dir / "desktops" / str(spec.id)

    def socket_path(self, spec: DesktopSpec) -> Path:
        return self.desktop_dir(spec) / SOCKET_NAME

    def _lock(self, desktop_id: int) -> asyncio.Lock:
        return self._locks.setdefault(desktop_id, asyncio.Lock())

    # -- DesktopProvider -------------------------------------------------------------------

    async def ensure_running(self, spec: DesktopSpec) -> None:
        """Start the display unless it runs and answers; restart it if it died. Idempotent."""
        self._check_open()
        async with self._lock(spec.id):
            self._check_open()
            dlog = desktop_log(log, spec.name)
            current = self._displays.get(spec.id)
            if current is not None:
                # A busy server may be slow to accept: restarting it would end the user's work,
                # so a live process gets a generous probe before it is replaced.
                if await current.answers(timeout=PROBE_TIMEOUT):
                    return
                dlog.warning("display :%d no longer answers; restarting", current.display)
                del self._displays[spec.id]
                await current.stop()
            self._displays[spec.id] = await self._start(spec)

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        """The unix socket and this start's password. Does not start anything: call
        ``ensure_running`` first; ``DesktopUnavailable`` if the display is not running."""
        d = self._displays.get(spec.id)
        if d is None or not d.alive() or d.unix_path is None or d.password is None:
            raise DesktopUnavailable(f"desktop {spec.name} is not running")
        return Endpoint(unix_path=str(d.unix_path), password=d.password)

    async def state(self, spec: DesktopSpec) -> str:
        d = self._displays.get(spec.id)
        return "running" if d is not None and await d.answers() else "stopped"

    async def stop(self, spec: DesktopSpec) -> None:
        async with self._lock(spec.id):
            d = self._displays.pop(spec.id, None)
            if d is not None:
                await d.stop()
                desktop_log(log, spec.name).info("stopped display :%d", d.display)

    async def close(self) -> None:
        """Stop every display this provider started; later ``ensure_running`` calls fail."""
        self._closed = True

        async def stop_one(desktop_id: int) -> None:
            async with self._lock(desktop_id):
                d = self._displays.pop(desktop_id, None)
                if d is not None:
                    await d.stop()

        # Every id that ever had a lock: a start still in progress finishes, then is stopped.
        await asyncio.gather(*(stop_one(i) for i in list(self._locks)))

    # -- internals -------------------------------------------------------------------------

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


async def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The unprivileged user ``name``, created as a system user with no login shell when
    missing (desktops and RDP bridges run as it)."""
    with contextlib.suppress(KeyError):
        return _checked_user(pwd.getpwnam(name))
    proc = await asyncio.create_subprocess_exec(
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        NOLOGIN,
        name,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        log.error("useradd %s failed: %s", name, err.decode(errors="replace").strip())
        raise DesktopUnavailable("desktop user could not be created") from None
    log.info("created system user %s for local desktops", name)
    return _checked_user(entry)


def first_closed_folder(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first of ``path`` and its parents that ``user`` cannot pass through, if any."""
    return next((p for p in [path, *path.parents] if not _can_traverse(p, user)), None)


def _checked_user(entry: pwd.struct_passwd) -> pwd.struct_passwd:
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError(f"run_as_user {entry.pw_name} is privileged; choose another user")
    return entry


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.pw_gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
