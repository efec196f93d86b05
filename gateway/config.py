"""Settings: one frozen object, loaded from a TOML file and ``DESKGATE_*`` environment overrides.

Every key lives in a section of the TOML file; the environment variable for ``[section] key`` is
``DESKGATE_SECTION_KEY`` (for example ``DESKGATE_SERVER_PORT=9000``). Secrets are wrapped in
:class:`~gateway.model.Secret` so that they never print.

Over 400 lines as one concern: every setting's default, type and check, the per-table readers
(identity providers, hypervisors) and the file ``deskgate init`` writes, in one place.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError
from .model import Secret


@dataclass(frozen=True)
class OidcProviderConfig:
    """One OpenID Connect identity provider: a ``[oidc.<id>]`` table in the TOML file."""

    id: str
    issuer: str
    client_id: str
    client_secret: Secret
    display_name: str = ""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    admin_group: str = ""
    require_totp: bool = True  # our TOTP after the IdP, unless trust_idp_mfa and amr shows MFA
    trust_idp_mfa: bool = False
    use_userinfo: bool = False
    leeway_seconds: int = 60
    jwks_min_refresh_seconds: int = 60

    @property
    def label(self) -> str:
        return self.display_name or self.id


@dataclass(frozen=True)
class HypervisorConfig:
    """One libvirt hypervisor desktop VMs run on: a ``[hypervisors.<name>]`` table.

    Without any such table there is one, ``default``, at ``qemu:///system`` with KVM.
    """

    name: str
    uri: str = "qemu:///system"
    domain_type: str = "kvm"  # "qemu" (TCG) where KVM is missing or does not work
    # A desktop VM's disks (root overlay and user volume): storage_dir/<desktop id>/; empty
    # means data_dir/vms. The hypervisor's qemu user must be able to reach it.
    storage_dir: str = ""
    # A desktop VM's screen socket: socket_dir/<desktop id>/, a folder only the qemu user may
    # write and the gateway read; empty means the runtime dir's "vm-screens".
    socket_dir: str = ""
    qemu_user: str = "libvirt-qemu"  # who QEMU runs as (the owner of the socket folders)
    # The libvirt network of guests whose screen is a server inside them (vnc/rdp bundles):
    # the gateway reaches them on it at each desktop's address.
    network: str = "default"
    # A hypervisor on another machine: the name of the SSH host (``deskgate ssh add``) it is
    # reached through. ``uri`` is then as that machine sees it (qemu:///system, or
    # qemu:///system?socket=PATH), storage_dir and socket_dir are paths there, and libvirt's
    # socket and the VMs' screens are forwarded through that host's SSH connection.
    via: str = ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # [server]
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    # [database]
    database: str = ""  # a path to the SQLite file; empty means data_dir/deskgate.db
    # [security]
    secret_key: Secret = Secret("")
    session_idle_minutes: int = 30
    session_lifetime_hours: int = 12
    ticket_ttl_seconds: int = 30
    lockout_threshold: int = 5
    lockout_minutes: int = 15
    ip_throttle_per_minute: int = 30
    # Generous per address: a whole office behind one NAT address signs in at 9:00.
    sso_starts_per_minute: int = 300
    sso_pending_per_address: int = 1000
    sso_pending_max: int = 10_000
    trust_proxy_headers: bool = False
    # [desktops]
    run_as_user: str = "deskgate-desktop"
    display_base: int = 20
    desktop_geometry: str = "1280x800"
    runtime_dir: str = ""  # local desktops' sockets and homes; see desktop_runtime_dir
    stop_desktops_on_exit: bool = False  # else local desktops outlive the gateway process
    # [relay]
    connect_timeout_seconds: float = 10.0
    max_clipboard_bytes: int = 1 << 20
    max_sessions_per_user: int = 4  # desktop connections one person may hold open at once
    desktop_unresponsive_seconds: float = 10.0  # silence, then as long for a probe: "not responding"
    # The silence before a probe while the person has given no input for as long: an
    # unattended session is asked every 5 minutes, not every 10 s.
    desktop_idle_probe_seconds: float = 300.0
    max_sessions: int = 0  # 0: as many as the open files limit allows (gateway/capacity.py)
    # [rdp]
    rdp_max_bridges: int = 20
    rdp_grace_seconds: float = 60.0
    rdp_store_credentials: bool = True  # per-user accounts may be stored (else asked each connect)
    rdp_display_base: int = 60  # first X display number the RDP bridges may use
    rdp_logon_timeout_seconds: float = 15.0  # bridge window up to the server's sign-in confirmation
    # [vms]: desktop VMs' power, on every hypervisor
    vm_stop_timeout_seconds: float = 60.0  # an ACPI shutdown, then a hard stop after this long
    vm_start_timeout_seconds: float = 180.0  # a start until the VM's screen answers
    vm_reconcile_seconds: float = 30.0  # how often states are compared with the hypervisors
    # [kiosks]: enrolled thin clients
    kiosk_pairing_minutes: float = 10.0  # a pairing code works once, for this long
    kiosk_heartbeat_seconds: float = 15.0  # a kiosk proves itself this often; offline after 3 missed
    kiosk_idle_seconds: float = 300.0  # a shared kiosk signs its person out after this long idle
    kiosk_idle_warning_seconds: float = 30.0  # the countdown shown before that
    kiosk_credential_rotate_hours: float = 24.0  # a device's credential is replaced this often
    # [metrics]
    metrics_token: Secret = Secret("")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # [security] local_accounts: show the password form; [oidc.<id>] tables: identity providers
    local_accounts: bool = True
    oidc: tuple[OidcProviderConfig, ...] = ()
    # [hypervisors.<name>] tables (none: one "default" at qemu:///system)
    hypervisors: tuple[HypervisorConfig, ...] = ()

    @property
    def hypervisor_configs(self) -> dict[str, HypervisorConfig]:
        """The hypervisors by name, with each one's folders filled in."""
        configs = self.hypervisors or (HypervisorConfig("default"),)
        return {h.name: dataclasses.replace(
            h, storage_dir=h.storage_dir or str(self.data_dir / "vms" / h.name),
            socket_dir=h.socket_dir or str(self.desktop_runtime_dir / "vm-screens" / h.name))
            for h in configs}

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else self.data_dir / "deskgate.db"

    @property
    def desktop_runtime_dir(self) -> Path:
        """Where local desktops keep their sockets and private homes.

        As root the desktops run as an unprivileged user that must be able to reach this folder,
        so it defaults to /run/deskgate rather than the (private) data folder.
        """
        if self.runtime_dir:
            return Path(self.runtime_dir)
        return Path("/run/deskgate") if os.geteuid() == 0 else self.data_dir

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def cookie_secure(self) -> bool:
        return urlsplit(self.public_url).scheme == "https"

    def __repr__(self) -> str:  # dataclass repr already hides Secret values; keep it short
        return f"Settings(data_dir={self.data_dir!s}, host={self.host}, port={self.port})"


