"""Desktop sessions as admins and their owners see them: live ones (figures, disconnect,
message), the history of closed ones and failed attempts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..audit import Audit, AuditKind
from ..errors import WS_ADMIN_DISCONNECT, BadRequest, NotFound
from ..live import LiveSession, LiveSessions
from ..model import Desktop, Session, SessionState, User
from ..store import Store
from .actor import Actor


@dataclass(frozen=True)
class History:
    """One page of closed sessions and the newest failed attempts, with the names they need."""

    closed: list[Session]
    failed: list[Session]
    users: dict[int, str]  # user id -> name
    desktops: dict[int, Desktop]  # desktop id -> desktop


class Sessions:
    def __init__(self, store: Store, audit: Audit, live: LiveSessions) -> None:
        self._store = store
        self._audit = audit
        self._live = live

    async def _record(self, actor: Actor, detail: str, live: LiveSession) -> None:
        await self._audit.record(AuditKind.ADMIN, user=live.user_name, desktop=live.desktop_name,
                                 client_ip=actor.client_ip, detail=actor.by(detail))

    # reading -----------------------------------------------------------------------------------
    def live_figures(self) -> list[dict[str, Any]]:
        now = time.time()
        return [live.figures(now) for live in self._live]

    async def recent(self, limit: int = 50) -> list[Session]:
        return await self._store.list_sessions(limit=limit)

    async def history(self, *, search: str = "", limit: int, offset: int = 0,
                      failed_limit: int) -> History:
        """Closed sessions (newest first; ``limit`` from ``offset``) and the newest failed
        attempts (connections that never reached the desktop), both filtered by ``search``."""
        closed = await self._store.list_sessions(state=SessionState.CLOSED.value, search=search,
                                                 limit=limit, offset=offset)
        failed = await self._store.list_sessions(state=SessionState.FAILED.value, search=search,
                                                 limit=failed_limit)
        users = {u.id: u.name for u in await self._store.list_users()}
        desktops = {d.id: d for d in await self._store.list_desktops()}
        return History(closed, failed, users, desktops)

    async def session_of(self, user: User, session_id: str) -> Session | None:
        """The user's own session with this id; None when there is none, or it is not theirs."""
        session = await self._store.get_session(session_id[:64])
        return session if session is not None and session.user_id == user.id else None

    # changes ---------------------------------------------------------------------------------
    def _live_session(self, session_id: str) -> LiveSession:
        live = self._live.get(session_id)
        if live is None:
            raise NotFound("no such live session on this gateway")
        return live

    async def disconnect(self, actor: Actor, session_id: str, reason: str) -> None:
        actor.require_admin()
        reason = reason.strip()[:200] or "disconnected by an administrator"
        live = self._live_session(session_id)
        await live.end(WS_ADMIN_DISCONNECT, reason, final=True)
        await self._record(actor, f"session {session_id} disconnected: {reason}", live)

    async def message(self, actor: Actor, session_id: str, text: str) -> None:
        actor.require_admin()
        text = text.strip()
        if not text or len(text) > 500:
            raise BadRequest("a message is 1-500 characters")
        live = self._live_session(session_id)
        live.notify({"type": "message", "from": actor.name, "text": text})
        await self._record(actor, f"message sent to session {session_id}", live)
