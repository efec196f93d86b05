"""Typed audit events and the one writer that stores them."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from .model import AUDIT_GENESIS, AuditEvent
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
    CONNECT_FAILED = "session.failed"  # an attempt that never reached the desktop (all its tries)
    DISCONNECT = "session.disconnect"
    CREDENTIALS = "credentials"  # a person's own account for a per-user RDP desktop
    ADMIN = "admin"
    VM = "vm"  # a desktop VM's power, mode or policy, changed by an admin or its own user
    VM_STATE = "vm.state"  # what Deskgate saw a desktop VM do, or did by its running mode
    ADMIN_DENIED = "admin.denied"
    KIOSK = "kiosk"  # a kiosk created, changed, given a pairing code, revoked or deleted
    KIOSK_DEVICE = "kiosk.device"  # what a kiosk device did: enrolled, started, refused a proof
    SSH = "ssh"  # an SSH host added, changed, pinned or removed
    SSH_HOST_KEY = "ssh.host_key"  # a host key trusted on first use, or a changed one refused


def first_broken_link(rows: list[AuditEvent], prev_hash: str) -> tuple[str | None, str]:
    """Check rows (oldest first) against the chain that ended in ``prev_hash``.

    Returns (problem or None, the last good hash). An edited row no longer matches its own hash;
    a deleted or reordered row breaks the next row's link to its predecessor.
    """
    for row in rows:
        if row.row_hash is None:
            if prev_hash != AUDIT_GENESIS:
                return f"row {row.id} has no hash (written outside the chain)", prev_hash
            continue  # rows written before the chain existed
        if row.prev_hash != prev_hash:
            return (f"row {row.id} does not follow the row before it"
                    " (a row was deleted, inserted or reordered)"), prev_hash
        if row.expected_hash(prev_hash) != row.row_hash:
            return f"row {row.id} was edited (its content no longer matches its hash)", prev_hash
        prev_hash = row.row_hash
    return None, prev_hash


async def verify_chain(store: Store) -> tuple[str | None, int]:
    """(first problem or None, rows checked)."""
    prev, after, checked = AUDIT_GENESIS, 0, 0
    while True:
        rows = await store.audit_chain(after_id=after)
        if not rows:
            return None, checked
        problem, prev = first_broken_link(rows, prev)
        if problem:
            return problem, checked
        checked += len(rows)
        after = rows[-1].id


# Structured reason codes of failed sign-ins: metrics count these, never the detail text.
SIGNIN_CODES = ("password", "unknown_user", "disabled", "locked", "throttled", "second_factor",
                "sso", "other")

# A listener hears (kind, code). The code is not stored: the stored rows are hash-chained
# (``AuditEvent.expected_hash``), and a column outside the hash could be edited unnoticed.
AuditListener = Callable[[AuditKind, str | None], None]


class Audit:
    """Writes audit rows. ``detail`` must never hold a secret (password, code, token).

    Listeners (metrics, for one) hear every event after it is stored: the audit writer is the one
    place every sign-in failure and admin action passes through.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._listeners: list[AuditListener] = []

    def listen(self, listener: AuditListener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def record(self, kind: AuditKind, *, user: str | None = None,
                     desktop: str | None = None, client_ip: str | None = None,
                     detail: str = "", code: str | None = None) -> None:
        """Store one event; ``code`` is a structured reason (``SIGNIN_CODES`` for sign-in
        failures) that only the listeners hear."""
        await self._store.append_audit(time.time(), kind.value, user, desktop, client_ip, detail)
        log.info("audit %s [user=%s desktop=%s ip=%s] %s", kind.value, user, desktop, client_ip,
                 detail)
        for listener in self._listeners:
            listener(kind, code)
