"""What a local desktop runs, recorded in its own folder so that the next gateway run can take it
over (or clean it up) after a restart or a crash.

``desktops/<id>/desktop.json`` (mode 0600, written atomically: a new file renamed over the old)
names the display, the socket, the password file and Xauthority, and each process with its start
time and the boot it belongs to. The folder belongs to the desktop user, who could edit or
replace the file: nothing in it is trusted. Paths must be the ones the provider itself uses, and
every process is checked against the live system before it is taken over or signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.xdisplay.files import create_private_file, read_private_file
from gateway.xdisplay.procs import ProcessId, boot_id

RECORD_NAME = "desktop.json"
MAX_RECORD_BYTES = 16 * 1024
VERSION = 1


@dataclass(frozen=True)
class DesktopRecord:
    display: int
    socket: str
    password_file: str
    xauthority: str
    processes: tuple[ProcessId, ...]  # Xvnc first, then openbox and xterm
    boot_id: str
    started_at: float

    def as_json(self) -> str:
        return json.dumps({
            "version": VERSION, "display": self.display, "socket": self.socket,
            "password_file": self.password_file, "xauthority": self.xauthority,
            "processes": [p.as_json() for p in self.processes], "boot_id": self.boot_id,
            "started_at": self.started_at,
        }, indent=1)

    @classmethod
    def parse(cls, text: str) -> DesktopRecord:
        """``ValueError`` for anything but a well-formed record of this version."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise ValueError("not a desktop record of this version")
        display, procs = raw.get("display"), raw.get("processes")
        strings = [raw.get(k) for k in ("socket", "password_file", "xauthority", "boot_id")]
        started = raw.get("started_at")
        if not (isinstance(display, int) and 0 <= display < 65536 and isinstance(procs, list)
                and 1 <= len(procs) <= 8 and all(isinstance(s, str) for s in strings)
                and isinstance(started, int | float)):
            raise ValueError("malformed desktop record")
        socket, password_file, xauthority, boot = (str(s) for s in strings)
        return cls(display, socket, password_file, xauthority,
                   tuple(ProcessId.from_json(p) for p in procs), boot, float(started))

    @classmethod
    def now(cls, display: int, socket: Path, password_file: Path, xauthority: Path,
            processes: list[ProcessId]) -> DesktopRecord:
        return cls(display, str(socket), str(password_file), str(xauthority), tuple(processes),
                   boot_id(), time.time())

    def this_boot(self) -> bool:
        return bool(self.boot_id) and self.boot_id == boot_id()


def write_record(folder: Path, record: DesktopRecord) -> None:
    """Replace ``folder/desktop.json`` atomically (mode 0600, owned by the gateway)."""
    tmp = folder / f".{RECORD_NAME}.tmp"
    fd = create_private_file(tmp)  # unlinks whatever is there; O_EXCL | O_NOFOLLOW
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(record.as_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RECORD_NAME)  # replaces a planted symlink itself, never its target
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_record(folder: Path) -> DesktopRecord | None:
    """The record in ``folder``; None when there is none or it cannot be used (not a plain file
    that we wrote, too big, malformed, another version)."""
    try:
        data = read_private_file(folder / RECORD_NAME, MAX_RECORD_BYTES, owner=os.geteuid())
    except (OSError, ValueError):
        return None  # missing, or planted (a symlink, a FIFO, a hard link, not written by us)
    if len(data) > MAX_RECORD_BYTES:
        return None
    try:
        return DesktopRecord.parse(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def remove_record(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (folder / RECORD_NAME).unlink()
