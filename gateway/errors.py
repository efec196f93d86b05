"""One exception tree. Each error carries an HTTP status and a websocket close code.

Errors are raised deep inside the service layer and the byte path and are turned into a
response (HTTP page, JSON body or websocket close frame) only at the edge.
"""

from __future__ import annotations

import copy
from typing import Self

# Websocket close codes. 1000-1015 are defined by RFC 6455; 4000-4999 are private use.
WS_NORMAL = 1000
WS_GOING_AWAY = 1001
WS_FRAME_ERROR = 1002  # a frame that breaks RFC 6455 (e.g. an unmasked client frame)
WS_UNSUPPORTED_DATA = 1003  # a text message: the relay carries binary RFB only
# Recorded, never sent: the browser vanished without a close frame (RFC 6455 reserves 1006 for it).
WS_BROWSER_LOST = 1006
WS_INVALID_TEXT = 1007
WS_POLICY = 1008
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL = 1011
WS_TRY_AGAIN_LATER = 1013
WS_UNAUTHORIZED = 4001
WS_FORBIDDEN = 4003
WS_NOT_FOUND = 4004
WS_UPSTREAM_UNREACHABLE = 4010
WS_UPSTREAM_AUTH = 4011
WS_UPSTREAM_CLOSED = 4012
WS_PROTOCOL = 4013
WS_IDLE = 4020  # signed out after the web session's idle time without input
WS_INPUT_LIMIT = 4021  # the browser sent more input than a person can
WS_ADMIN_DISCONNECT = 4030
WS_SIGNED_OUT = 4031
WS_ACCOUNT_DISABLED = 4032
WS_SESSION_EXPIRED = 4033  # the web session reached its absolute lifetime
WS_MOVED = 4034  # the person opened this desktop on another device (or window)
WS_KIOSK_REVOKED = 4035  # the kiosk this ran on was revoked or changed


class GatewayError(Exception):
    """Base of every error Deskgate raises on purpose.

    ``reason`` is safe to show to the person on the other end; it never holds a secret.
    """

    http_status = 500
    ws_code = WS_INTERNAL
    reason = "internal error"
    # The person's own account for a per-user RDP desktop is needed (none stored, or it was just
    # refused and forgotten): JSON answers say "credentials": "required".
    asks_for_credentials = False
    # True: trying again at once cannot help, so the client shows the reason and stops instead
    # of reconnecting by itself (a websocket's close is recorded as final; JSON answers whose
    # status would invite a retry say "reconnect": false).
    final = False

    def __init__(self, reason: str | None = None, *, session_id: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        # A connection attempt that failed: its session id, so that the client's retry
        # continues the same attempt (JSON answers say "session_id").
        self.session_id = session_id
        super().__init__(self.reason)

    def of_attempt(self, session_id: str) -> Self:
        """This error as the answer to the connection attempt ``session_id`` (a copy)."""
        answer = copy.copy(self)
        answer.session_id = session_id
        return answer


class BadRequest(GatewayError):
    http_status = 400
    ws_code = WS_POLICY
    reason = "bad request"


class Unauthorized(GatewayError):
    final = True
    http_status = 401
    ws_code = WS_UNAUTHORIZED
    reason = "not signed in"


class Forbidden(GatewayError):
    final = True
    http_status = 403
    ws_code = WS_FORBIDDEN
    reason = "forbidden"


class NotFound(GatewayError):
    http_status = 404
    ws_code = WS_NOT_FOUND
    reason = "not found"


class Conflict(GatewayError):
    http_status = 409
    ws_code = WS_POLICY
    reason = "conflict"


class TooManyRequests(GatewayError):
    http_status = 429
    ws_code = WS_POLICY
    reason = "too many attempts, try again later"


class CsrfError(Forbidden):
    reason = "the form has expired; reload the page and try again"


class TicketError(Unauthorized):
    reason = "connection ticket invalid or expired"


class AuthenticationFailed(Unauthorized):
    reason = "wrong user name or password"


class AccountLocked(TooManyRequests):
    reason = "account temporarily locked after repeated failures"


class SecondFactorFailed(Unauthorized):
    reason = "wrong or already used code"


class DesktopUnavailable(GatewayError):
    http_status = 503
    ws_code = WS_UPSTREAM_UNREACHABLE
    reason = "the desktop cannot be reached"


class UnderMaintenance(DesktopUnavailable):
    """The desktop takes no new connections until an admin ends its maintenance."""

    reason = "this desktop is under maintenance; try again later"
    final = True


class CredentialsRequired(GatewayError):
    """A per-user RDP desktop and no stored account of this person for it: ask for one."""

    http_status = 428
    ws_code = WS_UPSTREAM_AUTH
    reason = "enter your account for this desktop"
    asks_for_credentials = True


class UpstreamAuthFailed(DesktopUnavailable):
    final = True
    ws_code = WS_UPSTREAM_AUTH
    reason = "the desktop refused the gateway's credentials"


class UpstreamClosed(GatewayError):
    http_status = 502
    ws_code = WS_UPSTREAM_CLOSED
    reason = "the desktop closed the connection"


class ProtocolError(GatewayError):
    final = True
    http_status = 400
    ws_code = WS_PROTOCOL
    reason = "protocol error"


class FrameError(ProtocolError):
    """A websocket frame that breaks RFC 6455 (unmasked, reserved bits, bad opcode)."""

    ws_code = WS_FRAME_ERROR
    reason = "the browser sent a malformed websocket frame"


class UnsupportedData(ProtocolError):
    ws_code = WS_UNSUPPORTED_DATA
    reason = "text messages are not accepted: the connection carries binary RFB only"


class InvalidText(ProtocolError):
    ws_code = WS_INVALID_TEXT
    reason = "the browser sent text that is not valid UTF-8"


class MessageTooBig(ProtocolError):
    ws_code = WS_MESSAGE_TOO_BIG
    reason = "the browser sent a websocket message larger than the gateway accepts"


class InputLimit(ProtocolError):
    """More input than a person produces: the session is closed rather than slowing others."""

    ws_code = WS_INPUT_LIMIT
    reason = "the browser sent more input than the gateway accepts"


class StoreBusy(GatewayError):
    """The database stayed locked by another writer for longer than its busy timeout."""

    http_status = 503
    reason = "the gateway is busy; try again in a moment"


class GatewayFull(GatewayError):
    """This node relays as many sessions as its file descriptors allow (gateway/capacity.py)."""

    http_status = 503
    ws_code = WS_TRY_AGAIN_LATER
    reason = "the gateway is full; try again later"


class ConfigError(GatewayError):
    reason = "configuration error"
