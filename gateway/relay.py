"""A connection's life from admission to close: ``Relay``, with one explicit state machine.

The websocket handler (web/client.py) admits a connection (origin, sign-in, ticket, a slot of
this node's capacity), builds a ``Relay`` and hands the browser's connection over to it
(``proxy/browserws.take_over``); from then on the relay owns the connection, and its close does
the bookkeeping. Its states (``Phase``), and the only moves between them (``TRANSITIONS``)::

    starting ---> relaying ---> closing ---> closed
        \\______________________/^

- starting: admitted and registered as live; connecting to the desktop, both RFB handshakes.
- relaying: the desktop's first frame went to the browser; the session row says "active".
- closing: it ends, for the first reason given: its own (the browser left, the desktop closed,
  an error) or one from outside through ``LiveSession.end`` (sign-out, an admin, the shutdown),
  whichever comes first. The bookkeeping runs, each step whatever the ones before it did:
  started, finish (the session row and its audit event), forget, count, end_watches, publish,
  and only then close (the close frame), so that a client asking after the close, and the
  dashboard's next snapshot, both see the session closed.
- closed: final; nothing moves it again.

``RelayState.move`` is the only way to change state; an illegal move is a programming error,
logged loudly and refused (as noVNC's ``_updateConnectionState`` keeps its legal transitions in
one place). The state carries the ``Ending``: the close code, the reason, and ``final`` (the
client must not reconnect by itself), which comes from the error's class attribute.

One module of about 400 lines for one concern: the states, the narrow interfaces of what the
relay is given, and the class that walks them (its bookkeeping reads the state it moves).

What the relay needs comes in at construction (``RelayDeps``, made once by the app, and the
connection's admission and capacity slot): no web framework here, no call back into the web
layer. Its dependency on RDP is two callables (``BridgeHooks``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from .capacity import Slot
from .config import Settings
from .errors import (
    WS_BROWSER_LOST,
    WS_GOING_AWAY,
    WS_INTERNAL,
    WS_NORMAL,
    WS_UPSTREAM_CLOSED,
    DesktopUnavailable,
    GatewayError,
    UpstreamAuthFailed,
    UpstreamClosed,
)
from .events import EventBus
from .live import BROWSER_LOST, SHUTDOWN, LiveSession, LiveSessions
from .model import Admission, RelayCounters, Session
from .proxy.browserws import BrowserSocket
from .proxy.tunnel import relay_vnc

log = logging.getLogger("deskgate.session")

# Largest websocket message accepted from a browser: a capped clipboard plus framing.
MAX_MESSAGE = (1 << 20) + 4096
# How long a close waits for the browser's close frame before dropping the connection.
CLOSE_TIMEOUT = 5.0
# One websocket PING per session this often: its PONG gives the dashboard's round-trip time, and
# a PING unanswered for as long finds a browser that vanished without closing.
PING_INTERVAL = 30.0


class Phase(enum.Enum):
    STARTING = "starting"
    RELAYING = "relaying"
    CLOSING = "closing"
    CLOSED = "closed"


# Every legal move, in one place. Closed is final.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = MappingProxyType({
    Phase.STARTING: frozenset({Phase.RELAYING, Phase.CLOSING}),
    Phase.RELAYING: frozenset({Phase.CLOSING}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
})


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a relay ends: the websocket close code, the reason (shown, stored), and ``final``:
    the client must not reconnect by itself."""

    code: int
    reason: str
    final: bool = False

    @classmethod
    def of(cls, exc: GatewayError) -> Ending:
        return cls(exc.ws_code, exc.reason, exc.final)


BY_THE_USER = Ending(WS_NORMAL, "closed by the user")
LOST = Ending(WS_BROWSER_LOST, BROWSER_LOST)
GOING_AWAY = Ending(WS_GOING_AWAY, SHUTDOWN)
INTERNAL = Ending(WS_INTERNAL, "internal error in the gateway")


