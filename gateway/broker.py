"""Who may connect to what, and making sure the desktop runs. No HTTP in here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from .audit import Audit, AuditKind
from .cases.rdp_options_tmp import rdp_account
from .config import Settings
from .crypto import SecretBox, new_token
from .errors import (
    BadRequest,
    CredentialsRequired,
    DesktopUnavailable,
    Forbidden,
    GatewayError,
    NotFound,
    TicketError,
    TooManyRequests,
    UnderMaintenance,
)
from .keyboards import layout_of
from .live import LiveSessions
from .model import Desktop, Endpoint, RelayPolicy, Secret, Session, SessionState, User, WebSession
from .providers import PROVIDERS, DesktopProvider, DesktopSpec, ProviderContext, make_provider
from .providers.base import CachingState, Recovering
from .proxy.rdp import REASON_CREDENTIALS, BridgeError, RdpBridges, RdpTarget
from .store import Store
from .tickets import TicketBook

log = logging.getLogger("deskgate.broker")
# The one answer to a desktop id that is not the person's: missing and unassigned alike.
NO_SUCH_DESKTOP = "no such desktop"
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
    watch_of: str | None = None  # an admin's view-only watch of this live session
    bridge_key: str | None = None  # RDP: the bridge this connection holds (released at the end)


@dataclass(frozen=True)
class _PendingWatch:
    """A watch ticket minted and not yet used: what ``admit_watch`` needs."""

    target: Session
    owner: str
    client_ip: str
    user_agent: str
    minted_at: float


def stored_passwords(store: Store, box: SecretBox) -> Callable[[int], Awaitable[Secret | None]]:
    """A desktop's stored password by id (decrypted), for providers that must log in to probe."""
    async def lookup(desktop_id: int) -> Secret | None:
        enc = await store.get_desktop_password(desktop_id)
        return box.decrypt(enc) if enc else None
    return lookup


class Providers:
    """Provider instances by name, made on first use and closed on shutdown; and which desktops
    have a live session now (told by the broker)."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._providers: dict[str, DesktopProvider] = {}
        self._live: dict[int, set[str]] = {}

    def connected(self, desktop_id: int, session_id: str) -> None:
        self._live.setdefault(desktop_id, set()).add(session_id)

    def disconnected(self, desktop_id: int, session_id: str) -> None:
        sessions = self._live.get(desktop_id)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self._live[desktop_id]

    def unreachable(self, desktop_id: int) -> None:
        """A session could not reach the desktop: providers that cache its state ask again."""
        for provider in self._providers.values():
            if isinstance(provider, CachingState):
                provider.forget(desktop_id)

    async def state(self, spec: DesktopSpec) -> str:
        """"running" while a session to the desktop is live; else the provider's answer within
        a couple of seconds, else "unknown".

        Pages, the API and metrics all ask through here: a slow or broken provider must not
        hold any of them up.
        """
        if self._live.get(spec.id):
            return "running"
        try:
            async with asyncio.timeout(_STATE_TIMEOUT):
                return await self.get(spec.provider).state(spec)
        except TimeoutError:
            return "unknown"
        except Exception:  # a broken provider must not break the page asking
            log.exception("[desktop=%s] state query failed", spec.name)
            return "unknown"

    def get(self, name: str) -> DesktopProvider:
        if name not in self._providers:
            self._providers[name] = make_provider(name, self._ctx)
        return self._providers[name]

    async def recover(self) -> None:
        """Start-up: every provider that can takes over what an earlier run left running."""
        for name in PROVIDERS:
            provider = self.get(name)
            if isinstance(provider, Recovering):
                await provider.recover()

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()


def desktop_spec(desktop: Desktop, geometry: str, password: Secret | None = None) -> DesktopSpec:
    """A desktop as its provider sees it; ``password`` only where the provider connects."""
    return DesktopSpec(id=desktop.id, name=desktop.name, provider=desktop.provider,
                       host=desktop.host, port=desktop.port, password=password,
                       geometry=geometry, protocol=desktop.protocol)


def bridge_key(user_id: int, desktop_id: int) -> str:
    """One RDP bridge per person and desktop: reconnecting resumes the same remote session."""
    return f"{user_id}:{desktop_id}"


def per_user(desktop: Desktop) -> bool:
    """An RDP desktop where each person signs in with their own account."""
    return desktop.protocol == "rdp" and desktop.option("credentials", "shared") == "per_user"


# The 424 answer when a per-user desktop refused the person's stored account (now forgotten).
REASON_OWN_CREDENTIALS = (f"{REASON_CREDENTIALS}; your saved account for this desktop was"
                          " forgotten: enter it again")

# An account entered for one connection (not stored) waits this long for its connect; after
# that it lives only as long as the bridge it signed in.
ONE_CONNECTION_SECONDS = 120.0


@dataclass(frozen=True)
class _OneConnection:
    """A person's own account entered for one connection, kept in memory only (encrypted)."""

    username: str
    domain: str
    enc_password: str
    at: float
    used: bool = False  # a bridge signed in with it: it lives as long as that bridge only


