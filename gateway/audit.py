"""Typed audit events and the one writer that stores them."""

from __future__ import annotations

import enum
import logging
import time

from .store import Store

log = logging.getLogger("deskgate.audit")


class AuditKind(enum.StrEnum):
    SIGNIN_OK = "signin.ok"
    SIGNIN_FAILED = "signin.failed"
    SECOND_FACTOR_OK = "second_factor.ok"
    SECOND_FACTOR_FAILED = "second_factor.failed"
    SECOND_FACTOR_ENROLLED = "second_factor.enrolled"
    RECOVERY_CODE_USED = "second_factor.recovery_code_used"
    LOCKOUT = "account.locked"
    THROTTLED = "signin.throttled"
    SIGNOUT = "signout"
    CONNECT = "session.connect"
    CONNECT_DENIED = "session.denied"
    DISCONNECT = "session.disconnect"
    ADMIN = "admin"


class Audit:
    """Writes audit rows. ``detail`` must never hold a secret (password, code, token)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(self, kind: AuditKind, *, user: str | None = None,
                     desktop: str | None = None, client_ip: str | None = None,
                     detail: str = "") -> None:
        await self._store.append_audit(time.time(), kind.value, user, desktop, client_ip, detail)
        log.info("audit %s [user=%s desktop=%s ip=%s] %s", kind.value, user, desktop, client_ip,
                 detail)
