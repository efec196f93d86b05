"""The audit trail as admins read it: filtered queries, the hash chain's check, and the
record of a refused administration request."""

from __future__ import annotations

from typing import Any

from ..audit import Audit, AuditKind, verify_chain
from ..model import AuditEvent
from ..store import Store
from .actor import Actor


class AuditTrail:
    def __init__(self, store: Store, audit: Audit) -> None:
        self._store = store
        self._audit = audit

    async def events(self, limit: int = 100, **filters: Any) -> list[AuditEvent]:
        """Newest first; filters as ``Store.list_audit`` takes them (user, desktop, kind,
        since, until, before_id)."""
        return await self._store.list_audit(limit=limit, **filters)

    async def verify(self) -> tuple[str | None, int]:
        """(the first broken link or None, rows checked)."""
        return await verify_chain(self._store)

    async def refused(self, actor: Actor, detail: str) -> None:
        """An administration request refused to ``actor`` (not an admin, a read-only token...)."""
        await self._audit.record(AuditKind.ADMIN_DENIED, user=actor.name,
                                 client_ip=actor.client_ip, detail=detail)
