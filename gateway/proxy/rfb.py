"""RFB (VNC) protocol pieces as byte-level state machines, with no I/O.

Every machine is fed whatever bytes arrived, in pieces of any size (``feed(data)``), and answers
with what to send to its peer or with the messages it completed. A step that lacks bytes waits for
the next feed, so the machines can be tested byte by byte without sockets; ``tunnel.py`` wires
them to sockets.

- ``DesktopHandshake``: the gateway as an RFB client of the desktop (3.3, 3.7, 3.8; security
  None or VncAuth with the credentials the gateway holds), up to ServerInit.
- ``BrowserHandshake``: the gateway as an RFB server towards the browser, offering only None.

After the handshakes, ``rfb_messages.ClientMessageParser`` frames the browser's messages.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gateway.errors import DesktopUnavailable, GatewayError, ProtocolError, UpstreamAuthFailed
from gateway.model import Secret

SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2

MAX_REASON = 4096  # bytes of a failure reason we accept from the desktop
MAX_NAME = 4096  # bytes of the desktop name in ServerInit

_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def vnc_auth_response(password: Secret, challenge: bytes) -> bytes:
    """The VncAuth answer: DES-ECB of the 16-byte challenge, keyed by the password.

    The key is the password truncated or zero-padded to 8 bytes with each byte's bits reversed
    (a quirk of the original VNC DES code). Single DES is TripleDES with K1 = K2 = K3; the
    8-byte-key form of ``TripleDES`` is deprecated in ``cryptography``, so the key is repeated.
    """
    if len(challenge) != 16:
        raise ValueError("a VncAuth challenge is 16 bytes")
    key = password.reveal().encode("utf-8")[:8].ljust(8, b"\0").translate(_BIT_REVERSED)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - RFB demands ECB
    return encryptor.update(challenge) + encryptor.finalize()


def _clean(raw: bytes, limit: int = 200) -> str:
    """Text from a peer made safe to show: decoded, no control characters, bounded."""
    text = raw.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()[:limit]


class _Input:
    """Bytes received and not yet consumed by a step."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def peek(self, n: int) -> bytes | None:
        return bytes(self._buf[:n]) if len(self._buf) >= n else None

    def take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def rest(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _parse_version(raw: bytes, who: str) -> tuple[int, int]:
    match = _VERSION.fullmatch(raw)
    if match is None:
        raise ProtocolError(f"{who} does not speak RFB (version message {raw[:12]!r})")
    return int(match.group(1)), int(match.group(2))


class DesktopStep(enum.Enum):
    VERSION = "version"
    SECURITY_TYPES = "security types"  # 3.7 and 3.8: a list to choose from
    SECURITY_TYPE_33 = "security type"  # 3.3: the server decides
    FAILURE_REASON = "failure reason"
    CHALLENGE = "challenge"
    SECURITY_RESULT = "security result"
    AUTHENTICATED = "authenticated"  # waits for client_init()
    SERVER_INIT = "server init"
    DONE = "done"


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    pixel_format: bytes  # 16 bytes, as sent
    name: str
    raw: bytes  # the whole message, to forward to the browser unchanged


class DesktopHandshake:
    """The gateway as an RFB client of the desktop, from the version to ServerInit.

    ``feed(data)`` returns the bytes to send to the desktop (possibly empty). Once ``authenticated``
    the machine waits until ``client_init()`` is called, then reads ServerInit; ``server_init``
    is set when ``done``. Failures raise ``UpstreamAuthFailed`` (refused credentials, no usable
    security type, a password needed and none configured) or ``ProtocolError`` (not RFB).
    """

    def __init__(self, password: Secret | None) -> None:
        self._password = password if password else None
        self._in = _Input()
        self.step = DesktopStep.VERSION
        self.minor = 0  # the protocol version agreed on: 3, 7 or 8
        self.security_type = SEC_INVALID
        self.server_init: ServerInit | None = None
        self._reason_prefix = ""
        self._steps: dict[DesktopStep, Callable[[bytearray], bool]] = {
            DesktopStep.VERSION: self._version,
            DesktopStep.SECURITY_TYPES: self._security_types,
            DesktopStep.SECURITY_TYPE_33: self._security_type_33,
            DesktopStep.FAILURE_REASON: self._failure_reason,
            DesktopStep.CHALLENGE: self._challenge,
            DesktopStep.SECURITY_RESULT: self._security_result,
            DesktopStep.SERVER_INIT: self._server_init,
        }

    @property
    def authenticated(self) -> bool:
        return self.step in (DesktopStep.AUTHENTICATED, DesktopStep.SERVER_INIT, DesktopStep.DONE)

    @property
    def done(self) -> bool:
        return self.step is DesktopStep.DONE

    def feed(self, data: bytes) -> bytes:
        self._in.add(data)
        out = bytearray()
        while (step := self._steps.get(self.step)) is not None and step(out):
            pass
        return bytes(out)

    def client_init(self) -> bytes:
        """ClientInit to send to the desktop: always shared, so other viewers stay connected."""
        if self.step is not DesktopStep.AUTHENTICATED:
            raise RuntimeError(f"ClientInit in step {self.step.value}")
        self.step = DesktopStep.SERVER_INIT
        return b"\x01"

    def remainder(self) -> bytes:
        """Bytes received after ServerInit: the start of the relayed stream."""
        return self._in.rest()

    def eof_error(self) -> GatewayError:
        """The error to raise when the desktop closes the connection in the current step."""
        if self.step is DesktopStep.SECURITY_RESULT:
            return UpstreamAuthFailed()
        return DesktopUnavailable("the desktop closed the connection during the handshake")

    def _version(self, out: bytearray) -> bool:
        raw = self._in.take(12)
        if raw is None:
            return False
        major, minor = _parse_version(raw, "the desktop")
        if major != 3 or minor < 3:
            raise ProtocolError(f"the desktop speaks RFB {major}.{minor}; 3.3 to 3.8 are supported")
        # The spec: 3.8 or later answers 3.8; unknown versions between are treated as 3.3.
        self.minor = 8 if minor >= 8 else 7 if minor == 7 else 3
        out += b"RFB 003.%03d\n" % self.minor
        self.step = DesktopStep.SECURITY_TYPES if self.minor >= 7 else DesktopStep.SECURITY_TYPE_33
        return True

    def _security_types(self, out: bytearray) -> bool:
        head = self._in.peek(1)
        if head is None:
            return False
        if head[0] == 0:
            self._in.take(1)
            self._reason_prefix = "the desktop refused the connection"
            self.step = DesktopStep.FAILURE_REASON
            return True
        offered = self._in.take(1 + head[0])
        if offered is None:
            return False
        types = list(offered[1:])
        if SEC_NONE in types:
            chosen = SEC_NONE
        elif SEC_VNC_AUTH in types:
            if self._password is None:
                raise UpstreamAuthFailed("the desktop needs a password and none is configured")
            chosen = SEC_VNC_AUTH
        else:
            raise UpstreamAuthFailed(f"the desktop offers no supported security type ({types})")
        out.append(chosen)
        self._chose(chosen)
        return True

    def _security_type_33(self, out: bytearray) -> bool:
        raw = self._in.take(4)
        if raw is None:
            return False
        (chosen,) = struct.unpack(">I", raw)
        if chosen == SEC_INVALID:
            self._reason_prefix = "the desktop refused the connection"
            self.step = DesktopStep.FAILURE_REASON
        elif chosen == SEC_VNC_AUTH and self._password is None:
            raise UpstreamAuthFailed("the desktop needs a password and none is configured")
        elif chosen in (SEC_NONE, SEC_VNC_AUTH):
            self._chose(chosen)
        else:
            raise UpstreamAuthFailed(f"the desktop demands unsupported security type {chosen}")
        return True

    def _chose(self, chosen: int) -> None:
        self.security_type = chosen
        if chosen == SEC_VNC_AUTH:
            self.step = DesktopStep.CHALLENGE
        elif self.minor == 8:  # only 3.8 sends a SecurityResult after None
            self.step = DesktopStep.SECURITY_RESULT
        else:
            self.step = DesktopStep.AUTHENTICATED

    def _failure_reason(self, out: bytearray) -> bool:
        head = self._in.peek(4)
        if head is None:
            return False
        (length,) = struct.unpack(">I", head)
        if length > MAX_REASON:
            raise UpstreamAuthFailed(f"{self._reason_prefix} (reason of {length} bytes not shown)")
        raw = self._in.take(4 + length)
        if raw is None:
            return False
        reason = _clean(raw[4:])
        raise UpstreamAuthFailed(f"{self._reason_prefix}: {reason}" if reason else None)

    def _challenge(self, out: bytearray) -> bool:
        challenge = self._in.take(16)
        if challenge is None:
            return False
        assert self._password is not None  # checked when VncAuth was chosen
        out += vnc_auth_response(self._password, challenge)
        self.step = DesktopStep.SECURITY_RESULT
        return True

    def _security_result(self, out: bytearray) -> bool:
        raw = self._in.take(4)
        if raw is None:
            return False
        if raw == b"\0\0\0\0":
            self.step = DesktopStep.AUTHENTICATED
            return True
        if self.minor < 8:  # before 3.8 no reason follows
            raise UpstreamAuthFailed()
        self._reason_prefix = UpstreamAuthFailed.reason
        self.step = DesktopStep.FAILURE_REASON
        return True

    def _server_init(self, out: bytearray) -> bool:
        head = self._in.peek(24)
        if head is None:
            return False
        width, height = struct.unpack(">HH", head[:4])
        pixel_format = head[4:20]
        (name_length,) = struct.unpack(">I", head[20:24])
        if name_length > MAX_NAME:
            raise ProtocolError(f"the desktop sent a name of {name_length} bytes (max {MAX_NAME})")
        if pixel_format[0] not in (8, 16, 32):
            raise ProtocolError(f"the desktop sent {pixel_format[0]} bits per pixel")
        raw = self._in.take(24 + name_length)
        if raw is None:
            return False
        name = _clean(raw[24:], MAX_NAME)
        self.server_init = ServerInit(width, height, pixel_format, name, raw)
        self.step = DesktopStep.DONE
        return True


class BrowserStep(enum.Enum):
    VERSION = "version"
    SECURITY_CHOICE = "security choice"
    CLIENT_INIT = "client init"
    DONE = "done"


class BrowserHandshake:
    """The gateway as an RFB server towards the browser, offering security type None only.

    Send ``GREETING`` first; ``feed(data)`` returns the answer to send (possibly empty) and
    raises ``ProtocolError`` on anything but a well-formed RFB client. ``done`` once ClientInit
    arrived; ``remainder()`` then holds any client messages that came with it.
    """

    GREETING = b"RFB 003.008\n"

    def __init__(self) -> None:
        self._in = _Input()
        self.step = BrowserStep.VERSION
        self.minor = 0
        self.shared = False

    @property
    def done(self) -> bool:
        return self.step is BrowserStep.DONE

    def remainder(self) -> bytes:
        return self._in.rest()

    def feed(self, data: bytes) -> bytes:
        self._in.add(data)
        out = bytearray()
        while self.step is not BrowserStep.DONE and self._advance(out):
            pass
        return bytes(out)

    def _advance(self, out: bytearray) -> bool:
        if self.step is BrowserStep.VERSION:
            raw = self._in.take(12)
            if raw is None:
                return False
            version = _parse_version(raw, "the browser")
            if version not in ((3, 3), (3, 7), (3, 8)):
                raise ProtocolError(f"the browser asked for RFB {version[0]}.{version[1]}")
            self.minor = version[1]
            if self.minor == 3:  # 3.3: the server decides, and there is no SecurityResult
                out += struct.pack(">I", SEC_NONE)
                self.step = BrowserStep.CLIENT_INIT
            else:
                out += bytes((1, SEC_NONE))
                self.step = BrowserStep.SECURITY_CHOICE
        elif self.step is BrowserStep.SECURITY_CHOICE:
            raw = self._in.take(1)
            if raw is None:
                return False
            if raw[0] != SEC_NONE:
                raise ProtocolError(f"the browser chose security type {raw[0]}, not None (1)")
            if self.minor == 8:
                out += b"\0\0\0\0"
            self.step = BrowserStep.CLIENT_INIT
        else:
            raw = self._in.take(1)
            if raw is None:
                return False
            self.shared = raw[0] != 0
            self.step = BrowserStep.DONE
        return True
