"""The relay's websocket once admitted: the browser's connection, taken from the web server
(aiohttp) into a transport and a protocol of the relay's own (``BrowserSocket``). Byte path: no
aiohttp in here; the web handler passes its upgraded transport to ``take_over``.

Over 400 lines as one concern: RFC 6455's server side for the relay (frame parsing, control
frames, close handshake, flow control) and the hand-over from aiohttp that it exists for.

Why not aiohttp's ``WebSocketResponse`` for the relay's whole life: until its handler returns,
aiohttp keeps the request (parsed headers, cookies, URL, match info), the response with its
reader queue and frame parser, and the chain of middleware and handler coroutines above it:
some 25-30 KB of each idle session's 43-45 KB (``bench/relay.py --phases idle``). A desktop
session lasts hours and a node holds thousands. So aiohttp does the upgrade (the handshake, the
subprotocol, a refused admission's close frame) and then ``take_over`` moves the connection: a
duplicate of its socket's descriptor goes into a new transport with a ``BrowserSocket``, and
aiohttp's transport is aborted, which closes only its own descriptor (it has written the 101 and
nothing after it; the browser sends nothing before the relay's RFB greeting). The handler
returns, and what it held goes with it.

``BrowserSocket`` is the server's side of RFC 6455 for one binary channel:

- frames from the browser must be masked; a frame error (unmasked, reserved bits, an unknown
  opcode, a fragmented or long control frame, a continuation out of place, a message larger
  than ``max_message``) is raised by ``receive`` as the ``ProtocolError`` whose close code says
  which (1002, 1009), a text message as 1003 (1007 when it is not UTF-8); after an error the
  browser's bytes are skipped frame by frame, never buffered, until its close frame;
- PINGs are answered at once; one PING every ``ping_interval`` s (``start_pings``) gives the
  round-trip time, and a PING still unanswered when the next is due means the browser vanished
  without closing (a laptop lid, a dead network): the connection is dropped (``lost``);
- ``close(code, reason)`` sends the close frame and waits (at most ``close_timeout`` s) for the
  browser's before closing the connection;
- ``send`` and ``send_chunk`` write each frame in one piece (``send_chunk`` from the relay's
  buffer, without a copy) and return only once the transport holds none of it: the transport's
  write buffer limits are zero, so a browser that does not read holds the relay back at once,
  and the relay may overwrite its buffer when ``send_chunk`` returns;
- messages not yet taken by ``receive`` are kept up to ``INBOX_LIMIT`` bytes; beyond that the
  socket is not read (TCP's own flow control holds the browser back).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from ..errors import FrameError, InvalidText, MessageTooBig, ProtocolError, UnsupportedData
from .tunnel import HEADER_ROOM, WriteFlow

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

log = logging.getLogger("deskgate.session")

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0, 1, 2, 8, 9, 10
_KNOWN = frozenset((_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
_FIN = 0x80
_LEN1 = struct.Struct("!BB")
_LEN2 = struct.Struct("!BBH")
_LEN3 = struct.Struct("!BBQ")
_SEQ = struct.Struct(">Q")
_CODE = struct.Struct("!H")
# Messages received and not yet relayed, in bytes, before the socket stops being read.
INBOX_LIMIT = 2 << 20


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked frame (a server's) of ``length`` bytes."""
    if length < 126:
        return _LEN1.pack(_FIN | opcode, length)
    if length < 65536:
        return _LEN2.pack(_FIN | opcode, 126, length)
    return _LEN3.pack(_FIN | opcode, 127, length)


def write_header(buffer: memoryview, length: int) -> int:
    """Write a final, unmasked binary frame header for ``length`` bytes so that it ends at
    ``HEADER_ROOM``; return where it starts."""
    if length < 126:
        _LEN1.pack_into(buffer, HEADER_ROOM - 2, _FIN | _BINARY, length)
        return HEADER_ROOM - 2
    if length < 65536:
        _LEN2.pack_into(buffer, HEADER_ROOM - 4, _FIN | _BINARY, 126, length)
        return HEADER_ROOM - 4
    _LEN3.pack_into(buffer, 0, _FIN | _BINARY, 127, length)
    return 0


def close_reason(reason: str) -> bytes:
    """A close reason is at most 123 bytes of UTF-8 on the wire: cut on a character boundary."""
    return reason.encode()[:120].decode(errors="ignore").encode()


async def take_over(old: asyncio.Transport | None,
                    make: Callable[[], BrowserSocket]) -> BrowserSocket:
    """Move an upgraded websocket's connection (``old``: the web server's transport, e.g.
    aiohttp's ``request.transport``) into ``make()``'s protocol (see the module's text). The old
    transport is left aborted: the web handler that upgraded it should return."""
    if old is None or old.is_closing():
        raise ConnectionResetError("the browser's connection closed during admission")
    if old.get_extra_info("sslcontext") is not None:
        raise RuntimeError("a TLS connection cannot change transports")
    sock = old.get_extra_info("socket")
    old.pause_reading()
    duplicate = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        _, browser = await asyncio.get_running_loop().connect_accepted_socket(
            make, sock=duplicate)
    except BaseException:
        duplicate.close()
        raise
    old.abort()  # closes aiohttp's descriptor only: the connection lives on in the duplicate
    return browser


