"""The kiosk fleet page (``/admin/kiosks``): every thin client, its state live, and the forms
that create, re-pair, change, revoke and delete kiosks, over the use case (gateway/cases/
kiosks.py).

Like the other admin pages it is served by the admin sub-application (only a signed-in admin
gets through); every POST starts with ``check_form_csrf``; changes answer with a 303 and an
``?info=`` code mapped to a fixed message, refusals re-render the page with the use case's
reason and status.

A pairing code is shown once, on the page the 303 leads to: it travels there in a short-lived
cookie encrypted with the gateway's key and bound to the admin's web session, which that page
clears. A reload, another tab or another admin never sees it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import BadRequest, ConfigError, GatewayError
from ..keys import BOX, CATALOG, KIOSKS, SETTINGS, SHUTTING_DOWN
from ..model import DEDICATED, KIOSK_MODES, SHARED, Kiosk, WebSession
from .admin_pages import FORMATTERS
from .common import actor, check_form_csrf, current, redirect, render, signed_in_admin
from .inputs import parse_int, path_id
from .kiosk_views import clock_time, fleet_json
from .sse import follow

routes = web.RouteTableDef()

CODE_COOKIE = "deskgate_kiosk_code"
CODE_COOKIE_PATH = "/admin/kiosks"
CODE_COOKIE_SECONDS = 120  # the 303 is followed at once; a code not shown by then is lost
MODE_WORDS = {SHARED: "Shared (hot desk)", DEDICATED: "Dedicated (one desktop)"}

INFO = {
    "kiosk-created": "Kiosk created. Pair it now with the code below.",
    "kiosk-code": "New pairing code made; the previous one no longer works.",
    "kiosk-saved": "Kiosk saved. Sessions on it ended if its mode, desktop or input changed.",
    "kiosk-revoked": "Kiosk revoked: its sessions ended and its credential never works again."
                     " A new pairing code enrols it afresh.",
    "kiosk-deleted": "Kiosk deleted; its sessions ended.",
}
FIELDS = ("name", "location", "mode", "desktop", "input")


def _info(request: web.Request) -> str | None:
    return INFO.get(request.query.get("info", ""))


def _kept(form: Mapping[str, str]) -> dict[str, str]:
    return {k: form.get(k, "")[:4096] for k in FIELDS}


def _desktop(form: Mapping[str, str], mode: str) -> int | None:
    """The chosen desktop (a dedicated kiosk's); none for a shared one."""
    raw = form.get("desktop", "").strip()
    if mode != DEDICATED:
        return None
    if not raw:
        raise BadRequest("a dedicated kiosk needs its desktop: choose one")
    return parse_int(raw, "the desktop", 0)


def _mode(form: Mapping[str, str]) -> str:
    mode = form.get("mode", SHARED) or SHARED
    if mode not in KIOSK_MODES:
        raise BadRequest(f"a kiosk's mode is one of {', '.join(KIOSK_MODES)}")
    return mode


# the pairing code, shown once ------------------------------------------------------------------
def _remember_code(request: web.Request, response: web.StreamResponse, kiosk: Kiosk,
                   code: str) -> None:
    ws, _ = current(request)
    assert ws is not None
    plain = json.dumps({"ws": ws.id, "kiosk": kiosk.id, "code": code,
                        "expires": kiosk.pair_expires, "at": time.time()})
    response.set_cookie(CODE_COOKIE, request.config_dict[BOX].encrypt(plain), httponly=True,
                        samesite="Strict", secure=request.config_dict[SETTINGS].cookie_secure,
                        path=CODE_COOKIE_PATH, max_age=CODE_COOKIE_SECONDS)


def _shown_code(request: web.Request, ws: WebSession) -> dict[str, Any] | None:
    """The pairing code this admin's last change made, if it is theirs and fresh."""
    sealed = request.cookies.get(CODE_COOKIE)
    if not sealed or len(sealed) > 2000:
        return None
    try:
        data = json.loads(request.config_dict[BOX].decrypt(sealed).reveal())
    except (ConfigError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("ws") != ws.id
            or not isinstance(data.get("at"), float)
            or time.time() - data["at"] > CODE_COOKIE_SECONDS):
        return None
    return data


# the page --------------------------------------------------------------------------------------
async def _fleet_page(request: web.Request, *, http_status: int = 200, error: str | None = None,
                      form: Mapping[str, str] | None = None, edit_id: int | None = None,
                      confirm_id: int | None = None,
                      pairing: dict[str, Any] | None = None) -> web.Response:
    app = request.config_dict
    now = time.time()
    rows = await fleet_json(app[KIOSKS], now)
    if pairing is not None:
        kiosk = next((r for r in rows if r["id"] == pairing["kiosk"]), None)
        pairing = None if kiosk is None else {**pairing, "name": kiosk["name"],
                                              "until": clock_time(pairing["expires"] or now)}
    return render(request, "admin_kiosks.html", http_status=http_status, error=error,
                  info=None if error else _info(request), rows=rows,
                  desktops=await app[CATALOG].desktops(), modes=MODE_WORDS,
                  form=dict(form) if form is not None and edit_id is None else {"input": "yes"},
                  edit_id=edit_id, edit_form=dict(form or {}) if edit_id is not None else {},
                  confirm_id=confirm_id, pairing=pairing, **FORMATTERS)


@routes.get("/kiosks")
async def kiosks_page(request: web.Request) -> web.StreamResponse:
    ws, _ = signed_in_admin(request)
    pairing = _shown_code(request, ws)
    response = await _fleet_page(request, pairing=pairing)
    if CODE_COOKIE in request.cookies:
        response.del_cookie(CODE_COOKIE, path=CODE_COOKIE_PATH)
    response.headers["Cache-Control"] = "no-store"  # the code must not stay in a cache
    return response


@routes.get("/kiosks.json")
async def kiosks_json(request: web.Request) -> web.StreamResponse:
    """Every kiosk with its state now (what the event stream sends, for a periodic fetch)."""
    return web.json_response({"kiosks": await fleet_json(request.config_dict[KIOSKS],
                                                         time.time())})


@routes.post("/kiosks")
async def kiosk_create(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    try:
        mode = _mode(form)
        kiosk, code = await request.config_dict[KIOSKS].create(
            actor(request, me), name=form.get("name", ""), location=form.get("location", ""),
            mode=mode, desktop_id=_desktop(form, mode), input_allowed=form.get("input") == "yes")
    except GatewayError as exc:
        return await _fleet_page(request, http_status=exc.http_status, error=exc.reason,
                                 form=_kept(form))
    response = redirect("/admin/kiosks?info=kiosk-created#pairing")
    _remember_code(request, response, kiosk, code)
    return response


def _kiosk_id(request: web.Request) -> int:
    return path_id(request, "id", "kiosk")


@routes.post(r"/kiosks/{id:\d+}/code")
async def kiosk_code(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    await check_form_csrf(request)
    kiosk, code = await request.config_dict[KIOSKS].new_code(actor(request, me),
                                                            _kiosk_id(request))
    response = redirect("/admin/kiosks?info=kiosk-code#pairing")
    _remember_code(request, response, kiosk, code)
    return response


@routes.post(r"/kiosks/{id:\d+}")
async def kiosk_update(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    kiosk_id = _kiosk_id(request)
    kiosks = request.config_dict[KIOSKS]
    await kiosks.get(kiosk_id)  # an unknown kiosk is a 404 page
    try:
        mode = _mode(form)
        await kiosks.update(actor(request, me), kiosk_id, name=form.get("name", ""),
                            location=form.get("location", ""), mode=mode,
                            desktop_id=_desktop(form, mode),
                            input_allowed=form.get("input") == "yes")
    except GatewayError as exc:
        return await _fleet_page(request, http_status=exc.http_status, error=exc.reason,
                                 form=_kept(form), edit_id=kiosk_id)
    return redirect(f"/admin/kiosks?info=kiosk-saved#kiosk-{kiosk_id}")


async def _confirmed(request: web.Request, what: str) -> web.StreamResponse:
    """Revoke or delete: the kiosk's name typed again, or the page asks for it (409)."""
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    kiosk_id = _kiosk_id(request)
    kiosks = request.config_dict[KIOSKS]
    kiosk = await kiosks.get(kiosk_id)
    if form.get("confirm", "").strip() != kiosk.name:
        return await _fleet_page(
            request, http_status=409, confirm_id=kiosk_id,
            error=f"To {what} the kiosk, type its name, {kiosk.name}, to confirm.")
    if what == "revoke":
        await kiosks.revoke(actor(request, me), kiosk_id)
    else:
        await kiosks.delete(actor(request, me), kiosk_id)
    return redirect(f"/admin/kiosks?info=kiosk-{what}d")


@routes.post(r"/kiosks/{id:\d+}/revoke")
async def kiosk_revoke(request: web.Request) -> web.StreamResponse:
    return await _confirmed(request, "revoke")


@routes.post(r"/kiosks/{id:\d+}/delete")
async def kiosk_delete(request: web.Request) -> web.StreamResponse:
    return await _confirmed(request, "delete")


@routes.get("/kiosks/events")
async def kiosk_events(request: web.Request) -> web.StreamResponse:
    """Every kiosk's state at once, then again whenever it changed (looked at every second),
    until the browser leaves, the gateway shuts down or ``STREAM_SECONDS`` passed."""
    app = request.config_dict
    kiosks, shutting_down = app[KIOSKS], app[SHUTTING_DOWN]
    async def look() -> dict[str, Any]:
        return {"kiosks": await fleet_json(kiosks, time.time())}

    return await follow(request, "kiosks", look, shutting_down)