# RDP failures that retrying cannot fix: the client shows them and stops.
_FINAL_BRIDGE_FAILURES = ("credentials", "certificate", "security")


class Broker:
    def __init__(self, store: Store, box: SecretBox, providers: Providers, tickets: TicketBook,
                 audit: Audit, settings: Settings, bridges: RdpBridges | None = None) -> None:
        self._store = store
        self.bridges = bridges
        self._box = box
        self._providers = providers
        self._tickets = tickets
        self._audit = audit
        self._settings = settings
        # Watch tickets minted, by watch id (watches are not stored: they are not sessions).
        self._watches: dict[str, _PendingWatch] = {}
        # One connect at a time per person, so that the open-sessions count cannot be raced.
        self._connecting: dict[int, asyncio.Lock] = {}
        self._one_connection: dict[tuple[int, int], _OneConnection] = {}

    async def spec(self, desktop: Desktop) -> DesktopSpec:
        """What a provider needs to connect: the spec with the desktop's password decrypted.
        (Asking for the state or starting a desktop needs no password: ``desktop_spec``.)"""
        enc = await self._store.get_desktop_password(desktop.id) if desktop.has_password else None
        return desktop_spec(desktop, self._settings.desktop_geometry,
                            self._box.decrypt(enc) if enc else None)

    async def desktops_for(self, user: User) -> list[tuple[Desktop, str]]:
        """The user's desktops with their state as the provider sees it (asked concurrently)."""
        desktops = await self._store.desktops_for_user(user.id)
        states = await asyncio.gather(*(self._state(d) for d in desktops))
        return list(zip(desktops, states, strict=True))

    async def _state(self, desktop: Desktop) -> str:
        return await self._providers.state(desktop_spec(desktop, self._settings.desktop_geometry))

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

    async def connect(self, user: User, web_session: WebSession, desktop_id: int,
                      client_ip: str, user_agent: str = "", width: int = 0,
                      height: int = 0, retry_of: str | None = None) -> tuple[Session, str]:
        """Policy check, record the attempt, make the desktop reachable, mint a ticket.

        ``retry_of``: the session id of the client's previous try. When that was a failed
        attempt of this person, desktop and web session, this try continues it (same row, one
        more try) instead of recording a new attempt; anything else starts a new one.

        At most ``max_sessions_per_user`` open sessions (starting or active) per person:
        beyond it, TooManyRequests (429) before anything starts."""
        desktop = await self.check_access(user, desktop_id, client_ip)
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
        # A per-user desktop without this person's account: ask for it before anything starts.
        target = await self.rdp_target(desktop, user.id) if desktop.protocol == "rdp" else None
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
                await self._providers.get(desktop.provider).ensure_running(
                    desktop_spec(desktop, self._settings.desktop_geometry))
            except DesktopUnavailable as exc:
                await self._failed(session, exc.reason, final=False, user=user.name,
                                   desktop=desktop.name)
                exc.session_id = session.id  # the client's retry continues this attempt
                raise
            if target is not None:
                await self._start_bridge(user, desktop, target, session, width, height)
        except DesktopUnavailable:
            raise  # recorded above (the bridge's failures in _start_bridge)
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
            await asyncio.shield(self._failed(session, reason, final=isinstance(exc, Forbidden),
                                              user=user.name))
            raise

    async def _admission(self, session: Session, user: User) -> Admission:
        desktop = await self.check_access(user, session.desktop_id, session.client_ip)
        policy = RelayPolicy(max_clipboard_bytes=self._settings.max_clipboard_bytes)
        if desktop.protocol == "rdp":
            # The bridge started at connect; this holds it (and resumes it after a grace stop).
            key = bridge_key(user.id, desktop.id)
            endpoint = await self._rdp_bridges().acquire(key,
                                                         await self.rdp_target(desktop, user.id))
            return Admission(session, user, desktop, endpoint, policy, bridge_key=key)
        endpoint = await self._providers.get(desktop.provider).endpoint(await self.spec(desktop))
        return Admission(session, user, desktop, endpoint, policy)

    def _rdp_bridges(self) -> RdpBridges:
        if self.bridges is None:
            raise DesktopUnavailable("this gateway does not bridge RDP")
        return self.bridges

    async def rdp_target(self, desktop: Desktop, user_id: int) -> RdpTarget:
        """The server and the account the bridge of ``user_id`` signs in with: the desktop's
        shared account, or (per-user desktop) that person's own, else CredentialsRequired."""
        if per_user(desktop):
            stored = self._entered_for_one_connection(user_id, desktop.id)
            if stored is None and self._settings.rdp_store_credentials:
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

    async def _start_bridge(self, user: User, desktop: Desktop, target: RdpTarget,
                            session: Session, width: int, height: int) -> None:
        """Start the RDP bridge before any ticket exists, so that a wrong password, an
        unreachable server or a refused certificate is the answer to the click itself."""
        bridges = self._rdp_bridges()
        key = bridge_key(user.id, desktop.id)
        geometry = self._settings.desktop_geometry.split("x")
        w = width if 16 <= width <= 8192 else int(geometry[0])
        h = height if 16 <= height <= 8192 else int(geometry[1])
        try:
            await bridges.acquire(key, target, w, h)
        except BridgeError as exc:
            final = exc.kind in _FINAL_BRIDGE_FAILURES
            client_ip = session.client_ip
            await self._failed(session, exc.reason, final=final, user=user.name,
                               desktop=desktop.name, where="rdp bridge: ")
            if exc.kind == "credentials" and per_user(desktop):
                # The next attempt asks for the account again instead of repeating this one.
                self._one_connection.pop((user.id, desktop.id), None)
                await self._forget(user, desktop, client_ip, "refused by the desktop")
                exc = BridgeError(REASON_OWN_CREDENTIALS, "credentials")
                exc.asks_for_credentials = True
            if final:
                exc.http_status = 424  # the client shows it and does not retry
            exc.session_id = session.id  # a retry continues this attempt
            raise exc
        entry = self._one_connection.get((user.id, desktop.id))
        if entry is not None:
            self._one_connection[(user.id, desktop.id)] = replace(entry, used=True)
        # The ticket's holder acquires it again at admission; until then (and if the ticket is
        # never used) the bridge runs on the reconnect grace timer.
        bridges.release(key)

    # a person's own account on a per-user RDP desktop --------------------------------------------
    async def save_credentials(self, user: User, desktop_id: int, client_ip: str, *,
                               username: str, domain: str, password: str,
                               remember: bool = True) -> bool:
        """The person's own account for a per-user desktop assigned to them: stored (encrypted)
        when ``remember`` and ``[rdp] rdp_store_credentials`` allow, else kept in memory for
        the next connection only (and its bridge's life). Returns whether it was stored."""
        desktop = await self.check_access(user, desktop_id, client_ip)
        if not per_user(desktop):
            raise BadRequest("this desktop signs in with its own account")
        username, domain, password = rdp_account(username, domain, password)
        enc = self._box.encrypt(password)
        if remember and self._settings.rdp_store_credentials:
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

    def _entered_for_one_connection(self, user_id: int,
                                     desktop_id: int) -> tuple[str, str, str] | None:
        """An account entered for one connection: fresh, or its bridge still runs; else gone."""
        entry = self._one_connection.get((user_id, desktop_id))
        if entry is None:
            return None
        fresh = not entry.used and time.monotonic() - entry.at < ONE_CONNECTION_SECONDS
        if fresh or (self.bridges is not None
                     and self.bridges.running(bridge_key(user_id, desktop_id))):
            return entry.username, entry.domain, entry.enc_password
        del self._one_connection[(user_id, desktop_id)]
        return None

    async def forget_credentials(self, user: User, desktop_id: int, client_ip: str) -> bool:
        """Forget the person's stored account for a desktop; False when none was stored."""
        desktop = await self.check_access(user, desktop_id, client_ip)
        in_memory = self._one_connection.pop((user.id, desktop.id), None) is not None
        return await self._forget(user, desktop, client_ip, "by the user") or in_memory

    async def _forget(self, user: User, desktop: Desktop, client_ip: str, why: str) -> bool:
        if not await self._store.delete_user_credentials(user.id, desktop.id):
            return False
        await self._audit.record(AuditKind.CREDENTIALS, user=user.name, desktop=desktop.name,
                                 client_ip=client_ip, detail=f"credentials forgotten ({why})")
        return True

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
        key = None
        if desktop.protocol == "rdp":  # watch the person's own bridge display
            key = bridge_key(pending.target.user_id, desktop.id)
            # The watched person's running bridge as it is (per-user desktop: their account); a
            # watch never starts or replaces a bridge, so it needs no account of its own.
            endpoint = await self._rdp_bridges().attach(key)
        else:
            endpoint = await self._providers.get(desktop.provider).endpoint(
                await self.spec(desktop))
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

    def unreachable(self, desktop_id: int) -> None:
        self._providers.unreachable(desktop_id)

    async def finish(self, admission: Admission, reason: str, *, final: bool, bytes_up: int,
                     bytes_down: int, client_ip: str) -> None:
        self._providers.disconnected(admission.session.desktop_id, admission.session.id)
        if admission.bridge_key is not None and self.bridges is not None:
            self.bridges.release(admission.bridge_key)
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
