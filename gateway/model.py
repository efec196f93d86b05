"""Domain types shared by every layer. No I/O in here."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Protocol


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class WebSessionState(enum.StrEnum):
    PASSWORD_OK = "password_ok"  # noqa: S105 (a state name)  # half signed in: the second factor is still missing
    AUTHENTICATED = "authenticated"


class SessionState(enum.StrEnum):
    """A connection session's life: starting -> active -> closed, or starting -> failed.

    ``failed`` is a connection attempt that never reached the desktop (the RFB handshake with the
    desktop never completed): it is not a session that was used, and lists of past sessions
    show it apart. A retry of a failed attempt starts the same row again (starting).
    """

    STARTING = "starting"
    ACTIVE = "active"
    CLOSED = "closed"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (SessionState.CLOSED, SessionState.FAILED)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool
    disabled: bool
    totp_enrolled: bool
    failed_attempts: int = 0
    locked_until: float = 0.0
    source: str = "local"  # "local", or the id of the OIDC provider that provisioned the account
    # gateway.names.name_key(name), unique; None only on an older account whose name looks like
    # an even older one's (kept, and reported as a look-alike)
    name_key: str | None = None


# What a person may do to their own desktop VM from the portal (a bundle's or a desktop's policy).
SELF_SERVICE = ("restart", "rebuild", "mode")
# A desktop VM's running modes (as WorkSpaces has them): kept running, or stopped when idle.
ALWAYS_ON, AUTO_STOP = "always_on", "auto_stop"
RUNNING_MODES = (ALWAYS_ON, AUTO_STOP)
MODE_NAMES = {ALWAYS_ON: "AlwaysOn", AUTO_STOP: "AutoStop"}  # as people (and WorkSpaces) say them
# Where a desktop VM's screen is: its VNC console (a private unix socket), or a protocol server
# inside the guest at the desktop's address.
VM_PROTOCOLS = ("console", "vnc", "rdp")


@dataclass(frozen=True)
class Bundle:
    """A named size of desktop VM, and what it costs (as WorkSpaces bundles are)."""

    id: int
    name: str
    vcpus: int
    memory_mib: int
    root_mib: int  # the root disk's size (an overlay on the base image)
    user_mib: int  # the user volume's size (it outlives a rebuild)
    base_image: str  # absolute path of the qcow2 base image on the hypervisor's host
    protocol: str = "console"  # one of VM_PROTOCOLS
    hourly_rate: float = 0.0  # AutoStop: cost per running hour
    monthly_rate: float = 0.0  # AlwaysOn: cost per month
    self_service: tuple[str, ...] = ()  # sorted subset of SELF_SERVICE
    kernel: str = ""  # direct kernel boot (kernel and initrd paths); "" boots the disk
    initrd: str = ""
    cmdline: str = ""
    # What the guest prints on its serial console once it is ready for people (a login prompt,
    # a banner); "" takes the screen's first answer as ready.
    ready_text: str = ""


@dataclass(frozen=True)
class DesktopVm:
    """A desktop that is a VM Deskgate owns: its bundle, where it runs, its lifecycle state."""

    desktop_id: int
    bundle: Bundle
    hypervisor: str  # a hypervisor's name in the configuration
    state: str  # a gateway.providers.libvirt.lifecycle.VmState value
    reason: str = ""  # why it is in that state (libvirt's error, a change seen outside Deskgate)
    since: float = 0.0  # when it entered the state
    mode: str = AUTO_STOP  # one of RUNNING_MODES
    auto_stop_seconds: int = 3600  # AutoStop: stopped this long after its last session ends
    own_self_service: tuple[str, ...] | None = None  # None: the bundle's policy

    @property
    def self_service(self) -> tuple[str, ...]:
        """What its user may do: the desktop's own policy, else its bundle's."""
        return self.bundle.self_service if self.own_self_service is None else self.own_self_service


@dataclass(frozen=True)
class VmRun:
    """One interval a desktop VM ran (usage and cost), with its mode and rates at the time."""

    desktop_id: int
    desktop_name: str
    started_at: float
    ended_at: float | None  # None: running now
    mode: str
    hourly_rate: float
    monthly_rate: float


@dataclass(frozen=True)
class Desktop:
    id: int
    name: str
    provider: str
    host: str = ""
    port: int = 0
    protocol: str = "vnc"
    has_password: bool = False
    maintenance: bool = False  # no new connections; existing ones are warned
    options: tuple[tuple[str, str], ...] = ()  # protocol options (RDP user, domain, security, ...)
    vm: DesktopVm | None = None  # provider "libvirt": the VM, its bundle and state

    def option(self, key: str, default: str = "") -> str:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class WebSession:
    id: str  # the cookie value's hash, never the cookie itself
    user_id: int
    state: WebSessionState
    csrf_token: str
    created_at: float
    last_seen: float
    client_ip: str
    user_agent: str
    idp: str | None = None  # the OIDC provider this sign-in came through
    id_token_enc: str | None = None  # encrypted; only for RP-initiated logout's id_token_hint
    kiosk_id: int | None = None  # signed in on this enrolled kiosk (its policies apply)
    device: bool = False  # a dedicated kiosk's own session: no idle or lifetime end


@dataclass(frozen=True)
class OidcLogin:
    """A sign-in started at an identity provider, waiting for its callback (single use)."""

    provider: str
    browser_hash: str
    nonce_enc: str
    verifier_enc: str
    created_at: float


@dataclass(frozen=True)
class PendingCaps:
    """How many pre-logins may wait for their callback: ``total`` in all, ``per_address`` from
    one client address, of which ``per_minute`` started after ``minute_start``. Those created
    before ``expired_before`` no longer count (and are purged)."""

    total: int
    per_address: int
    per_minute: int
    expired_before: float
    minute_start: float


@dataclass(frozen=True)
class Session:
    id: str
    user_id: int
    desktop_id: int
    web_session_id: str
    state: SessionState
    started_at: float
    ended_at: float | None = None
    close_reason: str | None = None
    close_final: bool = False  # True: the client must not reconnect by itself
    bytes_up: int = 0
    bytes_down: int = 0
    client_ip: str = ""
    user_agent: str = ""
    tries: int = 1  # connection tries of this attempt (a failed attempt retried keeps its row)


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    user_id: int
    read_only: bool
    created_at: float
    expires_at: float
    last_used: float | None = None


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: float
    kind: str
    user: str | None
    desktop: str | None
    client_ip: str | None
    detail: str
    prev_hash: str | None = None
    row_hash: str | None = None

    def expected_hash(self, prev_hash: str) -> str:
        """The chain hash of this row's content after ``prev_hash`` (see ``deskgate audit verify``)."""
        content = [prev_hash, repr(self.at), self.kind, self.user, self.desktop, self.client_ip,
                   self.detail]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()


