"""Who may connect to what: a person's desktops, and the check before every connect.

The broker asks the same question at connect and at admission: it should ask it here (its own
``check_access``/``desktops_for`` go once it holds an ``Access``).
"""

from __future__ import annotations

import asyncio

from ..audit import Audit, AuditKind
from ..errors import NotFound
from ..model import Desktop, User
from ..store import Store
from .catalog import Catalog

# The one answer to a desktop id that is not the person's: missing and unassigned alike.
NO_SUCH_DESKTOP = "no such desktop"


class Access:
    def __init__(self, store: Store, audit: Audit, catalog: Catalog) -> None:
        self._store = store
        self._audit = audit
        self._catalog = catalog

    async def desktops_for(self, user: User) -> list[tuple[Desktop, str]]:
        """The user's desktops with their state as the provider sees it (asked concurrently)."""
        desktops = await self._store.desktops_for_user(user.id)
        states = await asyncio.gather(*(self._catalog.state(d) for d in desktops))
        return list(zip(desktops, states, strict=True))

    async def check_access(self, user: User, desktop_id: int, client_ip: str) -> Desktop:
        """The desktop, if it is assigned to ``user``; else NotFound. A desktop that exists but
        is not theirs and one that does not exist get the same answer, so that nobody learns
        which desktop ids exist by trying them (the audit trail tells the two apart)."""
        desktop = await self._store.get_desktop(desktop_id)
        if desktop is None or user.disabled or not await self._store.is_assigned(desktop.id,
                                                                                   user.id):
            await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                     desktop=desktop.name if desktop else None,
                                     client_ip=client_ip,
                                     detail=f"desktop {desktop_id}: "
                                            + ("not assigned" if desktop else "no such desktop"))
            raise NotFound(NO_SUCH_DESKTOP)
        return desktop
