"""Processes known by identity, not by name: start detached, recognise, stop.

A PID alone names a process only until it exits: the number is then reused. A ``ProcessId``
adds the kernel's start time of the process (and the boot it belongs to), so a PID recorded by an
earlier gateway run can be checked before anything is signalled. Detached processes are not our
children: they run in their own session, hold no pipe to the gateway, and neither the gateway's
exit nor its death (kill -9) touches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_POLL = 0.05

# The shell forks the program (which is then not our child once the shell exits), the program
# makes itself a session leader (its own process group: stopped by killpg), its output goes to the
# shell's stderr (a log file or /dev/null), and the shell prints its PID on the pipe we read.
# A non-interactive shell keeps background jobs in its own process group, so `setsid` does not
# fork again and the printed PID is the program's.
_DETACH = 's=$1; shift; "$s" "$@" </dev/null >&2 & echo $!'


@dataclass(frozen=True)
class ProcessId:
    """One process: PID, kernel start time (clock ticks since boot), program name, real uid."""

    pid: int
    start: int
    name: str
    uid: int

    def alive(self) -> bool:
        """True while this very process runs (not a zombie, and its PID was not reused)."""
        now = identify(self.pid)
        return now is not None and now.start == self.start

    def as_json(self) -> dict[str, int | str]:
        return {"pid": self.pid, "start": self.start, "name": self.name, "uid": self.uid}

    @classmethod
    def from_json(cls, raw: object) -> ProcessId:
        if not isinstance(raw, dict):
            raise ValueError("a process record is an object")
        pid, start, name, uid = raw.get("pid"), raw.get("start"), raw.get("name"), raw.get("uid")
        if not (isinstance(pid, int) and isinstance(start, int) and isinstance(name, str)
                and isinstance(uid, int)) or pid <= 1 or start < 0:
            raise ValueError("a process record needs pid, start, name and uid")
        return cls(pid, start, name, uid)


def boot_id() -> str:
    """This boot's id: recorded start times mean nothing after a reboot."""
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def identify(pid: int) -> ProcessId | None:
    """The live (not zombie) process ``pid`` now, or None."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    # The state and the rest follow the parenthesised command name, which may hold spaces.
    rest = stat[stat.rfind(")") + 2 :].split()
    if len(rest) < 20 or rest[0] in ("Z", "X"):
        return None
    uid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("Uid:")), -1)
    argv = cmdline(pid)
    name = os.path.basename(argv[0]) if argv else stat[stat.find("(") + 1 : stat.rfind(")")]
    return ProcessId(pid, int(rest[19]), name, uid)


def cmdline(pid: int) -> list[str]:
    """The arguments ``pid`` runs with ([] when gone or a kernel thread)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else []


def pids_with_args(program: str, *args: str) -> list[ProcessId]:
    """Live processes running ``program`` (by file name) whose arguments contain ``args`` in
    this order, next to each other (for instance ``-rfbunixpath``, ``/path/vnc.sock``)."""
    found = []
    n = len(args)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if not argv or os.path.basename(argv[0]) != program:
            continue
        if any(tuple(argv[i : i + n]) == args for i in range(1, len(argv) - n + 1)):
            ident = identify(int(entry.name))
            if ident is not None:
                found.append(ident)
    return found


async def spawn_detached(argv: Sequence[str], *, env: dict[str, str], cwd: Path,
                         output: int | None, uid: int | None = None, gid: int | None = None,
                         timeout: float = 10.0) -> ProcessId:
    """Start ``argv`` detached from the gateway (see the module docstring) and return its
    identity. As ``uid``/``gid`` when given (primary group only), umask 077; its output goes to
    the descriptor ``output`` (None: /dev/null). ``OSError`` when it could not be started."""
    setsid = shutil.which("setsid")
    if setsid is None:
        raise OSError("setsid (util-linux) is not installed")
    launcher = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", _DETACH, "deskgate-detach", setsid, *argv,
        env=env,
        cwd=str(cwd),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=output if output is not None else asyncio.subprocess.DEVNULL,
        start_new_session=True,
        user=uid,
        group=gid,
        extra_groups=[] if uid is not None else None,
        umask=0o077,
    )
    try:
        out, _ = await asyncio.wait_for(launcher.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()
        await launcher.wait()
        raise
    text = out.decode(errors="replace").strip()
    if launcher.returncode != 0 or not text.isdigit():
        raise OSError(f"could not start {argv[0]} (launcher said {text[:80]!r})")
    name = os.path.basename(argv[0])  # it may not have reached exec yet: name it ourselves
    ident = identify(int(text))
    if ident is None:
        # Started and already gone: the caller sees it as exited (and reads its log).
        return ProcessId(int(text), -1, name, uid if uid is not None else os.geteuid())
    return ProcessId(ident.pid, ident.start, name, ident.uid)


async def terminate(procs: Iterable[ProcessId], timeout: float) -> list[ProcessId]:
    """Stop each process (and its process group, when it leads one): SIGTERM, wait up to
    ``timeout``, then SIGKILL and wait again. Only processes that are still exactly these
    (same start time) are signalled. Returns those still alive at the end (normally none)."""
    targets = [p for p in procs if p.alive()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in targets:
            _signal(p, sig)
        deadline = time.monotonic() + timeout
        while (targets := [p for p in targets if p.alive()]) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
        if not targets:
            break
    return targets


def _signal(p: ProcessId, sig: signal.Signals) -> None:
    if not p.alive():  # checked right before: a reused PID is never signalled
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(p.pid) == p.pid:
            os.killpg(p.pid, sig)
        else:
            os.kill(p.pid, sig)
