"""A person's own account on a per-user RDP desktop (the desktop's ``credentials`` option).

Entered once in the browser and stored encrypted (``POST /desktops/{id}/credentials``), or, when
the person does not want it remembered (or ``[rdp] rdp_store_credentials`` is off), kept in
memory for the next connection only and then for as long as the bridge it signed in runs. The
password is write-only: never shown, returned or written to the audit. An account the desktop
refuses is forgotten, so the next connect asks again.

``RdpAccounts.target`` says which server and account a person's bridge signs in with: the
desktop's shared account, or that person's own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from gateway.audit import Audit, AuditKind
from gateway.crypto import SecretBox
from gateway.errors import BadRequest, CredentialsRequired
from gateway.keyboards import layout_of
from gateway.model import Desktop, User
from gateway.rdp.errors import REASON_CREDENTIALS, CredentialsRefused
from gateway.rdp.options import rdp_account
from gateway.rdp.target import RdpTarget
from gateway.store import Store

# An account entered for one connection (not stored) waits this long for its connect; after
# that it lives only as long as the bridge it signed in.
ONE_CONNECTION_SECONDS = 120.0

CheckAccess = Callable[[User, int, str], Awaitable[Desktop]]


def bridge_key(user_id: int, desktop_id: int) -> str:
    """One RDP bridge per person and desktop: reconnecting resumes the same remote session."""
    return f"{user_id}:{desktop_id}"


def per_user(desktop: Desktop) -> bool:
    """An RDP desktop where each person signs in with their own account."""
    return desktop.protocol == "rdp" and desktop.option("credentials", "shared") == "per_user"


class OwnCredentialsRefused(CredentialsRefused):
    """A per-user desktop refused the person's stored account (now forgotten): ask again."""

    reason = (f"{REASON_CREDENTIALS}; your saved account for this desktop was forgotten:"
              " enter it again")
    asks_for_credentials = True

    def __init__(self, *, session_id: str | None = None) -> None:
        super().__init__(kind="credentials", session_id=session_id)


@dataclass(frozen=True)
class _OneConnection:
    """A person's own account entered for one connection, kept in memory only (encrypted)."""

    username: str
    domain: str
    enc_password: str
    at: float
    used: bool = False  # a bridge signed in with it: it lives as long as that bridge only


class RdpAccounts:
    """The accounts RDP bridges sign in with; see the module docstring.

    ``check_access`` gives the desktop when the person may use it (else raises NotFound);
    ``running(key)`` says whether the bridge ``key`` runs now.
    """

    def __init__(self, store: Store, box: SecretBox, audit: Audit, *, store_credentials: bool,
                 check_access: CheckAccess, running: Callable[[str], bool]) -> None:
        self._store = store
        self._box = box
        self._audit = audit
        self._store_credentials = store_credentials
        self._check_access = check_access
        self._running = running
        self._one_connection: dict[tuple[int, int], _OneConnection] = {}

    async def target(self, desktop: Desktop, user_id: int) -> RdpTarget:
        """The server and the account the bridge of ``user_id`` signs in with: the desktop's
        shared account, or (per-user desktop) that person's own, else CredentialsRequired."""
        if per_user(desktop):
            stored = self._entered_for_one_connection(user_id, desktop.id)
            if stored is None and self._store_credentials:
                stored = await self._store.get_user_credentials(user_id, desktop.id)
            if stored is None:
                raise CredentialsRequired()
            username, domain, enc = stored
        else:
            username, domain = desktop.option("username"), desktop.option("domain")
            enc = (await self._store.get_desktop_password(desktop.id) or ""
                   if desktop.has_password else "")
        return RdpTarget(
            host=desktop.host, port=desktop.port, username=username,
            domain=domain, password=self._box.decrypt(enc) if enc else None,
            security=desktop.option("security", "negotiate"),
            cert_policy=desktop.option("cert_policy", "ignore"),
            cert_fingerprint=desktop.option("cert_fingerprint"),
            cert_ca=desktop.option("cert_ca"),
            keyboard_layout=layout_of(desktop.option("keyboard_layout")))

    def signed_in(self, user_id: int, desktop_id: int) -> None:
        """A bridge signed in: an account entered for one connection now lives as long as that
        bridge only."""
        entry = self._one_connection.get((user_id, desktop_id))
        if entry is not None:
            self._one_connection[(user_id, desktop_id)] = replace(entry, used=True)

    async def refused(self, user: User, desktop: Desktop, client_ip: str) -> None:
        """The desktop refused the person's own account: the next attempt asks for it again
        instead of repeating this one."""
        self._one_connection.pop((user.id, desktop.id), None)
        await self._forget(user, desktop, client_ip, "refused by the desktop")

    async def save(self, user: User, desktop_id: int, client_ip: str, *, username: str,
                   domain: str, password: str, remember: bool = True) -> bool:
        """The person's own account for a per-user desktop assigned to them: stored (encrypted)
        when ``remember`` and ``[rdp] rdp_store_credentials`` allow, else kept in memory for
        the next connection only (and its bridge's life). Returns whether it was stored."""
        desktop = await self._check_access(user, desktop_id, client_ip)
        if not per_user(desktop):
            raise BadRequest("this desktop signs in with its own account")
        username, domain, password = rdp_account(username, domain, password)
        enc = self._box.encrypt(password)
        if remember and self._store_credentials:
            self._one_connection.pop((user.id, desktop.id), None)
            await self._store.set_user_credentials(user.id, desktop.id, username, domain, enc)
            await self._audit.record(AuditKind.CREDENTIALS, user=user.name, desktop=desktop.name,
                                     client_ip=client_ip, detail=f"credentials saved ({username})")
            return True
        for k in list(self._one_connection):  # bounded: drop the unused and the ended ones
            self._entered_for_one_connection(*k)
        self._one_connection[(user.id, desktop.id)] = _OneConnection(username, domain, enc,
                                                                     time.monotonic())
        await self._forget(user, desktop, client_ip, "not to be remembered")
        await self._audit.record(AuditKind.CREDENTIALS, user=user.name, desktop=desktop.name,
                                 client_ip=client_ip,
                                 detail=f"credentials entered for one connection ({username}),"
                                        " not stored")
        return False

    async def forget(self, user: User, desktop_id: int, client_ip: str) -> bool:
        """Forget the person's stored account for a desktop; False when none was stored."""
        desktop = await self._check_access(user, desktop_id, client_ip)
        in_memory = self._one_connection.pop((user.id, desktop.id), None) is not None
        return await self._forget(user, desktop, client_ip, "by the user") or in_memory

    def _entered_for_one_connection(self, user_id: int,
                                     desktop_id: int) -> tuple[str, str, str] | None:
        """An account entered for one connection: fresh, or its bridge still runs; else gone."""
        entry = self._one_connection.get((user_id, desktop_id))
        if entry is None:
            return None
        fresh = not entry.used and time.monotonic() - entry.at < ONE_CONNECTION_SECONDS
        if fresh or self._running(bridge_key(user_id, desktop_id)):
            return entry.username, entry.domain, entry.enc_password
        del self._one_connection[(user_id, desktop_id)]
        return None

    async def _forget(self, user: User, desktop: Desktop, client_ip: str, why: str) -> bool:
        if not await self._store.delete_user_credentials(user.id, desktop.id):
            return False
        await self._audit.record(AuditKind.CREDENTIALS, user=user.name, desktop=desktop.name,
                                 client_ip=client_ip, detail=f"credentials forgotten ({why})")
        return True
