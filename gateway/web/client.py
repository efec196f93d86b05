"""The desktop client page, the connect call that mints a ticket, and the relay websocket."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp
from aiohttp import WSMsgType, web

from ..errors import (
    WS_GOING_AWAY,
    WS_NORMAL,
    BadRequest,
    DesktopUnavailable,
    Forbidden,
    GatewayError,
    NotFound,
    ProtocolError,
    Unauthorized,
    UpstreamAuthFailed,
)
from ..keys import BROKER, EVENTS, LIVE, SERVICES, SETTINGS, SHUTTING_DOWN, STORE, WEBSOCKETS
from ..live import LiveSession
from ..model import RelayCounters, WebSessionState
from ..proxy.tunnel import relay_vnc
from .common import check_csrf, client_ip, load_user, render, require_signed_in

log = logging.getLogger("deskgate.session")
routes = web.RouteTableDef()

# Largest websocket message accepted from a browser: a capped clipboard plus framing.
_MAX_WS_MESSAGE = (1 << 20) + 4096
# Pings find browsers that vanished without closing (a laptop lid, a dead network).
_HEARTBEAT = 30.0
# Reasons after which the client must not reconnect by itself.
_FINAL_ERRORS = (UpstreamAuthFailed, ProtocolError, Forbidden, Unauthorized)


def _desktop_id(request: web.Request) -> int:
    try:
        return int(request.match_info["desktop_id"])
    except ValueError:
        raise NotFound("no such desktop") from None


@routes.get(r"/desktops/{desktop_id}")
async def client_page(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    desktop = await request.app[BROKER].check_access(user, _desktop_id(request),
                                                     client_ip(request))
    return render(request, "session.html", desktop=desktop)


@routes.post(r"/desktops/{desktop_id}/connect")
async def connect(request: web.Request) -> web.StreamResponse:
    ws, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    session, ticket = await request.app[BROKER].connect(
        user, ws, _desktop_id(request), client_ip(request), request.headers.get("User-Agent", ""))
    return web.json_response({
        "session_id": session.id,
        "ws_url": f"/ws/sessions/{session.id}?ticket={quote(ticket)}",
    })


@routes.get(r"/sessions/{session_id}")
async def session_status(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    session = await request.app[STORE].get_session(request.match_info["session_id"][:64])
    if session is None or session.user_id != user.id:
        raise NotFound("no such session")
    return web.json_response({
        "id": session.id,
        "state": session.state.value,
        "close_reason": session.close_reason,
        "reconnect": not session.close_final,
    })


class WebSocketChannel:
    """The browser's websocket as the byte path's ClientChannel."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def receive(self) -> bytes | None:
        msg = await self._ws.receive()
        if msg.type is WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        if msg.type is WSMsgType.TEXT:
            raise ProtocolError("text websocket messages are not RFB")
        return None  # close, closing, closed or error: the browser is gone

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(data)


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    # A close reason is at most 123 bytes on the wire.
    await ws.close(code=code, message=reason.encode()[:120])


@routes.get(r"/ws/sessions/{session_id}")
async def session_socket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_WS_MESSAGE,
                               protocols=("binary",), autoping=True, heartbeat=_HEARTBEAT)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    ip = client_ip(request)
    try:
        if request.headers.get("Origin") != settings.public_origin:
            raise Forbidden("websocket origin not allowed")
        web_session = await request.app[SERVICES].sessions.load(
            request.cookies.get("deskgate_session"))
        if web_session is None or web_session.state is not WebSessionState.AUTHENTICATED:
            raise Unauthorized("not signed in")
        user = await load_user(request, web_session)
        if user is None:
            raise Unauthorized("not signed in")
        ticket = request.query.get("ticket", "")
        if len(ticket) > 200:
            raise BadRequest("malformed ticket")
        admission = await request.app[BROKER].admit(
            ticket, session_id=request.match_info["session_id"][:64], user=user,
            web_session=web_session)
    except GatewayError as exc:
        log.info("websocket refused [ip=%s]: %s", ip, exc.reason)
        await _close(ws, exc.ws_code, exc.reason)
        return ws

    broker = request.app[BROKER]
    counters = RelayCounters()
    started: list[asyncio.Task[None]] = []
    reason, final, code = "closed by the user", False, WS_NORMAL
    context = f"[user={user.name} session={admission.session.id} desktop={admission.desktop.name}]"
    live = LiveSession(admission.session.id, web_session.id, user.name, admission.desktop.name,
                       counters, lambda c, r: _close(ws, c, r), client_ip=ip,
                       user_agent=admission.session.user_agent,
                       protocol=admission.desktop.protocol)
    request.app[LIVE].add(live)
    events = request.app[EVENTS]
    events.publish("session.started", session=live.figures(live.started_at))
    try:
        await relay_vnc(
            WebSocketChannel(ws), admission.endpoint, admission.policy, counters,
            connect_timeout=settings.connect_timeout_seconds,
            on_ready=lambda _name: started.append(
                asyncio.ensure_future(broker.started(admission.session))))
    except GatewayError as exc:
        reason, code = exc.reason, exc.ws_code
        final = isinstance(exc, _FINAL_ERRORS)
        if isinstance(exc, DesktopUnavailable) and not isinstance(exc, UpstreamAuthFailed):
            broker.unreachable(admission.desktop.id)
    except (ConnectionError, aiohttp.ClientError):
        reason = "the connection to the browser was lost"
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the browser's TCP connection goes away.
        if request.app[SHUTTING_DOWN].is_set():
            reason, code = "the gateway is shutting down", WS_GOING_AWAY
        elif ws.close_code is None:
            reason = "the connection to the browser was lost"
        raise
    finally:
        request.app[LIVE].remove(live.session_id)
        if live.end_reason is not None:  # ended from outside: sign-out, expiry, an admin
            reason, final = live.end_reason, live.end_final
        events.publish("session.closed", id=live.session_id, reason=reason)
        log.info("%s closed: %s (%d B up, %d B down)", context, reason, counters.bytes_up,
                 counters.bytes_down)
        for task in started:
            await asyncio.shield(task)
        await asyncio.shield(broker.finish(admission, reason, final=final,
                                           bytes_up=counters.bytes_up,
                                           bytes_down=counters.bytes_down, client_ip=ip))
        if not ws.closed:
            await asyncio.shield(_close(ws, code, reason))
    return ws
