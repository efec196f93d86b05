"""create_app(settings): wiring only. Every stateful piece is opened and closed by a cleanup_ctx.

Over 400 lines as one concern: the composition root, where the use cases, providers, SSH
connections and web handlers are built and joined; none of them builds another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jinja2
from aiohttp import web

from .audit import Audit
from .auth.guard import AddressWindow, LoginGuard, PreLogins
from .auth.local import LocalAccounts
from .auth.oidc import OidcClient
from .auth.sessions import WebSessions
from .auth.totp import TotpFactor
from .broker import Broker
from .capacity import Capacity
from .cases.access import Access
from .cases.accounts import Accounts
from .cases.actor import Actor
from .cases.audit_trail import AuditTrail
from .cases.bundles import Bundles
from .cases.catalog import Catalog
from .cases.kiosks import Kiosks, KioskSettings
from .cases.sessions import Sessions
from .cases.signin import SignIn
from .cases.ssh_hosts import SshHosts
from .cases.sso import LOGIN_TTL, SingleSignOn
from .cases.usage import Usage
from .cases.vms import DesktopVms, VmSettings
from .config import Settings
from .crypto import SecretBox
from .errors import WS_GOING_AWAY, ConfigError, DesktopUnavailable, NotFound
from .events import EventBus
from .keys import (
    ACCESS,
    ACCOUNTS,
    AUDIT,
    AUDIT_TRAIL,
    BOX,
    BROKER,
    BUNDLES,
    CAPACITY,
    CATALOG,
    EVENTS,
    KIOSKS,
    LIVE,
    METRICS,
    PROVIDERS,
    RDP_BRIDGES,
    RELAY_TASKS,
    RELAYS,
    SESSIONS,
    SETTINGS,
    SHUTTING_DOWN,
    SIGNIN,
    SSH_CONNECTIONS,
    SSH_HOSTS,
    SSO,
    STORE,
    TEMPLATES,
    TICKETS,
    USAGE,
    VMS,
    WEBSOCKETS,
)
from .live import SHUTDOWN, LiveSessions
from .metrics import install as install_metrics
from .model import Desktop
from .providers import ProviderContext
from .providers.registry import Providers, stored_passwords
from .rdp.bridges import RdpBridges
from .relay import BridgeHooks, RelayDeps, RelayTimes
from .ssh.connections import SshConnections, SshHost
from .store import Store
from .store.sqlite import SQLiteStore
from .textsafe import multiline, page_value
from .tickets import TicketBook
from .web import (
    admin_kiosks,
    admin_pages,
    admin_sessions,
    admin_ssh,
    admin_usage,
    admin_vms,
    api,
    api_kiosks,  # noqa: F401  (its operations join api.API's table)
    api_ssh,  # noqa: F401  (its operations join api.API's table)
    api_usage,  # noqa: F401  (its operations join api.API's table)
    api_vms,  # noqa: F401  (its operations join api.API's table)
    client,
    common,
    kiosk,
    login,
    middleware,
    portal,
    sso,
)
from .web.sso import callback_path

log = logging.getLogger("deskgate")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"
NOVNC_DIR = ROOT / "node_modules" / "@novnc" / "novnc"
CHARTJS_DIR = ROOT / "node_modules" / "chart.js" / "dist"  # the usage page's chart


@dataclass(frozen=True)
class Cases:
    """The use cases of one process, one object per area (gateway/cases/), on one store; and
    what they were built on, for the tests."""

    store: Store
    box: SecretBox
    audit: Audit
    signin: SignIn
    accounts: Accounts
    catalog: Catalog
    access: Access
    sessions: Sessions
    audit_trail: AuditTrail
    bundles: Bundles
    vms: DesktopVms
    providers: Providers
    usage: Usage
    kiosks: Kiosks
    ssh_hosts: SshHosts


def build_cases(settings: Settings, store: Store, *, box: SecretBox | None = None,
                providers: Providers | None = None, live: LiveSessions | None = None,
                ssh: SshConnections | None = None) -> Cases:
    """The use cases on ``store``. Without ``providers`` and ``live`` (the command line), a
    provider is made only when a change needs one, and no session is live here."""
    box = SecretBox(settings.secret_key) if box is None else box
    audit = Audit(store)
    live = LiveSessions() if live is None else live
    if providers is None:
        providers = Providers(provider_context(settings, store, box, settings.desktop_runtime_dir))
    guard = LoginGuard(store, AddressWindow(store, "signin", settings.ip_throttle_per_minute),
                       settings.lockout_threshold, settings.lockout_minutes * 60.0)
    local = LocalAccounts(store)
    accounts = Accounts(store, audit, local, live)
    catalog = Catalog(store, box, audit, providers, live, accounts, settings.desktop_geometry)

    async def may_use(actor: Actor, desktop: Desktop) -> bool:
        user = await store.get_user(actor.user_id) if actor.user_id is not None else None
        return user is not None and not user.disabled and await store.is_assigned(desktop.id,
                                                                                  user.id)

    vms = DesktopVms(store, audit, providers, VmSettings(
        settings.hypervisor_configs, settings.desktop_geometry, settings.vm_stop_timeout_seconds,
        settings.vm_start_timeout_seconds, settings.vm_reconcile_seconds), may_use=may_use)
    web_sessions = WebSessions(store, settings)
    return Cases(store, box, audit,
                 SignIn(store, box, audit, local, TotpFactor(store, box), guard, web_sessions),
                 accounts, catalog, Access(store, audit, catalog), Sessions(store, audit, live),
                 AuditTrail(store, audit), Bundles(store, audit), vms, providers, Usage(store),
                 Kiosks(store, audit, live, web_sessions, KioskSettings.of(settings)),
                 ssh_hosts(settings, store, box, audit, ssh))


def ssh_hosts(settings: Settings, store: Store, box: SecretBox, audit: Audit,
              ssh: SshConnections | None) -> SshHosts:
    """The SSH hosts; their connections (a serving gateway's) report first-use and changed
    host keys to them."""
    hosts = SshHosts(store, box, audit, ssh, hypervisors={
        h.name: h.via for h in settings.hypervisor_configs.values() if h.via})
    if ssh is not None:
        ssh.on_first_key, ssh.on_key_changed = hosts.first_key, hosts.key_changed
    return hosts


def provider_context(settings: Settings, store: Store, box: SecretBox, runtime: Path, *,
                     stop_on_exit: bool = False,
                     ssh: SshConnections | None = None) -> ProviderContext:
    """What every desktop provider of this process is given; with ``ssh``, desktops are
    started on SSH hosts (provider "ssh") over those connections."""
    return ProviderContext(runtime, settings.run_as_user, settings.display_base,
                           stop_on_exit=stop_on_exit, credentials=stored_passwords(store, box),
                           hypervisors=settings.hypervisor_configs,
                           vm_stop_timeout=settings.vm_stop_timeout_seconds,
                           vm_start_timeout=settings.vm_start_timeout_seconds,
                           ssh=ssh_reach(store, box, ssh) if ssh is not None else None)


def ssh_reach(store: Store, box: SecretBox, ssh: SshConnections,
              ) -> Callable[[str], Awaitable[tuple[SshConnections, SshHost]]]:
    """An SSH host's connections and spec by its name, for the "ssh" desktop provider."""
    hosts = SshHosts(store, box, Audit(store), ssh)

    async def reach(name: str) -> tuple[SshConnections, SshHost]:
        try:
            return ssh, await hosts.spec(name)
        except NotFound:
            raise DesktopUnavailable(f"the SSH host {name} of this desktop is gone") from None
    return reach


def prepare_runtime_dir(settings: Settings) -> Path:
    """The local desktops' runtime folder, created (traverse-only) unless it is the data folder;
    ``ConfigError`` naming the folder and its setting when that fails."""
    runtime = settings.desktop_runtime_dir
    if runtime != settings.data_dir:
        try:
            runtime.mkdir(parents=True, exist_ok=True)
            runtime.chmod(0o711)  # traverse-only: each desktop's own folder below is private
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"cannot prepare the runtime folder {runtime}"
                              f" (desktops.runtime_dir): {why}") from None
    return runtime


