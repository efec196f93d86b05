"""The browser's RFB client-to-server stream, split into messages, with no I/O.

``ClientMessageParser`` is fed whatever bytes arrived, in pieces of any size, and returns the
messages it completed, each judged by the relay policy so that some can be dropped. RFB has no
framing: the length of every message must be known to find the next one, so an unknown type or
an out-of-bounds length is a ``ProtocolError``, never a pass-through. The server-to-client stream
is not parsed; it is relayed as raw bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.errors import ProtocolError
from gateway.model import RelayPolicy

MAX_ENCODINGS = 512  # SetEncodings entries (noVNC sends about 30)
MAX_SCREENS = 16  # SetDesktopSize screens (noVNC sends 1)
MAX_FENCE = 64  # ClientFence payload, as the spec demands

# noVNC's ExtendedMouseButtons pseudo-encoding. Once a server confirms it, the client sends
# 7-byte PointerEvents whose length only the (unparsed) server-to-client stream could tell us,
# so the parser removes it from SetEncodings and every PointerEvent stays 6 bytes long. The
# cost: no back/forward mouse buttons. The gain: the parser can never lose its place.
EXTENDED_MOUSE_BUTTONS = -316

# Client-to-server message types.
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255

_FIXED_LENGTH = {
    SET_PIXEL_FORMAT: 20,
    FRAMEBUFFER_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    XVP: 4,
}
# Extended clipboard actions (high byte of the flags) that carry clipboard data to the desktop.
# Caps, Request and Peek only negotiate or ask for the desktop's clipboard.
_CLIPBOARD_CAPS = 1 << 24
_CLIPBOARD_NOTIFY = 1 << 27
_CLIPBOARD_PROVIDE = 1 << 28


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: int
    data: bytes  # the bytes to send to the desktop if forwarded (SetEncodings may be rewritten)
    forward: bool  # False: policy drops it
    is_input: bool  # a key or pointer event


class ClientMessageParser:
    """Splits the browser's stream into RFB client-to-server messages and applies the policy.

    ``feed(data)`` returns the messages completed so far, in order. Dropped by policy:
    view-only drops KeyEvent, PointerEvent, QEMU extended key events, SetDesktopSize, xvp (power
    control) and every ClientCutText that carries text to the desktop; with
    ``clipboard_to_desktop`` off, the same cut texts are dropped. Extended-clipboard messages
    that only negotiate or request the desktop's clipboard (Caps, Request, Peek) pass, so that
    copying from the desktop keeps working.
    """

    def __init__(self, policy: RelayPolicy) -> None:
        self._policy = policy
        self._buf = bytearray()
        self.limited = False

    def feed(self, data: bytes, max_messages: int | None = None) -> list[ClientMessage]:
        """The messages completed so far; at most ``max_messages`` of them, the rest kept (then
        ``limited`` is True): a flood of tiny messages costs no more than that many parses."""
        self.limited = False
        # Usually nothing is pending and ``data`` holds whole messages: parse it in place (a
        # slice of all of it is ``data`` itself), and keep only an incomplete tail.
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        messages: list[ClientMessage] = []
        pos, end = 0, len(buf)
        while pos < end:
            if max_messages is not None and len(messages) >= max_messages:
                self.limited = True
                break
            length = self._length(buf, pos)
            if length is None or end - pos < length:
                break
            messages.append(self._judge(bytes(buf[pos : pos + length])))
            pos += length
        if buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf += buf[pos:]
        return messages

    def _length(self, buf: bytes | bytearray, pos: int) -> int | None:
        """The length of the message at ``pos``; None while its header is incomplete."""
        avail = len(buf) - pos
        kind = buf[pos]
        fixed = _FIXED_LENGTH.get(kind)
        if fixed is not None:
            return fixed
        if kind == SET_ENCODINGS:
            if avail < 4:
                return None
            count = int.from_bytes(buf[pos + 2 : pos + 4])
            if count > MAX_ENCODINGS:
                raise ProtocolError(f"SetEncodings with {count} encodings (limit {MAX_ENCODINGS})")
            return 4 + 4 * count
        if kind == CLIENT_CUT_TEXT:
            if avail < 8:
                return None
            length = int.from_bytes(buf[pos + 4 : pos + 8], signed=True)
            size = -length if length < 0 else length  # negative: the extended clipboard form
            if length < 0 and size < 4:
                raise ProtocolError(f"extended ClientCutText of {size} bytes has no flags")
            if size > self._policy.max_clipboard_bytes:
                raise ProtocolError(
                    f"ClientCutText of {size} bytes (limit {self._policy.max_clipboard_bytes})"
                )
            return 8 + size
        if kind == CLIENT_FENCE:
            if avail < 9:
                return None
            size = buf[pos + 8]
            if size > MAX_FENCE:
                raise ProtocolError(f"ClientFence payload of {size} bytes (limit {MAX_FENCE})")
            return 9 + size
        if kind == SET_DESKTOP_SIZE:
            if avail < 8:
                return None
            screens = buf[pos + 6]
            if screens > MAX_SCREENS:
                raise ProtocolError(f"SetDesktopSize with {screens} screens (limit {MAX_SCREENS})")
            return 8 + 16 * screens
        if kind == QEMU:
            return self._qemu_length(buf, pos, avail)
        raise ProtocolError(f"unknown RFB client message type {kind}")

    @staticmethod
    def _qemu_length(buf: bytes | bytearray, pos: int, avail: int) -> int | None:
        if avail < 2:
            return None
        subtype = buf[pos + 1]
        if subtype == 0:  # extended key event
            return 12
        if subtype == 1:  # audio: enable (0), disable (1), set format (2)
            if avail < 4:
                return None
            operation = int.from_bytes(buf[pos + 2 : pos + 4])
            if operation in (0, 1):
                return 4
            if operation == 2:
                return 10
            raise ProtocolError(f"unknown QEMU audio operation {operation}")
        raise ProtocolError(f"unknown QEMU client message subtype {subtype}")

    def _judge(self, raw: bytes) -> ClientMessage:
        kind = raw[0]
        policy = self._policy
        if kind in (KEY_EVENT, POINTER_EVENT) or (kind == QEMU and raw[1] == 0):
            return ClientMessage(kind, raw, not policy.view_only, True)
        if kind in (SET_DESKTOP_SIZE, XVP):
            return ClientMessage(kind, raw, not policy.view_only, False)
        if kind == CLIENT_CUT_TEXT:
            allowed = policy.clipboard_to_desktop and not policy.view_only
            return ClientMessage(kind, raw, allowed or not _carries_text(raw), False)
        if kind == SET_ENCODINGS:
            return ClientMessage(kind, _without_extended_mouse(raw), True, False)
        return ClientMessage(kind, raw, True, False)


def _carries_text(cut_text: bytes) -> bool:
    (length,) = struct.unpack_from(">i", cut_text, 4)
    if length >= 0:
        return True
    (flags,) = struct.unpack_from(">I", cut_text, 8)
    if flags & _CLIPBOARD_CAPS:  # lists the actions the client supports; carries no text
        return False
    return bool(flags & (_CLIPBOARD_NOTIFY | _CLIPBOARD_PROVIDE))


def _without_extended_mouse(set_encodings: bytes) -> bytes:
    count = (len(set_encodings) - 4) // 4
    encodings = struct.unpack_from(f">{count}i", set_encodings, 4)
    if EXTENDED_MOUSE_BUTTONS not in encodings:
        return set_encodings
    kept = [e for e in encodings if e != EXTENDED_MOUSE_BUTTONS]
    return struct.pack(f">BxH{len(kept)}i", SET_ENCODINGS, len(kept), *kept)
