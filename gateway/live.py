"""The sessions relaying right now on this node, so that they can be ended from outside.

A connection is ended when its web session ends (sign-out, expiry, the account disabled), by an
admin, and when the gateway shuts down, each with its own close code and reason. While a person
works in a desktop, their web session is kept alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    WS_ACCOUNT_DISABLED,
    WS_IDLE,
    WS_MOVED,
    WS_SESSION_EXPIRED,
    WS_SIGNED_OUT,
)
from .model import RelayCounters, WebSession
from .store import Store

ACCOUNT_DISABLED = "your account was disabled"
SIGNED_OUT = "you were signed out"
BROWSER_LOST = "the connection to the browser was lost"
SHUTDOWN = "the gateway is shutting down"
MOVED = "this desktop moved to another device"
# What a LiveSession's listeners get once it is no longer live (never sent to a browser).
ENDED: dict[str, Any] = {"type": "ended"}
# Throughput figures are averages over windows at least this long (see LiveSession.rates).
RATE_WINDOW = 1.0

log = logging.getLogger("deskgate.live")


@dataclass(slots=True)
class LiveSession:
    session_id: str
    web_session_id: str
    user_name: str
    desktop_name: str
    counters: RelayCounters
    # Ends the relay (gateway/relay.py: ``Relay.end``): (websocket close code, reason, final).
    close: Callable[[int, str, bool], Awaitable[None]]
    end_reason: str | None = None  # set when ended from outside (sign-out, expiry, an admin)
    end_final: bool = False
    client_ip: str = ""
    user_agent: str = ""
    protocol: str = "vnc"
    started_at: float = field(default_factory=time.time)
    watch_of: str | None = None  # set on an admin's view-only watch of another session
    watchers: int = 0  # admins watching this session now
    rtt_ms: float | None = None  # round trip gateway <-> browser, when measured
    rate_down: float = 0.0  # bytes per second to the browser, over the last window (rates())
    rate_up: float = 0.0
    user_id: int = 0
    desktop_id: int = 0
    responding: bool = True  # False while the desktop does not answer
    _last_sample: tuple[float, int, int] | None = None
    _listeners: set[asyncio.Queue[dict[str, Any]]] | None = None  # made on the first listen()

    async def end(self, code: int, reason: str, *, final: bool) -> None:
        if self.end_reason is None:
            self.end_reason, self.end_final = reason, final
            await self.close(code, reason, final)

    def set_responding(self, responding: bool) -> None:
        """The desktop stopped or started answering again: tell the person's page."""
        if responding != self.responding:
            self.responding = responding
            self.notify({"type": "desktop", "responding": responding})

    def notify(self, event: dict[str, Any]) -> None:
        """Tell the person's client something (an admin message, "being watched")."""
        for queue in self._listeners or ():
            if queue.qsize() < 100:
                queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if self._listeners is None:
            self._listeners = set()
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        if self._listeners is not None:
            self._listeners.discard(queue)

    def rates(self, now: float) -> None:
        """Update the throughput figures from the byte counters, when someone looks.

        Nothing samples an unwatched session (thousands of idle sessions cost nothing here):
        each look that comes ``RATE_WINDOW`` s or more after the last one closes a window and
        gives its average; the first look's window is the session's life so far."""
        up, down = self.counters.bytes_up, self.counters.bytes_down
        then, last_up, last_down = self._last_sample or (self.started_at, 0, 0)
        if now - then >= RATE_WINDOW or self._last_sample is None:
            if now > then:
                self.rate_up = (up - last_up) / (now - then)
                self.rate_down = (down - last_down) / (now - then)
            self._last_sample = (now, up, down)

    def figures(self, now: float) -> dict[str, Any]:
        """What the admin dashboard shows of a live session."""
        self.rates(now)
        last_input = self.counters.last_input
        return {
            "id": self.session_id, "user": self.user_name, "desktop": self.desktop_name,
            "protocol": self.protocol, "client_ip": self.client_ip,
            "user_agent": self.user_agent, "started_at": self.started_at,
            "duration_s": round(now - self.started_at, 1),
            "bytes_up": self.counters.bytes_up, "bytes_down": self.counters.bytes_down,
            "rate_up_bps": round(self.rate_up), "rate_down_bps": round(self.rate_down),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1),
            "idle_s": None if not last_input else round(now - last_input, 1),
            "watchers": self.watchers, "watch_of": self.watch_of,
            "responding": self.responding,
        }


class LiveSessions:
    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}

    def add(self, live: LiveSession) -> None:
        self._live[live.session_id] = live

    def remove(self, session_id: str) -> None:
        live = self._live.pop(session_id, None)
        if live is not None:
            live.notify(ENDED)  # its listeners stop waiting

    def get(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    async def moved(self, live: LiveSession) -> None:
        """Roaming: ``live`` reached its desktop, so the person's connections to that desktop
        from other devices (other sign-ins) end, told where it went; they do not reconnect by
        themselves. Windows of the same sign-in keep theirs. An admin's watch neither moves nor
        is moved."""
        if live.watch_of is not None:
            return
        others = [other for other in self
                  if other is not live and other.watch_of is None and other.end_reason is None
                  and other.user_id == live.user_id and other.desktop_id == live.desktop_id
                  and other.web_session_id != live.web_session_id]
        for other in others:
            log.info("[user=%s session=%s] %s (session %s)", other.user_name, other.session_id,
                     MOVED, live.session_id)
            await other.end(WS_MOVED, MOVED, final=True)

    async def end_for_web_session(self, web_session_id: str, code: int, reason: str) -> None:
        for live in self:
            if live.web_session_id == web_session_id:
                await live.end(code, reason, final=True)

    async def sweep(self, store: Store, now: float,
                    expiry: Callable[[WebSession, float], str | None]) -> None:
        """End relays whose web session is gone or expired, each with the reason; keep working
        people's web sessions alive. ``expiry(web_session, now)`` says "idle", "lifetime" or
        None (still valid).

        A fixed number of statements per sweep however many relays run: one read of their web
        sessions, one of their users only when some web session is gone, one keep-alive write.
        """
        lives = list(self)
        if not lives:
            return
        sessions = await store.get_web_sessions({live.web_session_id for live in lives})
        gone = [live for live in lives if live.web_session_id not in sessions]
        disabled = await store.disabled_or_gone_users({live.user_id for live in gone})
        seen: dict[str, float] = {}
        ends: list[tuple[LiveSession, int, str]] = []
        for live in lives:
            ws = sessions.get(live.web_session_id)
            if ws is None:
                if live.user_id in disabled:
                    ends.append((live, WS_ACCOUNT_DISABLED, ACCOUNT_DISABLED))
                else:
                    ends.append((live, WS_SIGNED_OUT, SIGNED_OUT))
                continue
            ended = expiry(ws, now)
            if ended == "idle":
                ends.append((live, WS_IDLE, "you were signed out after a time without any input"))
            elif ended is not None:
                ends.append((live, WS_SESSION_EXPIRED, "your sign-in expired; sign in again"))
            elif live.counters.last_input > ws.last_seen:
                last = min(now, live.counters.last_input)
                seen[ws.id] = max(seen.get(ws.id, 0.0), last)
        if seen:
            await store.touch_web_sessions(seen)
        for live, code, reason in ends:
            log.info("[user=%s session=%s] %s", live.user_name, live.session_id, reason)
            await live.end(code, reason, final=True)

    async def end_all(self, code: int, reason: str, *, final: bool) -> None:
        """End every relay (the gateway shutting down), each recorded with ``reason``."""
        await asyncio.gather(*(live.end(code, reason, final=final) for live in self),
                             return_exceptions=True)
