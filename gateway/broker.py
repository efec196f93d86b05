"""Who may connect to what, and making sure the desktop runs. No HTTP in here."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .audit import Audit, AuditKind
from .config import Settings
from .crypto import SecretBox, new_token
from .errors import DesktopUnavailable, Forbidden, NotFound, TicketError
from .model import Desktop, Endpoint, RelayPolicy, Session, SessionState, User, WebSession
from .providers import DesktopProvider, DesktopSpec, ProviderContext, make_provider
from .store import Store
from .tickets import TicketBook

log = logging.getLogger("deskgate.broker")
# The portal waits at most this long for a desktop to say whether it runs.
_STATE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Admission:
    """What the websocket handler needs once a ticket has been consumed."""

    session: Session
    user: User
    desktop: Desktop
    endpoint: Endpoint
    policy: RelayPolicy


class Providers:
    """Provider instances by name, made on first use and closed on shutdown."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._providers: dict[str, DesktopProvider] = {}

    def get(self, name: str) -> DesktopProvider:
        if name not in self._providers:
            self._providers[name] = make_provider(name, self._ctx)
        return self._providers[name]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()


class Broker:
    def __init__(self, store: Store, box: SecretBox, providers: Providers, tickets: TicketBook,
                 audit: Audit, settings: Settings) -> None:
        self._store = store
        self._box = box
        self._providers = providers
        self._tickets = tickets
        self._audit = audit
        self._settings = settings
        # What the last session to each desktop saw, for providers that cannot tell by themselves.
        self._seen: dict[int, str] = {}

    async def spec(self, desktop: Desktop) -> DesktopSpec:
        enc = await self._store.get_desktop_password(desktop.id) if desktop.has_password else None
        return DesktopSpec(id=desktop.id, name=desktop.name, provider=desktop.provider,
                           host=desktop.host, port=desktop.port,
                           password=self._box.decrypt(enc) if enc else None,
                           geometry=self._settings.desktop_geometry, protocol=desktop.protocol)

    async def desktops_for(self, user: User) -> list[tuple[Desktop, str]]:
        """The user's desktops with their state as the provider sees it (asked concurrently)."""
        desktops = await self._store.desktops_for_user(user.id)
        states = await asyncio.gather(*(self._state(d) for d in desktops))
        return list(zip(desktops, states, strict=True))

    async def _state(self, desktop: Desktop) -> str:
        try:
            async with asyncio.timeout(_STATE_TIMEOUT):
                state = await self._providers.get(desktop.provider).state(await self.spec(desktop))
        except TimeoutError:
            state = "unknown"
        except Exception:  # a broken provider must not break the portal
            log.exception("[desktop=%s] state query failed", desktop.name)
            state = "unknown"
        return self._seen.get(desktop.id, state) if state == "unknown" else state

    async def check_access(self, user: User, desktop_id: int, client_ip: str) -> Desktop:
        desktop = await self._store.get_desktop(desktop_id)
        if desktop is None:
            raise NotFound("no such desktop")
        if user.disabled or not await self._store.is_assigned(desktop.id, user.id):
            await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                     desktop=desktop.name, client_ip=client_ip,
                                     detail="not assigned")
            raise Forbidden("this desktop is not assigned to you")
        return desktop

    async def connect(self, user: User, web_session: WebSession, desktop_id: int,
                      client_ip: str, user_agent: str = "") -> tuple[Session, str]:
        """Policy check, make the desktop reachable, record a session, mint a ticket."""
        desktop = await self.check_access(user, desktop_id, client_ip)
        if desktop.maintenance:
            await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                     desktop=desktop.name, client_ip=client_ip,
                                     detail="maintenance")
            raise DesktopUnavailable("this desktop is under maintenance; try again later")
        try:
            await self._providers.get(desktop.provider).ensure_running(await self.spec(desktop))
        except DesktopUnavailable as exc:
            await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                     desktop=desktop.name, client_ip=client_ip, detail=exc.reason)
            raise
        session = Session(id=new_token(12), user_id=user.id, desktop_id=desktop.id,
                          web_session_id=web_session.id, state=SessionState.STARTING,
                          started_at=time.time(), client_ip=client_ip,
                          user_agent=user_agent[:300])
        await self._store.create_session(session)
        ticket = self._tickets.mint(user_id=user.id, web_session_id=web_session.id,
                                    desktop_id=desktop.id, session_id=session.id)
        await self._audit.record(AuditKind.CONNECT, user=user.name, desktop=desktop.name,
                                 client_ip=client_ip, detail=f"session {session.id}")
        return session, ticket

    async def admit(self, ticket: str, *, session_id: str, user: User,
                    web_session: WebSession) -> Admission:
        """Consume the ticket (once) and resolve the desktop's endpoint. Fails closed."""
        self._tickets.consume(ticket, user_id=user.id, web_session_id=web_session.id,
                              session_id=session_id)
        session = await self._store.get_session(session_id)
        if session is None or session.state is not SessionState.STARTING:
            raise TicketError("this connection session is no longer open")
        desktop = await self.check_access(user, session.desktop_id, session.client_ip)
        endpoint = await self._providers.get(desktop.provider).endpoint(await self.spec(desktop))
        policy = RelayPolicy(max_clipboard_bytes=self._settings.max_clipboard_bytes)
        return Admission(session, user, desktop, endpoint, policy)

    async def started(self, session: Session) -> None:
        self._seen[session.desktop_id] = "running"
        await self._store.set_session_state(session.id, SessionState.ACTIVE)

    def unreachable(self, desktop_id: int) -> None:
        self._seen[desktop_id] = "stopped"

    async def finish(self, admission: Admission, reason: str, *, final: bool, bytes_up: int,
                     bytes_down: int, client_ip: str) -> None:
        await self._store.close_session(admission.session.id, time.time(), reason, final,
                                        bytes_up, bytes_down)
        await self._audit.record(
            AuditKind.DISCONNECT, user=admission.user.name, desktop=admission.desktop.name,
            client_ip=client_ip,
            detail=f"session {admission.session.id}: {reason}; {bytes_up} B up, {bytes_down} B down")

    async def expire_unused_tickets(self) -> None:
        for session_id in self._tickets.expired_sessions():
            await self._store.close_session(session_id, time.time(), "connection ticket not used",
                                            False, 0, 0)
