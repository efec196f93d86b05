"""An RDP server and the account a bridge signs in with (``RdpTarget``), checked when made.

A server behind a jump host is reached through ``unix_path``, a local unix socket that forwards
to it over that host's SSH connection; ``host`` and ``port`` stay its address as the jump host
sees it, and the host is the name its certificate is checked against.

``SECURITY_MODES`` and ``CERT_POLICIES`` are what the bridge accepts, and so what an admin may
choose (``gateway.rdp.options`` offers them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass

from gateway.keyboards import DEFAULT_LAYOUT
from gateway.model import Secret

SECURITY_MODES = ("negotiate", "nla", "tls", "rdp")
CERT_POLICIES = ("ignore", "tofu", "fingerprint", "ca")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
UNIX_PATH_MAX = 107  # sockaddr_un.sun_path, without its terminating NUL


@dataclass(frozen=True)
class RdpTarget:
    """One RDP server and the account the bridge signs in with."""

    host: str
    port: int
    username: str
    domain: str = ""
    password: Secret | None = None
    security: str = "negotiate"  # negotiate | nla | tls | rdp   (xfreerdp /sec:...; negotiate = none)
    cert_policy: str = "ignore"  # ignore | tofu | fingerprint
    cert_fingerprint: str = ""  # fingerprint policy: SHA-256 of the server certificate (hex, colons optional)
    cert_ca: str = ""  # ca policy: the PEM certificate(s) of the CA(s) that issue the server's
    keyboard_layout: int = DEFAULT_LAYOUT  # the KLID announced to the server (xfreerdp /kbd:)
    unix_path: str = ""  # behind a jump host: the local socket that forwards to host:port

    def __post_init__(self) -> None:
        if not _valid_host(self.host):
            raise ValueError("RdpTarget: bad host")
        if not 1 <= self.port <= 65535:
            raise ValueError("RdpTarget: bad port")
        for name, value in (("username", self.username), ("domain", self.domain)):
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"RdpTarget: control characters in {name}")
        if not self.username:
            raise ValueError("RdpTarget: a user name is required")
        if self.password is not None and any(c in self.password.reveal() for c in "\r\n\0"):
            raise ValueError("RdpTarget: the password holds a line break or NUL")  # value not shown
        if self.security not in SECURITY_MODES:
            raise ValueError(f"RdpTarget: security must be one of {', '.join(SECURITY_MODES)}")
        if self.cert_policy not in CERT_POLICIES:
            raise ValueError(f"RdpTarget: cert_policy must be one of {', '.join(CERT_POLICIES)}")
        if self.cert_policy == "fingerprint" and not _FINGERPRINT_RE.match(self.normalized_fingerprint):
            raise ValueError("RdpTarget: cert_fingerprint must be 64 hex digits (SHA-256)")
        if self.cert_policy == "ca" and "-----BEGIN CERTIFICATE-----" not in self.cert_ca:
            raise ValueError("RdpTarget: the ca policy needs cert_ca (PEM)")
        if not 0 < self.keyboard_layout <= 0xFFFFFFFF:
            raise ValueError("RdpTarget: keyboard_layout must be a keyboard layout id")
        # FreeRDP takes a /v: value that starts with "/" as a unix socket, up to a ":" (a port)
        if self.unix_path and not (self.unix_path.startswith("/") and len(
                self.unix_path.encode()) <= UNIX_PATH_MAX and not any(
                c in self.unix_path for c in ":[],\0")):
            raise ValueError("RdpTarget: unix_path must be an absolute socket path without ':'")

    @property
    def normalized_fingerprint(self) -> str:
        return re.sub(r"[\s:]", "", self.cert_fingerprint).lower()

    def server_argument(self) -> str:
        """``/v:`` value; IPv6 literals in brackets; the socket behind a jump host."""
        if self.unix_path:
            return f"/v:{self.unix_path}"
        host = self.host.strip("[]")
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                return f"/v:[{host}]:{self.port}"
        return f"/v:{host}:{self.port}"


def _valid_host(host: str) -> bool:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        return bare == host and bool(_HOSTNAME_RE.match(host))
