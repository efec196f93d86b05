"""Sign-in pages: password, then the second factor (enrolment on first use), and sign-out."""

from __future__ import annotations

from aiohttp import web

from ..errors import WS_SIGNED_OUT, GatewayError
from ..keys import LIVE, SETTINGS, SIGNIN, SSO
from ..model import WebSession, WebSessionState
from .common import (
    actor,
    check_form_csrf,
    clear_session_cookie,
    client_ip,
    current,
    redirect,
    render,
    set_session_cookie,
    user_agent,
)
from .kiosk import DEVICE_COOKIE

routes = web.RouteTableDef()


@routes.get("/login")
async def login_page(request: web.Request) -> web.StreamResponse:
    ws, _ = current(request)
    if ws is not None:
        raise web.HTTPSeeOther("/" if ws.state is WebSessionState.AUTHENTICATED else "/login/totp")
    if DEVICE_COOKIE in request.cookies:
        raise web.HTTPSeeOther("/kiosk")  # a kiosk signs people in on its own screen
    return _login_page(request)


def _login_page(request: web.Request, *, http_status: int = 200,
                error: str | None = None) -> web.Response:
    settings = request.config_dict[SETTINGS]
    return render(request, "login.html", http_status=http_status, error=error,
                  providers=[{"id": p.id, "label": p.label} for p in settings.oidc],
                  local_accounts=settings.local_accounts)


@routes.post("/login")
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await check_form_csrf(request)
    if DEVICE_COOKIE in request.cookies:
        # An enrolled kiosk signs people in through its own screen (POST /kiosk/login), so
        # that their session is bound to it and ends when they leave.
        raise web.HTTPSeeOther("/kiosk")
    if not request.config_dict[SETTINGS].local_accounts:
        return _login_page(request, http_status=403, error="local accounts are turned off here")
    username = form.get("username", "")[:200]
    password = form.get("password", "")[:1000]
    try:
        cookie, _, _ = await request.config_dict[SIGNIN].sign_in_password(
            username, password, client_ip(request), user_agent(request))
    except GatewayError as exc:
        return _login_page(request, http_status=exc.http_status, error=exc.reason)
    response = redirect("/login/totp")
    set_session_cookie(request, response, cookie)
    return response


def _half_signed_in(request: web.Request) -> None:
    ws, user = current(request)
    if ws is None or user is None:
        raise web.HTTPSeeOther("/login")
    if ws.state is WebSessionState.AUTHENTICATED:
        raise web.HTTPSeeOther("/")


async def _second_factor_page(request: web.Request, *, http_status: int = 200,
                              error: str | None = None) -> web.Response:
    _, user = current(request)
    assert user is not None
    if user.totp_enrolled:
        return render(request, "totp_verify.html", http_status=http_status, error=error)
    enrolment = await request.config_dict[SIGNIN].enrolment(user)
    return render(request, "totp_enrol.html", http_status=http_status, error=error,
                  secret=enrolment.secret, otpauth_uri=enrolment.uri, qr_svg=enrolment.qr_svg)


@routes.get("/login/totp")
async def totp_page(request: web.Request) -> web.StreamResponse:
    _half_signed_in(request)
    return await _second_factor_page(request)


@routes.post("/login/totp")
async def totp_submit(request: web.Request) -> web.StreamResponse:
    _half_signed_in(request)
    form = await check_form_csrf(request)
    ws, _ = current(request)
    assert ws is not None
    try:
        result = await request.config_dict[SIGNIN].second_factor(ws, form.get("code", "")[:64],
                                                           client_ip(request))
    except GatewayError as exc:
        return await _second_factor_page(request, http_status=exc.http_status, error=exc.reason)
    # Enrolment's new recovery codes are shown by GET /login/recovery (POST, redirect, GET):
    # reloading shows the same codes again, never an error or new codes.
    response = redirect("/login/recovery" if result.recovery_codes is not None
                        else "/kiosk" if ws.kiosk_id is not None else "/")
    set_session_cookie(request, response, result.cookie)
    return response


async def _unsaved_codes(request: web.Request) -> tuple[WebSession, list[str] | None]:
    ws, _ = current(request)
    if ws is None or ws.state is not WebSessionState.AUTHENTICATED:
        raise web.HTTPSeeOther("/login")
    return ws, await request.config_dict[SIGNIN].unsaved_recovery_codes(ws)


@routes.get("/login/recovery")
async def recovery_page(request: web.Request) -> web.StreamResponse:
    """The recovery codes of this web session's enrolment, until the person says they saved
    them (they are kept encrypted with this web session only; the account keeps hashes)."""
    _, codes = await _unsaved_codes(request)
    if codes is None:
        raise web.HTTPSeeOther("/")
    return render(request, "recovery.html", codes=codes)


@routes.get("/login/recovery.txt")
async def recovery_download(request: web.Request) -> web.StreamResponse:
    ws, codes = await _unsaved_codes(request)
    if codes is None:
        raise web.HTTPSeeOther("/")
    _, user = current(request)
    name = user.name if user is not None else ""
    public_url = request.config_dict[SETTINGS].public_url
    text = "\n".join([f"Deskgate recovery codes for {name} at {public_url}",
                      "Each code signs you in once, instead of the authenticator app's code.", "",
                      *codes, ""])
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={
        "Content-Disposition": 'attachment; filename="deskgate-recovery-codes.txt"',
        "Cache-Control": "no-store"})


@routes.post("/login/recovery")
async def recovery_saved(request: web.Request) -> web.StreamResponse:
    await check_form_csrf(request)
    ws, _ = await _unsaved_codes(request)
    await request.config_dict[SIGNIN].recovery_codes_saved(ws)
    return redirect("/kiosk" if ws.kiosk_id is not None else "/")


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    ws, user = current(request)
    if ws is not None and user is not None:  # the middleware loads the two together
        await check_form_csrf(request)
        await request.config_dict[SIGNIN].sign_out(actor(request, user), ws)
        await request.config_dict[LIVE].end_for_web_session(ws.id, WS_SIGNED_OUT, "you signed out")
        # RP-initiated logout: also end the session at the identity provider, when it can.
        login_url = request.config_dict[SETTINGS].public_url.rstrip("/") + "/login"
        idp_url = await request.config_dict[SSO].logout_url(ws, login_url)
        if idp_url:
            response = redirect(idp_url)
            clear_session_cookie(response)
            return response
    response = redirect("/login")
    clear_session_cookie(response)
    return response