class RelayState:
    """One relay's state and, once it is closing, its ``Ending``."""

    __slots__ = ("phase", "ending", "context")

    def __init__(self, context: str = "") -> None:
        self.phase = Phase.STARTING
        self.ending: Ending | None = None  # set by the move to closing, never changed after
        self.context = context  # for the log: who, which session

    def may(self, to: Phase) -> bool:
        return to in TRANSITIONS[self.phase]

    def move(self, to: Phase, ending: Ending | None = None) -> bool:
        """Move to ``to`` (closing with its ``ending``, and only closing); an illegal move is
        logged as the programming error it is and refused (False)."""
        if not self.may(to) or (to is Phase.CLOSING) != (ending is not None):
            log.error("%s relay state: illegal move %s -> %s%s refused", self.context,
                      self.phase.value, to.value, f" ({ending})" if ending else "",
                      stack_info=True)
            return False
        self.phase = to
        if ending is not None:
            self.ending = ending
        return True

    @property
    def code(self) -> int:
        return (self.ending or BY_THE_USER).code

    @property
    def reason(self) -> str:
        return (self.ending or BY_THE_USER).reason

    @property
    def final(self) -> bool:
        return (self.ending or BY_THE_USER).final


class SessionRecords(Protocol):
    """The session's row and audit trail (the broker)."""

    async def started(self, session: Session) -> None: ...
    async def finish(self, admission: Admission, reason: str, *, final: bool, bytes_up: int,
                     bytes_down: int, client_ip: str) -> None: ...
    def unreachable(self, desktop_id: int) -> None: ...
    def upstream_lost(self, admission: Admission, exc: GatewayError) -> GatewayError: ...


