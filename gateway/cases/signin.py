"""Signing in with a password, the second factor (TOTP, its enrolment, recovery codes), and
signing out.

Sign-in steps are not changes by an actor (nobody is signed in yet): each records what happened
to the attempt, a failure with its reason code (``gateway.audit.SIGNIN_CODES``) for metrics, and
when the guard locks the account, the lockout as an event of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audit import Audit, AuditKind
from ..auth.guard import Attempt, LoginGuard
from ..auth.local import LocalAccounts
from ..auth.sessions import WebSessions
from ..auth.totp import Enrolment, TotpFactor
from ..crypto import SecretBox
from ..errors import AccountLocked, AuthenticationFailed, SecondFactorFailed, TooManyRequests
from ..model import Kiosk, User, WebSession, WebSessionState
from ..store import Store
from .actor import Actor


@dataclass(frozen=True)
class SecondFactorResult:
    cookie: str
    web_session: WebSession
    recovery_codes: list[str] | None  # set once, right after enrolment


class SignIn:
    def __init__(self, store: Store, box: SecretBox, audit: Audit, accounts: LocalAccounts,
                 totp: TotpFactor, guard: LoginGuard, sessions: WebSessions) -> None:
        self._store = store
        self._box = box
        self._audit = audit
        self._accounts = accounts
        self.totp = totp
        self._guard = guard
        self.sessions = sessions  # web sessions: the middleware loads and ends them

    async def user_of(self, ws: WebSession) -> User | None:
        """The web session's account, or None when it was disabled or deleted since."""
        user = await self._store.get_user(ws.user_id)
        return None if user is None or user.disabled else user

    async def sign_in_password(self, username: str, password: str, ip: str,
                               user_agent: str, *, kiosk: Kiosk | None = None
                               ) -> tuple[str, WebSession, User]:
        """The password step. ``kiosk``: the shared kiosk this happens on (its proven grant was
        spent); the web session is bound to it."""
        known = await self._store.get_user_by_name(username)
        attempt = await self._reserve(known, ip, AuditKind.SIGNIN_FAILED, username[:64])
        try:
            try:
                user = await self._accounts.authenticate(known, password)
                if user.disabled:
                    raise AuthenticationFailed()
            except AuthenticationFailed:
                reason, code = (("unknown user", "unknown_user") if known is None else
                                ("account disabled", "disabled") if known.disabled else
                                ("wrong password", "password"))
                await self._audit.record(AuditKind.SIGNIN_FAILED, user=username[:64],
                                         client_ip=ip, detail=reason, code=code)
                if attempt.failed():
                    await self._audit.record(AuditKind.LOCKOUT, user=username[:64], client_ip=ip)
                raise
            await attempt.passed(signed_in=False)  # the second factor is still to come
        finally:
            attempt.done()  # an error or a cancelled request: the reservation stays a failure
        cookie, ws = await self.sessions.create(user, WebSessionState.PASSWORD_OK, ip, user_agent,
                                                kiosk_id=None if kiosk is None else kiosk.id)
        await self._audit.record(AuditKind.SIGNIN_OK, user=user.name, client_ip=ip,
                                 detail="password" + ("" if kiosk is None
                                                      else f" on kiosk {kiosk.name!r}"))
        return cookie, ws, user

    async def _reserve(self, user: User | None, ip: str, failed: AuditKind,
                       name: str) -> Attempt:
        """Reserve the attempt before its check (see auth.guard); audit a refusal."""
        try:
            return await self._guard.reserve(user, ip)
        except TooManyRequests as exc:  # AccountLocked too
            kind, detail, code = failed, exc.reason, "second_factor"
            if failed is AuditKind.SIGNIN_FAILED:
                kind, detail, code = ((AuditKind.SIGNIN_FAILED, "account locked", "locked")
                                      if isinstance(exc, AccountLocked)
                                      else (AuditKind.THROTTLED, "", "throttled"))
            await self._audit.record(kind, user=name, client_ip=ip, detail=detail, code=code)
            raise

    async def enrolment(self, user: User) -> Enrolment:
        return await self.totp.enrolment(user)

    async def second_factor(self, ws: WebSession, code: str, ip: str) -> SecondFactorResult:
        user = await self._store.get_user(ws.user_id)
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
                await self._audit.record(AuditKind.SECOND_FACTOR_FAILED, user=user.name,
                                         client_ip=ip, detail="wrong or reused code",
                                         code="second_factor")
                if attempt.failed():
                    await self._audit.record(AuditKind.LOCKOUT, user=user.name, client_ip=ip)
                raise SecondFactorFailed()
            await attempt.passed(signed_in=True)
        finally:
            attempt.done()
        if codes is not None:
            await self._audit.record(AuditKind.SECOND_FACTOR_ENROLLED, user=user.name,
                                     client_ip=ip)
        if how == "recovery code":
            await self._audit.record(AuditKind.RECOVERY_CODE_USED, user=user.name, client_ip=ip)
        await self._audit.record(AuditKind.SECOND_FACTOR_OK, user=user.name, client_ip=ip,
                                 detail=how)
        cookie, new_ws = await self.sessions.promote(ws, user)
        if codes is not None:
            # Kept for the new web session only, until the person says they saved them.
            await self._store.set_web_session_recovery_codes(
                new_ws.id, self._box.encrypt("\n".join(codes)))
        return SecondFactorResult(cookie, new_ws, codes)

    async def unsaved_recovery_codes(self, ws: WebSession) -> list[str] | None:
        """The recovery codes this web session was given and has not confirmed saving, if any."""
        enc = await self._store.get_web_session_recovery_codes(ws.id)
        return self._box.decrypt(enc).reveal().split("\n") if enc else None

    async def recovery_codes_saved(self, ws: WebSession) -> None:
        """The person saved their recovery codes: the gateway forgets them (only hashes stay).
        Not audited: the web session's copy goes, the account does not change."""
        await self._store.set_web_session_recovery_codes(ws.id, None)

    async def sign_out(self, actor: Actor, ws: WebSession) -> None:
        await self.sessions.destroy(ws)
        await self._audit.record(AuditKind.SIGNOUT, user=actor.name, client_ip=actor.client_ip)
