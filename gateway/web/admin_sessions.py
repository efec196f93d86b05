"""The live sessions dashboard: the page, its event stream, the actions, and watching a session.

The page is filled and kept current by ``GET /admin/sessions/events`` (server-sent events): a
full snapshot every second, and at once when a session starts or closes (the event bus).
Watching opens a second, shared, view-only connection to the watched session's desktop through
the same relay websocket handler as a person's own session (``client.relay_socket``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import ChainMapProxy, web
from ua_parser import parse as ua_parse

from ..errors import BadRequest
from ..keys import BROKER, EVENTS, LIVE, SESSIONS, SHUTTING_DOWN
from ..model import Admission, Desktop, Session, User, WebSession
from .client import relay_socket
from .common import (
    actor,
    check_csrf,
    client_ip,
    render,
    require_admin,
    signed_in_admin,
    user_agent,
)
from .inputs import form_fields, json_object
from .sse import EventStream

# The dashboard, under the admin sub-application (/admin/, gateway/app.py), and the watch's
# websocket beside the people's own (/ws/).
routes = web.RouteTableDef()
sockets = web.RouteTableDef()

SNAPSHOT_SECONDS = 1.0
RECENT_LIMIT = 25  # closed sessions per page of history
FAILED_LIMIT = 25  # the newest failed attempts
MAX_PAGE = 10_000


def _session_id(request: web.Request) -> str:
    return request.match_info["session_id"][:64]


@functools.lru_cache(maxsize=2048)
def browser_and_os(user_agent: str) -> str:
    """ "Firefox 121 on Windows 10" from a User-Agent header ("" when nothing is known).

    ua-parser (the Python port of uap-core's maintained rule set) rather than rules of our own:
    browsers and their version strings change monthly, and its rules follow them. Cached: the
    same few agents come back every second."""
    if not user_agent:
        return ""
    result = ua_parse(user_agent[:512])
    parts = []
    if result.user_agent is not None and result.user_agent.family != "Other":
        ua = result.user_agent
        parts.append(f"{ua.family} {ua.major}" if ua.major else ua.family)
    if result.os is not None and result.os.family != "Other":
        os_ = result.os
        parts.append(("on " if parts else "") + (f"{os_.family} {os_.major}" if os_.major
                                                 else os_.family))
    return " ".join(parts)


def _history_query(query: Mapping[str, str]) -> tuple[int, str]:
    """(page, search) from the event stream's query: page 1 is the newest; bad values: 400."""
    raw = query.get("page", "1").strip() or "1"
    if not raw.isdigit() or len(raw) > 5 or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequest(f"page is a number from 1 to {MAX_PAGE}")
    return int(raw), query.get("q", "").strip()[:100]


async def snapshot(app: web.Application | ChainMapProxy, page: int = 1, search: str = "") -> dict[str, Any]:
    """Live sessions with their figures; one page of closed sessions (newest first) and the
    newest failed attempts, both filtered by ``search``; names link to ids, desktops carry
    their address, user agents a readable browser and OS."""
    sessions = app[SESSIONS]
    history = await sessions.history(search=search, limit=RECENT_LIMIT + 1,
                                      offset=(page - 1) * RECENT_LIMIT, failed_limit=FAILED_LIMIT)
    closed, failed = history.closed, history.failed
    users, desktops = history.users, history.desktops
    user_ids = {name: uid for uid, name in users.items()}
    desktop_ids = {d.name: d for d in desktops.values()}
    live = sessions.live_figures()
    agents = {s.user_agent for s in (*closed, *failed)} | {f["user_agent"] or "" for f in live}
    browsers = await asyncio.to_thread(lambda: {a: browser_and_os(a) for a in agents})

    def desktop_fields(d: Desktop | None) -> dict[str, Any]:
        if d is None:
            return {"desktop_id": None, "address": ""}
        address = f"{d.host}:{d.port}" if d.provider == "static" else f"{d.provider}, this host"
        return {"desktop_id": d.id, "address": address}

    def row(s: Session) -> dict[str, Any]:
        d = desktops.get(s.desktop_id)
        return {
            "id": s.id, "user": users.get(s.user_id, f"#{s.user_id}"),
            "user_id": s.user_id if s.user_id in users else None,
            "desktop": d.name if d else f"#{s.desktop_id}", **desktop_fields(d),
            "client_ip": s.client_ip, "browser": browsers.get(s.user_agent, ""),
            "user_agent": s.user_agent, "started_at": s.started_at, "ended_at": s.ended_at,
            "close_reason": s.close_reason, "final": s.close_final,
            "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
        }

    bridges = app[BROKER].bridges
    count, rss_bytes, cpu_seconds = bridges.totals() if bridges is not None else (0, 0, 0.0)
    return {
        "now": time.time(),
        "live": [{**f, "user_id": user_ids.get(f["user"]),
                  **desktop_fields(desktop_ids.get(f["desktop"])),
                  "browser": browsers.get(f["user_agent"] or "", "")} for f in live],
        "bridges": {"count": count, "rss_bytes": rss_bytes, "cpu_seconds": round(cpu_seconds, 1)},
        "recent": [row(s) for s in closed[:RECENT_LIMIT]],
        "page": page, "page_size": RECENT_LIMIT, "has_older": len(closed) > RECENT_LIMIT,
        "search": search,
        "failed": [row(s) for s in failed],
    }


@routes.get("/sessions")
async def sessions_page(request: web.Request) -> web.StreamResponse:
    _, search = _history_query(request.query)
    return render(request, "admin_sessions.html", search=search)


@routes.get("/sessions/events")
async def sessions_events(request: web.Request) -> web.StreamResponse:
    """A snapshot every second and on every session start or close, until the browser leaves."""
    app = request.config_dict
    page, search = _history_query(request.query)
    async with app[EVENTS].subscribe() as queue:
        stream = await EventStream.open(request)
        try:
            await stream.send(await snapshot(app, page, search), event="snapshot")
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
                data = await snapshot(app, page, search)
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


@routes.post("/sessions/{session_id}/disconnect")
async def disconnect(request: web.Request) -> web.StreamResponse:
    _, admin = signed_in_admin(request)
    fields = await _fields(request)
    await request.config_dict[SESSIONS].disconnect(actor(request, admin), _session_id(request),
                                           fields.get("reason", ""))
    return _done(request)


@routes.post("/sessions/{session_id}/message")
async def message(request: web.Request) -> web.StreamResponse:
    _, admin = signed_in_admin(request)
    fields = await _fields(request)
    await request.config_dict[SESSIONS].message(actor(request, admin), _session_id(request),
                                        fields.get("text", ""))
    return _done(request)


@routes.get("/sessions/{session_id}/watch")
async def watch_page(request: web.Request) -> web.StreamResponse:
    session_id = _session_id(request)
    live = request.config_dict[LIVE].get(session_id)
    return render(request, "admin_watch.html", session_id=session_id,
                  figures=live.figures(time.time()) if live and not live.watch_of else None)


@routes.post("/sessions/{session_id}/watch/connect")
async def watch_connect(request: web.Request) -> web.StreamResponse:
    ws, admin = signed_in_admin(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    watch_id, ticket = await request.config_dict[BROKER].watch(
        admin, ws, _session_id(request), request.config_dict[LIVE], client_ip(request),
        user_agent(request))
    return web.json_response({"watch_id": watch_id,
                              "ws_url": f"/ws/watch/{watch_id}?ticket={quote(ticket)}"})


async def _admit_watch(request: web.Request, user: User, web_session: WebSession,
                       ticket: str) -> Admission:
    return await request.config_dict[BROKER].admit_watch(
        ticket, watch_id=request.match_info["watch_id"][:64], user=user,
        web_session=web_session, live=request.config_dict[LIVE])


@sockets.get("/ws/watch/{watch_id}")
async def watch_socket(request: web.Request) -> web.StreamResponse:
    """The view-only relay for an admin's watch; refused with 403 before the upgrade otherwise."""
    await require_admin(request)
    return await relay_socket(request, _admit_watch)
