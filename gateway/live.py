"""The sessions relaying right now on this node, so that they can be ended from outside.

A connection is ended when its web session ends (sign-out, expiry, the account disabled) and,
later, by an admin. While a person works in a desktop, their web session is kept alive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from .model import RelayCounters
from .store import Store

log = logging.getLogger("deskgate.live")


@dataclass
class LiveSession:
    session_id: str
    web_session_id: str
    user_name: str
    desktop_name: str
    counters: RelayCounters
    close: Callable[[int, str], Awaitable[None]]  # (websocket close code, reason)
    end_reason: str | None = None
    end_final: bool = False

    async def end(self, code: int, reason: str, *, final: bool) -> None:
        if self.end_reason is None:
            self.end_reason, self.end_final = reason, final
            await self.close(code, reason)


class LiveSessions:
    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}

    def add(self, live: LiveSession) -> None:
        self._live[live.session_id] = live

    def remove(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    async def end_for_web_session(self, web_session_id: str, code: int, reason: str) -> None:
        for live in self:
            if live.web_session_id == web_session_id:
                await live.end(code, reason, final=True)

    async def sweep(self, store: Store, code: int, now: float) -> None:
        """End relays whose web session is gone; keep working people's web sessions alive."""
        for live in self:
            ws = await store.get_web_session(live.web_session_id)
            if ws is None:
                log.info("[user=%s session=%s] web session ended", live.user_name,
                         live.session_id)
                await live.end(code, "you were signed out", final=True)
            elif live.counters.last_input > ws.last_seen:
                await store.touch_web_session(ws.id, min(now, live.counters.last_input))
