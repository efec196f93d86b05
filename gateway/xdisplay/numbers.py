"""The machine's X display namespace: display numbers, their lock files and sockets, and which
Xvnc serves a unix socket.

The X displays of a machine are one namespace shared by every X server (local desktops, RDP
bridges, anything else): a number is free when it has neither a lock file nor an X socket, or
when both are stale (left by a server that was killed: its PID is gone and nothing answers on
the socket), as X servers themselves judge a lock file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

from gateway.xdisplay import procs
from gateway.xdisplay.procs import ProcessId

GEOMETRY_RE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")
X11_UNIX_DIR = Path("/tmp/.X11-unix")  # noqa: S108 - fixed by the X11 protocol
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def lock_file(display: int) -> Path:
    return Path(f"/tmp/.X{display}-lock")  # noqa: S108 - fixed by the X11 protocol


# Display numbers that an Xvnc of this process is being started on (no lock file yet): the
# machine's X displays are one namespace, so this is deliberately one set for the process.
_STARTING: set[int] = set()


def free_display(start: int) -> int:
    """The first display number >= ``start`` with neither a lock file nor an X socket, and not
    being started by this process right now.

    Another process may take it before Xvnc starts; ``start_display`` retries on that race.
    """
    n = start
    while n in _STARTING or display_taken(n):
        n += 1
    return n


def display_taken(display: int) -> bool:
    """True when display ``display`` has a live lock file or an X socket that answers.

    A stale lock file and socket (their server was killed) are removed here when this process
    may remove them, so that the number is reused instead of leaking; when they cannot be
    removed (another user's, in sticky /tmp) the number stays taken.
    """
    lock, sock = lock_file(display), X11_UNIX_DIR / f"X{display}"
    if not lock.exists() and not sock.exists():
        return False
    try:
        owner = int(lock.read_text().strip())
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError):
        return True  # unreadable or being written: someone has it
    if owner is not None and pid_alive(owner):
        return True
    if sock.exists() and _answers(sock):
        return True
    try:
        for stale in (lock, sock):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    except OSError:
        return True
    return False


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X", "")


def xvnc_serving(unix_path: Path) -> list[ProcessId]:
    """Live Xvnc processes started to serve ``unix_path`` (from their command lines)."""
    return procs.pids_with_args("Xvnc", "-rfbunixpath", str(unix_path))


def ensure_x11_unix_dir() -> None:
    """Unprivileged X servers need /tmp/.X11-unix to exist with mode 1777."""
    if not X11_UNIX_DIR.exists() and os.geteuid() == 0:
        with contextlib.suppress(FileExistsError):
            X11_UNIX_DIR.mkdir()
            os.chmod(X11_UNIX_DIR, 0o1777)  # noqa: S103 - sticky /tmp-like dir, as X11 wants
