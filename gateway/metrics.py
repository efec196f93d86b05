"""Prometheus metrics: one registry per application, counters fed where things happen.

The relay handler calls ``session_started`` / ``session_closed`` / ``connect_latency``; sign-in
failures are counted from the audit writer (every failure is an audit event already); live
figures (active sessions, relayed bytes, desktops by state, desktop VMs by state) are read when
scraped. The month's usage and cost per desktop VM (gateway/cases/usage.py) is read at most once
every ``VM_USAGE_SECONDS`` however often the scrapes come, and without its per-person part. Labels come
from small fixed sets, so that no reason text or user input can grow the series count.

Served at ``GET /metrics`` on the main site with ``Authorization: Bearer <metrics_token>``
(404 when no token is set), and without a token on ``metrics_host:metrics_port`` when that port
is not 0 (a site meant for a private scrape network).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .audit import SIGNIN_CODES, AuditKind
from .capacity import BackoffListener, Capacity, open_fds
from .cases.usage import UsageReport
from .errors import (
    WS_ACCOUNT_DISABLED,
    WS_ADMIN_DISCONNECT,
    WS_BROWSER_LOST,
    WS_FORBIDDEN,
    WS_FRAME_ERROR,
    WS_GOING_AWAY,
    WS_IDLE,
    WS_INPUT_LIMIT,
    WS_INTERNAL,
    WS_INVALID_TEXT,
    WS_MESSAGE_TOO_BIG,
    WS_NORMAL,
    WS_NOT_FOUND,
    WS_POLICY,
    WS_PROTOCOL,
    WS_SESSION_EXPIRED,
    WS_SIGNED_OUT,
    WS_TRY_AGAIN_LATER,
    WS_UNAUTHORIZED,
    WS_UNSUPPORTED_DATA,
    WS_UPSTREAM_AUTH,
    WS_UPSTREAM_CLOSED,
    WS_UPSTREAM_UNREACHABLE,
)
from .keys import (
    AUDIT,
    BROKER,
    CAPACITY,
    CATALOG,
    LIVE,
    METRICS,
    SETTINGS,
    SSH_HOSTS,
    STORE,
    USAGE,
)
from .listen import address, bind
from .live import BROWSER_LOST, LiveSessions
from .model import Desktop
from .providers.libvirt.lifecycle import VmState
from .rdp.bridges import RdpBridges
from .ssh.connections import SshConnections

log = logging.getLogger("deskgate.metrics")

CLOSE_REASONS = ("user", "browser_lost", "admin", "signed_out", "account_disabled", "expired",
                 "idle", "desktop", "refused", "protocol_error", "input_limit", "error",
                 "shutdown", "other")
SIGNIN_FAILURES = SIGNIN_CODES
DESKTOP_STATES = ("running", "stopped", "unknown", "maintenance")
VM_STATES = tuple(s.value for s in VmState if s is not VmState.DELETED)  # a deleted one is gone
VM_USAGE_SECONDS = 60.0
# Each way a relay ends has its own close code (gateway/errors.py), so the code says which.
_CLOSE_CATEGORIES = {
    WS_NORMAL: "user", WS_BROWSER_LOST: "browser_lost", WS_ADMIN_DISCONNECT: "admin",
    WS_SIGNED_OUT: "signed_out", WS_ACCOUNT_DISABLED: "account_disabled",
    WS_SESSION_EXPIRED: "expired", WS_IDLE: "idle", WS_GOING_AWAY: "shutdown",
    WS_UPSTREAM_UNREACHABLE: "desktop", WS_UPSTREAM_AUTH: "desktop",
    WS_UPSTREAM_CLOSED: "desktop", WS_UNAUTHORIZED: "refused", WS_FORBIDDEN: "refused",
    WS_NOT_FOUND: "refused", WS_PROTOCOL: "protocol_error", WS_FRAME_ERROR: "protocol_error",
    WS_UNSUPPORTED_DATA: "protocol_error", WS_INVALID_TEXT: "protocol_error",
    WS_MESSAGE_TOO_BIG: "protocol_error", WS_POLICY: "protocol_error",
    WS_INPUT_LIMIT: "input_limit", WS_INTERNAL: "error", WS_TRY_AGAIN_LATER: "refused",
}


def close_category(code: int, reason: str = "") -> str:
    """A close (websocket code; the reason text is not needed) as one of ``CLOSE_REASONS``."""
    if code == WS_NORMAL and reason == BROWSER_LOST:  # rows written before 1006 was recorded
        return "browser_lost"
    return _CLOSE_CATEGORIES.get(code, "other")


_FAILED_SIGN_INS = frozenset({AuditKind.SIGNIN_FAILED, AuditKind.THROTTLED,
                              AuditKind.SECOND_FACTOR_FAILED})


def signin_failure_category(kind: AuditKind, code: str | None) -> str | None:
    """A failed sign-in audit event, by its reason code, as one of ``SIGNIN_FAILURES``; None if
    not a failure."""
    if kind not in _FAILED_SIGN_INS:
        return None
    return code if code in SIGNIN_FAILURES else "other"


class _LiveCollector(Collector):
    """Figures read from the live sessions when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        m = self._metrics
        active = GaugeMetricFamily("deskgate_sessions_active",
                                   "Desktop sessions relaying now (admin watches not counted)")
        active.add_metric([], sum(1 for s in m.live if s.watch_of is None))
        yield active
        relayed = CounterMetricFamily("deskgate_relay_bytes",
                                      "Bytes relayed between browsers and desktops",
                                      labels=["direction"])
        up, down = m.closed_bytes_up, m.closed_bytes_down
        for s in m.live:
            up += s.counters.bytes_up
            down += s.counters.bytes_down
        relayed.add_metric(["up"], up)
        relayed.add_metric(["down"], down)
        yield relayed
        if m.capacity is not None:
            yield from _capacity_figures(m.capacity)
        if m.bridges is not None:
            bridges, rss_bytes, cpu_seconds = m.bridges.totals()
            count = GaugeMetricFamily("deskgate_rdp_bridges", "RDP bridges running on this node")
            count.add_metric([], bridges)
            yield count
            rss = GaugeMetricFamily("deskgate_rdp_bridge_rss_bytes",
                                    "Resident memory of all RDP bridge processes")
            rss.add_metric([], rss_bytes)
            yield rss
            cpu = GaugeMetricFamily("deskgate_rdp_bridge_cpu_seconds",
                                    "CPU time used by the running RDP bridges")
            cpu.add_metric([], cpu_seconds)
            yield cpu
        if m.ssh is not None:
            yield from _ssh_figures(m.ssh)


