"""The desktop client page, the connect call that mints a ticket, and the relay websocket
(admission and hand-over; the connection's life is ``gateway/relay.py``'s)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import ChainMapProxy, web

from ..cases.access import NO_SUCH_DESKTOP
from ..cases.vms import STAGES
from ..errors import (
    WS_INTERNAL,
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    Unauthorized,
)
from ..keys import (
    ACCESS,
    BROKER,
    CAPACITY,
    LIVE,
    RELAY_TASKS,
    RELAYS,
    SESSIONS,
    SETTINGS,
    SHUTTING_DOWN,
    VMS,
    WEBSOCKETS,
)
from ..live import ENDED
from ..model import Admission, User, WebSession, WebSessionState, window_size
from ..proxy.browserws import close_reason, take_over
from ..relay import CLOSE_TIMEOUT, MAX_MESSAGE, Relay
from .common import check_csrf, client_ip, current, render, require_signed_in, user_agent
from .inputs import json_object, path_id
from .sse import HEARTBEAT_SECONDS, EventStream

log = logging.getLogger("deskgate.session")
routes = web.RouteTableDef()


def _desktop_id(request: web.Request) -> int:
    try:
        return path_id(request, "desktop_id", "desktop")
    except NotFound:
        raise NotFound(NO_SUCH_DESKTOP) from None


@routes.get(r"/desktops/{desktop_id}")
async def client_page(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    desktop = await request.config_dict[ACCESS].check_access(user, _desktop_id(request),
                                                     client_ip(request))
    return render(request, "session.html", desktop=desktop, kiosk=None,
                  may_store_credentials=request.config_dict[SETTINGS].rdp_store_credentials)


@routes.get(r"/desktops/{desktop_id}/progress")
async def start_progress(request: web.Request) -> web.StreamResponse:
    """A desktop VM's start as the client page shows it while its connect waits: the stage
    (starting the VM, waiting for its screen), time so far, and this desktop's usual time."""
    _, user = require_signed_in(request)
    desktop = await request.config_dict[ACCESS].check_access(user, _desktop_id(request),
                                                             client_ip(request))
    if desktop.vm is None:
        return web.json_response({"vm": False})
    vms = request.config_dict[VMS]
    progress = vms.progress(desktop.id)
    stage = progress.stage if progress else (
        "starting" if desktop.vm.state in ("starting", "rebooting") else None)
    started = progress.started_at if progress else desktop.vm.since
    return web.json_response({
        "vm": True, "state": desktop.vm.state, "stage": stage,
        "stages": [[key, label] for key, label in STAGES.items()],
        "elapsed": round(time.time() - started, 1) if stage else None,
        "estimate": progress.estimate if progress else await vms.estimate(desktop.id),
    }, headers={"Cache-Control": "no-store"})


