"""The kiosk's pages: enrolment with a pairing code, the device's proofs (start, heartbeat), a
shared kiosk's sign-in and desktops, the full-screen client, and signing out with nothing left.

The device credential is an HttpOnly cookie (``DEVICE_COOKIE``); it opens nothing by itself.
Every start and heartbeat carries a challenge signed by the device's key (static/kiosk_device.js,
gateway/cases/kiosks.py). A shared kiosk's proven start leaves a single-use sign-in grant
(``GRANT_COOKIE``), which the person's password (``POST /kiosk/login``) or identity-provider
sign-in (gateway/web/sso.py) spends, so that their web session is bound to the kiosk.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth.sessions import PRE_COOKIE_NAME
from ..cases.access import NO_SUCH_DESKTOP
from ..cases.kiosks import Proven
from ..errors import WS_SIGNED_OUT, GatewayError, NotFound, Unauthorized
from ..keys import ACCESS, KIOSKS, LIVE, SETTINGS, SIGNIN, SSO
from ..model import DEDICATED, Kiosk, User, WebSession, WebSessionState
from .common import (
    actor,
    check_csrf,
    check_form_csrf,
    clear_session_cookie,
    clear_sso_cookie,
    client_ip,
    current,
    redirect,
    render,
    set_session_cookie,
    user_agent,
)
from .inputs import json_object, path_id

routes = web.RouteTableDef()

DEVICE_COOKIE = "deskgate_device"
GRANT_COOKIE = "deskgate_kiosk_grant"
DEVICE_COOKIE_DAYS = 400  # browsers keep a cookie at most this long; the credential rotates
# What the start page may say after a redirect (fixed texts: a link cannot make it say more).
START_ERRORS = {"grant": "Sign-in took too long on this screen; try again."}


def set_device_cookie(request: web.Request, response: web.StreamResponse, credential: str) -> None:
    # Lax, not Strict: the identity provider's sign-out (on another site) sends the kiosk back
    # to /login, which must see this cookie to show the kiosk's sign-in screen rather than the
    # ordinary sign-in page. The cookie opens nothing by itself (every use is a signed POST).
    response.set_cookie(DEVICE_COOKIE, credential, httponly=True, samesite="Lax",
                        secure=request.config_dict[SETTINGS].cookie_secure, path="/",
                        max_age=DEVICE_COOKIE_DAYS * 86400)


def kiosk_grant(request: web.Request) -> str | None:
    """The shared kiosk's sign-in grant this browser holds (sign-in handlers spend it)."""
    return request.cookies.get(GRANT_COOKIE)


def clear_grant(response: web.StreamResponse) -> None:
    response.del_cookie(GRANT_COOKIE, path="/")


async def _device(request: web.Request) -> Kiosk | None:
    return await request.config_dict[KIOSKS].device(request.cookies.get(DEVICE_COOKIE))


def _person(request: web.Request, kiosk: Kiosk) -> tuple[WebSession | None, User | None]:
    """The web session of the person (or the dedicated kiosk itself) on this kiosk, if any:
    a session from elsewhere in this browser does not count here."""
    ws, user = current(request)
    if ws is None or user is None or ws.kiosk_id != kiosk.id:
        return None, None
    return ws, user


def _page(request: web.Request, view: str, *, kiosk: Kiosk | None = None,
          http_status: int = 200, error: str | None = None, **context: Any) -> web.Response:
    settings = request.config_dict[SETTINGS]
    kiosks = request.config_dict[KIOSKS]
    return render(request, "kiosk.html", http_status=http_status, error=error, view=view,
                  kiosk=kiosk, heartbeat_seconds=kiosks.settings.heartbeat_seconds,
                  idle_seconds=kiosks.settings.idle_seconds,
                  idle_warning_seconds=kiosks.settings.idle_warning_seconds,
                  providers=[{"id": p.id, "label": p.label} for p in settings.oidc],
                  local_accounts=settings.local_accounts, **context)