def pre_logins(settings: Settings, store: Store) -> PreLogins:
    return PreLogins(store, settings.sso_starts_per_minute, settings.sso_pending_per_address,
                     settings.sso_pending_max, LOGIN_TTL)


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The store; sessions a previous run left open are closed as it opens."""
    settings = app[SETTINGS]
    store = SQLiteStore(settings.database_path)
    await store.open()
    closed = await store.close_open_sessions(time.time(), "the gateway restarted")
    if closed:
        log.info("closed %d sessions left open by a previous run", closed)
    app[STORE] = store
    app[BOX] = SecretBox(settings.secret_key)
    try:
        yield
    finally:
        await store.close()


async def _desktop_providers(app: web.Application) -> AsyncIterator[None]:
    """The desktop providers; local desktops left running by the previous run are taken over."""
    settings = app[SETTINGS]
    runtime = prepare_runtime_dir(settings)
    # The SSH connections of this process (desktops on SSH hosts, desktops behind jump hosts).
    ssh = SshConnections(runtime)
    app[SSH_CONNECTIONS] = ssh
    providers = Providers(provider_context(settings, app[STORE], app[BOX], runtime,
                                           stop_on_exit=settings.stop_desktops_on_exit,
                                           ssh=ssh))
    try:
        await providers.recover()
        app[PROVIDERS] = providers
        yield
    finally:
        await providers.close()
        await ssh.close()


async def _use_cases(app: web.Application) -> AsyncIterator[None]:
    """The use cases, one object per area (gateway/cases/)."""
    cases = build_cases(app[SETTINGS], app[STORE], box=app[BOX], providers=app[PROVIDERS],
                        live=app[LIVE], ssh=app[SSH_CONNECTIONS])
    app[AUDIT] = cases.audit
    app[SIGNIN] = cases.signin
    app[ACCOUNTS] = cases.accounts
    app[CATALOG] = cases.catalog
    app[ACCESS] = cases.access
    app[SESSIONS] = cases.sessions
    app[AUDIT_TRAIL] = cases.audit_trail
    app[BUNDLES] = cases.bundles
    app[VMS] = cases.vms
    app[USAGE] = cases.usage
    app[KIOSKS] = cases.kiosks
    app[SSH_HOSTS] = cases.ssh_hosts
    keeper = asyncio.create_task(cases.vms.keep_in_step(), name="desktop VMs in step")
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await cases.vms.close()


async def _rdp_bridges(app: web.Application) -> AsyncIterator[None]:
    """RDP desktops: a private xfreerdp-in-Xvnc bridge per person and desktop."""
    settings = app[SETTINGS]
    bridges = RdpBridges(prepare_runtime_dir(settings) / "rdp",
                         run_as_user=settings.run_as_user if os.geteuid() == 0 else None,
                         max_bridges=settings.rdp_max_bridges,
                         grace_seconds=settings.rdp_grace_seconds,
                         display_base=settings.rdp_display_base,
                         logon_timeout=settings.rdp_logon_timeout_seconds,
                         handover_seconds=settings.ticket_ttl_seconds,
                         max_clipboard_bytes=settings.max_clipboard_bytes)
    app[RDP_BRIDGES] = bridges
    try:
        yield
    finally:
        await bridges.close()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    """Connecting: tickets, the broker, and what each relay is given."""
    settings = app[SETTINGS]
    app[TICKETS] = TicketBook(settings.ticket_ttl_seconds)
    bridges = app[RDP_BRIDGES]
    app[BROKER] = Broker(app[STORE], app[BOX], app[PROVIDERS], app[TICKETS], app[AUDIT],
                         settings, app[ACCESS], bridges, ready=app[VMS].ready,
                         view_only=app[KIOSKS].view_only, reach=app[SSH_HOSTS].reach,
                         lost=app[SSH_HOSTS].lost)
    app[RELAYS] = RelayDeps(app[LIVE], app[BROKER], app[METRICS], app[EVENTS],
                            RelayTimes.of(settings), app[SHUTTING_DOWN],
                            BridgeHooks(bridges.resized, bridges.watch_exit))
    yield


async def _last_closes(app: web.Application) -> AsyncIterator[None]:
    """Before the bridges, the providers and the store close: the relays' close bookkeeping
    (session rows, audit) needs them. Normally it has finished in _close_websockets; a relay
    still closing now gets its last moments."""
    yield
    if not await app[CAPACITY].drained(_LAST_CLOSE_SECONDS):
        log.warning("%d sessions were still closing when the database closed",
                    app[CAPACITY].relays)


async def _single_sign_on(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client for all identity providers, and an OIDC client per provider."""
    settings = app[SETTINGS]
    base = settings.public_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        # Each provider has its own redirect URI (mix-up defence, RFC 9700 4.4.2).
        clients = {p.id: OidcClient(p, http, base + callback_path(p.id)) for p in settings.oidc}
        app[SSO] = SingleSignOn(app[STORE], SecretBox(settings.secret_key), app[AUDIT],
                                app[SIGNIN].sessions, clients, {p.id: p for p in settings.oidc},
                                prelogins=pre_logins(settings, app[STORE]))
        yield


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(5)
            try:
                await app[BROKER].expire_unused_tickets()
                await app[LIVE].sweep(app[STORE], time.time(), app[SIGNIN].sessions.expiry)
            except Exception:
                log.exception("housekeeping failed")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# Shutdown, in order: aiohttp stops the listeners; _close_websockets ends every relay and waits
