"""The protocol adapter map: what the broker does differently for each desktop protocol.

The broker walks one connection through the same steps whatever the protocol, and asks the
desktop's adapter (``protocol_map()[desktop.protocol]``) at each:

1. ``prepare`` — before the attempt is recorded: may refuse at once (RDP: a per-user desktop
   without the person's account asks for it); returns the work to do once the desktop runs and
   before the ticket is minted (RDP: start the bridge at the browser's size), or None;
2. ``refused`` — that work failed (the attempt is recorded as failed already): the error the
   person is answered with;
3. ``admit`` — the ticket is spent: where the connection goes, and the key of what it holds;
4. ``watch`` — an admin's view-only watch of a person's live session: the same, never starting
   anything;
5. ``release`` — the connection ended: let go of what ``admit`` or ``watch`` held.

A new protocol (SSH, ...) is one more adapter here; the broker does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.audit import Audit
from gateway.crypto import SecretBox
from gateway.errors import DesktopUnavailable
from gateway.model import Desktop, Endpoint, Reach, User
from gateway.rdp.accounts import CheckAccess
from gateway.rdp.adapter import RdpProtocol
from gateway.rdp.bridges import RdpBridges
from gateway.store import Store

# The protocols a desktop may speak: the keys of ``protocol_map``.
PROTOCOLS = ("vnc", "rdp")
# Which providers can serve each (a provider not named serves VNC only).
BRIDGED = {"rdp": ("static",)}

Start = Callable[[int, int], Awaitable[None]]  # (width, height) of the browser's desktop area


class DesktopProtocol(Protocol):
    where: str  # what a failed start is prefixed with in the audit

    async def prepare(self, user: User, desktop: Desktop) -> Start | None: ...

    async def refused(self, exc: DesktopUnavailable, user: User, desktop: Desktop,
                      client_ip: str, session_id: str) -> DesktopUnavailable: ...

    async def admit(self, user: User, desktop: Desktop) -> tuple[Endpoint, str | None]: ...

    async def watch(self, owner_id: int, desktop: Desktop) -> tuple[Endpoint, str | None]: ...

    def release(self, key: str | None) -> None: ...


class VncProtocol:
    """VNC desktops: the provider says where the desktop listens, with which password."""

    where = ""

    def __init__(self, endpoint: Callable[[Desktop], Awaitable[Endpoint]]) -> None:
        self._endpoint = endpoint

    async def prepare(self, user: User, desktop: Desktop) -> Start | None:
        return None

    async def refused(self, exc: DesktopUnavailable, user: User, desktop: Desktop,
                      client_ip: str, session_id: str) -> DesktopUnavailable:
        return exc.of_attempt(session_id)

    async def admit(self, user: User, desktop: Desktop) -> tuple[Endpoint, str | None]:
        return await self._endpoint(desktop), None

    async def watch(self, owner_id: int, desktop: Desktop) -> tuple[Endpoint, str | None]:
        return await self._endpoint(desktop), None

    def release(self, key: str | None) -> None:
        pass


def protocol_map(*, endpoint: Callable[[Desktop], Awaitable[Endpoint]],
                 bridges: RdpBridges | None, store: Store, box: SecretBox, audit: Audit,
                 store_credentials: bool, check_access: CheckAccess,
                 reach: Reach | None = None) -> dict[str, DesktopProtocol]:
    """Every protocol's adapter, by the name a desktop's ``protocol`` holds.

    ``endpoint``: a VNC desktop's endpoint from its provider (reached through its jump host,
    if any); the rest is RDP's (its bridges, what a person's own account needs, and ``reach``:
    how its bridges reach a server behind a jump host)."""
    adapters: dict[str, DesktopProtocol] = {
        "vnc": VncProtocol(endpoint),
        "rdp": RdpProtocol(bridges, store, box, audit, store_credentials=store_credentials,
                           check_access=check_access, reach=reach),
    }
    assert tuple(adapters) == PROTOCOLS
    return adapters
