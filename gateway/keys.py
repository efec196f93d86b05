"""Every ``web.AppKey`` in one place: the application's state, typed, with no globals."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

import jinja2
from aiohttp import web

from .audit import Audit
from .broker import Broker
from .capacity import Capacity
from .cases.access import Access
from .cases.accounts import Accounts
from .cases.audit_trail import AuditTrail
from .cases.bundles import Bundles
from .cases.catalog import Catalog
from .cases.kiosks import Kiosks
from .cases.sessions import Sessions
from .cases.signin import SignIn
from .cases.ssh_hosts import SshHosts
from .cases.sso import SingleSignOn
from .cases.usage import Usage
from .cases.vms import DesktopVms
from .config import Settings
from .crypto import SecretBox
from .events import EventBus
from .live import LiveSessions
from .providers.registry import Providers
from .rdp.bridges import RdpBridges
from .relay import RelayDeps
from .ssh.connections import SshConnections
from .store import Store
from .tickets import TicketBook

if TYPE_CHECKING:  # metrics.py imports this module: its type only, for the checker
    from .metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
BOX = web.AppKey("box", SecretBox)  # the secrets' encryption, with this gateway's key
AUDIT = web.AppKey("audit", Audit)
# The use cases, one per area (gateway/cases/).
SIGNIN = web.AppKey("signin", SignIn)
SSO = web.AppKey("sso", SingleSignOn)
ACCOUNTS = web.AppKey("accounts", Accounts)
CATALOG = web.AppKey("catalog", Catalog)
ACCESS = web.AppKey("access", Access)
SESSIONS = web.AppKey("sessions", Sessions)
AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
BUNDLES = web.AppKey("bundles", Bundles)
VMS = web.AppKey("vms", DesktopVms)
USAGE = web.AppKey("usage", Usage)  # desktop VMs' usage and cost
KIOSKS = web.AppKey("kiosks", Kiosks)
SSH_HOSTS = web.AppKey("ssh_hosts", SshHosts)
SSH_CONNECTIONS = web.AppKey("ssh_connections", SshConnections)
EVENTS = web.AppKey("events", EventBus)
PROVIDERS = web.AppKey("providers", Providers)
RDP_BRIDGES = web.AppKey("rdp_bridges", RdpBridges)
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