@routes.get("/kiosk")
async def kiosk_page(request: web.Request) -> web.StreamResponse:
    """What the thin client shows: the pairing form, the start (proof, then sign-in or the
    dedicated desktop), or a signed-in person's desktops."""
    kiosk = await _device(request)
    if kiosk is None:
        had = DEVICE_COOKIE in request.cookies
        return _page(request, "pair", error=("This device is not enrolled any more. Ask your"
                                             " administrator for a new pairing code.")
                     if had else None)
    ws, user = _person(request, kiosk)
    if ws is not None and user is not None:
        if ws.state is not WebSessionState.AUTHENTICATED:
            raise web.HTTPSeeOther("/login/totp")
        if kiosk.mode == DEDICATED and ws.device and kiosk.desktop_id is not None:
            raise web.HTTPSeeOther(f"/kiosk/desktops/{kiosk.desktop_id}")
        desktops = [d for d, _ in await request.config_dict[ACCESS].desktops_for(user)]
        return _page(request, "desktops", kiosk=kiosk, person=user, desktops=desktops)
    return _page(request, "start", kiosk=kiosk, error=START_ERRORS.get(request.query.get("error", "")))


@routes.post("/kiosk/pair")
async def pair(request: web.Request) -> web.StreamResponse:
    """``{"code", "public_key"}``: the pairing code typed on the device and its public key."""
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    body = await json_object(request)
    code, key = body.get("code"), body.get("public_key")
    if not isinstance(code, str) or not isinstance(key, str) or len(key) > 1000:
        return web.json_response({"error": "send the pairing code and the device's key"},
                                 status=400)
    kiosk, credential = await request.config_dict[KIOSKS].pair(
        code, key, client_ip(request), user_agent(request))
    response = web.json_response({"kiosk": kiosk.name, "mode": kiosk.mode})
    set_device_cookie(request, response, credential)
    clear_session_cookie(response)  # whoever was signed in in this browser is not any more
    return response


@routes.post("/kiosk/challenge")
async def challenge(request: web.Request) -> web.StreamResponse:
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    nonce = await request.config_dict[KIOSKS].challenge(request.cookies.get(DEVICE_COOKIE))
    return web.json_response({"challenge": nonce})


async def _prove(request: web.Request) -> tuple[Proven, dict[str, Any]]:
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    body = await json_object(request)
    challenge_text, signature = body.get("challenge"), body.get("signature")
    if not isinstance(challenge_text, str) or not isinstance(signature, str):
        raise Unauthorized("this device could not prove it holds its key")
    proven = await request.config_dict[KIOSKS].prove(
        request.cookies.get(DEVICE_COOKIE), challenge_text, signature, client_ip(request),
        user_agent(request))
    return proven, body


def _answer(request: web.Request, proven: Proven, data: dict[str, Any]) -> web.Response:
    response = web.json_response(data)
    if proven.new_credential is not None:
        set_device_cookie(request, response, proven.new_credential)
    return response


@routes.post("/kiosk/start")
async def start(request: web.Request) -> web.StreamResponse:
    """A proven device begins: a dedicated kiosk gets its session and goes to its desktop; a
    shared one gets a sign-in grant and shows the sign-in screen."""
    proven, _ = await _prove(request)
    started = await request.config_dict[KIOSKS].start(proven, client_ip(request), user_agent(request))
    kiosk = started.kiosk
    if started.session_cookie is not None:
        response = _answer(request, proven, {"mode": kiosk.mode,
                                             "next": f"/kiosk/desktops/{kiosk.desktop_id}"})
        set_session_cookie(request, response, started.session_cookie)
        return response
    response = _answer(request, proven, {"mode": kiosk.mode, "next": None})
    assert started.grant is not None
    response.set_cookie(GRANT_COOKIE, started.grant, httponly=True, samesite="Lax",
                        secure=request.config_dict[SETTINGS].cookie_secure, path="/",
                        max_age=600)
    return response


@routes.post("/kiosk/heartbeat")
async def heartbeat(request: web.Request) -> web.StreamResponse:
    """``{"challenge", "signature", "active"}``: the device is alive (and proves it);
    ``active``: its person gave input since the last heartbeat (keeps their session). Who is
    on it and which desktop it shows come from their web session and its live relay here."""
    proven, body = await _prove(request)
    ws, user = _person(request, proven.kiosk)
    person = desktop = ""
    if ws is not None and user is not None:
        person = "" if ws.device else user.name
        if body.get("active") is True:
            await request.config_dict[SIGNIN].sessions.touch(ws)
        shown = next((live for live in request.config_dict[LIVE]
                      if live.web_session_id == ws.id and live.watch_of is None), None)
        desktop = shown.desktop_name if shown is not None else ""
    await request.config_dict[KIOSKS].heartbeat(proven, ip=client_ip(request),
                                                user_agent=user_agent(request), person=person,
                                                desktop=desktop)
    return _answer(request, proven, {"mode": proven.kiosk.mode, "signed_in": ws is not None})