def _ssh_figures(ssh: SshConnections) -> Iterable[Any]:
    """Each SSH host's health as this node sees it: up (its connection is live), its state
    as one word, and how many times its connection was made."""
    up = GaugeMetricFamily("deskgate_ssh_host_up", "1 while this node's SSH connection to the"
                           " host is live", labels=["host"])
    state = GaugeMetricFamily("deskgate_ssh_host_state", "The host's SSH state (1 for the"
                              " current one)", labels=["host", "state"])
    connects = CounterMetricFamily("deskgate_ssh_host_connects", "SSH connections made to the"
                                   " host (a reconnect counts)", labels=["host"])
    for name, health in sorted(ssh.health.items()):
        up.add_metric([name], 1 if ssh.connected(name) else 0)
        state.add_metric([name, health.state], 1)
        connects.add_metric([name], health.connects)
    yield up
    yield state
    yield connects


def _capacity_figures(capacity: Capacity) -> Iterable[Any]:
    """This node's session capacity (gateway/capacity.py) and its use."""
    figures: list[tuple[str, str, float | None]] = [
        ("deskgate_session_capacity", "Sessions this node relays at most (open files limit,"
         " or relay.max_sessions)", capacity.limit),
        ("deskgate_sessions_in_use", "Capacity in use: relays (watches included) and connects"
         " waiting for their websocket", capacity.in_use()),
        ("deskgate_open_fds", "File descriptors this process has open", open_fds()),
        ("deskgate_fd_limit", "This process's open files limit (soft)", capacity.fd_limit),
    ]
    for name, text, value in figures:
        if value is not None:
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge
    refused = CounterMetricFamily("deskgate_sessions_refused_full",
                                  "Connects and websockets refused: the gateway is full")
    refused.add_metric([], capacity.refused)
    yield refused