class RelayMetrics(Protocol):
    def session_started(self) -> None: ...
    def session_closed(self, code: int, reason: str, bytes_up: int, bytes_down: int) -> None: ...
    def relay_closed(self, bytes_up: int, bytes_down: int) -> None: ...
    def connect_latency(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class BridgeHooks:
    """All the relay asks of RDP bridges (by the admission's ``bridge_key``): follow the
    browser's size, and say when the remote session ends by itself (``callback(reason)``)."""

    resized: Callable[[str, int, int], Awaitable[None]]
    watch_exit: Callable[[str, Callable[[str], None]], None]


@dataclass(frozen=True, slots=True)
class RelayTimes:
    connect_timeout: float
    unresponsive_after: float
    idle_probe_after: float

    @classmethod
    def of(cls, settings: Settings) -> RelayTimes:
        return cls(settings.connect_timeout_seconds, settings.desktop_unresponsive_seconds,
                   settings.desktop_idle_probe_seconds)


@dataclass(frozen=True, slots=True)
class RelayDeps:
    """What every relay of the app uses, made once (gateway/app.py)."""

    live: LiveSessions
    records: SessionRecords
    metrics: RelayMetrics
    events: EventBus
    times: RelayTimes
    shutting_down: asyncio.Event
    bridges: BridgeHooks | None = None


class Relay:
    """One admitted connection, from its hand-over to its close (see the module's text)."""

    __slots__ = ("_deps", "admission", "watched", "client_ip", "counters", "browser", "task",
                 "state", "live", "_slot", "_active_write", "_spawned")

    def __init__(self, deps: RelayDeps, admission: Admission, *, client_ip: str,
                 web_session_id: str, watched: LiveSession | None, slot: Slot) -> None:
        self._deps = deps
        self.admission = admission
        self.watched = watched  # an admin's watch: the session watched
        self.client_ip = client_ip
        self.counters = RelayCounters()
        self.browser: BrowserSocket | None = None
        self.task: asyncio.Task[None] | None = None
        self._slot = slot  # given back once the relay is closed
        self._active_write: asyncio.Task[None] | None = None  # the row's "active"
        self._spawned: set[asyncio.Future[None]] | None = None  # RDP resizes and exit
        session, desktop = admission.session, admission.desktop
        self.state = RelayState(
            f"[user={admission.user.name} session={session.id} desktop={desktop.name}]")
        self.live = LiveSession(
            session.id, web_session_id, admission.user.name, desktop.name, self.counters,
            self.end, client_ip=client_ip, user_agent=session.user_agent,
            protocol=desktop.protocol, watch_of=admission.watch_of, user_id=admission.user.id,
            desktop_id=desktop.id)

    def make_browser(self) -> BrowserSocket:
        return BrowserSocket(max_message=MAX_MESSAGE, ping_interval=PING_INTERVAL,
                             close_timeout=CLOSE_TIMEOUT, on_rtt=self._on_rtt)

    # --- the three ways in ----------------------------------------------------------------------
    def start(self, browser: BrowserSocket) -> asyncio.Task[None]:
        """Relay over ``browser`` (taken over) until the end, in a task of its own: returned,
        for the caller to keep until it is done."""
        self.browser = browser
        if self.state.phase is not Phase.STARTING:  # ended before it began
            browser.stop()
        return self._task(self._run())

    def abandon(self) -> asyncio.Task[None]:
        """The connection could not be taken over: the attempt is recorded as lost."""
        return self._task(self._close(LOST, self._finish))

    async def end(self, code: int, reason: str, final: bool) -> None:
        """Ended from outside (``LiveSession.end``: sign-out, an admin, the shutdown): closing
        with this ending unless another came first; returns once the relay is closed."""
        if self.state.may(Phase.CLOSING):
            self.state.move(Phase.CLOSING, Ending(code, reason, final))
            if self.browser is not None:
                self.browser.stop()  # receive() says the browser is done: the relay unwinds
        task = self.task
        if task is not None and not task.done():
            await asyncio.wait([task])

    def _task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.task = asyncio.ensure_future(coro)
        task.add_done_callback(self._done)
        return task

    def _done(self, _task: asyncio.Task[None]) -> None:
        self._slot.release()
        state = self.state
        if state.phase is not Phase.CLOSED:  # cancelled before it could start
            log.error("%s relay task ended in state %s", state.context, state.phase.value)

    # --- relaying -------------------------------------------------------------------------------
    async def _run(self) -> None:
        deps, admission, browser = self._deps, self.admission, self.browser
        assert browser is not None
        ending = BY_THE_USER
        try:
            self._register()
            browser.start_pings()
            times = deps.times
            await relay_vnc(browser, admission.endpoint, admission.policy, self.counters,
                            connect_timeout=times.connect_timeout, on_ready=self._on_ready,
                            on_resize=self._bridge_hooks(),
                            on_responding=self.live.set_responding,
                            unresponsive_after=times.unresponsive_after,
                            idle_probe_after=times.idle_probe_after)
            if not browser.browser_closed:
                ending = LOST
        except asyncio.CancelledError:
            if deps.shutting_down.is_set():
                ending = GOING_AWAY
            elif not browser.browser_closed:
                ending = LOST
            raise
        except GatewayError as exc:
            if isinstance(exc, UpstreamClosed):
                exc = deps.records.upstream_lost(admission, exc)  # what the person is told
            ending = Ending.of(exc)
            if isinstance(exc, DesktopUnavailable) and not isinstance(exc, UpstreamAuthFailed):
                deps.records.unreachable(admission.desktop.id)
        except ConnectionError:
            ending = LOST
        except Exception:
            log.exception("%s relay failed", self.state.context)
            ending = INTERNAL
        finally:
            await asyncio.shield(self._close(ending, self._started, self._finish,
                                             self._forget, self._count, self._end_watches,
                                             self._publish, self._close_frame))

    def _register(self) -> None:
        deps, live, watched = self._deps, self.live, self.watched
        deps.live.add(live)
        if watched is not None:
            watched.watchers += 1
            watched.notify({"type": "watched", "watchers": watched.watchers})
        else:
            deps.metrics.session_started()
        deps.events.publish("session.started", session=live.figures(live.started_at))

    def _on_ready(self, _name: str) -> None:
        """The desktop's first frame went to the browser: relaying (unless already ending)."""
        if not self.state.may(Phase.RELAYING):
            return  # ended from outside during the handshakes: it stays an attempt
        self.state.move(Phase.RELAYING)
        if self.watched is None:
            session = self.admission.session
            self._deps.metrics.connect_latency(time.time() - session.started_at)
            self._active_write = asyncio.ensure_future(self._deps.records.started(session))
            # Roaming: the person's connection to this desktop from elsewhere moves here.
            self._spawn(self._deps.live.moved(self.live))

    def _on_rtt(self, ms: float) -> None:
        self.live.rtt_ms = ms

    def _bridge_hooks(self) -> Callable[[int, int], None] | None:
        """For an RDP bridge: follow the browser's size, and end the connection with a clear
        reason when the remote session ends (server closed or killed, remote logoff). A watcher
        never resizes the person's desktop."""
        key, bridges = self.admission.bridge_key, self._deps.bridges
        if key is None or bridges is None or self.admission.watch_of is not None:
            return None

        def on_resize(width: int, height: int) -> None:
            self._spawn(bridges.resized(key, width, height))

        def on_exit(reason: str) -> None:
            self._spawn(self.live.end(WS_UPSTREAM_CLOSED, reason, final=False))

        bridges.watch_exit(key, on_exit)
        return on_resize

    def _spawn(self, work: Awaitable[None]) -> None:
        if self._spawned is None:
            self._spawned = set()
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # --- closing: the bookkeeping ---------------------------------------------------------------
    async def _close(self, ending: Ending, *steps: Callable[[], Awaitable[None]]) -> None:
        """Closing (with ``ending`` unless one came first), the ``steps`` in order, each
        whatever the ones before it did (each failure is logged); then closed."""
        if self.state.may(Phase.CLOSING):
            self.state.move(Phase.CLOSING, ending)
        if self.browser is not None:
            self.browser.stop_pings()
        for task in list(self._spawned or ()):
            task.cancel()
        counters = self.counters
        log.info("%s closed: %s (%d B up, %d B down)", self.state.context, self.state.reason,
                 counters.bytes_up, counters.bytes_down)
        for step in steps:
            try:
                await step()
            except (Exception, asyncio.CancelledError):  # a cancelled task awaited by a step
                log.exception("%s clean-up step %s failed", self.state.context,
                              step.__name__.lstrip("_"))
        self.state.move(Phase.CLOSED)

    async def _started(self) -> None:
        if self._active_write is not None:
            await self._active_write

    async def _finish(self) -> None:
        # The stored row before the close frame, so that the client's status check after the
        # close and the dashboard's next snapshot both see the session closed.
        state, counters = self.state, self.counters
        await self._deps.records.finish(self.admission, state.reason, final=state.final,
                                        bytes_up=counters.bytes_up,
                                        bytes_down=counters.bytes_down, client_ip=self.client_ip)

    async def _forget(self) -> None:
        self._deps.live.remove(self.live.session_id)

    async def _count(self) -> None:
        metrics, counters, watched = self._deps.metrics, self.counters, self.watched
        if watched is not None:
            watched.watchers = max(0, watched.watchers - 1)
            watched.notify({"type": "watched", "watchers": watched.watchers})
            metrics.relay_closed(counters.bytes_up, counters.bytes_down)
        else:
            metrics.session_closed(self.state.code, self.state.reason, counters.bytes_up,
                                   counters.bytes_down)

    async def _end_watches(self) -> None:
        if self.watched is None:
            for watch in self._deps.live:
                if watch.watch_of == self.live.session_id:
                    await watch.end(WS_NORMAL, "the watched session ended", final=True)

    async def _publish(self) -> None:
        self._deps.events.publish("session.closed", id=self.live.session_id,
                                  reason=self.state.reason, watch_of=self.admission.watch_of)

    async def _close_frame(self) -> None:
        """Once; nothing if the browser is gone."""
        assert self.browser is not None
        code = self.state.code
        if code == WS_BROWSER_LOST:  # recorded only; never sent (RFC 6455 7.4.1)
            code = WS_GOING_AWAY
        await self.browser.close(code, self.state.reason)
