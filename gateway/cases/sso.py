"""Single sign-on use cases: start a sign-in at an identity provider, finish it on callback.

Users are provisioned just in time and found again by (provider, subject) only, never by e-mail.
Their IdP groups are refreshed at every sign-in; the admin role follows the configured group.
Our TOTP still follows unless the provider is configured otherwise (see ``second_factor_by``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..audit import Audit, AuditKind
from ..auth.guard import PreLogins
from ..auth.oidc import OidcClient, OidcError, OidcIdentity
from ..auth.sessions import WebSessions
from ..config import OidcProviderConfig
from ..crypto import SecretBox, token_hash
from ..errors import AuthenticationFailed, Conflict, NotFound
from ..model import Kiosk, OidcLogin, User, WebSession, WebSessionState
from ..store import Store

log = logging.getLogger("deskgate.sso")

LOGIN_TTL = 600.0  # seconds a person may spend at the identity provider
# RFC 8176 authentication method references that show a second factor.
MFA_AMR = frozenset({"mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm"})


@dataclass(frozen=True)
class SsoResult:
    cookie: str
    web_session: WebSession
    user: User
    needs_totp: bool


def second_factor_by(config: OidcProviderConfig, amr: tuple[str, ...]) -> str | None:
    """Who provides the second factor if not our TOTP: a description, or None (TOTP follows)."""
    if not config.require_totp:
        return "not required for this identity provider (configuration)"
    shown = sorted(MFA_AMR.intersection(amr))
    if config.trust_idp_mfa and shown:
        return f"identity provider (amr: {', '.join(shown)})"
    return None


def _claim_groups(claims: Mapping[str, Any], claim: str) -> list[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [g for g in value if isinstance(g, str) and 0 < len(g) <= 256]


def _user_name(claims: Mapping[str, Any], claim: str, sub: str) -> str:
    value = claims.get(claim)
    name = value if isinstance(value, str) and value.strip() else sub
    name = unicodedata.normalize("NFC", name).strip()
    return "".join(ch for ch in name if ch.isprintable())[:64] or sub[:64]


class SingleSignOn:
    def __init__(self, store: Store, box: SecretBox, audit: Audit, sessions: WebSessions,
                 clients: Mapping[str, OidcClient], configs: Mapping[str, OidcProviderConfig],
                 *, prelogins: PreLogins) -> None:
        self._store = store
        self._box = box
        self._audit = audit
        self._sessions = sessions
        self._clients = clients
        self._configs = configs
        self._prelogins = prelogins
        self._provision_lock = asyncio.Lock()

    def config(self, provider_id: str) -> OidcProviderConfig:
        try:
            return self._configs[provider_id]
        except KeyError:
            raise NotFound("no such identity provider") from None

    async def begin(self, provider_id: str, browser_token: str, ip: str) -> str:
        """Record a pre-login (state, nonce, PKCE verifier) bound to this browser; the IdP URL."""
        config = self.config(provider_id)
        await self._prelogins.admit(ip)  # throttled per client address before any work
        try:
            request = await self._clients[provider_id].authorization_request()
        except OidcError as exc:
            await self._audit.record(AuditKind.SIGNIN_FAILED, client_ip=ip,
                                     detail=f"idp {provider_id}: {exc.detail}", code="sso")
            raise
        # Capped in all and per client address; expired ones are purged.
        await self._prelogins.save(token_hash(request.state), OidcLogin(
            provider=config.id, browser_hash=token_hash(browser_token),
            nonce_enc=self._box.encrypt(request.nonce),
            verifier_enc=self._box.encrypt(request.code_verifier), created_at=time.time()), ip)
        return request.url

    async def complete(self, provider_id: str, *, state: str, code: str | None,
                       error: str | None, iss: str | None, browser_token: str | None, ip: str,
                       user_agent: str, kiosk: Kiosk | None = None) -> SsoResult:
        """Finish a sign-in at ``provider_id``'s own callback. Against mix-up (RFC 9700 4.4): the
        state must have been issued for this provider, and the answer's ``iss`` (RFC 9207) must
        name it; only then is the code redeemed, at this provider's token endpoint. ``kiosk``:
        the shared kiosk this sign-in happens on (its proven grant was spent)."""
        config = self.config(provider_id)
        login = await self._store.take_oidc_login(token_hash(state)) if state else None
        if login is None or time.time() - login.created_at > LOGIN_TTL:
            await self._fail(config, "state unknown, expired or already used", ip)
            raise OidcError("state invalid", "this sign-in link has expired or was already used;"
                                             " start again")
        if login.provider != config.id:
            # An answer for a sign-in started at another provider reached this one's callback.
            await self._fail(config, f"provider mix-up (the sign-in was started at idp"
                                     f" {login.provider})", ip)
            raise OidcError("provider mix-up", f"sign-in with {config.label} failed: the answer"
                                               " did not come from the identity provider you"
                                               " chose; start again")
        if not browser_token or token_hash(browser_token) != login.browser_hash:
            await self._fail(config, "state bound to another browser", ip)
            raise OidcError("state invalid", "this sign-in was started in another browser;"
                                             " start again")
        client = self._clients[config.id]
        try:
            await client.check_response_issuer(iss)
        except OidcError as exc:
            await self._fail(config, exc.detail, ip)
            raise
        if error:
            detail = "consent denied" if error == "access_denied" else f"idp error {error[:64]}"
            await self._fail(config, detail, ip)
            raise OidcError(detail, f"{config.label} did not sign you in"
                                    f"{' (access denied)' if error == 'access_denied' else ''}")
        if not code:
            await self._fail(config, "callback without code", ip)
            raise OidcError("token response invalid")
        try:
            identity = await client.finish(
                code=code, nonce=self._box.decrypt(login.nonce_enc).reveal(),
                code_verifier=self._box.decrypt(login.verifier_enc).reveal())
        except OidcError as exc:
            await self._fail(config, exc.detail, ip)
            raise
        return await self._sign_in(config, identity, ip, user_agent, kiosk)

    async def retired_callback(self, ip: str) -> None:
        """The shared callback of older versions: an answer there is refused unread."""
        await self._fail(None, "answer at the retired shared callback /login/oidc/callback", ip)
        raise OidcError("retired callback", "this sign-in came back to an old address of this"
                                            " gateway; an administrator must register each identity"
                                            " provider's own redirect URI (see the README)")

    async def _fail(self, config: OidcProviderConfig | None, detail: str, ip: str) -> None:
        prefix = f"idp {config.id}: " if config else "idp: "
        await self._audit.record(AuditKind.SIGNIN_FAILED, client_ip=ip, detail=prefix + detail,
                                 code="sso")

    async def _provision(self, config: OidcProviderConfig, identity: OidcIdentity,
                         ip: str) -> User:
        """The account of (provider, subject), made on first sign-in. Its name is the claimed
        one unless that name, or one that looks like it (``Admin``, ``аdmin`` for ``admin``), is
        taken: then ``name@provider``, then ``name@provider-<subject digest>``. A name ending in
        ``@<another provider's id>`` is never taken as it is. One at a time per
        process, so that simultaneous first sign-ins of one person make one account; the
        database's unique keys keep names and identities unique across processes too."""
        known = await self._known(config, identity)
        if known is not None:
            return known
        async with self._provision_lock:
            known = await self._known(config, identity)  # made while we waited?
            if known is not None:
                return known
            name = _user_name(identity.claims, config.username_claim, identity.sub)
            digest = token_hash(f"{config.id}:{identity.sub}")[:8]
            candidates = [name, f"{name}@{config.id}", f"{name[:40]}@{config.id}-{digest}"]
            if any(name.casefold().endswith(f"@{other}") for other in self._configs
                   if other != config.id):
                # "admin@corp" from another provider would pass for corp's disambiguated admin
                candidates.pop(0)
            for candidate in candidates:
                try:
                    user = await self._store.create_user(candidate, None, False, source=config.id)
                except Conflict:
                    continue
                await self._store.link_identity(config.id, identity.sub, user.id)
                detail = f"user provisioned from idp {config.id} (subject {identity.sub[:128]})"
                if candidate != name:
                    detail += f"; the name {name!r} (or one that looks like it) was taken or reserved"
                await self._audit.record(AuditKind.ADMIN, user=candidate, client_ip=ip,
                                         detail=detail)
                return user
        await self._fail(config, f"user name {name!r} taken by other accounts", ip)
        raise OidcError("name conflict", "an account with your name already exists here;"
                                         " ask an administrator")

    async def _known(self, config: OidcProviderConfig, identity: OidcIdentity) -> User | None:
        user_id = await self._store.identity_user(config.id, identity.sub)
        if user_id is None:
            return None
        user = await self._store.get_user(user_id)
        if user is None:
            raise AuthenticationFailed()
        return user

    async def _sign_in(self, config: OidcProviderConfig, identity: OidcIdentity, ip: str,
                       user_agent: str, kiosk: Kiosk | None = None) -> SsoResult:
        user = await self._provision(config, identity, ip)
        if user.disabled:
            await self._audit.record(AuditKind.SIGNIN_FAILED, user=user.name, client_ip=ip,
                                     detail=f"idp {config.id}: account disabled", code="sso")
            raise AuthenticationFailed("this account is disabled")
        groups = _claim_groups(identity.claims, config.groups_claim)
        await self._store.set_user_groups(user.id, groups)
        if config.admin_group:
            await self._store.set_admin(user.id, config.admin_group in groups)
        refreshed = await self._store.get_user(user.id)
        assert refreshed is not None
        user = refreshed
        by = second_factor_by(config, identity.amr)
        state = WebSessionState.AUTHENTICATED if by else WebSessionState.PASSWORD_OK
        cookie, ws = await self._sessions.create(
            user, state, ip, user_agent, idp=config.id,
            id_token_enc=self._box.encrypt(identity.id_token),
            kiosk_id=None if kiosk is None else kiosk.id)
        await self._audit.record(
            AuditKind.SIGNIN_OK, user=user.name, client_ip=ip,
            detail=f"idp {config.id}; groups: {', '.join(sorted(groups)) or '-'}; second factor: "
                   f"{by or 'our TOTP follows'}"
                   + ("" if kiosk is None else f"; on kiosk {kiosk.name!r}"))
        if by:
            await self._audit.record(AuditKind.SECOND_FACTOR_OK, user=user.name, client_ip=ip,
                                     detail=by)
        return SsoResult(cookie, ws, user, needs_totp=by is None)

    async def logout_url(self, ws: WebSession, post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session URL for RP-initiated logout, when it has one."""
        if not ws.idp or not ws.id_token_enc or ws.idp not in self._clients:
            return None
        try:
            return await self._clients[ws.idp].end_session_url(
                id_token_hint=self._box.decrypt(ws.id_token_enc).reveal(),
                post_logout_redirect_uri=post_logout_redirect_uri)
        except OidcError:
            log.warning("[idp=%s] end-session endpoint unavailable", ws.idp)
            return None
