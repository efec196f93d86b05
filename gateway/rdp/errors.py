"""What an RDP bridge tells the person when it cannot start or ends: the reasons (never a
password, never the private address) and the errors that carry them.

``BridgeError.of`` picks the class: what retrying cannot fix (the server refused the account, its
certificate or its security) is a ``BridgeRefused`` (``final``: the client shows it and stops).
"""

from __future__ import annotations

from gateway.errors import WS_UPSTREAM_AUTH, DesktopUnavailable

# Reasons shown to the person (never a password, never the private address).
REASON_CREDENTIALS = "the remote desktop refused the user name or password"
REASON_UNREACHABLE = "the remote desktop cannot be reached"
REASON_CERTIFICATE = "the remote desktop's certificate was refused"
REASON_SECURITY = "the remote desktop refused the connection's security settings"
REASON_BUSY = "the gateway is busy: too many RDP sessions on this node"
REASON_ENDED = "the remote desktop ended the session"
REASON_LOST = "the connection to the remote desktop was lost"
REASON_LOGGED_OFF = "the remote desktop session was logged off"
REASON_TIMEOUT = "the remote desktop did not answer in time"
REASON_START = "the remote desktop bridge could not be started"
REASON_SHUTDOWN = "the gateway is shutting down"
REASON_CLOSED_AT_SIGN_IN = "the remote desktop closed the connection before the sign-in"


class BridgeError(DesktopUnavailable):
    """The bridge could not be started or ended; ``reason`` is for the person.

    ``kind``: "credentials", "unreachable", "certificate", "security", "busy", "timeout",
    "start", "shutdown" or "failed". ``BridgeError.of`` picks the class: what retrying cannot
    fix (the server refused the account, its certificate or its security) is a ``BridgeRefused``.
    """

    reason = REASON_UNREACHABLE

    def __init__(self, reason: str | None = None, kind: str = "failed", *,
                 session_id: str | None = None) -> None:
        super().__init__(reason, session_id=session_id)
        self.kind = kind

    @staticmethod
    def of(reason: str, kind: str) -> BridgeError:
        refused = {"credentials": CredentialsRefused, "certificate": BridgeRefused,
                   "security": BridgeRefused}
        return refused.get(kind, BridgeError)(reason, kind)


class BridgeRefused(BridgeError):
    """The server refused the bridge in a way a retry cannot change: the client shows it."""

    http_status = 424
    final = True


class CredentialsRefused(BridgeRefused):
    ws_code = WS_UPSTREAM_AUTH
