"""What every handler shares: the signed-in context, rendering, CSRF and client address."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..auth.sessions import COOKIE_NAME, PRE_COOKIE_NAME, csrf_ok
from ..cases.actor import Actor
from ..errors import CsrfError, Forbidden, Unauthorized
from ..keys import AUDIT_TRAIL, SETTINGS, SIGNIN, TEMPLATES
from ..model import User, WebSession, WebSessionState
from .inputs import form_fields, header_text

WEB_SESSION = web.RequestKey("web_session", WebSession)
USER = web.RequestKey("user", User)
PRE_TOKEN = web.RequestKey("pre_token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_ip(request: web.Request) -> str:
    if request.config_dict[SETTINGS].trust_proxy_headers:
        forwarded = header_text(request, "X-Forwarded-For", 1000)
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return request.remote or "unknown"


def user_agent(request: web.Request) -> str:
    """The browser's User-Agent, as much as is kept (300 characters), storable as text."""
    return header_text(request, "User-Agent")


def actor(request: web.Request, user: User) -> Actor:
    """``user`` acting from this request's client address: what the use cases audit."""
    return Actor.of(user, client_ip(request))


def current(request: web.Request) -> tuple[WebSession | None, User | None]:
    return request.get(WEB_SESSION), request.get(USER)


def require_signed_in(request: web.Request) -> tuple[WebSession, User]:
    """The fully authenticated web session (both factors), or Unauthorized."""
    ws, user = current(request)
    if ws is None or user is None or ws.state is not WebSessionState.AUTHENTICATED:
        raise Unauthorized()
    return ws, user


async def require_admin(request: web.Request) -> tuple[WebSession, User]:
    """A fully signed-in admin, or Forbidden (and an audit event). Deny by default."""
    ws, user = require_signed_in(request)
    if not user.is_admin:
        await request.config_dict[AUDIT_TRAIL].refused(actor(request, user),
                                               f"{request.method} {request.path}")
        raise Forbidden("this page is for administrators")
    return ws, user


@web.middleware
async def admin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gate of the admin sub-applications: each of their routes is for a fully signed-in
    admin, checked before the handler runs (an address they do not have answers 404 as
    anywhere else)."""
    if request.match_info.http_exception is None:
        await require_admin(request)
    return await handler(request)


def signed_in_admin(request: web.Request) -> tuple[WebSession, User]:
    """The admin ``admin_only`` let through (fails closed if a route escaped it)."""
    ws, user = require_signed_in(request)
    if not user.is_admin:
        raise Forbidden("this page is for administrators")
    return ws, user


def check_csrf(request: web.Request, supplied: str | None) -> None:
    ws, _ = current(request)
    expected = ws.csrf_token if ws is not None else request.cookies.get(PRE_COOKIE_NAME)
    if not csrf_ok(expected, supplied):
        raise CsrfError()


async def check_form_csrf(request: web.Request) -> dict[str, str]:
    fields = await form_fields(request)
    check_csrf(request, fields.get("_csrf"))
    return fields


def render(request: web.Request, template: str, *, http_status: int = 200,
           error: str | None = None, info: str | None = None, **context: Any) -> web.Response:
    ws, user = current(request)
    csrf = ws.csrf_token if ws is not None else request.get(PRE_TOKEN)
    if user is not None and (ws is None or ws.state is not WebSessionState.AUTHENTICATED):
        user = None  # half signed in: do not present the account as signed in
    html = request.config_dict[TEMPLATES].get_template(template).render(
        user=user, csrf_token=csrf or "", error=error, info=info, **context)
    return web.Response(text=html, status=http_status, content_type="text/html")


def redirect(location: str) -> web.Response:
    """A 303 response that handlers return (not raise) when they also set cookies."""
    return web.Response(status=303, headers={"Location": location})


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    settings = request.config_dict[SETTINGS]
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Lax",
                        secure=settings.cookie_secure, path="/",
                        max_age=settings.session_lifetime_hours * 3600)


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/")


# Binds a single sign-on start to the browser that made it (login CSRF, state injection:
# gateway/web/sso.py); a kiosk's sign-out clears it too.
SSO_BROWSER_COOKIE = "deskgate_oidc"


def clear_sso_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SSO_BROWSER_COOKIE, path="/login/oidc/")


async def load_user(request: web.Request, ws: WebSession) -> User | None:
    """The web session's account, or None when it was disabled or deleted since."""
    return await request.config_dict[SIGNIN].user_of(ws)
