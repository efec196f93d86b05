"""Every ``web.AppKey`` in one place: the application's state, typed, with no globals."""

from __future__ import annotations

import asyncio
import weakref

import jinja2
from aiohttp import web

from .audit import Audit
from .broker import Broker, Providers
from .capacity import Capacity
from .cases.access import Access
from .cases.accounts import Accounts
from .cases.audit_trail import AuditTrail
from .cases.catalog import Catalog
from .cases.sessions import Sessions
from .cases.signin import SignIn
from .cases.sso import SingleSignOn
from .config import Settings
from .events import EventBus
from .live import LiveSessions
from .store import Store
from .tickets import TicketBook

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
AUDIT = web.AppKey("audit", Audit)
# The use cases, one per area (gateway/cases/).
SIGNIN = web.AppKey("signin", SignIn)
SSO = web.AppKey("sso", SingleSignOn)
ACCOUNTS = web.AppKey("accounts", Accounts)
CATALOG = web.AppKey("catalog", Catalog)
ACCESS = web.AppKey("access", Access)
SESSIONS = web.AppKey("sessions", Sessions)
AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
# The same key under its former name, for gateway/web/middleware.py (which loads the web
# session through SignIn.sessions) until it reads SIGNIN: then this line goes.
SERVICES = SIGNIN
EVENTS = web.AppKey("events", EventBus)
PROVIDERS = web.AppKey("providers", Providers)
TICKETS = web.AppKey("tickets", TicketBook)
LIVE = web.AppKey("live", LiveSessions)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
BROKER = web.AppKey("broker", Broker)
CAPACITY = web.AppKey("capacity", Capacity)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("websockets")
# The relays running on this node, each in a task of its own once its websocket is taken over
# from aiohttp (web/browserws.py): kept here so that none is collected while it runs.
RELAY_TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("relay_tasks")
