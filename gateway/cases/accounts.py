"""Accounts: users (local ones made here, single sign-on ones by cases/sso.py), passwords,
disabling, second factor resets, naming an account unambiguously, and API tokens."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..audit import Audit, AuditKind
from ..auth.local import LocalAccounts
from ..crypto import new_password, new_token, token_hash
from ..errors import WS_ACCOUNT_DISABLED, BadRequest, NotFound, Unauthorized
from ..live import ACCOUNT_DISABLED, LiveSessions
from ..model import ApiToken, Desktop, Session, User
from ..names import name_key
from ..store import Store
from .actor import Actor

TOKEN_PREFIX = "dg_"  # noqa: S105 (marks Deskgate tokens, e.g. for secret scanners)
MAX_TOKEN_DAYS = 366


@dataclass(frozen=True)
class UserView:
    user: User
    groups: list[str]
    desktops: list[Desktop]
    sessions: list[Session]
    subject: str | None = None  # at the identity provider user.source; None for a local account


def describe(user: User, identities: Mapping[int, str]) -> str:
    """``#7 alice (corp:3f2a…)`` or ``#1 admin (local)``: who an account really is."""
    return f"#{user.id} {user.name} ({identities.get(user.id, user.source)})"


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise BadRequest("passwords need at least 8 characters")


