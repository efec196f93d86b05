"""Every ``web.AppKey`` in one place: the application's state, typed, with no globals."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

import jinja2
from aiohttp import web

from .admin import AdminService
from .audit import Audit
from .broker import Broker
from .capacity import Capacity
from .config import Settings
from .events import EventBus
from .live import LiveSessions
from .providers.registry import Providers
from .relay import RelayDeps
from .services import Services
from .sso import SsoService
from .store import Store
from .tickets import TicketBook

if TYPE_CHECKING:  # metrics.py imports this module: its type only, for the checker
    from .metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
AUDIT = web.AppKey("audit", Audit)
SERVICES = web.AppKey("services", Services)
ADMIN = web.AppKey("admin", AdminService)
EVENTS = web.AppKey("events", EventBus)
SSO = web.AppKey("sso", SsoService)
PROVIDERS = web.AppKey("providers", Providers)
TICKETS = web.AppKey("tickets", TicketBook)
LIVE = web.AppKey("live", LiveSessions)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
BROKER = web.AppKey("broker", Broker)
CAPACITY = web.AppKey("capacity", Capacity)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("websockets")
# The relays running on this node, each in a task of its own once its websocket is taken over
# from aiohttp (proxy/browserws.py): kept here so that none is collected while it runs.
RELAY_TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("relay_tasks")
# What every relay is given (gateway/relay.py), made once the state is open.
RELAYS = web.AppKey("relays", RelayDeps)