# (at most SHUTDOWN_GRACE_SECONDS) for each to close its session row and write its audit event;
# then aiohttp waits for (and then cancels) the remaining requests; only then do the cleanup
# contexts close the store.
SHUTDOWN_GRACE_SECONDS = 30.0
_LAST_CLOSE_SECONDS = 5.0


async def _close_websockets(app: web.Application) -> None:
    """Relays first, through their sessions, so that each is recorded as ended by the shutdown;
    then any other websocket; then wait until every relay has finished its clean-up."""
    app[SHUTTING_DOWN].set()
    if len(app[LIVE]):
        log.info("shutting down: ending %d sessions", len(app[LIVE]))
    # All at once: each close waits for its browser's answer (bounded by the socket's timeout).
    await app[LIVE].end_all(WS_GOING_AWAY, SHUTDOWN, final=False)
    await asyncio.gather(*(ws.close(code=WS_GOING_AWAY, message=SHUTDOWN.encode())
                           for ws in [*app[WEBSOCKETS]] if not ws.closed),
                         return_exceptions=True)
    if not await app[CAPACITY].drained(SHUTDOWN_GRACE_SECONDS):
        log.warning("%d sessions did not finish closing in %.0f s", app[CAPACITY].relays,
                    SHUTDOWN_GRACE_SECONDS)