@routes.post("/kiosk/login")
async def login(request: web.Request) -> web.StreamResponse:
    """A person's password on a shared kiosk: spends the device's sign-in grant."""
    form = await check_form_csrf(request)
    kiosks = request.config_dict[KIOSKS]
    kiosk = await kiosks.redeem(kiosk_grant(request))
    if kiosk is None:
        response = redirect("/kiosk?error=grant")
        clear_grant(response)
        return response
    if not request.config_dict[SETTINGS].local_accounts:
        return _page(request, "start", kiosk=kiosk, http_status=403,
                     error="local accounts are turned off here")
    try:
        cookie, _, _ = await request.config_dict[SIGNIN].sign_in_password(
            form.get("username", "")[:200], form.get("password", "")[:1000], client_ip(request),
            user_agent(request), kiosk=kiosk)
    except GatewayError as exc:
        response = _page(request, "start", kiosk=kiosk, http_status=exc.http_status,
                         error=exc.reason)
        clear_grant(response)
        return response
    response = redirect("/login/totp")
    clear_grant(response)
    set_session_cookie(request, response, cookie)
    return response


@routes.post("/kiosk/signout")
async def signout(request: web.Request) -> web.StreamResponse:
    """The person leaves the kiosk (or its idle timer did): their web session and relays end,
    every cookie but the device's goes, and the page goes to the identity provider's sign-out
    (when there is one) or back to the kiosk's sign-in."""
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    ws, user = current(request)
    next_url = "/kiosk"
    if ws is not None and user is not None and not ws.device:
        await request.config_dict[SIGNIN].sign_out(actor(request, user), ws)
        if ws.kiosk_id is not None:
            await request.config_dict[KIOSKS].person_left(ws.kiosk_id)
        await request.config_dict[LIVE].end_for_web_session(ws.id, WS_SIGNED_OUT,
                                                            "you signed out")
        login_url = request.config_dict[SETTINGS].public_url.rstrip("/") + "/login"
        next_url = await request.config_dict[SSO].logout_url(ws, login_url) or "/kiosk"
    response = web.json_response({"next": next_url})
    if ws is None or not ws.device:
        clear_session_cookie(response)
    for name in (PRE_COOKIE_NAME, GRANT_COOKIE):
        response.del_cookie(name, path="/")
    clear_sso_cookie(response)
    response.headers["Clear-Site-Data"] = '"cache"'
    return response


@routes.get(r"/kiosk/desktops/{desktop_id}")
async def client_page(request: web.Request) -> web.StreamResponse:
    """The full-screen client on a kiosk: the desktop of the person signed in on it, or a
    dedicated kiosk's own desktop."""
    try:
        desktop_id = path_id(request, "desktop_id", "desktop")
    except NotFound:
        raise NotFound(NO_SUCH_DESKTOP) from None
    signed_in, someone = current(request)
    if signed_in is not None and someone is not None and (
            signed_in.state is WebSessionState.AUTHENTICATED):
        # Not theirs, or missing: the one answer, before anything else is looked at.
        await request.config_dict[ACCESS].check_access(someone, desktop_id, client_ip(request))
    kiosk = await _device(request)
    if kiosk is None:
        raise web.HTTPSeeOther("/kiosk")
    ws, user = _person(request, kiosk)
    if ws is None or user is None or ws.state is not WebSessionState.AUTHENTICATED:
        raise web.HTTPSeeOther("/kiosk")
    desktop = await request.config_dict[ACCESS].check_access(user, desktop_id, client_ip(request))
    kiosks = request.config_dict[KIOSKS]
    return render(request, "session.html", desktop=desktop, kiosk=kiosk,
                  kiosk_mode=kiosk.mode, view_only=await kiosks.view_only(user),
                  heartbeat_seconds=kiosks.settings.heartbeat_seconds,
                  idle_seconds=kiosks.settings.idle_seconds,
                  idle_warning_seconds=kiosks.settings.idle_warning_seconds,
                  may_store_credentials=False)
