"""The live sessions dashboard: the page, its event stream, the actions, and watching a session.

The page is filled and kept current by ``GET /admin/sessions/events`` (server-sent events): a
full snapshot every second, and at once when a session starts or closes (the event bus).
Watching opens a second, shared, view-only connection to the watched session's desktop through
the same relay websocket handler as a person's own session (``client.relay_socket``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..broker import Admission
from ..keys import ADMIN, BROKER, EVENTS, LIVE, SHUTTING_DOWN, STORE
from ..model import SessionState, User, WebSession
from .client import relay_socket
from .common import check_csrf, client_ip, render, require_admin, user_agent
from .inputs import form_fields, json_object
from .sse import EventStream

routes = web.RouteTableDef()

SNAPSHOT_SECONDS = 1.0
RECENT_LIMIT = 25


def _session_id(request: web.Request) -> str:
    return request.match_info["session_id"][:64]


async def snapshot(app: web.Application) -> dict[str, Any]:
    """Live sessions with their figures, and the most recent closed ones with their reasons."""
    admin = app[ADMIN]
    store = app[STORE]
    recent = [s for s in await admin.recent_sessions(100) if s.state is SessionState.CLOSED]
    users = {u.id: u.name for u in await store.list_users()} if recent else {}
    desktops = {d.id: d.name for d in await store.list_desktops()} if recent else {}
    bridges = app[BROKER].bridges
    count, rss_bytes, cpu_seconds = bridges.totals() if bridges is not None else (0, 0, 0.0)
    return {
        "now": time.time(),
        "live": admin.live_figures(),
        "bridges": {"count": count, "rss_bytes": rss_bytes, "cpu_seconds": round(cpu_seconds, 1)},
        "recent": [{
            "id": s.id, "user": users.get(s.user_id, f"#{s.user_id}"),
            "desktop": desktops.get(s.desktop_id, f"#{s.desktop_id}"),
            "client_ip": s.client_ip, "started_at": s.started_at, "ended_at": s.ended_at,
            "close_reason": s.close_reason, "final": s.close_final,
            "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
        } for s in recent[:RECENT_LIMIT]],
    }


@routes.get("/admin/sessions")
async def sessions_page(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    return render(request, "admin_sessions.html")


@routes.get("/admin/sessions/events")
async def sessions_events(request: web.Request) -> web.StreamResponse:
    """A snapshot every second and on every session start or close, until the browser leaves."""
    await require_admin(request)
    app = request.app
    async with app[EVENTS].subscribe() as queue:
        stream = await EventStream.open(request)
        try:
            await stream.send(await snapshot(app), event="snapshot")
            due = time.monotonic() + SNAPSHOT_SECONDS
            while stream.open_for(app[SHUTTING_DOWN]):
                trigger = "tick"
                try:
                    async with asyncio.timeout(max(0.0, due - time.monotonic())):
                        event = await queue.get()
                    trigger = str(event.get("type", "event"))
                    while not queue.empty():  # a burst of events: one snapshot
                        queue.get_nowait()
                except TimeoutError:
                    pass
                data = await snapshot(app)
                data["trigger"] = trigger
                await stream.send(data, event="snapshot")
                await stream.heartbeat()
                due = time.monotonic() + SNAPSHOT_SECONDS
        except ConnectionError:
            pass  # the admin closed the page
    return stream.response


async def _fields(request: web.Request) -> dict[str, str]:
    """The action's fields from JSON (fetch, X-CSRF-Token) or a form (_csrf); CSRF checked."""
    if request.content_type == "application/json":
        body = await json_object(request)
        check_csrf(request, request.headers.get("X-CSRF-Token"))
        return {k: v for k, v in body.items() if isinstance(v, str)}
    fields = await form_fields(request)
    check_csrf(request, request.headers.get("X-CSRF-Token") or fields.get("_csrf"))
    return fields


def _done(request: web.Request, **data: Any) -> web.StreamResponse:
    if "application/json" in request.headers.get("Accept", "") or \
            request.content_type == "application/json":
        return web.json_response({"ok": True, **data})
    raise web.HTTPSeeOther("/admin/sessions")


@routes.post("/admin/sessions/{session_id}/disconnect")
async def disconnect(request: web.Request) -> web.StreamResponse:
    _, admin = await require_admin(request)
    fields = await _fields(request)
    await request.app[ADMIN].disconnect(admin, _session_id(request), fields.get("reason", ""))
    return _done(request)


@routes.post("/admin/sessions/{session_id}/message")
async def message(request: web.Request) -> web.StreamResponse:
    _, admin = await require_admin(request)
    fields = await _fields(request)
    await request.app[ADMIN].message(admin, _session_id(request), fields.get("text", ""))
    return _done(request)


@routes.get("/admin/sessions/{session_id}/watch")
async def watch_page(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    session_id = _session_id(request)
    live = request.app[LIVE].get(session_id)
    return render(request, "admin_watch.html", session_id=session_id,
                  figures=live.figures(time.time()) if live and not live.watch_of else None)


@routes.post("/admin/sessions/{session_id}/watch/connect")
async def watch_connect(request: web.Request) -> web.StreamResponse:
    ws, admin = await require_admin(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    watch_id, ticket = await request.app[BROKER].watch(
        admin, ws, _session_id(request), request.app[LIVE], client_ip(request),
        user_agent(request))
    return web.json_response({"watch_id": watch_id,
                              "ws_url": f"/ws/watch/{watch_id}?ticket={quote(ticket)}"})


async def _admit_watch(request: web.Request, user: User, web_session: WebSession,
                       ticket: str) -> Admission:
    return await request.app[BROKER].admit_watch(
        ticket, watch_id=request.match_info["watch_id"][:64], user=user,
        web_session=web_session, live=request.app[LIVE])


@routes.get("/ws/watch/{watch_id}")
async def watch_socket(request: web.Request) -> web.StreamResponse:
    """The view-only relay for an admin's watch; refused with 403 before the upgrade otherwise."""
    await require_admin(request)
    return await relay_socket(request, _admit_watch)