async def _connect_body(request: web.Request) -> tuple[int, int, str | None]:
    """What the browser says when it connects: its desktop area (RDP bridges start at that
    size; else 0, 0) and ``retry_of``, its previous try's session id when this is a retry."""
    if not request.can_read_body or request.content_type != "application/json":
        return 0, 0, None
    body = await json_object(request)
    width, height = body.get("width", 0), body.get("height", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        raise BadRequest("the window size must be two whole numbers")
    retry_of = body.get("retry_of")
    if retry_of is not None and not (isinstance(retry_of, str) and 0 < len(retry_of) <= 64):
        raise BadRequest("retry_of must be a session id (a string of 1 to 64 characters)")
    size = window_size(width, height) or (0, 0)
    return *size, retry_of


@routes.post(r"/desktops/{desktop_id}/connect")
async def connect(request: web.Request) -> web.StreamResponse:
    ws, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    width, height, retry_of = await _connect_body(request)
    # A slot of this node's capacity (gateway/capacity.py), kept for the session's websocket.
    with request.config_dict[CAPACITY].hold() as hold:
        session, ticket = await request.config_dict[BROKER].connect(
            user, ws, _desktop_id(request), client_ip(request), user_agent(request),
            width, height, retry_of=retry_of)
        hold.keep(session.id)
    return web.json_response({
        "session_id": session.id,
        "ws_url": f"/ws/sessions/{session.id}?ticket={quote(ticket)}",
    })


@routes.post(r"/desktops/{desktop_id}/credentials")
async def save_credentials(request: web.Request) -> web.StreamResponse:
    """The person's own account for a per-user RDP desktop, never returned: stored encrypted,
    or (``"remember": false``, or storing is off) used for the next connection only."""
    _, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    body = await json_object(request)
    if not all(
            isinstance(body.get(k, ""), str) for k in ("username", "domain", "password")):
        raise BadRequest("username, domain and password are strings")
    if not isinstance(body.get("remember", True), bool):
        raise BadRequest("remember is true or false")
    saved = await request.config_dict[BROKER].rdp_accounts.save(
        user, _desktop_id(request), client_ip(request), username=body.get("username", ""),
        domain=body.get("domain", ""), password=body.get("password", ""),
        remember=body.get("remember", True))
    return web.json_response({"saved": saved})


@routes.delete(r"/desktops/{desktop_id}/credentials")
async def forget_credentials(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    forgotten = await request.config_dict[BROKER].rdp_accounts.forget(user, _desktop_id(request),
                                                              client_ip(request))
    return web.json_response({"forgotten": forgotten})


@routes.get(r"/sessions/{session_id}")
async def session_status(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    session = await request.config_dict[SESSIONS].session_of(user, request.match_info["session_id"])
    if session is None:
        raise NotFound("no such session")
    live = request.config_dict[LIVE].get(session.id)
    if live is not None and live.end_reason is not None:
        # Ended from outside and still closing: the stored row is written a moment later.
        return web.json_response({"id": session.id, "state": "closed",
                                  "close_reason": live.end_reason,
                                  "reconnect": not live.end_final})
    return web.json_response({
        "id": session.id,
        "state": session.state.value,
        "close_reason": session.close_reason,
        "reconnect": not session.close_final,
    })


@routes.get(r"/sessions/{session_id}/events")
async def session_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for the person in a session: admin messages, "being watched", and
    whether the desktop answers ({"type": "desktop", "responding": bool})."""
    _, user = require_signed_in(request)
    session_id = request.match_info["session_id"][:64]
    session = await request.config_dict[SESSIONS].session_of(user, session_id)
    live = request.config_dict[LIVE].get(session_id)
    if session is None or live is None or live.watch_of:
        raise NotFound("no such live session")
    request.config_dict[CAPACITY].stream_for_this_task()  # one descriptor of this node's capacity
    stream = await EventStream.open(request)
    queue = live.listen()
    try:
        await stream.send({"type": "watched", "watchers": live.watchers})
        if not live.responding:  # a page that (re)opens while the desktop is not answering
            await stream.send({"type": "desktop", "responding": False})
        # Woken by an event, by the session's end (ENDED, also on shutdown) or for a heartbeat;
        # a browser that left is found by the next write.
        while stream.open_for(request.config_dict[SHUTTING_DOWN]) and request.config_dict[LIVE].get(
                session_id) is live:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    event = await queue.get()
            except TimeoutError:
                await stream.heartbeat()
                continue
            if event is ENDED:
                break
            await stream.send(event)
    except ConnectionError:
        pass  # the browser went away
    finally:
        live.unlisten(queue)
    return stream.response



# How a relay websocket's ticket is turned into an admission: the person's own session, or an
# admin's watch of someone else's. (request, user, web session, ticket) -> Admission.
Admit = Callable[[web.Request, User, WebSession, str], Awaitable[Admission]]


async def _admit_own(request: web.Request, user: User, web_session: WebSession,
                     ticket: str) -> Admission:
    return await request.config_dict[BROKER].admit(
        ticket, session_id=request.match_info["session_id"][:64], user=user,
        web_session=web_session)


@routes.get(r"/ws/sessions/{session_id}")
async def session_socket(request: web.Request) -> web.StreamResponse:
    return await relay_socket(request, _admit_own)


async def _admission(request: web.Request, admit: Admit, ip: str) -> Relay:
    """Origin, web session and ticket checked, and a slot of this node's capacity taken: the
    relay that holds the slot from now on. Raises GatewayError with the reason (and then holds
    no slot)."""
    app = request.config_dict
    if request.headers.get("Origin") != app[SETTINGS].public_origin:
        raise Forbidden("websocket origin not allowed")
    web_session, user = current(request)  # loaded by the web_session middleware
    if (web_session is None or user is None
            or web_session.state is not WebSessionState.AUTHENTICATED):
        raise Unauthorized("not signed in")
    ticket = request.query.get("ticket", "")
    if len(ticket) > 200:
        raise BadRequest("malformed ticket")
    # Capacity: this session's slot from its connect, else a free one, else "full".
    slot = app[CAPACITY].admit(request.match_info.get("session_id", "")[:64])
    try:
        admission = await admit(request, user, web_session, ticket)
        watched = app[LIVE].get(admission.watch_of) if admission.watch_of else None
        if admission.watch_of and watched is None:
            raise NotFound("the watched session has ended")
        return Relay(app[RELAYS], admission, client_ip=ip, web_session_id=web_session.id,
                     watched=watched, slot=slot)
    except BaseException:
        slot.release()
        raise


def _keep(app: ChainMapProxy, task: asyncio.Task[None]) -> None:
    """Hold a relay's task until it is done (nothing else refers to it)."""
    tasks = app[RELAY_TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def relay_socket(request: web.Request, admit: Admit) -> web.StreamResponse:
    """The relay websocket: admission, then hand-over to a ``Relay`` (gateway/relay.py).

    Shared by the person's own sessions and admins' view-only watches (``Admission.watch_of``).
    aiohttp does the upgrade and, when admission fails, the close frame with the code and the
    reason; an admitted connection is taken over (``proxy/browserws.take_over``) by the relay,
    which runs in a task of its own until it has closed and done its bookkeeping, so that this
    handler returns and keeps nothing for the session's life. Whatever happens after the
    upgrade, the browser gets a close frame with a code and a reason (unless it is gone), and
    nothing reaches the HTTP error middleware.
    """
    app = request.config_dict
    # aiohttp's websocket for the upgrade and admission only (the browser sends nothing before
    # the relay's RFB greeting); from then on, the relay's BrowserSocket reads every frame.
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE,
                               protocols=("binary",), autoping=False, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)
    ip = client_ip(request)
    try:
        relay = await _admission(request, admit, ip)
    except GatewayError as exc:
        log.info("websocket refused [ip=%s]: %s", ip, exc.reason)
        await ws.close(code=exc.ws_code, message=close_reason(exc.reason))
        return ws
    except Exception:
        log.exception("websocket admission failed [ip=%s]", ip)
        await ws.close(code=WS_INTERNAL, message=close_reason("internal error in the gateway"))
        return ws
    try:
        browser = await take_over(request.transport, relay.make_browser)
    except BaseException:
        _keep(app, relay.abandon())
        raise
    _keep(app, relay.start(browser))
    return ws
