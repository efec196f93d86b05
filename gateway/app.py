"""create_app(settings): wiring only. Every stateful piece is opened and closed by a cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jinja2
from aiohttp import web

from .admin import AdminService
from .audit import Audit
from .auth.guard import IpThrottle, LoginGuard
from .auth.local import LocalAccounts
from .auth.oidc import OidcClient
from .auth.sessions import WebSessions
from .auth.totp import TotpFactor
from .broker import Broker, Providers
from .config import Settings
from .crypto import SecretBox
from .errors import WS_GOING_AWAY
from .events import EventBus
from .keys import (
    ADMIN,
    AUDIT,
    BROKER,
    EVENTS,
    LIVE,
    PROVIDERS,
    SERVICES,
    SETTINGS,
    SHUTTING_DOWN,
    SSO,
    STORE,
    TEMPLATES,
    TICKETS,
    WEBSOCKETS,
)
from .live import LiveSessions
from .metrics import SHUTDOWN
from .metrics import install as install_metrics
from .providers import ProviderContext
from .proxy.rdp import RdpBridges
from .services import Services
from .sso import SsoService
from .store.sqlite import SQLiteStore
from .tickets import TicketBook
from .web import admin_pages, admin_sessions, api, client, login, middleware, portal, sso
from .web.sso import CALLBACK_PATH

log = logging.getLogger("deskgate")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"
NOVNC_DIR = ROOT / "node_modules" / "@novnc" / "novnc"


def build_services(settings: Settings, store: SQLiteStore) -> Services:
    box = SecretBox(settings.secret_key)
    audit = Audit(store)
    guard = LoginGuard(store, IpThrottle(settings.ip_throttle_per_minute),
                       settings.lockout_threshold, settings.lockout_minutes * 60.0)
    return Services(store, box, audit, LocalAccounts(store), TotpFactor(store, box), guard,
                    WebSessions(store, settings))


async def _state(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = SQLiteStore(settings.database_path)
    await store.open()
    closed = await store.close_open_sessions(time.time(), "the gateway restarted")
    if closed:
        log.info("closed %d sessions left open by a previous run", closed)
    services = build_services(settings, store)
    runtime = settings.desktop_runtime_dir
    if runtime != settings.data_dir:
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o711)  # traverse-only: each desktop's own folder below is private
    providers = Providers(ProviderContext(runtime, settings.run_as_user, settings.display_base))
    tickets = TicketBook(settings.ticket_ttl_seconds)
    app[STORE] = store
    app[AUDIT] = services.audit
    app[SERVICES] = services
    app[PROVIDERS] = providers
    app[TICKETS] = tickets
    # RDP desktops: a private xfreerdp-in-Xvnc bridge per person and desktop.
    bridges = RdpBridges(runtime / "rdp",
                         run_as_user=settings.run_as_user if os.geteuid() == 0 else None,
                         max_bridges=settings.rdp_max_bridges,
                         grace_seconds=settings.rdp_grace_seconds)
    app[BROKER] = Broker(store, services.box, providers, tickets, services.audit, settings,
                         bridges)
    app[ADMIN] = AdminService(store, services.box, services.audit, providers, app[LIVE],
                              settings.desktop_geometry)
    try:
        yield
    finally:
        await bridges.close()
        await providers.close()
        await store.close()


async def _single_sign_on(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client for all identity providers, and an OIDC client per provider."""
    settings = app[SETTINGS]
    redirect_uri = settings.public_url.rstrip("/") + CALLBACK_PATH
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        clients = {p.id: OidcClient(p, http, redirect_uri) for p in settings.oidc}
        services = app[SERVICES]
        app[SSO] = SsoService(app[STORE], services.box, services.audit, services.sessions,
                              clients, {p.id: p for p in settings.oidc}, redirect_uri)
        yield


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        tick = 0
        while True:
            await asyncio.sleep(1)
            tick += 1
            try:
                now = time.time()
                for live in app[LIVE]:
                    live.sample(now)
                if tick % 5 == 0:
                    await app[BROKER].expire_unused_tickets()
                    await app[LIVE].sweep(app[STORE], now, app[SERVICES].sessions.expiry)
            except Exception:
                log.exception("housekeeping failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_websockets(app: web.Application) -> None:
    """Relays first, through their sessions, so that each is recorded as ended by the shutdown;
    then any other websocket."""
    app[SHUTTING_DOWN].set()
    await app[LIVE].end_all(WS_GOING_AWAY, SHUTDOWN, final=False)
    for ws in [*app[WEBSOCKETS]]:
        if not ws.closed:
            await ws.close(code=WS_GOING_AWAY, message=SHUTDOWN.encode())


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[middleware.started_responses, middleware.errors,
                                       middleware.web_session],
                          client_max_size=64 * 1024)
    app[SETTINGS] = settings
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    app[WEBSOCKETS] = sockets
    app[LIVE] = LiveSessions()
    app[EVENTS] = EventBus()
    app[SHUTTING_DOWN] = asyncio.Event()
    app[TEMPLATES] = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                                        autoescape=True, undefined=jinja2.StrictUndefined)
    app.cleanup_ctx.append(_state)
    app.cleanup_ctx.append(_single_sign_on)
    app.cleanup_ctx.append(_housekeeping)
    app.on_shutdown.append(_close_websockets)
    app.on_response_prepare.append(middleware.security_headers)
    app.on_response_prepare.append(middleware.remember_prepared)
    install_metrics(app)  # after _state: it counts through the audit writer
    for module in (login, sso, portal, client, api, admin_pages, admin_sessions):
        app.add_routes(module.routes)
    app.router.add_static("/static/", STATIC_DIR)
    if NOVNC_DIR.is_dir():
        app.router.add_static("/novnc/", NOVNC_DIR)
    else:
        log.warning("noVNC is not installed at %s: run `npm ci`", NOVNC_DIR)
    return app