class BrowserSocket(WriteFlow, asyncio.Protocol):
    """One browser's relay websocket after the upgrade (see the module's text); the relay's
    ``ClientChannel``."""

    __slots__ = ("_max", "_ping_interval", "_close_timeout", "_on_rtt", "_transport",
                 "_buf", "_skip", "_parts", "_parts_opcode", "_parts_size", "_inbox",
                 "_inbox_size", "_error", "_failed", "_eof", "_waiter",
                 "_close_sent", "_close_wait", "_read_paused", "_timer", "_outstanding",
                 "_sent_at", "_seq", "_stopped", "browser_closed", "lost", "close_code")

    def __init__(self, *, max_message: int, ping_interval: float, close_timeout: float,
                 on_rtt: Callable[[float], None] | None = None) -> None:
        self._max = max_message
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._on_rtt = on_rtt
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray()  # received, not yet parsed: the start of a frame
        self._skip = 0  # payload bytes still to skip (after an error)
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._parts_opcode = 0
        self._parts_size = 0
        self._inbox: list[bytes] = []
        self._inbox_size = 0
        self._error: ProtocolError | None = None  # raised by receive() once the inbox is read
        self._failed = False  # after a frame error: skipping to the browser's close frame
        self._eof = False  # the browser's close frame came, or the connection is gone
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._close_sent = False
        self._close_wait: asyncio.Future[None] | None = None
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._outstanding: bytes | None = None
        self._sent_at = 0.0
        self._seq = 0
        self._stopped = False  # stop(): receive() returns None
        self.browser_closed = False  # the browser sent a close frame
        self.lost = False  # no PONG within a ping interval
        self.close_code: int | None = None  # the browser's close code

    # --- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        transport.set_write_buffer_limits(high=0)  # pause on any byte left over

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.stop_pings()
        self.resume_writing()
        if self._close_wait is not None and not self._close_wait.done():
            self._close_wait.set_result(None)
        self._wake()

    def eof_received(self) -> bool:
        return False  # a half-closed browser is gone: close

    def data_received(self, data: bytes) -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip:]
            self._skip = 0
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2 and not self.browser_closed:
            b0, b1 = buf[pos], buf[pos + 1]
            size = b1 & 0x7F
            head = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if b1 & 0x80 else 0)
            if end - pos < head:
                break
            if size == 126:
                size = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif size == 127:
                size = int.from_bytes(buf[pos + 2:pos + 10], "big")
            opcode = b0 & 0x0F
            if not self._failed:
                error = self._check(b0, b1, opcode, size)
                if error is not None:
                    self._fail(error)
            if self._failed and not (opcode == _CLOSE and size <= 125):
                if end - pos - head < size:  # skip the rest of this frame as it comes
                    self._skip = size - (end - pos - head)
                    pos = end
                    break
                pos += head + size
                continue
            if end - pos - head < size:
                break  # the rest of the frame is still to come
            start = pos + head
            payload = bytes(buf[start:start + size])
            if b1 & 0x80 and size:
                payload = apply_mask(payload, bytes(buf[start - 4:start]))
            pos = start + size
            self._frame(bool(b0 & _FIN), opcode, payload)
        if pos:
            del buf[:pos]
        if (self._inbox_size > INBOX_LIMIT and not self._read_paused and self._transport
                is not None and not self._close_sent):
            self._transport.pause_reading()
            self._read_paused = True
        self._wake()

    # --- frames ---------------------------------------------------------------------------------
    def _check(self, b0: int, b1: int, opcode: int, size: int) -> ProtocolError | None:
        if b0 & 0x70:
            return FrameError("the browser sent a websocket frame with reserved bits set (no"
                              " extension was agreed)")
        if not b1 & 0x80:
            return FrameError("the browser sent an unmasked websocket frame (RFC 6455 says they"
                              " must be masked)")
        if opcode not in _KNOWN:
            return FrameError(f"the browser sent a websocket frame with the unknown opcode"
                              f" {opcode}")
        if opcode >= _CLOSE:
            if not b0 & _FIN or size > 125:
                return FrameError("the browser sent a fragmented or long websocket control"
                                  " frame")
            return None
        if (opcode == _CONT) != (self._parts is not None):
            return FrameError("the browser sent a websocket continuation frame out of place")
        if self._max and size + self._parts_size > self._max:
            return MessageTooBig(f"the browser sent a websocket message of"
                                 f" {size + self._parts_size} bytes; at most {self._max} are"
                                 f" accepted")
        return None

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == _CLOSE:
            self._browser_close(payload)
        elif self._failed:
            return
        elif opcode == _PING:
            self._control(_PONG, payload)
        elif opcode == _PONG:
            if self._outstanding is not None and payload == self._outstanding:
                self._outstanding = None
                if self._on_rtt is not None:
                    self._on_rtt((time.monotonic() - self._sent_at) * 1000.0)
        elif fin and self._parts is None:
            self._message(opcode, payload)
        else:
            if self._parts is None:
                self._parts, self._parts_opcode, self._parts_size = [], opcode, 0
            self._parts.append(payload)
            self._parts_size += len(payload)
            if fin:
                opcode, payload = self._parts_opcode, b"".join(self._parts)
                self._parts, self._parts_size = None, 0
                self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == _TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError:
                self._fail(InvalidText())
                return
            self._fail(UnsupportedData())
            return
        if not self._close_sent:
            self._inbox.append(payload)
            self._inbox_size += len(payload)

    def _browser_close(self, payload: bytes) -> None:
        self.browser_closed, self._eof = True, True
        self.close_code = _CODE.unpack_from(payload)[0] if len(payload) >= 2 else 1005
        if self._close_wait is not None and not self._close_wait.done():
            self._close_wait.set_result(None)
        if self._read_paused and self._transport is not None:
            self._transport.resume_reading()
            self._read_paused = False

    def _fail(self, error: ProtocolError) -> None:
        if not self._failed:
            self._failed, self._error = True, error
            self._parts, self._parts_size = None, 0

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self._transport
        if transport is not None and not self._close_sent and not transport.is_closing():
            transport.write(frame_header(opcode, len(payload)) + payload)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- the relay's channel --------------------------------------------------------------------
    async def receive(self) -> bytes | None:
        """The next binary message; None once the browser closed or is gone. Raises the
        ``ProtocolError`` of a broken frame or a text message."""
        while not self._inbox or self._stopped:
            if self._stopped:
                return None
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._inbox.pop(0)
        self._inbox_size -= len(data)
        if self._read_paused and self._inbox_size <= INBOX_LIMIT // 2:
            assert self._transport is not None
            self._transport.resume_reading()
            self._read_paused = False
        return data

    def _writable(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None or self._close_sent or transport.is_closing():
            raise ConnectionResetError("the connection to the browser is closing")
        return transport

    async def send(self, data: bytes) -> None:
        """Send one binary message; returns once the transport holds none of it."""
        self._writable().write(frame_header(_BINARY, len(data)) + data)
        await self._drain()

    async def send_chunk(self, buffer: memoryview) -> None:
        """Send ``buffer[HEADER_ROOM:]`` as one binary message, written in one piece from the
        buffer (the header goes into the room before the bytes); returns once the transport
        holds no reference to ``buffer``."""
        transport = self._writable()
        start = write_header(buffer, len(buffer) - HEADER_ROOM)
        transport.write(buffer[start:])
        await self._drain()

    async def _drain(self) -> None:
        while self._drained is not None:
            await asyncio.shield(self._drained)
        if self._eof and not self.browser_closed:
            raise ConnectionResetError("the connection to the browser was lost")

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` and ``reason`` (once), wait for the browser's (at
        most ``close_timeout`` s), then close the connection."""
        transport = self._transport
        if transport is None or self._close_sent or transport.is_closing():
            return
        self._close_sent = True
        self.stop_pings()
        self._inbox.clear()
        self._inbox_size = 0
        payload = _CODE.pack(code) + close_reason(reason)
        transport.write(frame_header(_CLOSE, len(payload)) + payload)
        if not self._eof:
            if self._read_paused:
                transport.resume_reading()
                self._read_paused = False
            assert self._loop is not None
            self._close_wait = self._loop.create_future()
            try:
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.shield(self._close_wait)
            except TimeoutError:
                transport.abort()
                return
        transport.close()

    def stop(self) -> None:
        """The relay is to end (its connection ended from outside): ``receive`` returns None
        from now on; the connection stays open for the relay's own ``close``."""
        self._stopped = True
        self._wake()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- pings ----------------------------------------------------------------------------------
    def start_pings(self) -> None:
        """PING now, then every ``ping_interval`` s, on one timer handle, until
        ``stop_pings`` (or the close)."""
        self._ping()

    def stop_pings(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ping(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or self._close_sent or self._eof or transport.is_closing():
            return
        if self._outstanding is not None:  # the last PING was never answered
            self.lost = True
            log.info("no answer from the browser for %.0f s: connection dropped",
                     self._ping_interval)
            transport.abort()
            return
        self._seq += 1
        self._outstanding = _SEQ.pack(self._seq)
        self._sent_at = time.monotonic()
        self._control(_PING, self._outstanding)
        assert self._loop is not None
        self._timer = self._loop.call_later(self._ping_interval, self._ping)