AUDIT_GENESIS = "0" * 64  # the "previous hash" of the first row in the chain


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway reaches a desktop, and with what credentials.

    Exactly one of ``port`` (TCP to ``host``) or ``unix_path`` is used.
    """

    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str | None = None
    password: Secret | None = None
    protocol: str = "vnc"


class Reach(Protocol):
    """How this node reaches a desktop's endpoint (through an SSH host for a desktop behind a
    jump host: gateway/cases/ssh_hosts.py); ``owner``: the uid of the processes that connect
    to it when they are not the gateway's own (an RDP bridge's)."""

    async def __call__(self, desktop: Desktop, endpoint: Endpoint, *,
                       owner: int | None = None) -> Endpoint: ...


@dataclass
class RelayCounters:
    """Live figures of one relayed connection, updated by the byte path."""

    bytes_up: int = 0  # browser -> desktop
    bytes_down: int = 0  # desktop -> browser
    last_input: float = 0.0  # wall clock of the last key or pointer event
    messages_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RelayPolicy:
    """What the byte path lets through from the browser to the desktop."""

    view_only: bool = False
    clipboard_to_desktop: bool = True
    clipboard_from_desktop: bool = True
    max_clipboard_bytes: int = 1 << 20
    # Input from one browser, as token buckets (a rate and a burst). A person sends a few KiB/s
    # (keys, pointer moves, update requests) and now and then a clipboard paste; more than this
    # ends the session (InputLimit) instead of taking the gateway's time from everyone else.
    input_bytes_per_second: int = 128 * 1024
    input_burst_bytes: int = (1 << 20) + 256 * 1024  # a full clipboard paste and then some
    input_messages_per_second: int = 1000
    input_burst_messages: int = 5000


# A browser window's size in pixels as the gateway takes it (an RDP bridge's screen follows it).
WINDOW_MIN, WINDOW_MAX = 16, 8192


def window_size(width: int, height: int) -> tuple[int, int] | None:
    """``(width, height)`` when both are from ``WINDOW_MIN`` to ``WINDOW_MAX``, else None."""
    if WINDOW_MIN <= width <= WINDOW_MAX and WINDOW_MIN <= height <= WINDOW_MAX:
        return width, height
    return None


@dataclass(frozen=True)
class Admission:
    """A connection the broker admitted (its ticket consumed): what the relay needs."""

    session: Session
    user: User
    desktop: Desktop
    endpoint: Endpoint
    policy: RelayPolicy
    watch_of: str | None = None  # an admin's view-only watch of this live session
    bridge_key: str | None = None  # RDP: the bridge this connection holds (released at the end)


# Kiosks: thin clients enrolled as devices. A shared kiosk is a hot desk anyone signs in on; a
# dedicated one shows one fixed desktop with nobody signing in.
SHARED, DEDICATED = "shared", "dedicated"
KIOSK_MODES = (SHARED, DEDICATED)
# The account a dedicated kiosk connects as: one per kiosk, never signed in with a password.
KIOSK_SOURCE = "kiosk"


@dataclass(frozen=True)
class Kiosk:
    """An enrolled (or to be enrolled) thin client, as the admin pages show it. Its secrets
    (pairing code, device credential, public key) stay in the store."""

    id: int
    name: str
    location: str
    mode: str  # SHARED or DEDICATED
    desktop_id: int | None  # dedicated: the desktop it shows
    input_allowed: bool  # dedicated: whether keys and pointer reach the desktop
    user_id: int | None  # dedicated: its device account (KIOSK_SOURCE)
    created_at: float
    enrolled_at: float | None = None  # paired (it holds a key); None until then
    revoked_at: float | None = None
    pair_expires: float | None = None  # a pairing code is waiting until then
    last_seen: float | None = None
    last_ip: str = ""
    user_agent: str = ""
    current_user: str = ""  # who is signed in on it now (last heartbeat)
    current_desktop: str = ""  # which desktop it shows now (last heartbeat)
    desktop_name: str = ""

    @property
    def enrolled(self) -> bool:
        return self.enrolled_at is not None and self.revoked_at is None

    def online(self, now: float, window: float) -> bool:
        return self.enrolled and self.last_seen is not None and now - self.last_seen <= window

    @property
    def device_user_name(self) -> str:
        return f"kiosk:{self.id}"


@dataclass(frozen=True)
class SshHostRecord:
    """A host the gateway reaches over SSH, as stored (its private key stays encrypted in the
    store). ``host_key``: the pinned known_hosts line(s); '' while a first-use key is awaited."""

    id: int
    name: str
    address: str
    port: int
    user: str
    host_key: str
    policy: str  # "pinned" or "tofu"
    jump_id: int | None
    created_at: float
