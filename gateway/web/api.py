"""The admin REST API under /api/v1: JSON in and out, over the use cases (gateway/cases/).

Every operation is declared once in ``API`` (gateway/web/openapi.py), which both registers it and
documents it (its schemas: gateway/web/api_schemas.py). The API is a sub-application mounted at
``PREFIX`` whose middleware, ``admin_api``, lets every operation but the OpenAPI document itself
through only for an admin: deny by default.

About 400 lines as one concern: a short handler per operation, each beside its declaration.
Bundles and desktop VMs declare theirs in the same table from gateway/web/api_vms.py, kiosks
from gateway/web/api_kiosks.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..cases.actor import Actor
from ..cases.catalog import DesktopView
from ..errors import BadRequest, Forbidden, NotFound, Unauthorized
from ..keys import ACCOUNTS, AUDIT_TRAIL, CATALOG, SESSIONS, SSH_HOSTS
from ..model import Desktop, User
from .api_schemas import (
    ADDABLE_PROVIDER,
    ASSIGNMENT,
    AUDIT_EVENT,
    DESKTOP,
    LIVE,
    PROTOCOL,
    RDP_OPTIONS_BODY,
    SESSION,
    TOKEN,
    USER,
    USER_DETAIL,
    VIA,
    audit_json,
    desktop_json,
    session_json,
    token_json,
    user_json,
)
from .common import actor, check_csrf, require_admin
from .inputs import json_object, parse_int, parse_time, query_int
from .openapi import (
    BOOLEAN,
    CSRF_HEADER,
    INTEGER,
    STRING,
    ApiTable,
    Handler,
    Operation,
    Param,
    array,
    nullable,
    obj,
    ref,
)
from .ssh_views import jump_name

PREFIX = "/api/v1"
API_ADMIN = web.RequestKey("api_admin", User)
MAX_LIMIT = 1000

API = ApiTable("Deskgate admin API", "1", {
    "Desktop": DESKTOP, "User": USER, "Session": SESSION, "LiveSession": LIVE,
    "ApiToken": TOKEN, "AuditEvent": AUDIT_EVENT})


# authentication ---------------------------------------------------------------------------------
async def _refuse(request: web.Request, user: User, why: str) -> None:
    await request.config_dict[AUDIT_TRAIL].refused(actor(request, user),
                                           f"{request.method} {request.path}: {why}")


async def authenticate(request: web.Request, op: Operation) -> User:
    """The admin behind this request, or Unauthorized / Forbidden. Deny by default.

    A bearer token is used alone (no CSRF needed: browsers never add it by themselves); without one,
    the request needs a fully signed-in admin's web session, and the CSRF header on writes.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("use Authorization: Bearer <token>")
        token, user = await request.config_dict[ACCOUNTS].authenticate_token(secret.strip())
        if op.writes and token.read_only:
            await _refuse(request, user, f"read-only token {token.id}")
            raise Forbidden("this token is read-only")
        if not op.tokens:
            await _refuse(request, user, f"token {token.id} on a session-only operation")
            raise Forbidden("this needs a signed-in admin session, not an API token")
        return user
    try:
        ws, user = await require_admin(request)
    except Unauthorized:
        raise Unauthorized("send an API token (Authorization: Bearer) or sign in as an admin"
                           ) from None
    if op.writes:
        check_csrf(request, request.headers.get(CSRF_HEADER))
    return user


@web.middleware
async def admin_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gate of the API sub-application: every operation but the public ones is for an
    admin (``authenticate``), checked before its handler runs; an address it does not have
    answers 404 as anywhere else."""
    if request.match_info.http_exception is None:
        op = API.operation_of(request.match_info.route.handler)
        if op is None:
            raise NotFound()  # a route outside the table: fail closed
        if not op.public:
            try:
                request[API_ADMIN] = await authenticate(request, op)
            except Unauthorized as exc:
                return web.json_response({"error": exc.reason}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="deskgate"'})
    return await handler(request)


# input ------------------------------------------------------------------------------------------
async def _body(request: web.Request, op_fields: set[str]) -> dict[str, Any]:
    body = await json_object(request, empty=True)
    unknown = sorted(set(body) - op_fields)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    return body


def _typed(body: dict[str, Any], key: str, kind: type, required: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key} is required")
        return None
    # bool is an int in Python, not in JSON
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{key} must be a{'n' if kind is int else ''} {_TYPE_NAMES[kind]}")
    return value


_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", dict: "object"}


def _id(request: web.Request) -> int:
    return parse_int(request.match_info["id"], "id")



def _limit(request: web.Request, default: int) -> int:
    limit = query_int(request, "limit", 1, MAX_LIMIT)
    return default if limit is None else limit


def _admin(request: web.Request) -> Actor:
    """The admin behind the request (a token's owner or a signed-in admin) as the actor."""
    return actor(request, request[API_ADMIN])


async def _desktop_out(request: web.Request, view: DesktopView) -> dict[str, Any]:
    return desktop_json(view, await request.config_dict[CATALOG].state(view.desktop))


# the document -----------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/openapi.json", "This document (OpenAPI 3.1)", tag="meta",
               response={"type": "object"}, public=True)