class Metrics:
    """The application's registry and the few calls that feed it."""

    def __init__(self, live: LiveSessions) -> None:
        self.live = live
        self.capacity: Capacity | None = None
        self.bridges: RdpBridges | None = None  # set once the app's state is open
        self.ssh: SshConnections | None = None  # the SSH hosts' connections, likewise
        self.registry = CollectorRegistry()
        self.closed_bytes_up = 0
        self.closed_bytes_down = 0
        r = self.registry
        self.started = Counter("deskgate_sessions_started", "Desktop sessions started",
                               registry=r)
        self.closed = Counter("deskgate_sessions_closed", "Desktop sessions closed, by reason",
                              ["reason"], registry=r)
        self.latency = Histogram(
            "deskgate_connect_latency_seconds",
            "From the connect click (POST connect) to the desktop's first frame forwarded",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60), registry=r)
        self.signin_failures = Counter("deskgate_signin_failures", "Failed sign-ins, by reason",
                                       ["reason"], registry=r)
        self.desktops = Gauge("deskgate_desktops", "Desktops by state (as of the last scrape)",
                              ["state"], registry=r)
        self.desktop_vms = Gauge("deskgate_desktop_vms", "Desktop VMs by lifecycle state (as"
                                 " the gateway keeps it in step with the hypervisors)",
                                 ["state"], registry=r)
        self.vm_running_hours = Gauge(
            "deskgate_vm_running_hours", "Hours each desktop VM ran this month (UTC) so far",
            ["desktop_id", "desktop"], registry=r)
        self.vm_cost = Gauge(
            "deskgate_vm_cost", "What each desktop VM costs this month (UTC) so far, in the"
            " bundles' rate unit: AutoStop hours at their hourly rate, the monthly rate once"
            " it ran AlwaysOn", ["desktop_id", "desktop"], registry=r)
        self.vm_usage_read = float("-inf")  # monotonic time of the last reading
        for state in VM_STATES:
            self.desktop_vms.labels(state)
        for reason in CLOSE_REASONS:
            self.closed.labels(reason)
        for reason in SIGNIN_FAILURES:
            self.signin_failures.labels(reason)
        r.register(_LiveCollector(self))

    def session_started(self) -> None:
        self.started.inc()

    def session_closed(self, code: int, reason: str, bytes_up: int, bytes_down: int) -> None:
        self.closed.labels(close_category(code, reason)).inc()
        self.relay_closed(bytes_up, bytes_down)

    def relay_closed(self, bytes_up: int, bytes_down: int) -> None:
        """Keep the bytes of a relay that ended (live ones are read at scrape time)."""
        self.closed_bytes_up += bytes_up
        self.closed_bytes_down += bytes_down

    def connect_latency(self, seconds: float) -> None:
        self.latency.observe(max(0.0, seconds))

    def audit_event(self, kind: AuditKind, code: str | None) -> None:
        category = signin_failure_category(kind, code)
        if category is not None:
            self.signin_failures.labels(category).inc()

    def set_desktop_states(self, states: Iterable[str]) -> None:
        counts = dict.fromkeys(DESKTOP_STATES, 0)
        for state in states:
            counts[state if state in counts else "unknown"] += 1
        for state, n in counts.items():
            self.desktops.labels(state).set(n)

    def set_vm_states(self, states: Iterable[str]) -> None:
        counts = dict.fromkeys(VM_STATES, 0)
        for state in states:
            if state in counts:
                counts[state] += 1
        for state, n in counts.items():
            self.desktop_vms.labels(state).set(n)

    def set_vm_usage(self, report: UsageReport) -> None:
        """This month's figures per desktop VM; those no longer in it (a new month) go."""
        self.vm_running_hours.clear()
        self.vm_cost.clear()
        for d in report.desktops:
            labels = (str(d.desktop_id), d.name)
            self.vm_running_hours.labels(*labels).set(d.running_hours)
            self.vm_cost.labels(*labels).set(d.cost)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def desktop_states(app: web.Application) -> list[str]:
    catalog = app[CATALOG]
    desktops = await catalog.desktops()

    async def one(desktop: Desktop) -> str:
        # Bounded and fail-safe: see ``Providers.state``.
        return "maintenance" if desktop.maintenance else await catalog.state(desktop)

    return list(await asyncio.gather(*(one(d) for d in desktops)))


