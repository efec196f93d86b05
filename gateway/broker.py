"""Who may connect to what, and making sure the desktop runs. No HTTP in here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .audit import Audit, AuditKind
from .cases.access import Access
from .config import Settings
from .crypto import SecretBox, new_token
from .errors import (
    DesktopUnavailable,
    Forbidden,
    GatewayError,
    NotFound,
    TicketError,
    TooManyRequests,
    UnderMaintenance,
)
from .live import LiveSessions
from .model import (
    Admission,
    Desktop,
    Endpoint,
    Reach,
    RelayPolicy,
    Session,
    SessionState,
    User,
    WebSession,
    window_size,
)
from .protocols import DesktopProtocol, Start, protocol_map
from .providers import DesktopSpec
from .providers.registry import Providers, desktop_spec
from .rdp.accounts import RdpAccounts
from .rdp.adapter import RdpProtocol
from .rdp.bridges import RdpBridges
from .store import Store
from .tickets import TicketBook

log = logging.getLogger("deskgate.broker")


@dataclass(frozen=True)
class _PendingWatch:
    """A watch ticket minted and not yet used: what ``admit_watch`` needs."""

    target: Session
    owner: str
    client_ip: str
    user_agent: str
    minted_at: float


class Broker:
    def __init__(self, store: Store, box: SecretBox, providers: Providers, tickets: TicketBook,
                 audit: Audit, settings: Settings, access: Access,
                 bridges: RdpBridges | None = None,
                 ready: Callable[[Desktop], Awaitable[None]] | None = None,
                 view_only: Callable[[User], Awaitable[bool]] | None = None,
                 reach: Reach | None = None,
                 lost: Callable[[Desktop, GatewayError], GatewayError] | None = None) -> None:
        self._store = store
        self._access = access
        self._box = box
        self._providers = providers
        self._tickets = tickets
        self._audit = audit
        self._settings = settings
        # Makes a desktop answer before its ticket is minted (desktop VMs: start on connect,
        # gateway/cases/vms.py); by default its provider's ensure_running.
        self._ready = ready or self._ensure_running
        # Whether this account's connections are view-only whatever the desktop (a dedicated
        # kiosk without input, gateway/cases/kiosks.py); by default none is.
        self._view_only = view_only
        # How the gateway reaches a provider's endpoint (through an SSH host for a desktop behind
        # a jump host, gateway/cases/ssh_hosts.py); by default directly.
        self._reach = reach
        # Why a desktop's connection ended, when the way to it knows better than the byte path
        # (its SSH host's connection was lost); by default what the byte path said.
        self._lost = lost
        # Watch tickets minted, by watch id (watches are not stored: they are not sessions).
        self._watches: dict[str, _PendingWatch] = {}
        # One connect at a time per person, so that the open-sessions count cannot be raced.
        self._connecting: dict[int, asyncio.Lock] = {}
        # What differs by protocol (gateway/protocols.py): never a branch on it here.
        self._protocols = protocol_map(
            endpoint=self._provider_endpoint, bridges=bridges, store=store, box=box, audit=audit,
            store_credentials=settings.rdp_store_credentials, check_access=access.check_access,
            reach=reach)
        rdp = self._protocols["rdp"]
        assert isinstance(rdp, RdpProtocol)
        self._rdp = rdp
        # A person's own account on a per-user RDP desktop (the web handlers save and forget it).
        self.rdp_accounts: RdpAccounts = rdp.accounts

    @property
    def bridges(self) -> RdpBridges | None:
        """This node's RDP bridges (None: it bridges none)."""
        return self._rdp.bridges

    @bridges.setter
    def bridges(self, bridges: RdpBridges | None) -> None:
        self._rdp.bridges = bridges

    def _protocol(self, desktop: Desktop) -> DesktopProtocol:
        try:
            return self._protocols[desktop.protocol]
        except KeyError:
            raise DesktopUnavailable(f"this gateway does not serve {desktop.protocol}"
                                     " desktops") from None

    async def _provider_endpoint(self, desktop: Desktop) -> Endpoint:
        """Where the desktop's provider says it listens (with its password decrypted)."""
        endpoint = await self._providers.get(desktop.provider).endpoint(await self.spec(desktop))
        return endpoint if self._reach is None else await self._reach(desktop, endpoint)

    async def _ensure_running(self, desktop: Desktop) -> None:
        await self._providers.get(desktop.provider).ensure_running(
            desktop_spec(desktop, self._settings.desktop_geometry))

    async def spec(self, desktop: Desktop) -> DesktopSpec:
        """What a provider needs to connect: the spec with the desktop's password decrypted.
        (Asking for the state or starting a desktop needs no password: ``desktop_spec``.)"""
        enc = await self._store.get_desktop_password(desktop.id) if desktop.has_password else None
        return desktop_spec(desktop, self._settings.desktop_geometry,
                            self._box.decrypt(enc) if enc else None)

    async def connect(self, user: User, web_session: WebSession, desktop_id: int,
                      client_ip: str, user_agent: str = "", width: int = 0,
                      height: int = 0, retry_of: str | None = None) -> tuple[Session, str]:
        """Policy check, record the attempt, make the desktop reachable, mint a ticket.

        ``retry_of``: the session id of the client's previous try. When that was a failed
        attempt of this person, desktop and web session, this try continues it (same row, one
        more try) instead of recording a new attempt; anything else starts a new one.

        At most ``max_sessions_per_user`` open sessions (starting or active) per person:
        beyond it, TooManyRequests (429) before anything starts."""
        desktop = await self._access.check_access(user, desktop_id, client_ip)
        # A lock per person who ever connected (kept: dropping one could let two connects in).
        async with self._connecting.setdefault(user.id, asyncio.Lock()):
            limit = self._settings.max_sessions_per_user
            if len(await self._store.list_sessions(active_only=True, user_id=user.id,
                                                   limit=limit)) >= limit:
                await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                         desktop=desktop.name, client_ip=client_ip,
                                         detail="session limit")
                raise TooManyRequests(
                    f"you already have {limit} desktop connections open, the most one person"
                    " may have; close one and try again")
            return await self._connect(user, web_session, desktop, client_ip, user_agent,
                                       width, height, retry_of)

    async def _connect(self, user: User, web_session: WebSession, desktop: Desktop,
                       client_ip: str, user_agent: str, width: int, height: int,
                       retry_of: str | None) -> tuple[Session, str]:
        if desktop.maintenance:
            await self._audit.record(AuditKind.CONNECT_DENIED, user=user.name,
                                     desktop=desktop.name, client_ip=client_ip,
                                     detail="maintenance")
            raise UnderMaintenance()
        # Before anything is recorded: a protocol may refuse at once (RDP: a per-user desktop
        # without this person's account asks for it).
        protocol = self._protocol(desktop)
        start = await protocol.prepare(user, desktop)
        now, user_agent = time.time(), user_agent[:300]
        session = None
        if retry_of:
            session = await self._store.retry_session(
                retry_of, user_id=user.id, desktop_id=desktop.id, web_session_id=web_session.id,
                started_at=now, client_ip=client_ip, user_agent=user_agent)
        if session is None:
            session = Session(id=new_token(12), user_id=user.id, desktop_id=desktop.id,
                              web_session_id=web_session.id, state=SessionState.STARTING,
                              started_at=now, client_ip=client_ip, user_agent=user_agent)
            await self._store.create_session(session)
        try:
            try:
                await self._ready(desktop)
            except DesktopUnavailable as exc:
                await self._failed(session, exc.reason, final=exc.final, user=user.name,
                                   desktop=desktop.name)
                # The client's retry (unless final) continues this attempt.
                raise exc.of_attempt(session.id) from None
            if start is not None:
                await self._start(protocol, start, user, desktop, session, width, height)
        except DesktopUnavailable:
            raise  # recorded above (the protocol's failures in _start)
        except BaseException:
            # Anything else (a provider's bug, the request cancelled): no row stays "starting".
            await asyncio.shield(self._failed(session, "the connection could not be prepared",
                                              final=False, user=user.name, desktop=desktop.name))
            raise
        ticket = self._tickets.mint(user_id=user.id, web_session_id=web_session.id,
                                    desktop_id=desktop.id, session_id=session.id)
        return session, ticket

    async def _failed(self, session: Session, reason: str, *, final: bool,
                      user: str | None = None, desktop: str | None = None,
                      where: str = "") -> bool:
        """A try that never reached the desktop: its attempt is recorded as failed (``reason``,
        as the person is told), with one audit event for the whole attempt (at its first failed
        try, not at each retry; ``where`` it failed prefixes the audit's detail).
        False when the session was not starting (it reached the desktop, or has ended)."""
        tries = await self._store.fail_session(session.id, time.time(), reason, final)
        if tries is None:
            return False
        if tries > 1:
            return True  # a retry of an attempt that failed (and was audited) before
        if user is None or desktop is None:
            user, desktop = await self._names(session)
        await self._audit.record(AuditKind.CONNECT_FAILED, user=user, desktop=desktop,
                                 client_ip=session.client_ip,
                                 detail=f"session {session.id}: {where}{reason}")
        return True

    async def _names(self, session: Session) -> tuple[str, str]:
        """The user's and the desktop's names of a session, for audit rows."""
        owner = await self._store.get_user(session.user_id)
        desktop = await self._store.get_desktop(session.desktop_id)
        return (owner.name if owner else f"#{session.user_id}",
                desktop.name if desktop else f"#{session.desktop_id}")

    async def admit(self, ticket: str, *, session_id: str, user: User,
                    web_session: WebSession) -> Admission:
        """Consume the ticket (once) and resolve the desktop's endpoint. Fails closed; once the
        ticket is spent, a failure records the attempt as failed, with its reason."""
        self._tickets.consume(ticket, user_id=user.id, web_session_id=web_session.id,
                              session_id=session_id)
        session = await self._store.get_session(session_id)
        if session is None or session.state is not SessionState.STARTING:
            raise TicketError("this connection session is no longer open")
        try:
            return await self._admission(session, user)
        except BaseException as exc:
            reason = exc.reason if isinstance(exc, GatewayError) else (
                "the connection to the browser was lost" if isinstance(
                    exc, asyncio.CancelledError) else "internal error in the gateway")
            final = isinstance(exc, GatewayError) and exc.final
            await asyncio.shield(self._failed(session, reason, final=final, user=user.name))
            raise

    async def _admission(self, session: Session, user: User) -> Admission:
        desktop = await self._access.check_access(user, session.desktop_id, session.client_ip)
        view_only = self._view_only is not None and await self._view_only(user)
        # Enforced by the byte path: no keys, pointer or clipboard from a view-only connection.
        policy = RelayPolicy(view_only=view_only, clipboard_to_desktop=not view_only,
                             max_clipboard_bytes=self._settings.max_clipboard_bytes)
        endpoint, key = await self._protocol(desktop).admit(user, desktop)
        return Admission(session, user, desktop, endpoint, policy, bridge_key=key)

    async def _start(self, protocol: DesktopProtocol, start: Start, user: User,
                     desktop: Desktop, session: Session, width: int, height: int) -> None:
        """The protocol's work before any ticket exists (RDP: the bridge), so that a wrong
        password, an unreachable server or a refused certificate is the answer to the click
        itself; its failure is recorded, and answered as the protocol says."""
        geometry = self._settings.desktop_geometry.split("x")
        w, h = window_size(width, height) or (int(geometry[0]), int(geometry[1]))
        try:
            await start(w, h)
        except DesktopUnavailable as exc:
            await self._failed(session, exc.reason, final=exc.final, user=user.name,
                               desktop=desktop.name, where=protocol.where)
            raise await protocol.refused(exc, user, desktop, session.client_ip,
                                         session.id) from None

    async def watch(self, admin: User, web_session: WebSession, target_id: str,
                    live: LiveSessions, client_ip: str, user_agent: str = "") -> tuple[str, str]:
        """A ticket for an admin's view-only watch of a live session: (watch id, ticket).

        Deny by default: only an enabled admin, only a session relaying now on this gateway.
        """
        if not admin.is_admin or admin.disabled:
            raise Forbidden("only administrators may watch sessions")
        target = await self._store.get_session(target_id)
        running = live.get(target_id)
        if target is None or running is None or running.watch_of is not None:
            raise NotFound("no such live session on this gateway")
        watch_id = "w" + new_token(12)
        self._watches[watch_id] = _PendingWatch(target, running.user_name, client_ip,
                                                user_agent[:300], time.time())
        ticket = self._tickets.mint(user_id=admin.id, web_session_id=web_session.id,
                                    desktop_id=target.desktop_id, session_id=watch_id)
        await self._audit.record(AuditKind.ADMIN, user=running.user_name,
                                 desktop=running.desktop_name, client_ip=client_ip,
                                 detail=f"session {target_id} watched (by {admin.name})")
        return watch_id, ticket

    async def admit_watch(self, ticket: str, *, watch_id: str, user: User,
                          web_session: WebSession, live: LiveSessions) -> Admission:
        """Consume a watch ticket: a view-only admission to the watched session's desktop."""
        self._tickets.consume(ticket, user_id=user.id, web_session_id=web_session.id,
                              session_id=watch_id)
        pending = self._watches.pop(watch_id, None)
        if pending is None:
            raise TicketError("this watch is no longer open")
        if not user.is_admin or user.disabled:
            raise Forbidden("only administrators may watch sessions")
        if live.get(pending.target.id) is None:
            raise NotFound("the watched session has ended")
        desktop = await self._store.get_desktop(pending.target.desktop_id)
        if desktop is None:
            raise NotFound("no such desktop")
        endpoint, key = await self._protocol(desktop).watch(pending.target.user_id, desktop)
        # Enforced by the byte path: no keys, pointer, clipboard, resize or power from a watcher.
        policy = RelayPolicy(view_only=True, clipboard_to_desktop=False,
                             max_clipboard_bytes=self._settings.max_clipboard_bytes)
        session = Session(id=watch_id, user_id=user.id, desktop_id=desktop.id,
                          web_session_id=web_session.id, state=SessionState.ACTIVE,
                          started_at=pending.minted_at, client_ip=pending.client_ip,
                          user_agent=pending.user_agent)
        return Admission(session, user, desktop, endpoint, policy, watch_of=pending.target.id,
                         bridge_key=key)

    async def started(self, session: Session) -> None:
        """The connection reached the desktop (RFB handshake done): a session, audited as such."""
        self._providers.connected(session.desktop_id, session.id)
        await self._store.set_session_state(session.id, SessionState.ACTIVE)
        user, desktop = await self._names(session)
        await self._audit.record(
            AuditKind.CONNECT, user=user, desktop=desktop, client_ip=session.client_ip,
            detail=f"session {session.id}"
                   + (f" (after {session.tries} tries)" if session.tries > 1 else ""))

    def upstream_lost(self, admission: Admission, exc: GatewayError) -> GatewayError:
        return exc if self._lost is None else self._lost(admission.desktop, exc)

    def unreachable(self, desktop_id: int) -> None:
        self._providers.unreachable(desktop_id)

    async def finish(self, admission: Admission, reason: str, *, final: bool, bytes_up: int,
                     bytes_down: int, client_ip: str) -> None:
        self._providers.disconnected(admission.session.desktop_id, admission.session.id)
        self._protocol(admission.desktop).release(admission.bridge_key)
        if admission.watch_of is not None:
            await self._audit.record(
                AuditKind.ADMIN, desktop=admission.desktop.name, client_ip=client_ip,
                detail=f"watch of session {admission.watch_of} ended: {reason}"
                       f" (by {admission.user.name})")
            return
        session = admission.session
        if not await self._store.close_session(session.id, time.time(), reason, final,
                                               bytes_up, bytes_down):
            # It never reached the desktop: a failed attempt (audited once), not a session.
            await self._failed(session, reason, final=final, user=admission.user.name,
                               desktop=admission.desktop.name)
            return
        await self._audit.record(
            AuditKind.DISCONNECT, user=admission.user.name, desktop=admission.desktop.name,
            client_ip=client_ip,
            detail=f"session {admission.session.id}: {reason}; {bytes_up} B up, {bytes_down} B down")

    async def expire_unused_tickets(self) -> None:
        for session_id in self._tickets.expired_sessions():
            if self._watches.pop(session_id, None) is not None:
                continue
            session = await self._store.get_session(session_id)
            if session is not None:
                await self._failed(session, "connection ticket not used", final=False)