def _admin_app() -> web.Application:
    """The admin pages, the live dashboard, the desktop VM, usage, kiosk and SSH host pages, for
    signed-in admins only (its middleware)."""
    admin = web.Application(middlewares=[common.admin_only])
    admin.add_routes(admin_pages.routes)
    admin.add_routes(admin_sessions.routes)
    admin.add_routes(admin_usage.routes)
    admin.add_routes(admin_vms.routes)
    admin.add_routes(admin_kiosks.routes)
    admin.add_routes(admin_ssh.routes)
    return admin


def create_app(settings: Settings) -> web.Application:
    middleware.hide_server_version()
    app = web.Application(middlewares=[middleware.started_responses, middleware.errors,
                                       middleware.web_session],
                          client_max_size=64 * 1024)
    app[SETTINGS] = settings
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    app[WEBSOCKETS] = sockets
    app[RELAY_TASKS] = set()
    app[LIVE] = LiveSessions()
    app[EVENTS] = EventBus()
    app[SHUTTING_DOWN] = asyncio.Event()
    app[CAPACITY] = Capacity.for_process(settings.max_sessions, settings.ticket_ttl_seconds)
    # Autoescaping keeps outside text from becoming HTML; page_value keeps its control
    # characters (bidi overrides, escapes, line breaks) from reordering or hiding what is shown.
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                                   autoescape=True, undefined=jinja2.StrictUndefined,
                                   finalize=page_value)
    templates.filters["multiline"] = multiline
    app[TEMPLATES] = templates
    # One context per resource, opened in this order and closed in the reverse one.
    for context in (_database, _desktop_providers, _use_cases, _rdp_bridges, _broker,
                    _last_closes):
        app.cleanup_ctx.append(context)
    app.cleanup_ctx.append(_single_sign_on)
    app.cleanup_ctx.append(_housekeeping)
    app.on_shutdown.append(_close_websockets)
    app.on_response_prepare.append(middleware.security_headers)
    app.on_response_prepare.append(middleware.remember_prepared)
    install_metrics(app)  # after _state: it counts through the audit writer
    for module in (login, sso, portal, client, kiosk):
        app.add_routes(module.routes)
    app.add_routes(admin_sessions.sockets)  # an admin's watch: a relay websocket like any other
    app.add_subapp("/admin/", _admin_app())
    app.add_subapp(api.PREFIX + "/", api.app())
    app.router.add_static("/static/", STATIC_DIR)
    if NOVNC_DIR.is_dir():
        app.router.add_static("/novnc/", NOVNC_DIR)
    else:
        log.warning("noVNC is not installed at %s: run `npm ci`", NOVNC_DIR)
    if CHARTJS_DIR.is_dir():
        app.router.add_static("/chartjs/", CHARTJS_DIR)
    else:
        log.warning("Chart.js is not installed at %s: run `npm ci` (the usage page shows its"
                    " tables without the chart)", CHARTJS_DIR)
    return app