async def openapi_document(request: web.Request) -> web.StreamResponse:
    return web.json_response(API.document())


# sessions ---------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/sessions", "Live sessions on this gateway and recent ones",
               tag="sessions", query=(Param("limit", INTEGER, "recent sessions (default 50)"),),
               response=obj(("live", "recent"), live=array(ref("LiveSession")),
                            recent=array(ref("Session"))))
async def list_sessions(request: web.Request) -> web.StreamResponse:
    limit = _limit(request, 50)
    sessions = request.config_dict[SESSIONS]
    return web.json_response({"live": sessions.live_figures(),
                              "recent": [session_json(s) for s in
                                         await sessions.recent(limit)]})


@API.operation("POST", f"{PREFIX}/sessions/{{id}}/disconnect", "End a live session for good",
               tag="sessions", path_types={"id": STRING}, request=obj(reason=STRING))
async def disconnect_session(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"reason"})
    await request.config_dict[SESSIONS].disconnect(_admin(request), request.match_info["id"],
                                        _typed(body, "reason", str) or "")
    return web.Response(status=204)


@API.operation("POST", f"{PREFIX}/sessions/{{id}}/message", "Show a message in a live session",
               tag="sessions", path_types={"id": STRING}, request=obj(("text",), text=STRING))
async def message_session(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"text"})
    await request.config_dict[SESSIONS].message(_admin(request), request.match_info["id"],
                                        _typed(body, "text", str, required=True))
    return web.Response(status=204)


# desktops ---------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/desktops", "All desktops", tag="desktops",
               response=obj(("desktops",), desktops=array(ref("Desktop"))))
async def list_desktops(request: web.Request) -> web.StreamResponse:
    views = await request.config_dict[CATALOG].desktop_views()
    # The states are asked all at once: each may take up to Providers.state's bound.
    return web.json_response({"desktops": list(await asyncio.gather(
        *(_desktop_out(request, v) for v in views)))})


def _rdp_body(body: dict[str, Any]) -> dict[str, str] | None:
    rdp = _typed(body, "rdp", dict)
    if rdp is None:
        return None
    if not all(isinstance(v, str) for v in rdp.values()):
        raise BadRequest("rdp options are strings")
    return {str(k): v for k, v in rdp.items()}


@API.operation("POST", f"{PREFIX}/desktops", "Add a desktop", tag="desktops", status=201,
               request=obj(("name", "provider"), name=STRING,
                           provider=ADDABLE_PROVIDER,
                           host=STRING, port=INTEGER,
                           protocol=PROTOCOL, via=VIA,
                           rdp=RDP_OPTIONS_BODY, password={**STRING, "writeOnly": True}),
               response=ref("Desktop"))
async def create_desktop(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"name", "provider", "host", "port", "password", "protocol",
                                 "rdp", "via"})
    rdp = _rdp_body(body)
    desktop: Desktop = await request.config_dict[CATALOG].add_desktop(
        _admin(request), _typed(body, "name", str, required=True),
        _typed(body, "provider", str, required=True),
        host=_typed(body, "host", str) or "", port=_typed(body, "port", int) or 0,
        password=_typed(body, "password", str) or None,
        protocol=_typed(body, "protocol", str) or "vnc", options=rdp,
        via=await jump_name(request.config_dict[SSH_HOSTS], _typed(body, "via", str)))
    view = await request.config_dict[CATALOG].desktop_view(desktop.id)
    return web.json_response(await _desktop_out(request, view), status=201)


@API.operation("GET", f"{PREFIX}/desktops/{{id}}", "One desktop, its assignments and state",
               tag="desktops", response=ref("Desktop"))
