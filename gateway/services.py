"""Use cases shared by the web pages, the REST API and the CLI: one service layer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from .audit import Audit, AuditKind
from .auth.guard import Attempt, LoginGuard
from .auth.local import LocalAccounts
from .auth.sessions import WebSessions
from .auth.totp import Enrolment, TotpFactor
from .crypto import SecretBox, new_password
from .errors import (
    AccountLocked,
    AuthenticationFailed,
    BadRequest,
    GatewayError,
    NotFound,
    SecondFactorFailed,
    TooManyRequests,
)
from .model import AuditEvent, Desktop, Secret, User, WebSession, WebSessionState
from .names import name_key
from .proxy.rfb import DesktopHandshake
from .rdp.options import rdp_options
from .store import Store

PROVIDER_NAMES = ("static", "local")


def desktop_name(name: str) -> str:
    """A desktop's name, checked: 1-64 printable characters once trimmed."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise BadRequest("desktop names are 1-64 printable characters")
    return name


ADDRESS_PROBE_SECONDS = 3.0


async def address_problem(desktop: Desktop, password: Secret | None, *,
                          timeout: float = ADDRESS_PROBE_SECONDS) -> str | None:
    """What is wrong at a static desktop's address, or None when its server answers.

    RDP: a TCP connect. VNC: a whole login, as a viewer would (shared, so nobody is
    disconnected), closed after ServerInit. A shorter check is not kinder: TigerVNC puts a mark
    against the peer for every connection that ends unauthenticated, even one closed right
    after the banner (measured: four such connections and a fifth, correct login is refused
    for a while), and a successful login clears the marks. A refused password is reported too.
    """
    async def check() -> str | None:
        try:
            reader, writer = await asyncio.open_connection(desktop.host, desktop.port)
        except ConnectionRefusedError:
            return "nothing answers (connection refused)"
        except OSError as exc:
            return f"nothing answers ({exc.strerror or type(exc).__name__})"
        try:
            if desktop.protocol != "vnc":
                return None
            handshake = DesktopHandshake(password)
            while not handshake.authenticated:
                data = await reader.read(4096)
                if not data:
                    raise handshake.eof_error()
                writer.write(handshake.feed(data))
            writer.write(handshake.client_init())
            while not handshake.done:
                data = await reader.read(65536)
                if not data:
                    raise handshake.eof_error()
                handshake.feed(data)
            return None
        except GatewayError as exc:
            return exc.reason
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return f"the connection failed ({exc.strerror or exc})"


@dataclass(frozen=True)
class SecondFactorResult:
    cookie: str
    web_session: WebSession
    recovery_codes: list[str] | None  # set once, right after enrolment


