"""How many sessions this process can relay, and what happens at that limit.

Every relayed session holds two file descriptors (the browser's websocket and the desktop's
socket), so the process's ``nofile`` limit bounds the sessions it can carry. ``deskgate serve``
raises its soft limit to the hard one at start-up (``raise_fd_limit``), and the capacity is::

    capacity = (fd_limit - reserve) // FDS_PER_SESSION
    reserve  = RESERVE_BASE + fd_limit // RESERVE_SHARE   # 64 + 5 % of the limit

The reserve keeps descriptors for everything that is not a relay: the database and its
journal, listening sockets, the log, the event loop, subprocesses' pipes (desktops, RDP bridges),
and the HTTP connections that come and go (sign-in, portal, connect calls, event streams). With
the hard limit of 20,000 this gives 9,468 sessions; ``[relay] max_sessions`` overrides it.

Above capacity a new connect is refused at once with "the gateway is full" (HTTP 503), and so is
a websocket that would exceed it meanwhile (close code 1013, "try again later"). A connect holds
its slot until its websocket opens or its ticket expires, so many connects in flight never
promise more slots than there are. The capacity is counted in descriptors: the client page's
notification stream (``GET /sessions/{id}/events``) holds one more, so it counts as half a
session, and when it would not fit it is refused (503) rather than the sessions being starved;
people working in browsers therefore fill about two thirds of the capacity, load-test clients
that open no stream all of it. ``max_sessions`` caps the sessions only; the descriptor budget
stays what the limit allows.

If the process reaches its descriptor limit anyway (another use of descriptors), asyncio's
accept loop must not spin: CPython's ``_accept_connection`` (asyncio/selector_events.py) logs
"socket.accept() out of system resource", pauses the listener and schedules a retry in
``ACCEPT_RETRY_DELAY`` (1 s) — but then carries on with the next of its ``backlog`` accepts in
the same round, each failing, logging and scheduling one more retry. The retries multiply, and
the log with them (python/cpython#151615). ``BackoffListener`` ends such a round after its first
failure (one retry per second, one accept call), and ``AcceptErrorLog`` lets one such log line a
minute through, with the count of those it held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import GatewayFull

log = logging.getLogger("deskgate.capacity")

FDS_PER_SESSION = 2  # the browser's websocket and the desktop's socket
RESERVE_BASE = 64
RESERVE_SHARE = 20  # one descriptor in 20 is kept for everything that is not a relay
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_ERROR = "socket.accept() out of system resource"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``nofile`` limit to the hard one; (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # the kernel's own ceiling for one process
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20) if soft == resource.RLIM_INFINITY else int(soft)


def reserve_fds(limit: int) -> int:
    return RESERVE_BASE + limit // RESERVE_SHARE


def session_capacity(limit: int) -> int:
    """The sessions ``limit`` open files carry, with the reserve kept (see the module's text)."""
    return max(0, (limit - reserve_fds(limit)) // FDS_PER_SESSION)


def open_fds() -> int | None:
    """Descriptors this process has open now (None where /proc is not there)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return None


class Slot:
    """One relay's place, held from admission until its clean-up has finished."""

    __slots__ = ("_capacity", "_released")

    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._capacity._relay_done()


class Hold:
    """A connect's claim, made before its session exists; ``keep`` binds it to the session."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: str | None = None

    def keep(self, session_id: str) -> None:
        self.kept = session_id


class Capacity:
    """Sessions in use on this node against the capacity: relays plus connects whose websocket
    has not opened yet (each for at most ``hold_seconds``, the ticket's lifetime)."""

    def __init__(self, limit: int, *, fd_limit: int, hold_seconds: float) -> None:
        self.limit = limit  # sessions
        self.fd_limit = fd_limit
        self.fd_budget = fd_limit - reserve_fds(fd_limit)  # for sessions and event streams
        self.hold_seconds = hold_seconds
        self.relays = 0
        self.streams = 0  # client pages' event streams: one descriptor each
        self.refused = 0
        self._pending = 0  # connects being made now
        self._held: dict[str, float] = {}  # session id -> until (monotonic), oldest first
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def for_process(cls, max_sessions: int, hold_seconds: float) -> Capacity:
        """From this process's open files limit, or ``max_sessions`` when it is set."""
        limit = fd_limit()
        computed = session_capacity(limit)
        if max_sessions > computed:
            log.warning("relay.max_sessions = %d is above the %d sessions that %d open files"
                        " allow: past that, connections fail for want of descriptors",
                        max_sessions, computed, limit)
        capacity = max_sessions if max_sessions > 0 else computed
        log.info("session capacity %d (open files limit %d, %d fds a session, %d kept in"
                 " reserve)%s", capacity, limit, FDS_PER_SESSION, reserve_fds(limit),
                 " set by relay.max_sessions" if max_sessions > 0 else "")
        return cls(capacity, fd_limit=limit, hold_seconds=hold_seconds)

    def in_use(self) -> int:
        """Sessions: relaying, being connected, or connected and waiting for their websocket."""
        self._expire()
        return self.relays + self._pending + len(self._held)

    def fds_in_use(self) -> int:
        return self.in_use() * FDS_PER_SESSION + self.streams

    def _full(self, fds: int) -> bool:
        """No room for ``fds`` more: a session (sessions at the limit, or descriptors) or an
        event stream (descriptors)."""
        if fds >= FDS_PER_SESSION and self.in_use() >= self.limit:
            return True
        return self.fds_in_use() + fds > self.fd_budget

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id, until in list(self._held.items()):
            if until > now:
                break  # held in order: the rest are younger
            del self._held[session_id]

    def _refuse(self) -> GatewayFull:
        self.refused += 1
        return GatewayFull()

    @contextlib.contextmanager
    def hold(self) -> Iterator[Hold]:
        """A slot for one connect: ``GatewayFull`` when none is free. Kept (``Hold.keep``) it
        waits for the session's websocket; otherwise it is given back on leaving."""
        if self._full(FDS_PER_SESSION):
            raise self._refuse()
        self._pending += 1
        hold = Hold()
        try:
            yield hold
        finally:
            self._pending -= 1
            if hold.kept is not None:
                self._held.pop(hold.kept, None)
                self._held[hold.kept] = time.monotonic() + self.hold_seconds

    def admit(self, session_id: str) -> Slot:
        """The relay of ``session_id`` starts: its connect's slot, else a free one, else
        ``GatewayFull``."""
        if self._held.pop(session_id, None) is None and self._full(FDS_PER_SESSION):
            raise self._refuse()
        self.relays += 1
        self._idle.clear()
        return Slot(self)

    def admit_for_this_task(self, session_id: str) -> None:
        """``admit``, the slot given back when the current task (the relay's request handler)
        has finished, its clean-up included, however it ends."""
        slot = self.admit(session_id)
        task = asyncio.current_task()
        if task is None:
            slot.release()
            raise RuntimeError("admit_for_this_task outside a task")
        task.add_done_callback(lambda _task: slot.release())

    def stream_for_this_task(self) -> None:
        """A client page's event stream (one descriptor, half a session) while the current task
        runs; ``GatewayFull`` when that would leave no room for the sessions in use."""
        if self._full(1):
            raise self._refuse()
        self.streams += 1

        def done(_task: object) -> None:
            self.streams -= 1

        task = asyncio.current_task()
        if task is None:
            self.streams -= 1
            raise RuntimeError("stream_for_this_task outside a task")
        task.add_done_callback(done)

    def _relay_done(self) -> None:
        self.relays -= 1
        if self.relays == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until every relay has finished its clean-up (at most ``timeout`` s)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class BackoffListener(socket.socket):
    """A listening socket whose ``accept`` ends asyncio's accept round at the first
    out-of-descriptors error (see the module's text): asyncio then pauses the listener for a
    second, once, instead of failing (and logging) up to its whole backlog again each round."""

    _failed_this_round = False

    @classmethod
    def wrap(cls, sock: socket.socket) -> BackoffListener:
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())

    def accept(self) -> tuple[socket.socket, Any]:
        if self._failed_this_round:
            raise BlockingIOError(errno.EAGAIN, "accept paused: out of descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                self._failed_this_round = True
                with contextlib.suppress(RuntimeError):  # no loop: nothing to end
                    asyncio.get_running_loop().call_soon(self._next_round)
            raise

    def _next_round(self) -> None:
        self._failed_this_round = False


class AcceptErrorLog(logging.Filter):
    """One "socket.accept() out of system resource" line a minute, with the number held back
    and without the traceback; other records pass unchanged."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.held_back = 0
        self._last = -interval

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(ACCEPT_ERROR):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self.held_back += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = (f"{ACCEPT_ERROR}: {exc or 'no descriptors left'}; new connections wait"
                      f" (at most one such line a minute; {self.held_back} held back)")
        record.args, record.exc_info, record.exc_text = None, None, None
        self._last, self.held_back = now, 0
        return True
