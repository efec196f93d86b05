"""The REST API's kiosks: declared in the one operation table (``api.API``), served by the same
gated sub-application, documented in the same OpenAPI document. A pairing code is in the answer
of the call that made it only; no other answer holds a secret."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..keys import KIOSKS
from ..model import KIOSK_MODES, Kiosk
from .api import API, PREFIX, _admin, _body, _id, _typed
from .kiosk_views import KIOSK_STATES, fleet_json, kiosk_json
from .openapi import BOOLEAN, INTEGER, STRING, TIMESTAMP, array, nullable, obj, ref

MODE = {"type": "string", "enum": list(KIOSK_MODES),
        "description": "shared: people sign in on it; dedicated: it shows one desktop"}
KIOSK = obj(
    ("id", "name", "location", "mode", "desktop_id", "desktop", "input_allowed", "state",
     "state_text", "online", "enrolled", "revoked", "created_at", "enrolled_at", "revoked_at",
     "pairing_until", "last_seen", "last_ip", "user_agent", "current_user", "current_desktop"),
    id=INTEGER, name=STRING, location=STRING, mode=MODE,
    desktop_id={**nullable(INTEGER), "description": "a dedicated kiosk's desktop"},
    desktop=nullable(STRING),
    input_allowed={**BOOLEAN, "description": "dedicated: false makes its desktop view-only"},
    state={"type": "string", "enum": list(KIOSK_STATES),
           "description": "online or offline (enrolled: heartbeats arriving or not); pairing (a"
                          " code is waiting); revoked; not_enrolled (its code expired)"},
    state_text=STRING, online=BOOLEAN, enrolled=BOOLEAN, revoked=BOOLEAN,
    created_at=TIMESTAMP, enrolled_at=nullable(TIMESTAMP), revoked_at=nullable(TIMESTAMP),
    pairing_until={**nullable(TIMESTAMP), "description": "a pairing code waits until then"},
    last_seen=nullable(TIMESTAMP), last_ip=STRING, user_agent=STRING,
    current_user={**STRING, "description": "who is signed in on it now (last heartbeat)"},
    current_desktop={**STRING, "description": "which desktop it shows now (last heartbeat)"})
PAIRING = {"allOf": [ref("Kiosk"), {
    "type": "object", "required": ["pairing_code", "pairing_expires"],
    "properties": {"pairing_code": {**STRING, "description": "type it at /kiosk on the thin"
                                                             " client; in this answer only"},
                   "pairing_expires": TIMESTAMP}}]}
KIOSK_BODY = {"name": STRING, "location": STRING, "mode": MODE,
              "desktop_id": {**INTEGER, "description": "required for a dedicated kiosk"},
              "input_allowed": BOOLEAN}
API.schemas.update({"Kiosk": KIOSK})


def _out(request: web.Request, kiosk: Kiosk) -> dict[str, Any]:
    now = time.time()
    return kiosk_json(kiosk, kiosk.online(now, request.config_dict[KIOSKS].settings.offline_after),
                      now)


def _with_code(kiosk: dict[str, Any], code: str, expires: float | None) -> dict[str, Any]:
    return {**kiosk, "pairing_code": code, "pairing_expires": expires}


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {"name": _typed(body, "name", str), "location": _typed(body, "location", str),
              "mode": _typed(body, "mode", str), "desktop_id": _typed(body, "desktop_id", int),
              "input_allowed": _typed(body, "input_allowed", bool)}
    if fields["mode"] is not None and fields["mode"] not in KIOSK_MODES:
        raise BadRequest(f"mode is one of {', '.join(KIOSK_MODES)}")
    return fields


@API.operation("GET", f"{PREFIX}/kiosks", "Kiosks (thin clients) with their state",
               tag="kiosks", response=obj(("kiosks",), kiosks=array(ref("Kiosk"))))
async def list_kiosks(request: web.Request) -> web.StreamResponse:
    return web.json_response({"kiosks": await fleet_json(request.config_dict[KIOSKS],
                                                         time.time())})


@API.operation("POST", f"{PREFIX}/kiosks",
               "Create a kiosk; its one-time pairing code is in this answer only", tag="kiosks",
               status=201, request=obj(("name",), **KIOSK_BODY), response=PAIRING)
async def create_kiosk(request: web.Request) -> web.StreamResponse:
    fields = _fields(await _body(request, set(KIOSK_BODY)))
    if fields["name"] is None:
        raise BadRequest("name is required")
    kiosk, code = await request.config_dict[KIOSKS].create(
        _admin(request), name=fields["name"], location=fields["location"] or "",
        mode=fields["mode"] or "shared", desktop_id=fields["desktop_id"],
        input_allowed=True if fields["input_allowed"] is None else fields["input_allowed"])
    return web.json_response(_with_code(_out(request, kiosk), code, kiosk.pair_expires), status=201)


@API.operation("GET", f"{PREFIX}/kiosks/{{id}}", "One kiosk", tag="kiosks",
               response=ref("Kiosk"))
async def get_kiosk(request: web.Request) -> web.StreamResponse:
    return web.json_response(_out(request, await request.config_dict[KIOSKS].get(_id(request))))


@API.operation("PATCH", f"{PREFIX}/kiosks/{{id}}",
               "Change a kiosk (only the fields given); a change of mode, desktop or input"
               " ends the sessions on it", tag="kiosks", request=obj((), **KIOSK_BODY),
               response=ref("Kiosk"))
async def update_kiosk(request: web.Request) -> web.StreamResponse:
    fields = _fields(await _body(request, set(KIOSK_BODY)))
    kiosk = await request.config_dict[KIOSKS].update(_admin(request), _id(request), **fields)
    return web.json_response(_out(request, kiosk))


@API.operation("DELETE", f"{PREFIX}/kiosks/{{id}}", "Delete a kiosk; its sessions end",
               tag="kiosks")
async def delete_kiosk(request: web.Request) -> web.StreamResponse:
    await request.config_dict[KIOSKS].delete(_admin(request), _id(request))
    return web.Response(status=204)


@API.operation("POST", f"{PREFIX}/kiosks/{{id}}/pairing-code",
               "A new one-time pairing code (the previous one stops working); in this answer"
               " only", tag="kiosks", response=PAIRING)
async def kiosk_pairing_code(request: web.Request) -> web.StreamResponse:
    await _body(request, set())
    kiosk, code = await request.config_dict[KIOSKS].new_code(_admin(request), _id(request))
    return web.json_response(_with_code(_out(request, kiosk), code,
                                        kiosk.pair_expires))


@API.operation("POST", f"{PREFIX}/kiosks/{{id}}/revoke",
               "Revoke a kiosk: its sessions end now and its credential never works again",
               tag="kiosks", response=ref("Kiosk"))
async def revoke_kiosk(request: web.Request) -> web.StreamResponse:
    await _body(request, set())
    kiosk = await request.config_dict[KIOSKS].revoke(_admin(request), _id(request))
    return web.json_response(_out(request, kiosk))
