"""One-time connection tickets: minted by the broker, consumed once by the websocket upgrade.

A ticket is bound to the user, the web session, the desktop and the connection session; it lives
``ttl`` seconds. Only its hash is kept, so a memory dump does not hand out live tickets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .crypto import new_token, token_hash
from .errors import TicketError


@dataclass(frozen=True)
class Ticket:
    user_id: int
    web_session_id: str
    desktop_id: int
    session_id: str
    expires_at: float


class TicketBook:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._tickets: dict[str, Ticket] = {}

    def mint(self, *, user_id: int, web_session_id: str, desktop_id: int, session_id: str) -> str:
        self._expire()
        token = new_token(24)
        self._tickets[token_hash(token)] = Ticket(user_id, web_session_id, desktop_id, session_id,
                                                  self._clock() + self._ttl)
        return token

    def consume(self, token: str, *, user_id: int, web_session_id: str, session_id: str) -> Ticket:
        """Return the ticket and forget it. Any mismatch also burns it (fail closed)."""
        ticket = self._tickets.pop(token_hash(token), None) if token else None
        if ticket is None:
            raise TicketError("connection ticket unknown or already used")
        if ticket.expires_at <= self._clock():
            raise TicketError("connection ticket expired")
        if (ticket.user_id != user_id or ticket.web_session_id != web_session_id
                or ticket.session_id != session_id):
            raise TicketError("connection ticket does not belong to this session")
        return ticket

    def expired_sessions(self) -> list[str]:
        """Drop expired tickets and return the session ids they were minted for."""
        return self._expire()

    def _expire(self) -> list[str]:
        now = self._clock()
        dead = [k for k, t in self._tickets.items() if t.expires_at <= now]
        return [self._tickets.pop(k).session_id for k in dead]

    def __len__(self) -> int:
        return len(self._tickets)