async def get_desktop(request: web.Request) -> web.StreamResponse:
    view = await request.config_dict[CATALOG].desktop_view(_id(request))
    return web.json_response(await _desktop_out(request, view))


@API.operation("PATCH", f"{PREFIX}/desktops/{{id}}", "Change a desktop (only the fields given)",
               tag="desktops", response=ref("Desktop"),
               request=obj(name=STRING, host=STRING, port=INTEGER,
                           password={**STRING, "writeOnly": True}, clear_password=BOOLEAN,
                           maintenance=BOOLEAN, rdp=RDP_OPTIONS_BODY, via=VIA))
async def update_desktop(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"name", "host", "port", "password", "clear_password",
                                 "maintenance", "rdp", "via"})
    desktop_id = _id(request)
    via = _typed(body, "via", str)
    if via is not None or "via" in body:  # null or "": no jump host
        via = await jump_name(request.config_dict[SSH_HOSTS], via) or ""
    await request.config_dict[CATALOG].update_desktop(
        _admin(request), desktop_id, name=_typed(body, "name", str),
        host=_typed(body, "host", str), port=_typed(body, "port", int),
        password=_typed(body, "password", str), clear_password=bool(
            _typed(body, "clear_password", bool)), maintenance=_typed(body, "maintenance", bool),
        rdp=_rdp_body(body), via=via)
    view = await request.config_dict[CATALOG].desktop_view(desktop_id)
    return web.json_response(await _desktop_out(request, view))


@API.operation("DELETE", f"{PREFIX}/desktops/{{id}}", "Delete a desktop (stops it first)",
               tag="desktops")
async def delete_desktop(request: web.Request) -> web.StreamResponse:
    await request.config_dict[CATALOG].delete_desktop(_admin(request), _id(request))
    return web.Response(status=204)


async def _assignment(request: web.Request, remove: bool) -> web.StreamResponse:
    body = await _body(request, {"user_id", "group"})
    user_id, group = _typed(body, "user_id", int), _typed(body, "group", str)
    if remove and not body:  # DELETE bodies are unusual: query parameters work as well
        user_id, group = query_int(request, "user_id"), request.query.get("group")
    done = await request.config_dict[CATALOG].assign(_admin(request), _id(request), user_id=user_id,
                                             group=group, remove=remove)
    view = await request.config_dict[CATALOG].desktop_view(done.desktop.id)
    return web.json_response(await _desktop_out(request, view))


@API.operation("POST", f"{PREFIX}/desktops/{{id}}/assignments",
               "Assign the desktop to a user or to an identity provider group", tag="desktops",
               request=ASSIGNMENT, response=ref("Desktop"))
async def assign_desktop(request: web.Request) -> web.StreamResponse:
    return await _assignment(request, remove=False)


@API.operation("DELETE", f"{PREFIX}/desktops/{{id}}/assignments",
               "Remove a user's or a group's assignment (JSON body or query parameters)",
               tag="desktops", request=ASSIGNMENT, response=ref("Desktop"),
               query=(Param("user_id", INTEGER), Param("group", STRING)))
async def unassign_desktop(request: web.Request) -> web.StreamResponse:
    return await _assignment(request, remove=True)


@API.operation("POST", f"{PREFIX}/desktops/{{id}}/power", "Start, stop or restart a local desktop",
               tag="desktops",
               request=obj(("action",), action={"type": "string",
                                                "enum": ["start", "stop", "restart"]}),
               response=obj(("state",), state=STRING))
async def power_desktop(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"action"})
    state = await request.config_dict[CATALOG].power(_admin(request), _id(request),
                                           _typed(body, "action", str, required=True))
    return web.json_response({"state": state})


# users ------------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/users", "Users, optionally those whose name contains a text",
               tag="users", query=(Param("search", STRING),),
               response=obj(("users",), users=array(ref("User"))))
async def list_users(request: web.Request) -> web.StreamResponse:
    users = await request.config_dict[ACCOUNTS].users(request.query.get("search", ""))
    return web.json_response({"users": [user_json(u) for u in users]})


@API.operation("GET", f"{PREFIX}/users/{{id}}", "A user with groups, desktops, recent sessions",
               tag="users", response=USER_DETAIL)
async def get_user(request: web.Request) -> web.StreamResponse:
    view = await request.config_dict[ACCOUNTS].user_view(_id(request))
    return web.json_response({**user_json(view.user), "groups": view.groups,
                              "desktops": [{"id": d.id, "name": d.name} for d in view.desktops],
                              "sessions": [session_json(s) for s in view.sessions]})


