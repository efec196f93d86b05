"""Helpers for the use case tests: the actors, and the audit rows a call wrote."""

from __future__ import annotations

from gateway.cases.actor import Actor
from gateway.model import AuditEvent, User
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()
PASSWORD = "a long enough password"


def admin_actor(user: User, ip: str = "192.0.2.7") -> Actor:
    return Actor.of(user, ip)


async def audit_mark(store: SQLiteStore) -> int:
    """The id of the newest audit row (0 when none): rows after it are what came since."""
    rows = await store.list_audit(limit=1)
    return rows[0].id if rows else 0


async def audit_since(store: SQLiteStore, mark: int) -> list[AuditEvent]:
    """The audit rows written after ``mark``, oldest first."""
    return await store.audit_chain(after_id=mark)
