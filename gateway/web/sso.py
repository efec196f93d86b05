"""Single sign-on pages: start at an identity provider, come back to the callback."""

from __future__ import annotations

from aiohttp import web

from ..crypto import new_token
from ..errors import GatewayError
from ..keys import KIOSKS, SETTINGS, SSO
from ..model import WebSessionState
from .common import (
    SSO_BROWSER_COOKIE,
    clear_sso_cookie,
    client_ip,
    current,
    redirect,
    render,
    set_session_cookie,
    user_agent,
)
from .kiosk import DEVICE_COOKIE, clear_grant, kiosk_grant

routes = web.RouteTableDef()

# Older versions shared one callback between all providers (open to mix-up): refused now.
RETIRED_CALLBACK_PATH = "/login/oidc/callback"


def callback_path(provider_id: str) -> str:
    """Each provider's own redirect URI path: an answer there can only be meant for it."""
    return f"/login/oidc/{provider_id}/callback"


@routes.get(r"/login/oidc/{provider_id}")
async def start(request: web.Request) -> web.StreamResponse:
    """A link, not a form: the page's CSP allows forms to post only to ourselves, and a forged
    start is harmless (the callback must come back to the browser that started it)."""
    ws, _ = current(request)
    if ws is not None and ws.state is WebSessionState.AUTHENTICATED:
        raise web.HTTPSeeOther("/")
    if DEVICE_COOKIE in request.cookies and not kiosk_grant(request):
        # On an enrolled kiosk, only from its sign-in screen (which holds a fresh grant): the
        # session must be bound to the kiosk.
        raise web.HTTPSeeOther("/kiosk")
    browser = new_token()
    try:
        url = await request.config_dict[SSO].begin(request.match_info["provider_id"][:32], browser,
                                           client_ip(request))
    except GatewayError as exc:
        return _failure(request, exc)
    response = redirect(url)
    response.set_cookie(SSO_BROWSER_COOKIE, browser, httponly=True, samesite="Lax",
                        secure=request.config_dict[SETTINGS].cookie_secure, path="/login/oidc/",
                        max_age=600)
    return response


def _failure(request: web.Request, exc: GatewayError) -> web.Response:
    """A page a person understands, with the way back to sign-in; never a stack trace."""
    response = render(request, "error.html", http_status=exc.http_status, status=exc.http_status,
                      message=exc.reason,
                      retry_url="/kiosk" if kiosk_grant(request) else "/login")
    clear_sso_cookie(response)
    return response


@routes.get(RETIRED_CALLBACK_PATH)
async def retired_callback(request: web.Request) -> web.StreamResponse:
    try:
        await request.config_dict[SSO].retired_callback(client_ip(request))
    except GatewayError as exc:
        return _failure(request, exc)
    raise web.HTTPNotFound()  # not reached: the service always refuses


@routes.get(callback_path("{provider_id}"))
async def callback(request: web.Request) -> web.StreamResponse:
    query = request.query
    iss = query.get("iss")
    # On a shared kiosk, the device's proven grant (spent here) binds the session to it.
    kiosk = await request.config_dict[KIOSKS].redeem(kiosk_grant(request))
    try:
        result = await request.config_dict[SSO].complete(
            request.match_info["provider_id"][:32],
            state=query.get("state", "")[:200], code=query.get("code", "")[:2000] or None,
            error=query.get("error", "")[:64] or None, iss=None if iss is None else iss[:512],
            browser_token=request.cookies.get(SSO_BROWSER_COOKIE), ip=client_ip(request),
            user_agent=user_agent(request), kiosk=kiosk)
    except GatewayError as exc:
        return _failure(request, exc)
    response = redirect("/login/totp" if result.needs_totp else "/kiosk" if kiosk else "/")
    clear_sso_cookie(response)
    if kiosk is not None:
        clear_grant(response)
    set_session_cookie(request, response, result.cookie)
    return response