async def read_vms(app: web.Application) -> None:
    """Desktop VMs by state (one read of the store, no hypervisor asked), and this month's usage
    per desktop VM when the last reading is older than ``VM_USAGE_SECONDS``."""
    metrics = app[METRICS]
    metrics.set_vm_states(d.vm.state for d in await app[STORE].list_desktop_vms()
                          if d.vm is not None)
    now = time.monotonic()
    if now - metrics.vm_usage_read >= VM_USAGE_SECONDS:
        metrics.vm_usage_read = now
        usage = app[USAGE]
        metrics.set_vm_usage(await usage.report(usage.current_month(), people=False))


def _exposition_handler(app: web.Application, *, token: bool) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if token:
            expected = app[SETTINGS].metrics_token.reveal()
            if not expected:
                raise web.HTTPNotFound()
            supplied = request.headers.get("Authorization", "")
            if not hmac.compare_digest(supplied.encode("utf-8", "surrogatepass"),
                                       f"Bearer {expected}".encode()):
                return web.Response(status=401, text="metrics need the bearer token\n",
                                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        app[METRICS].set_desktop_states(await desktop_states(app))
        await read_vms(app)
        return web.Response(body=app[METRICS].exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    return handler


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", _exposition_handler(app, token=True))


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sign-in failure counting and the tokenless site when a port is set.

    Runs after the state context (it needs the audit writer and the catalog)."""
    metrics = app[METRICS]
    metrics.bridges = app[BROKER].bridges
    metrics.ssh = app[SSH_HOSTS].connections
    undo = app[AUDIT].listen(metrics.audit_event)
    settings = app[SETTINGS]
    runner: web.AppRunner | None = None
    if settings.metrics_port > 0:
        site_app = web.Application()
        site_app.router.add_get("/metrics", _exposition_handler(app, token=False))
        # Bound first: a busy port is one clear line naming the setting, and nothing is logged.
        sockets = bind(settings.metrics_host, settings.metrics_port,
                       port_setting="metrics.metrics_port", host_setting="metrics.metrics_host")
        runner = web.AppRunner(site_app, access_log=None)
        await runner.setup()
        for sock in sockets:
            await web.SockSite(runner, BackoffListener.wrap(sock)).start()
        log.info("metrics on http://%s/metrics", address(settings.metrics_host,
                                                           settings.metrics_port))
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()
        undo()


def install(app: web.Application) -> None:
    """Wire metrics into ``app``: the registry under ``METRICS``, the route, the lifetime."""
    app[METRICS] = Metrics(app[LIVE])
    app[METRICS].capacity = app[CAPACITY]
    add_routes(app)
    app.cleanup_ctx.append(metrics_ctx)
