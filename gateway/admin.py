"""Administration use cases shared by the admin pages, the REST API and the CLI.

Every change is an audit event naming the admin who made it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .audit import Audit, AuditKind
from .crypto import SecretBox, new_token, token_hash
from .errors import WS_ACCOUNT_DISABLED, WS_ADMIN_DISCONNECT, BadRequest, NotFound, Unauthorized
from .live import ACCOUNT_DISABLED, LiveSessions
from .model import ApiToken, AuditEvent, Desktop, Session, User
from .providers import DesktopSpec
from .providers.registry import Providers, desktop_spec
from .rdp.options import rdp_options
from .services import desktop_name
from .store import Store

TOKEN_PREFIX = "dg_"  # noqa: S105 (marks Deskgate tokens, e.g. for secret scanners)
MAX_TOKEN_DAYS = 366


@dataclass(frozen=True)
class DesktopView:
    desktop: Desktop
    users: list[str]
    groups: list[str]


@dataclass(frozen=True)
class UserView:
    user: User
    groups: list[str]
    desktops: list[Desktop]
    sessions: list[Session]
    subject: str | None = None  # at the identity provider user.source; None for a local account


class AdminService:
    def __init__(self, store: Store, box: SecretBox, audit: Audit, providers: Providers,
                 live: LiveSessions, geometry: str = "1280x800") -> None:
        self.store = store
        self._box = box
        self._audit = audit
        self._providers = providers
        self._live = live
        self._geometry = geometry

    async def _record(self, admin: User, detail: str, *, user: str | None = None,
                      desktop: str | None = None) -> None:
        await self._audit.record(AuditKind.ADMIN, user=user, desktop=desktop,
                                 detail=f"{detail} (by {admin.name})")

    # users ---------------------------------------------------------------------------------
    async def users(self, search: str = "") -> list[User]:
        needle = search.strip().lower()
        return [u for u in await self.store.list_users() if needle in u.name.lower()]

    async def user(self, user_id: int) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def user_view(self, user_id: int) -> UserView:
        user = await self.user(user_id)
        subjects = [s for p, s, uid in await self.store.list_identities()
                    if uid == user.id and p == user.source]
        return UserView(user, await self.store.user_groups(user.id),
                        await self.store.desktops_for_user(user.id),
                        await self.store.list_sessions(user_id=user.id, limit=50),
                        subjects[0] if subjects else None)

    async def set_disabled(self, admin: User, user_id: int, disabled: bool) -> User:
        user = await self.user(user_id)
        if user.id == admin.id and disabled:
            raise BadRequest("you cannot disable your own account")
        await self.store.set_disabled(user.id, disabled)
        if disabled:
            # Deleting the web sessions ends their desktop connections within seconds (sweep).
            await self.store.delete_user_web_sessions(user.id)
            # On another node or from the command line, the sweep ends them for the same reason.
            for live in self._live:
                if live.user_id == user.id:
                    await live.end(WS_ACCOUNT_DISABLED, ACCOUNT_DISABLED, final=True)
        await self._record(admin, "user disabled" if disabled else "user enabled",
                           user=user.name)
        return await self.user(user.id)

    async def reset_totp(self, admin: User, user_id: int) -> None:
        user = await self.user(user_id)
        await self.store.reset_totp(user.id)
        await self.store.delete_user_web_sessions(user.id)
        await self._record(admin, "second factor reset", user=user.name)

    # desktops ------------------------------------------------------------------------------
    async def desktop(self, desktop_id: int) -> Desktop:
        desktop = await self.store.get_desktop(desktop_id)
        if desktop is None:
            raise NotFound("no such desktop")
        return desktop

    async def desktop_views(self) -> list[DesktopView]:
        views = []
        for d in await self.store.list_desktops():
            users, groups = await self.store.desktop_assignments(d.id)
            views.append(DesktopView(d, users, groups))
        return views

    async def desktop_view(self, desktop_id: int) -> DesktopView:
        d = await self.desktop(desktop_id)
        users, groups = await self.store.desktop_assignments(d.id)
        return DesktopView(d, users, groups)

    async def update_desktop(self, admin: User, desktop_id: int, *, name: str | None = None,
                             host: str | None = None, port: int | None = None,
                             password: str | None = None, clear_password: bool = False,
                             maintenance: bool | None = None,
                             rdp: Mapping[str, str] | None = None) -> Desktop:
        """Change what is given; a password is write-only (set or cleared, never shown).

        ``rdp`` changes RDP options (merged with the current ones and checked again); switching
        to per-user credentials drops the shared account's password, which nobody uses then.
        """
        d = await self.desktop(desktop_id)
        new_options = None
        if rdp:
            if d.protocol != "rdp":
                raise BadRequest("only RDP desktops have RDP options")
            base = dict(d.options)
            if ({"cert_fingerprint", "cert_ca"} & set(rdp)) and "cert_policy" not in rdp:
                base.pop("cert_policy", None)  # a new pin or CA chooses its own policy
            new_options = rdp_options({**base, **rdp})
        credentials = (new_options or dict(d.options)).get("credentials")
        if password and d.protocol == "rdp" and credentials == "per_user":
            raise BadRequest("a per-user RDP desktop has no shared password: each person"
                             " enters their own account")
        new_name = d.name if name is None else desktop_name(name)
        new_port = d.port if port is None else port
        if d.provider == "static" and not 0 < new_port < 65536:
            raise BadRequest("port must be between 1 and 65535")
        await self.store.update_desktop(
            d.id, name=new_name, host=d.host if host is None else host.strip(), port=new_port,
            maintenance=d.maintenance if maintenance is None else maintenance)
        changes = [k for k, v in (("name", name), ("host", host), ("port", port),
                                  ("maintenance", maintenance)) if v is not None]
        changed = {k: v for k, v in (new_options or {}).items() if v != d.option(k)}
        if new_options is not None and changed:
            await self.store.set_desktop_options(d.id, new_options)
            changes.append("RDP " + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
            if new_options["credentials"] == "per_user" and d.has_password and not password:
                clear_password = True
        if password:
            await self.store.set_desktop_password(d.id, self._box.encrypt(password))
            changes.append("password set")
        elif clear_password:
            await self.store.set_desktop_password(d.id, None)
            changes.append("password cleared")
        if maintenance and not d.maintenance:
            for live in self._live:
                if live.desktop_name == d.name:
                    live.notify({"type": "message", "from": admin.name,
                                 "text": "This desktop is going into maintenance: save your"
                                         " work; new connections are not accepted."})
        await self._record(admin, f"desktop changed: {', '.join(changes) or 'nothing'}",
                           desktop=new_name)
        return await self.desktop(d.id)

    async def delete_desktop(self, admin: User, desktop_id: int) -> None:
        d = await self.desktop(desktop_id)
        await self._providers.get(d.provider).stop(self._spec(d))
        if not await self.store.delete_desktop(d.id):
            raise NotFound("no such desktop")  # removed by someone else meanwhile: one record
        await self._record(admin, "desktop deleted", desktop=d.name)

    async def assign(self, admin: User, desktop_id: int, *, user_id: int | None = None,
                     group: str | None = None, remove: bool = False) -> DesktopView:
        d = await self.desktop(desktop_id)
        if (user_id is None) == (group is None):
            raise BadRequest("give a user or a group")
        if user_id is not None:
            user = await self.user(user_id)
            if remove:
                await self.store.unassign(d.id, user.id)
            else:
                await self.store.assign(d.id, user.id)
            await self._record(admin, f"desktop {'un' if remove else ''}assigned",
                               user=user.name, desktop=d.name)
        else:
            assert group is not None
            group = group.strip()
            if not group or len(group) > 256:
                raise BadRequest("group names are 1-256 characters")
            if remove:
                await self.store.unassign_group(d.id, group)
            else:
                await self.store.assign_group(d.id, group)
            await self._record(admin, f"desktop {'un' if remove else ''}assigned group {group}",
                               desktop=d.name)
        return await self.desktop_view(d.id)

    def _spec(self, d: Desktop) -> DesktopSpec:
        return desktop_spec(d, self._geometry)

    async def state(self, d: Desktop) -> str:
        """The provider's answer, or "unknown" (bounded: see ``Providers.state``)."""
        return await self._providers.state(self._spec(d))

    async def power(self, admin: User, desktop_id: int, action: str) -> str:
        """start, stop or restart, where the provider can; returns the new state."""
        d = await self.desktop(desktop_id)
        if d.provider != "local":
            raise BadRequest(f"{d.provider} desktops have no power actions")
        provider = self._providers.get(d.provider)
        spec = self._spec(d)
        if action not in ("start", "stop", "restart"):
            raise BadRequest("power actions are start, stop and restart")
        if action in ("stop", "restart"):
            await provider.stop(spec)
        if action in ("start", "restart"):
            await provider.ensure_running(spec)
        await self._record(admin, f"desktop power: {action}", desktop=d.name)
        return await provider.state(spec)

    # sessions ------------------------------------------------------------------------------
    def live_figures(self) -> list[dict[str, Any]]:
        now = time.time()
        return [live.figures(now) for live in self._live]

    async def recent_sessions(self, limit: int = 50) -> list[Session]:
        return await self.store.list_sessions(limit=limit)

    def _live_session(self, session_id: str) -> Any:
        live = self._live.get(session_id)
        if live is None:
            raise NotFound("no such live session on this gateway")
        return live

    async def disconnect(self, admin: User, session_id: str, reason: str) -> None:
        reason = reason.strip()[:200] or "disconnected by an administrator"
        live = self._live_session(session_id)
        await live.end(WS_ADMIN_DISCONNECT, reason, final=True)
        await self._record(admin, f"session {session_id} disconnected: {reason}",
                           user=live.user_name, desktop=live.desktop_name)

    async def message(self, admin: User, session_id: str, text: str) -> None:
        text = text.strip()
        if not text or len(text) > 500:
            raise BadRequest("a message is 1-500 characters")
        live = self._live_session(session_id)
        live.notify({"type": "message", "from": admin.name, "text": text})
        await self._record(admin, f"message sent to session {session_id}",
                           user=live.user_name, desktop=live.desktop_name)

    # audit -----------------------------------------------------------------------------------
    async def audit(self, **filters: Any) -> list[AuditEvent]:
        return await self.store.list_audit(**filters)

    # API tokens ------------------------------------------------------------------------------
    async def create_token(self, admin: User, name: str, *, days: int = 30,
                           read_only: bool = False) -> tuple[ApiToken, str]:
        """A new API token for ``admin``; the token itself is returned once, stored hashed."""
        name = name.strip()
        if not name or len(name) > 64:
            raise BadRequest("token names are 1-64 characters")
        if not 0 < days <= MAX_TOKEN_DAYS:
            raise BadRequest(f"tokens live 1-{MAX_TOKEN_DAYS} days")
        secret = TOKEN_PREFIX + new_token(32)
        now = time.time()
        token = await self.store.create_api_token(name, token_hash(secret), admin.id, read_only,
                                                  now, now + days * 86400)
        await self._record(admin, f"API token {name!r} created"
                                  f"{' (read-only)' if read_only else ''}, {days} days")
        return token, secret

    async def revoke_token(self, admin: User, token_id: int) -> None:
        if not await self.store.delete_api_token(token_id):
            raise NotFound("no such token")
        await self._record(admin, f"API token {token_id} revoked")

    async def authenticate_token(self, secret: str) -> tuple[ApiToken, User]:
        """The token and its admin, or Unauthorized. Expired, unknown, or a non-admin: refused."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
            raise Unauthorized("invalid API token")
        token = await self.store.api_token_by_hash(token_hash(secret))
        now = time.time()
        if token is None or token.expires_at <= now:
            raise Unauthorized("invalid or expired API token")
        user = await self.store.get_user(token.user_id)
        if user is None or user.disabled or not user.is_admin:
            raise Unauthorized("this token's account may not use the API")
        await self.store.touch_api_token(token.id, now)
        return token, user

    async def tokens(self) -> list[ApiToken]:
        """Every API token (never the secret: only its hash is stored), oldest first."""
        return await self.store.list_api_tokens()