# Which TOML section each setting lives in. The order here is the order `deskgate init` writes.
SECTIONS: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "public_url", "data_dir"),
    "database": ("database",),
    "security": (
        "secret_key",
        "session_idle_minutes",
        "session_lifetime_hours",
        "ticket_ttl_seconds",
        "lockout_threshold",
        "lockout_minutes",
        "ip_throttle_per_minute",
        "sso_starts_per_minute",
        "sso_pending_per_address",
        "sso_pending_max",
        "trust_proxy_headers",
        "local_accounts",
    ),
    "desktops": ("run_as_user", "display_base", "desktop_geometry", "runtime_dir",
                 "stop_desktops_on_exit"),
    "relay": ("connect_timeout_seconds", "max_clipboard_bytes", "max_sessions_per_user",
              "desktop_unresponsive_seconds", "desktop_idle_probe_seconds", "max_sessions"),
    "rdp": ("rdp_max_bridges", "rdp_grace_seconds", "rdp_store_credentials", "rdp_display_base",
            "rdp_logon_timeout_seconds"),
    "vms": ("vm_stop_timeout_seconds", "vm_start_timeout_seconds", "vm_reconcile_seconds"),
    "kiosks": ("kiosk_pairing_minutes", "kiosk_heartbeat_seconds", "kiosk_idle_seconds",
               "kiosk_idle_warning_seconds", "kiosk_credential_rotate_hours"),
    "metrics": ("metrics_token", "metrics_host", "metrics_port"),
}
_SECTION_OF = {key: section for section, keys in SECTIONS.items() for key in keys}
_SECRET_KEYS = {"secret_key", "client_secret", "metrics_token"}
MAX_DISPLAY_BASE = 30000  # X display numbers are small integers; leave room above the base
_TABLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def new_secret_key() -> str:
    """A fresh key for encrypting secrets at rest (Fernet: 32 random bytes, url-safe base64)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _coerce(name: str, value: Any, kind: Any) -> Any:
    try:
        if name in _SECRET_KEYS:
            return value if isinstance(value, Secret) else Secret(str(value))
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            return str(value).strip().lower() in ("1", "true", "yes", "on")
        if kind in ("Path", Path):
            return Path(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r}") from exc


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply ``DESKGATE_*`` overrides, check, and freeze."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"no configuration file at {path}; run `deskgate init` first") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for section, table in doc.items():
            if section == "oidc" and isinstance(table, dict):
                raw["oidc"] = _oidc_providers(path, table)
                continue
            if section == "hypervisors" and isinstance(table, dict):
                raw["hypervisors"] = _hypervisors(path, table)
                continue
            if section not in SECTIONS or not isinstance(table, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            for key, value in table.items():
                if _SECTION_OF.get(key) != section:
                    raise ConfigError(f"{path}: unknown setting {key!r} in [{section}]")
                raw[key] = value
    for key, section in _SECTION_OF.items():
        env_name = f"DESKGATE_{section}_{key}".upper()
        if env_name in env:
            raw[key] = env[env_name]
    if "data_dir" not in raw:
        raw["data_dir"] = path.parent if path is not None else Path("data")
    kinds = {f.name: f.type for f in fields(Settings)}
    values = {name: value if name in ("oidc", "hypervisors") else _coerce(name, value, kinds[name])
              for name, value in raw.items()}
    settings = Settings(**values)
    _check(settings)
    return settings


def _oidc_providers(path: Path, tables: dict[str, Any]) -> tuple[OidcProviderConfig, ...]:
    kinds = {f.name: f.type for f in fields(OidcProviderConfig)}
    providers = []
    for pid, table in tables.items():
        where = f"{path}: [oidc.{pid}]"
        if not _TABLE_NAME.match(pid) or not isinstance(table, dict):
            raise ConfigError(f"{where}: provider ids are 1-32 of a-z, 0-9, - and _")
        unknown = set(table) - set(kinds) | ({"id"} & set(table))
        if unknown:
            raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        missing = [k for k in ("issuer", "client_id", "client_secret") if not table.get(k)]
        if missing:
            raise ConfigError(f"{where}: {missing[0]} is required")
        values: dict[str, Any] = {"id": pid}
        for key, value in table.items():
            if key == "scopes":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{where}: scopes is a list of strings")
                values[key] = tuple(value) if "openid" in value else ("openid", *value)
            else:
                values[key] = _coerce(key, value, kinds[key])
        issuer = urlsplit(values["issuer"])
        if issuer.scheme != "https" and issuer.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise ConfigError(f"{where}: issuer must be an https:// URL")
        providers.append(OidcProviderConfig(**values))
    return tuple(providers)


def _hypervisors(path: Path, tables: dict[str, Any]) -> tuple[HypervisorConfig, ...]:
    known = {f.name for f in fields(HypervisorConfig)} - {"name"}
    found = []
    for name, table in tables.items():
        where = f"{path}: [hypervisors.{name}]"
        if not _TABLE_NAME.match(name) or not isinstance(table, dict):
            raise ConfigError(f"{where}: hypervisor names are 1-32 of a-z, 0-9, - and _")
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        if not all(isinstance(v, str) for v in table.values()):
            raise ConfigError(f"{where}: every setting is a string")
        config = HypervisorConfig(name, **table)
        if config.domain_type not in ("kvm", "qemu"):
            raise ConfigError(f"{where}: domain_type is kvm or qemu")
        if not config.uri:
            raise ConfigError(f"{where}: uri is required")
        for key in ("storage_dir", "socket_dir"):
            if getattr(config, key) and not Path(getattr(config, key)).is_absolute():
                raise ConfigError(f"{where}: {key} must be an absolute path")
        if config.via:
            if not (config.storage_dir and config.socket_dir):
                raise ConfigError(f"{where}: a hypervisor reached through SSH names its"
                                  " storage_dir and socket_dir (paths on that machine)")
            try:
                remote_libvirt_socket(config.uri)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        found.append(config)
    return tuple(found)


def _check(s: Settings) -> None:
    if not s.secret_key:
        raise ConfigError("security.secret_key is empty; run `deskgate init` to generate one")
    try:
        if len(base64.urlsafe_b64decode(s.secret_key.reveal())) != 32:
            raise ValueError
    except ValueError as exc:
        raise ConfigError("security.secret_key must be 32 bytes in url-safe base64") from exc
    if not s.local_accounts and not s.oidc:
        raise ConfigError("security.local_accounts is off and no [oidc.<id>] provider is set:"
                          " nobody could sign in")
    if urlsplit(s.public_url).scheme not in ("http", "https"):
        raise ConfigError("server.public_url must start with http:// or https://")
    if not 0 < s.port < 65536:
        raise ConfigError("server.port must be between 1 and 65535")
    if s.rdp_max_bridges < 0 or s.rdp_grace_seconds < 0:
        raise ConfigError("rdp.rdp_max_bridges and rdp.rdp_grace_seconds cannot be negative")
    # X display numbers: both ranges are open-ended and may overlap (equal bases included): every
    # start takes the first number whose lock file and socket are free and that no other start
    # of this gateway holds, and moves on when another X server took it first.
    for section, name in (("desktops", "display_base"), ("rdp", "rdp_display_base")):
        if not 1 <= getattr(s, name) <= MAX_DISPLAY_BASE:
            raise ConfigError(f"{section}.{name} must be an X display number from 1 to {MAX_DISPLAY_BASE}")
    if not 0 < s.rdp_logon_timeout_seconds <= 600:
        raise ConfigError("rdp.rdp_logon_timeout_seconds must be above 0 and at most 600")
    if s.max_sessions < 0:
        raise ConfigError("relay.max_sessions cannot be negative (0: as the open files limit allows)")
    if not (0 < s.vm_stop_timeout_seconds <= 3600 and 0 < s.vm_start_timeout_seconds <= 3600
            and 1 <= s.vm_reconcile_seconds <= 3600):
        raise ConfigError("vms: the stop and start timeouts are above 0 and at most 3600 seconds,"
                          " the reconcile interval from 1 to 3600 seconds")
    if not (0 < s.kiosk_pairing_minutes <= 1440 and 1 <= s.kiosk_heartbeat_seconds <= 600
            and 10 <= s.kiosk_idle_seconds <= 86400
            and 0 <= s.kiosk_idle_warning_seconds < s.kiosk_idle_seconds
            and 0 < s.kiosk_credential_rotate_hours <= 24 * 365):
        raise ConfigError("kiosks: pairing codes last up to 1440 minutes, heartbeats come every 1"
                          " to 600 seconds, the idle time is 10 to 86400 seconds with a shorter"
                          " warning, and credentials rotate within a year")
    if not 0 <= s.metrics_port < 65536:
        raise ConfigError("metrics.metrics_port must be between 0 (off) and 65535")
    for name in ("session_idle_minutes", "session_lifetime_hours", "ticket_ttl_seconds",
                 "lockout_threshold", "lockout_minutes", "ip_throttle_per_minute",
                 "sso_starts_per_minute", "sso_pending_per_address", "sso_pending_max",
                 "max_sessions_per_user", "desktop_unresponsive_seconds",
                 "desktop_idle_probe_seconds"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be positive")


def render_toml(values: Mapping[str, Any]) -> str:
    """Write settings as a TOML document, section by section (used by `deskgate init`)."""
    lines: list[str] = ["# Deskgate configuration. Environment variables DESKGATE_<SECTION>_<KEY>",
                        "# override any value here. Keep this file private: it holds the secret key."]
    for section, keys in SECTIONS.items():
        present = [k for k in keys if k in values]
        if not present:
            continue
        lines.append(f"\n[{section}]")
        for key in present:
            value = values[key]
            if isinstance(value, Secret):
                value = value.reveal()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = str(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


def remote_libvirt_socket(uri: str) -> str:
    """The path of libvirtd's socket on a hypervisor reached through SSH, from its URI as that
    machine sees it (qemu:///system, optionally with ?socket=PATH); ValueError otherwise."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    if parts.scheme not in ("qemu", "qemu+unix") or parts.netloc or parts.path != "/system" \
            or set(query) - {"socket"}:
        raise ValueError("a hypervisor reached through SSH has the uri qemu:///system (or"
                         " qemu:///system?socket=PATH)")
    socket = query.get("socket", [LIBVIRT_SOCKET])[-1]
    if not socket.startswith("/"):
        raise ValueError("the socket of a hypervisor reached through SSH is an absolute path")
    return socket