class Accounts:
    def __init__(self, store: Store, audit: Audit, local: LocalAccounts,
                 live: LiveSessions) -> None:
        self._store = store
        self._audit = audit
        self._local = local
        self._live = live

    async def _record(self, actor: Actor, detail: str, *, user: str | None = None) -> None:
        await self._audit.record(AuditKind.ADMIN, user=user, client_ip=actor.client_ip,
                                 detail=actor.by(detail))

    # reading -----------------------------------------------------------------------------------
    async def users(self, search: str = "") -> list[User]:
        needle = search.strip().lower()
        return [u for u in await self._store.list_users() if needle in u.name.lower()]

    async def user_by_id(self, user_id: int) -> User:
        user = await self._store.get_user(user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        return user

    async def user(self, ref: str) -> User:
        """The one account ``ref`` names: an exact user name that no other account's name looks
        like, or ``PROVIDER:SUBJECT`` (a single sign-on identity). A name that is ambiguous, or
        only looks like a user's name (``Admin``, ``аdmin`` for ``admin``), is refused with the
        candidates listed, so that nobody hands a desktop to an impostor by mistake."""
        users = await self._store.list_users()
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
        listed = "; ".join(describe(u, identities) for u in candidates.values())
        why = "is ambiguous" if exact or linked else "names no user exactly, but looks like"
        raise BadRequest(f"{ref!r} {why}: {listed}. Name the account by id (--user-id N) or"
                         " as PROVIDER:SUBJECT")

    async def identities(self) -> dict[int, str]:
        """user id -> "provider:subject" of the accounts made by single sign-on."""
        return {uid: f"{provider}:{subject}"
                for provider, subject, uid in await self._store.list_identities()}

    async def describe(self, user: User) -> str:
        return describe(user, await self.identities())

    async def user_view(self, user_id: int) -> UserView:
        user = await self.user_by_id(user_id)
        subjects = [s for p, s, uid in await self._store.list_identities()
                    if uid == user.id and p == user.source]
        return UserView(user, await self._store.user_groups(user.id),
                        await self._store.desktops_for_user(user.id),
                        await self._store.list_sessions(user_id=user.id, limit=50),
                        subjects[0] if subjects else None)

    # changes ---------------------------------------------------------------------------------
    async def add_user(self, actor: Actor, name: str, *, admin: bool = False,
                       password: str | None = None) -> tuple[User, str | None]:
        """Create a local account. Returns the generated password when none was given."""
        actor.require_admin()
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise BadRequest("user names are 1-64 printable characters")
        generated = None
        if password is None:
            password = generated = new_password()
        _check_password(password)
        pw_hash = await self._local.hash(password)
        user = await self._store.create_user(name, pw_hash, admin)
        await self._record(actor, f"user created{' (admin)' if admin else ''}", user=name)
        return user, generated

    async def set_password(self, actor: Actor, ref: str, password: str | None) -> str | None:
        """A new password for the account ``ref`` names (see :meth:`user`); returns the
        generated one when none was given. Its failed sign-ins are forgotten."""
        actor.require_admin()
        user = await self.user(ref)
        generated = None
        if password is None:
            password = generated = new_password()
        _check_password(password)
        await self._store.set_password_hash(user.id, await self._local.hash(password))
        await self._store.clear_failures(user.id)
        await self._record(actor, "password changed", user=user.name)
        return generated

    async def set_disabled(self, actor: Actor, user_id: int, disabled: bool) -> User:
        actor.require_admin()
        user = await self.user_by_id(user_id)
        if actor.is_user(user) and disabled:
            raise BadRequest("you cannot disable your own account")
        await self._store.set_disabled(user.id, disabled)
        if disabled:
            # Deleting the web sessions ends their desktop connections within seconds (sweep).
            await self._store.delete_user_web_sessions(user.id)
            # On another node or from the command line, the sweep ends them for the same reason.
            for live in self._live:
                if live.user_id == user.id:
                    await live.end(WS_ACCOUNT_DISABLED, ACCOUNT_DISABLED, final=True)
        await self._record(actor, "user disabled" if disabled else "user enabled",
                           user=user.name)
        return await self.user_by_id(user.id)

    async def reset_totp(self, actor: Actor, user_id: int) -> User:
        actor.require_admin()
        user = await self.user_by_id(user_id)
        await self._store.reset_totp(user.id)
        await self._store.delete_user_web_sessions(user.id)
        await self._record(actor, "second factor reset", user=user.name)
        return await self.user_by_id(user.id)

    # API tokens ------------------------------------------------------------------------------
    async def create_token(self, actor: Actor, owner: User, name: str, *, days: int = 30,
                           read_only: bool = False) -> tuple[ApiToken, str]:
        """A new API token acting as ``owner`` (an enabled admin); the token itself is returned
        once, stored hashed."""
        actor.require_admin()
        if not owner.is_admin or owner.disabled:
            raise BadRequest(f"{owner.name} is not an enabled admin: tokens act as an admin")
        name = name.strip()
        if not name or len(name) > 64:
            raise BadRequest("token names are 1-64 characters")
        if not 0 < days <= MAX_TOKEN_DAYS:
            raise BadRequest(f"tokens live 1-{MAX_TOKEN_DAYS} days")
        secret = TOKEN_PREFIX + new_token(32)
        now = time.time()
        token = await self._store.create_api_token(name, token_hash(secret), owner.id, read_only,
                                                   now, now + days * 86400)
        await self._record(actor, f"API token {name!r} created"
                                  f"{' (read-only)' if read_only else ''}, {days} days,"
                                  f" for {owner.name}", user=owner.name)
        return token, secret

    async def revoke_token(self, actor: Actor, token_id: int) -> None:
        actor.require_admin()
        if not await self._store.delete_api_token(token_id):
            raise NotFound("no such token")
        await self._record(actor, f"API token {token_id} revoked")

    async def authenticate_token(self, secret: str) -> tuple[ApiToken, User]:
        """The token and its admin, or Unauthorized. Expired, unknown, or a non-admin: refused."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
            raise Unauthorized("invalid API token")
        token = await self._store.api_token_by_hash(token_hash(secret))
        now = time.time()
        if token is None or token.expires_at <= now:
            raise Unauthorized("invalid or expired API token")
        user = await self._store.get_user(token.user_id)
        if user is None or user.disabled or not user.is_admin:
            raise Unauthorized("this token's account may not use the API")
        await self._store.touch_api_token(token.id, now)
        return token, user

    async def tokens(self) -> list[ApiToken]:
        """Every API token (never the secret: only its hash is stored), oldest first."""
        return await self._store.list_api_tokens()