class Services:
    def __init__(self, store: Store, box: SecretBox, audit: Audit, accounts: LocalAccounts,
                 totp: TotpFactor, guard: LoginGuard, sessions: WebSessions) -> None:
        self.store = store
        self.box = box
        self.audit = audit
        self.accounts = accounts
        self.totp = totp
        self.guard = guard
        self.sessions = sessions

    # signing in --------------------------------------------------------------------------------
    async def sign_in_password(self, username: str, password: str, ip: str,
                               user_agent: str) -> tuple[str, WebSession, User]:
        known = await self.store.get_user_by_name(username)
        attempt = await self._reserve(known, ip, AuditKind.SIGNIN_FAILED, username[:64])
        try:
            try:
                user = await self.accounts.authenticate(known, password)
                if user.disabled:
                    raise AuthenticationFailed()
            except AuthenticationFailed:
                reason = ("unknown user" if known is None else
                          "account disabled" if known.disabled else "wrong password")
                await self.audit.record(AuditKind.SIGNIN_FAILED, user=username[:64],
                                        client_ip=ip, detail=reason)
                if attempt.failed():
                    await self.audit.record(AuditKind.LOCKOUT, user=username[:64], client_ip=ip)
                raise
            await attempt.passed(signed_in=False)  # the second factor is still to come
        finally:
            attempt.done()  # an error or a cancelled request: the reservation stays a failure
        cookie, ws = await self.sessions.create(user, WebSessionState.PASSWORD_OK, ip, user_agent)
        await self.audit.record(AuditKind.SIGNIN_OK, user=user.name, client_ip=ip,
                                detail="password")
        return cookie, ws, user

    async def _reserve(self, user: User | None, ip: str, failed: AuditKind,
                       name: str) -> Attempt:
        """Reserve the attempt before its check (see auth.guard); audit a refusal."""
        try:
            return await self.guard.reserve(user, ip)
        except TooManyRequests as exc:  # AccountLocked too
            kind, detail = failed, exc.reason
            if failed is AuditKind.SIGNIN_FAILED:
                kind, detail = ((AuditKind.SIGNIN_FAILED, "account locked")
                                if isinstance(exc, AccountLocked) else (AuditKind.THROTTLED, ""))
            await self.audit.record(kind, user=name, client_ip=ip, detail=detail)
            raise

    async def enrolment(self, user: User) -> Enrolment:
        return await self.totp.enrolment(user)

    async def second_factor(self, ws: WebSession, code: str, ip: str) -> SecondFactorResult:
        user = await self.store.get_user(ws.user_id)
        if user is None or user.disabled:
            raise AuthenticationFailed()
        attempt = await self._reserve(user, ip, AuditKind.SECOND_FACTOR_FAILED, user.name)
        codes: list[str] | None = None
        how = "totp"
        try:
            if not user.totp_enrolled:
                codes = await self.totp.confirm_enrolment(user, code)
                ok = codes is not None
                how = "totp enrolment"
            else:
                ok = await self.totp.verify(user, code)
                if not ok and await self.totp.use_recovery_code(user, code):
                    ok, how = True, "recovery code"
            if not ok:
                await self.audit.record(AuditKind.SECOND_FACTOR_FAILED, user=user.name,
                                        client_ip=ip, detail="wrong or reused code")
                if attempt.failed():
                    await self.audit.record(AuditKind.LOCKOUT, user=user.name, client_ip=ip)
                raise SecondFactorFailed()
            await attempt.passed(signed_in=True)
        finally:
            attempt.done()
        if codes is not None:
            await self.audit.record(AuditKind.SECOND_FACTOR_ENROLLED, user=user.name, client_ip=ip)
        if how == "recovery code":
            await self.audit.record(AuditKind.RECOVERY_CODE_USED, user=user.name, client_ip=ip)
        await self.audit.record(AuditKind.SECOND_FACTOR_OK, user=user.name, client_ip=ip,
                                detail=how)
        cookie, new_ws = await self.sessions.promote(ws, user)
        if codes is not None:
            # Kept for the new web session only, until the person says they saved them.
            await self.store.set_web_session_recovery_codes(
                new_ws.id, self.box.encrypt("\n".join(codes)))
        return SecondFactorResult(cookie, new_ws, codes)

    async def unsaved_recovery_codes(self, ws: WebSession) -> list[str] | None:
        """The recovery codes this web session was given and has not confirmed saving, if any."""
        enc = await self.store.get_web_session_recovery_codes(ws.id)
        return self.box.decrypt(enc).reveal().split("\n") if enc else None

    async def recovery_codes_saved(self, ws: WebSession) -> None:
        """The person saved their recovery codes: the gateway forgets them (only hashes stay)."""
        await self.store.set_web_session_recovery_codes(ws.id, None)

    async def sign_out(self, ws: WebSession, ip: str) -> None:
        user = await self.store.get_user(ws.user_id)
        await self.sessions.destroy(ws)
        await self.audit.record(AuditKind.SIGNOUT, user=user.name if user else None, client_ip=ip)

    # administration (CLI today, admin pages and API later) -------------------------------------
    async def add_user(self, name: str, *, admin: bool = False,
                       password: str | None = None) -> tuple[User, str | None]:
        """Create a local account. Returns the generated password when none was given."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise BadRequest("user names are 1-64 printable characters")
        generated = None
        if password is None:
            password = generated = new_password()
        self._check_password(password)
        pw_hash = await self.accounts.hash(password)
        user = await self.store.create_user(name, pw_hash, admin)
        await self.audit.record(AuditKind.ADMIN, user=name,
                                detail=f"user created{' (admin)' if admin else ''}")
        return user, generated

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password) < 8:
            raise BadRequest("passwords need at least 8 characters")

    async def user(self, ref: str) -> User:
        """The one account ``ref`` names: an exact user name that no other account's name looks
        like, or ``PROVIDER:SUBJECT`` (a single sign-on identity). A name that is ambiguous, or
        only looks like a user's name (``Admin``, ``аdmin`` for ``admin``), is refused with the
        candidates listed, so that nobody hands a desktop to an impostor by mistake."""
        users = await self.store.list_users()
        identities = await self.identities()
        exact = [u for u in users if u.name == ref]
        provider, colon, subject = ref.partition(":")
        linked = [u for u in users if colon and identities.get(u.id) == f"{provider}:{subject}"]
        key = name_key(ref)
        alike = [u for u in users if (u.name_key or name_key(u.name)) == key]
        if linked and all(u.id == linked[0].id for u in exact):
            return linked[0]
        if len(exact) == 1 and all(u.id == exact[0].id for u in alike):
            return exact[0]
        candidates = {u.id: u for u in [*exact, *linked, *alike]}
        if not candidates:
            raise NotFound(f"no user named {ref!r}")
        listed = "; ".join(self.describe(u, identities) for u in candidates.values())
        why = "is ambiguous" if exact or linked else "names no user exactly, but looks like"
        raise BadRequest(f"{ref!r} {why}: {listed}. Name the account by id (--user-id N) or"
                         " as PROVIDER:SUBJECT")

    async def user_by_id(self, user_id: int) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        return user

    async def identities(self) -> dict[int, str]:
        """user id -> "provider:subject" of the accounts made by single sign-on."""
        return {uid: f"{provider}:{subject}"
                for provider, subject, uid in await self.store.list_identities()}

    @staticmethod
    def describe(user: User, identities: Mapping[int, str]) -> str:
        """``#7 alice (corp:3f2a…)`` or ``#1 admin (local)``: who an account really is."""
        return f"#{user.id} {user.name} ({identities.get(user.id, user.source)})"

    async def set_password(self, name: str, password: str | None) -> str | None:
        user = await self.user(name)
        generated = None
        if password is None:
            password = generated = new_password()
        self._check_password(password)
        await self.store.set_password_hash(user.id, await self.accounts.hash(password))
        await self.store.clear_failures(user.id)
        await self.audit.record(AuditKind.ADMIN, user=name, detail="password changed")
        return generated

    async def add_desktop(self, name: str, provider: str, *, host: str = "", port: int = 0,
                          password: str | None = None, protocol: str = "vnc",
                          options: Mapping[str, str] | None = None) -> Desktop:
        name = desktop_name(name)
        if provider not in PROVIDER_NAMES:
            raise BadRequest(f"unknown provider {provider!r}; use one of {', '.join(PROVIDER_NAMES)}")
        if protocol not in ("vnc", "rdp") or (protocol == "rdp" and provider != "static"):
            raise BadRequest("protocol is vnc, or rdp for a static desktop")
        if provider == "static" and not (host and 0 < port < 65536):
            raise BadRequest(f"a static desktop needs --{protocol} HOST:PORT")
        checked = rdp_options(options or {}) if protocol == "rdp" else {}
        if checked.get("credentials") == "per_user" and password:
            raise BadRequest("a per-user RDP desktop has no shared password: each person"
                             " enters their own account")
        enc = self.box.encrypt(password) if password else None
        desktop = await self.store.create_desktop(name, provider, host, port, enc, protocol,
                                                  checked)
        extra = (f", certificates: {checked['cert_policy']}, credentials:"
                 f" {checked['credentials']}" if protocol == "rdp" else "")
        await self.audit.record(AuditKind.ADMIN, desktop=name,
                                detail=f"desktop created ({provider}, {protocol}{extra})")
        return desktop

    async def desktop(self, name: str) -> Desktop:
        desktop = await self.store.get_desktop_by_name(name)
        if desktop is None:
            raise NotFound(f"no desktop named {name!r}")
        return desktop

    async def assign(self, desktop_name: str, user_ref: str | None = None, *,
                     user_id: int | None = None) -> User:
        """Give a desktop to one account: by id, or by a reference :meth:`user` accepts."""
        desktop = await self.desktop(desktop_name)
        if user_id is not None:
            user = await self.user_by_id(user_id)
        elif user_ref is not None:
            user = await self.user(user_ref)
        else:
            raise BadRequest("name a user")
        await self.store.assign(desktop.id, user.id)
        who = self.describe(user, await self.identities())
        await self.audit.record(AuditKind.ADMIN, user=user.name, desktop=desktop.name,
                                detail=f"desktop assigned to {who}")
        return user

    async def assign_group(self, desktop_name: str, group: str) -> None:
        """Give a desktop to everyone in an identity provider's group."""
        group = group.strip()
        if not group or len(group) > 256:
            raise BadRequest("group names are 1-256 characters")
        desktop = await self.desktop(desktop_name)
        await self.store.assign_group(desktop.id, group)
        await self.audit.record(AuditKind.ADMIN, desktop=desktop_name,
                                detail=f"desktop assigned to group {group}")

    async def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        return await self.store.list_audit(limit=limit)
