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
    WS_NORMAL,
    WS_SESSION_EXPIRED,
    WS_SIGNED_OUT,
)
from .model import RelayCounters, WebSession
from .store import Store

ACCOUNT_DISABLED = "your account was disabled"
SIGNED_OUT = "you were signed out"

log = logging.getLogger("deskgate.live")


@dataclass
class LiveSession:
    session_id: str
    web_session_id: str
    user_name: str
    desktop_name: str
    counters: RelayCounters
    close: Callable[[int, str], Awaitable[None]]  # (websocket close code, reason)
    end_reason: str | None = None  # set when ended from outside (sign-out, expiry, an admin)
    end_final: bool = False
    end_code: int = WS_NORMAL
    client_ip: str = ""
    user_agent: str = ""
    protocol: str = "vnc"
    started_at: float = field(default_factory=time.time)
    watch_of: str | None = None  # set on an admin's view-only watch of another session
    watchers: int = 0  # admins watching this session now
    rtt_ms: float | None = None  # round trip gateway <-> browser, when measured
    rate_down: float = 0.0  # bytes per second to the browser, over the last sample
    rate_up: float = 0.0
    user_id: int = 0
    responding: bool = True  # False while the desktop does not answer
    _last_sample: tuple[float, int, int] | None = None
    _listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)

    async def end(self, code: int, reason: str, *, final: bool) -> None:
        if self.end_reason is None:
            self.end_reason, self.end_final, self.end_code = reason, final, code
            await self.close(code, reason)

    def set_responding(self, responding: bool) -> None:
        """The desktop stopped or started answering again: tell the person's page."""
        if responding != self.responding:
            self.responding = responding
            self.notify({"type": "desktop", "responding": responding})

    def notify(self, event: dict[str, Any]) -> None:
        """Tell the person's client something (an admin message, "being watched")."""
        for queue in self._listeners:
            if queue.qsize() < 100:
                queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._listeners.discard(queue)

    def sample(self, now: float) -> None:
        """Update the throughput figures from the byte counters."""
        up, down = self.counters.bytes_up, self.counters.bytes_down
        if self._last_sample is not None:
            then, last_up, last_down = self._last_sample
            if now > then:
                self.rate_up = (up - last_up) / (now - then)
                self.rate_down = (down - last_down) / (now - then)
        self._last_sample = (now, up, down)

    def figures(self, now: float) -> dict[str, Any]:
        """What the admin dashboard shows of a live session."""
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
        self._live.pop(session_id, None)

    def get(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    async def end_for_web_session(self, web_session_id: str, code: int, reason: str) -> None:
        for live in self:
            if live.web_session_id == web_session_id:
                await live.end(code, reason, final=True)

    async def sweep(self, store: Store, now: float,
                    expiry: Callable[[WebSession, float], str | None]) -> None:
        """End relays whose web session is gone or expired, each with the reason; keep working
        people's web sessions alive. ``expiry(web_session, now)`` says "idle", "lifetime" or
        None (still valid)."""
        for live in self:
            ws = await store.get_web_session(live.web_session_id)
            ended = None if ws is None else expiry(ws, now)
            if ws is None:
                user = await store.get_user(live.user_id)
                if user is None or user.disabled:
                    code, reason = WS_ACCOUNT_DISABLED, ACCOUNT_DISABLED
                else:
                    code, reason = WS_SIGNED_OUT, SIGNED_OUT
            elif ended == "idle":
                code, reason = WS_IDLE, "you were signed out after a time without any input"
            elif ended is not None:
                code, reason = WS_SESSION_EXPIRED, "your sign-in expired; sign in again"
            else:
                if live.counters.last_input > ws.last_seen:
                    await store.touch_web_session(ws.id, min(now, live.counters.last_input))
                continue
            log.info("[user=%s session=%s] %s", live.user_name, live.session_id, reason)
            await live.end(code, reason, final=True)

    async def end_all(self, code: int, reason: str, *, final: bool) -> None:
        """End every relay (the gateway shutting down), each recorded with ``reason``."""
        await asyncio.gather(*(live.end(code, reason, final=final) for live in self),
                             return_exceptions=True)
