"""Who a display's processes run as: the unprivileged system user (created on first use), the
switch to it when the gateway is root, and the environment its programs get.

Local desktops and RDP bridges run every process as this user, never as root; a folder on the
way to their files must let it pass (``first_closed_folder`` names the one that does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError, DesktopUnavailable
from gateway.xdisplay import XvncStartError

log = logging.getLogger(__name__)

NOLOGIN = "/usr/sbin/nologin"


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    home: Path
    switch: bool  # True when we are root and must drop to uid/gid

    @classmethod
    def resolve(cls, user: str | None) -> RunAs:
        me = os.geteuid()
        try:
            entry = pwd.getpwuid(me) if user is None else pwd.getpwnam(user)
        except KeyError:
            raise XvncStartError(f"no such user {user}") from None
        if entry.pw_uid != me and me != 0:
            raise XvncStartError(f"cannot run the desktop as {entry.pw_name}: not root")
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            home=Path(entry.pw_dir),
            switch=entry.pw_uid != me,
        )

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) for files the desktop processes must read, None when no switch."""
        return (self.uid, self.gid) if self.switch else None

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def client_env(run_as: RunAs, home: Path, display: int,
               xauthority: Path | None) -> dict[str, str]:
    """The minimal environment of a desktop's programs: nothing of the gateway's own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "USER": run_as.name,
        "LOGNAME": run_as.name,
        "SHELL": "/bin/bash",  # a system user's login shell is nologin: xterm needs a real one
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "DISPLAY": f":{display}",
    }
    if xauthority is not None:
        env["XAUTHORITY"] = str(xauthority)
    return env


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
