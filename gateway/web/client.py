"""The desktop client page, the connect call that mints a ticket, and the relay websocket.

Over 400 lines because the relay's connection life (``Relay``: registration, metrics, clean-up)
still lives here beside the handlers; it is to move to a relay module of its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Set
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from ..broker import NO_SUCH_DESKTOP, Admission, Broker
from ..capacity import Slot
from ..errors import (
    WS_BROWSER_LOST,
    WS_GOING_AWAY,
    WS_INTERNAL,
    WS_NORMAL,
    WS_UPSTREAM_CLOSED,
    BadRequest,
    DesktopUnavailable,
    Forbidden,
    GatewayError,
    NotFound,
    ProtocolError,
    Unauthorized,
    UpstreamAuthFailed,
)
from ..keys import (
    ACCESS,
    BROKER,
    CAPACITY,
    EVENTS,
    LIVE,
    RELAY_TASKS,
    SESSIONS,
    SETTINGS,
    SHUTTING_DOWN,
    WEBSOCKETS,
)
from ..live import ENDED, LiveSession
from ..metrics import BROWSER_LOST, METRICS, SHUTDOWN
from ..model import RelayCounters, User, WebSession, WebSessionState
from ..proxy.tunnel import relay_vnc
from .browserws import BrowserSocket, close_reason, take_over
from .common import check_csrf, client_ip, current, render, require_signed_in, user_agent
from .inputs import json_object, path_id
from .sse import HEARTBEAT_SECONDS, EventStream

log = logging.getLogger("deskgate.session")
routes = web.RouteTableDef()

# Largest websocket message accepted from a browser: a capped clipboard plus framing.
_MAX_WS_MESSAGE = (1 << 20) + 4096
# How long a close waits for the browser's close frame before dropping the connection.
_CLOSE_TIMEOUT = 5.0
# One websocket PING per session this often: its PONG gives the dashboard's round-trip time, and
# a PING unanswered for as long finds a browser that vanished without closing.
PING_INTERVAL = 30.0
# Reasons after which the client must not reconnect by itself.
_FINAL_ERRORS = (UpstreamAuthFailed, ProtocolError, Forbidden, Unauthorized)


def _desktop_id(request: web.Request) -> int:
    try:
        return path_id(request, "desktop_id", "desktop")
    except NotFound:
        raise NotFound(NO_SUCH_DESKTOP) from None


@routes.get(r"/desktops/{desktop_id}")
async def client_page(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    desktop = await request.app[ACCESS].check_access(user, _desktop_id(request),
                                                     client_ip(request))
    return render(request, "session.html", desktop=desktop,
                  may_store_credentials=request.app[SETTINGS].rdp_store_credentials)


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
    size = (width, height) if 16 <= width <= 8192 and 16 <= height <= 8192 else (0, 0)
    return *size, retry_of


@routes.post(r"/desktops/{desktop_id}/connect")
async def connect(request: web.Request) -> web.StreamResponse:
    ws, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    width, height, retry_of = await _connect_body(request)
    # A slot of this node's capacity (gateway/capacity.py), kept for the session's websocket.
    with request.app[CAPACITY].hold() as hold:
        session, ticket = await request.app[BROKER].connect(
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
    saved = await request.app[BROKER].save_credentials(
        user, _desktop_id(request), client_ip(request), username=body.get("username", ""),
        domain=body.get("domain", ""), password=body.get("password", ""),
        remember=body.get("remember", True))
    return web.json_response({"saved": saved})


@routes.delete(r"/desktops/{desktop_id}/credentials")
async def forget_credentials(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    check_csrf(request, request.headers.get("X-CSRF-Token"))
    forgotten = await request.app[BROKER].forget_credentials(user, _desktop_id(request),
                                                             client_ip(request))
    return web.json_response({"forgotten": forgotten})


@routes.get(r"/sessions/{session_id}")
async def session_status(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    session = await request.app[SESSIONS].session_of(user, request.match_info["session_id"])
    if session is None:
        raise NotFound("no such session")
    live = request.app[LIVE].get(session.id)
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
    session = await request.app[SESSIONS].session_of(user, session_id)
    live = request.app[LIVE].get(session_id)
    if session is None or live is None or live.watch_of:
        raise NotFound("no such live session")
    request.app[CAPACITY].stream_for_this_task()  # one descriptor of this node's capacity
    stream = await EventStream.open(request)
    queue = live.listen()
    try:
        await stream.send({"type": "watched", "watchers": live.watchers})
        if not live.responding:  # a page that (re)opens while the desktop is not answering
            await stream.send({"type": "desktop", "responding": False})
        # Woken by an event, by the session's end (ENDED, also on shutdown) or for a heartbeat;
        # a browser that left is found by the next write.
        while stream.open_for(request.app[SHUTTING_DOWN]) and request.app[LIVE].get(
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
    return await request.app[BROKER].admit(
        ticket, session_id=request.match_info["session_id"][:64], user=user,
        web_session=web_session)


@routes.get(r"/ws/sessions/{session_id}")
async def session_socket(request: web.Request) -> web.StreamResponse:
    return await relay_socket(request, _admit_own)


_NO_TASKS: frozenset[asyncio.Task[None]] = frozenset()


def _bridge_hooks(broker: Broker, admission: Admission, live: LiveSession
                  ) -> tuple[Callable[[int, int], None] | None, Set[asyncio.Task[None]]]:
    """For an RDP bridge: follow the browser's size, and end the connection with a clear reason
    when the remote session ends (server closed or killed, remote logoff)."""
    key, bridges = admission.bridge_key, broker.bridges
    if key is None or bridges is None:
        return None, _NO_TASKS
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_resize(width: int, height: int) -> None:
        spawn(bridges.resized(key, width, height))

    def on_exit(reason: str) -> None:
        spawn(live.end(WS_UPSTREAM_CLOSED, reason, final=False))

    if admission.watch_of is None:
        bridges.watch_exit(key, on_exit)
        return on_resize, tasks
    return None, tasks  # a watcher never resizes the person's desktop


async def _admission(request: web.Request, admit: Admit
                     ) -> tuple[Admission, WebSession, LiveSession | None, Slot]:
    """Origin, web session and ticket checked, and a slot of this node's capacity taken;
    raises GatewayError with the reason (and then holds no slot)."""
    app = request.app
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
    except BaseException:
        slot.release()
        raise
    return admission, web_session, watched, slot


async def relay_socket(request: web.Request, admit: Admit) -> web.StreamResponse:
    """The relay websocket: check origin, web session and ticket, then relay until the end.

    Shared by the person's own sessions and admins' view-only watches (``Admission.watch_of``):
    a watch counts as a watcher of the watched session and ends with it. aiohttp does the
    upgrade and, when admission fails, the close frame with the code and the reason; an
    admitted connection is taken over (``browserws.take_over``) and relayed in a task of its
    own, so that this handler returns and keeps nothing for the session's life. Whatever happens
    after the upgrade, the browser gets a close frame with a code and a reason (unless it is
    gone), and nothing reaches the HTTP error middleware.
    """
    app = request.app
    # aiohttp's websocket for the upgrade and admission only (the browser sends nothing before
    # the relay's RFB greeting); from then on, BrowserSocket reads every frame.
    ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_WS_MESSAGE,
                               protocols=("binary",), autoping=False, timeout=_CLOSE_TIMEOUT)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)
    ip = client_ip(request)
    try:
        admission, web_session, watched, slot = await _admission(request, admit)
    except GatewayError as exc:
        log.info("websocket refused [ip=%s]: %s", ip, exc.reason)
        await ws.close(code=exc.ws_code, message=close_reason(exc.reason))
        return ws
    except Exception:
        log.exception("websocket admission failed [ip=%s]", ip)
        await ws.close(code=WS_INTERNAL, message=close_reason("internal error in the gateway"))
        return ws
    relay = Relay(app, ip, admission, web_session, watched)
    try:
        relay.browser = await take_over(request, relay.make_browser)
    except BaseException:
        slot.release()
        relay.abandon()
        raise
    task = relay.task = asyncio.ensure_future(relay.run())
    tasks = app[RELAY_TASKS]
    tasks.add(task)

    def done(_task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slot.release()

    task.add_done_callback(done)
    return ws


async def _close(browser: BrowserSocket, code: int, reason: str) -> None:
    if code == WS_BROWSER_LOST:  # recorded only; never sent (RFC 6455 7.4.1)
        code = WS_GOING_AWAY
    await browser.close(code, reason)


class Relay:
    """One admitted relay: registered as live, relayed, and cleaned up in steps that each run
    whatever the ones before them did (see ``_clean_up``)."""

    __slots__ = ("app", "admission", "watched", "ip", "counters", "browser", "task", "started",
                 "tasks", "code", "reason", "final", "context", "live")

    def __init__(self, app: web.Application, ip: str, admission: Admission,
                 web_session: WebSession, watched: LiveSession | None) -> None:
        self.app = app
        self.admission = admission
        self.watched = watched
        self.ip = ip
        self.counters = RelayCounters()
        self.browser: BrowserSocket | None = None
        self.task: asyncio.Task[None] | None = None  # run(), once the connection is taken over
        self.started: list[asyncio.Task[None]] = []  # the row's "connected", while written
        self.tasks: list[asyncio.Task[None]] = []
        self.code, self.reason, self.final = WS_NORMAL, "closed by the user", False
        session, desktop = admission.session, admission.desktop
        self.context = f"[user={admission.user.name} session={session.id} desktop={desktop.name}]"
        self.live = LiveSession(
            session.id, web_session.id, admission.user.name, desktop.name, self.counters,
            self._close, client_ip=ip, user_agent=session.user_agent,
            protocol=desktop.protocol, watch_of=admission.watch_of, user_id=admission.user.id)

    def make_browser(self) -> BrowserSocket:
        return BrowserSocket(max_message=_MAX_WS_MESSAGE, ping_interval=PING_INTERVAL,
                             close_timeout=_CLOSE_TIMEOUT, on_rtt=self._on_rtt)

    def abandon(self) -> None:
        """The connection could not be taken over: the session is recorded as lost."""
        self.code, self.reason = WS_BROWSER_LOST, BROWSER_LOST
        task = asyncio.ensure_future(self.app[BROKER].finish(
            self.admission, self.reason, final=False, bytes_up=0, bytes_down=0,
            client_ip=self.ip))
        self.app[RELAY_TASKS].add(task)
        task.add_done_callback(self.app[RELAY_TASKS].discard)

    async def _close(self, code: int, reason: str) -> None:
        """Ended from outside (``LiveSession.end``: sign-out, an admin, the shutdown): the relay
        stops, its clean-up stores the row and then sends the close frame with the reason
        (``live.end_reason``); this returns once it has done so."""
        if self.browser is None:
            return
        if self.task is None or self.task.done():
            await _close(self.browser, code, reason)
            return
        self.browser.stop()
        await asyncio.wait([self.task])

    def _on_ready(self, _name: str) -> None:
        if self.watched is None:
            session = self.admission.session
            self.app[METRICS].connect_latency(time.time() - session.started_at)
            task = asyncio.ensure_future(self.app[BROKER].started(session))
            self.started.append(task)
            task.add_done_callback(self.started.remove)

    def _on_rtt(self, ms: float) -> None:
        self.live.rtt_ms = ms

    def _on_responding(self, responding: bool) -> None:
        self.live.set_responding(responding)

    async def run(self) -> None:
        app, live, browser = self.app, self.live, self.browser
        assert browser is not None
        resizes: Set[asyncio.Task[None]] = _NO_TASKS
        try:
            app[LIVE].add(live)
            if self.watched is not None:
                self.watched.watchers += 1
                self.watched.notify({"type": "watched", "watchers": self.watched.watchers})
            else:
                app[METRICS].session_started()
            app[EVENTS].publish("session.started", session=live.figures(live.started_at))
            browser.start_pings()
            on_resize, resizes = _bridge_hooks(app[BROKER], self.admission, live)
            settings = app[SETTINGS]
            await relay_vnc(browser, self.admission.endpoint, self.admission.policy,
                            self.counters, connect_timeout=settings.connect_timeout_seconds,
                            on_ready=self._on_ready, on_resize=on_resize,
                            on_responding=self._on_responding,
                            unresponsive_after=settings.desktop_unresponsive_seconds,
                            idle_probe_after=settings.desktop_idle_probe_seconds)
            if not browser.browser_closed:
                self.code, self.reason = WS_BROWSER_LOST, BROWSER_LOST
        except asyncio.CancelledError:
            if app[SHUTTING_DOWN].is_set():
                self.code, self.reason = WS_GOING_AWAY, SHUTDOWN
            elif not browser.browser_closed:
                self.code, self.reason = WS_BROWSER_LOST, BROWSER_LOST
            raise
        except GatewayError as exc:
            self.code, self.reason = exc.ws_code, exc.reason
            self.final = isinstance(exc, _FINAL_ERRORS)
            if isinstance(exc, DesktopUnavailable) and not isinstance(exc, UpstreamAuthFailed):
                app[BROKER].unreachable(self.admission.desktop.id)
        except (ConnectionError, aiohttp.ClientError):
            self.code, self.reason = WS_BROWSER_LOST, BROWSER_LOST
        except Exception:
            log.exception("%s relay failed", self.context)
            self.code, self.reason = WS_INTERNAL, "internal error in the gateway"
        finally:
            self.tasks.extend(resizes)
            await asyncio.shield(self._clean_up())

    async def _clean_up(self) -> None:
        """Every step runs, in order, even when one before it raised (each is logged)."""
        app, live, admission, counters = self.app, self.live, self.admission, self.counters
        browser = self.browser
        assert browser is not None
        browser.stop_pings()
        for task in self.tasks:
            task.cancel()
        if live.end_reason is not None:  # ended from outside: sign-out, expiry, an admin
            self.reason, self.final, self.code = live.end_reason, live.end_final, live.end_code

        async def started() -> None:
            for task in list(self.started):
                await task

        async def finish() -> None:
            # The stored row before the close frame, so that the client's status check after
            # the close and the dashboard's next snapshot both see the session closed.
            await app[BROKER].finish(admission, self.reason, final=self.final,
                                     bytes_up=counters.bytes_up,
                                     bytes_down=counters.bytes_down, client_ip=self.ip)

        async def forget() -> None:
            app[LIVE].remove(live.session_id)

        async def count() -> None:
            if self.watched is not None:
                self.watched.watchers = max(0, self.watched.watchers - 1)
                self.watched.notify({"type": "watched", "watchers": self.watched.watchers})
                app[METRICS].relay_closed(counters.bytes_up, counters.bytes_down)
            else:
                app[METRICS].session_closed(self.code, self.reason, counters.bytes_up,
                                            counters.bytes_down)

        async def end_watches() -> None:
            if self.watched is None:
                for watch in app[LIVE]:
                    if watch.watch_of == live.session_id:
                        await watch.end(WS_NORMAL, "the watched session ended", final=True)

        async def publish() -> None:
            app[EVENTS].publish("session.closed", id=live.session_id, reason=self.reason,
                                watch_of=admission.watch_of)

        async def close() -> None:
            await _close(browser, self.code, self.reason)  # once; nothing if the browser is gone

        log.info("%s closed: %s (%d B up, %d B down)", self.context, self.reason,
                 counters.bytes_up, counters.bytes_down)
        for step in (started, finish, forget, count, end_watches, publish, close):
            try:
                await step()
            except (Exception, asyncio.CancelledError):  # a cancelled task awaited by a step
                log.exception("%s clean-up step %s failed", self.context, step.__name__)