async def _set_disabled(request: web.Request, disabled: bool) -> web.StreamResponse:
    user = await request.config_dict[ACCOUNTS].set_disabled(_admin(request), _id(request), disabled)
    return web.json_response(user_json(user))


@API.operation("POST", f"{PREFIX}/users/{{id}}/disable",
               "Disable a user: their web sessions and desktop connections end", tag="users",
               response=ref("User"))
async def disable_user(request: web.Request) -> web.StreamResponse:
    return await _set_disabled(request, True)


@API.operation("POST", f"{PREFIX}/users/{{id}}/enable", "Enable a user", tag="users",
               response=ref("User"))
async def enable_user(request: web.Request) -> web.StreamResponse:
    return await _set_disabled(request, False)


@API.operation("POST", f"{PREFIX}/users/{{id}}/reset-totp",
               "Forget a user's TOTP secret and recovery codes; they enrol again", tag="users",
               response=ref("User"))
async def reset_totp(request: web.Request) -> web.StreamResponse:
    user = await request.config_dict[ACCOUNTS].reset_totp(_admin(request), _id(request))
    return web.json_response(user_json(user))


# audit ------------------------------------------------------------------------------------------
_TIME = {"type": "string", "description": "ISO 8601, or seconds since the epoch"}


@API.operation("GET", f"{PREFIX}/audit", "The audit trail, newest first, filtered", tag="audit",
               query=(Param("user", STRING), Param("desktop", STRING),
                      Param("kind", STRING, 'an event kind; ending in "." matches a prefix'),
                      Param("since", _TIME), Param("until", _TIME),
                      Param("limit", INTEGER, f"1-{MAX_LIMIT}, default 100"),
                      Param("before_id", INTEGER, "the next page: the last id seen")),
               response=obj(("events", "next_before_id"), events=array(ref("AuditEvent")),
                            next_before_id=nullable(INTEGER)))
async def query_audit(request: web.Request) -> web.StreamResponse:
    q = request.query
    limit = _limit(request, 100)
    events = await request.config_dict[AUDIT_TRAIL].events(
        limit=limit, user=q.get("user") or None, desktop=q.get("desktop") or None,
        kind=q.get("kind") or None,
        since=parse_time(q.get("since", ""), "since", epoch_seconds=True),
        until=parse_time(q.get("until", ""), "until", epoch_seconds=True),
        before_id=query_int(request, "before_id"))
    return web.json_response({"events": [audit_json(e) for e in events],
                              "next_before_id": events[-1].id if len(events) == limit else None})


# tokens -----------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/tokens", "API tokens (never their secrets)", tag="tokens",
               response=obj(("tokens",), tokens=array(ref("ApiToken"))))
async def list_tokens(request: web.Request) -> web.StreamResponse:
    accounts = request.config_dict[ACCOUNTS]
    names = {u.id: u.name for u in await accounts.users()}
    now = time.time()
    return web.json_response({"tokens": [token_json(t, names.get(t.user_id), now)
                                         for t in await accounts.tokens()]})


@API.operation("POST", f"{PREFIX}/tokens",
               "Create a token for the signed-in admin; the secret is in this response only",
               tag="tokens", status=201, tokens=False,
               request=obj(("name",), name=STRING, days={**INTEGER, "default": 30},
                           read_only={**BOOLEAN, "default": False}),
               response={"allOf": [ref("ApiToken"), {"type": "object", "required": ["secret"],
                                                     "properties": {"secret": STRING}}]})
async def create_token(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"name", "days", "read_only"})
    owner = request[API_ADMIN]
    days = _typed(body, "days", int)
    token, secret = await request.config_dict[ACCOUNTS].create_token(
        _admin(request), owner, _typed(body, "name", str, required=True),
        days=30 if days is None else days, read_only=bool(_typed(body, "read_only", bool)))
    return web.json_response({**token_json(token, owner.name, time.time()), "secret": secret},
                             status=201)


@API.operation("DELETE", f"{PREFIX}/tokens/{{id}}", "Revoke a token", tag="tokens")
async def revoke_token(request: web.Request) -> web.StreamResponse:
    await request.config_dict[ACCOUNTS].revoke_token(_admin(request), _id(request))
    return web.Response(status=204)


def app() -> web.Application:
    """The API as a sub-application, to be mounted at ``PREFIX``."""
    api = web.Application(middlewares=[admin_api])
    api.add_routes(API.routes(PREFIX))
    return api
