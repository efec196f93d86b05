"""A websocket response whose broken frames end in a close frame with a code and a reason.

aiohttp's frame reader accepts unmasked client frames (RFC 6455 5.1 says close), and on any
frame error it closes the TCP connection at once: the close frame it writes afterwards is lost
and the browser, still sending, sees a reset. ``RelayWebSocket`` puts a frame scanner in front of
aiohttp's (pure Python) reader. The scanner reads only frame headers; on a bad frame (unmasked,
larger than allowed) or an error of aiohttp's reader, the handler receives an ``ERROR`` message
and closes with the code and a reason; until the browser answers that close, the rest of its
bytes are skipped frame by frame (never buffered), so the close handshake completes without a
reset.
"""

from __future__ import annotations

import struct
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp._websocket import reader_py
from aiohttp._websocket.models import WebSocketError
from aiohttp.helpers import DEFAULT_CHUNK_SIZE

_CLOSE = WSMsgType.CLOSE.value
_DATA_OPCODES = frozenset((0, 1, 2))


class FrameScanner:
    """Frame headers of a client's byte stream, checked; payloads are only counted.

    ``feed`` returns the offset in the chunk where the first bad frame's header starts (the
    bytes before it are whole frames or the rest of earlier ones), else None. Once ``failed``,
    it watches for the client's close frame and leaves its status code in ``close_code``.
    """

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._head = bytearray()
        self._skip = 0
        self._close: bytearray | None = None
        self._mask = b""
        self.failed: WebSocketError | None = None
        self.close_code: int | None = None

    def _header_size(self) -> int:
        if len(self._head) < 2:
            return 2
        size = self._head[1] & 0x7F
        return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (
            4 if self._head[1] & 0x80 else 0)

    def feed(self, data: bytes) -> int | None:
        bad: int | None = None
        pos, end = 0, len(data)
        start = 0
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                if self._close is not None:
                    self._close += data[pos:pos + take]
                pos += take
                self._skip -= take
                if not self._skip:
                    self._closed()
                continue
            if not self._head:
                start = pos
            want = self._header_size() - len(self._head)
            self._head += data[pos:pos + want]
            pos += min(want, end - pos)
            if len(self._head) < self._header_size():
                continue
            error = self._frame(bytes(self._head))
            self._head.clear()
            if error is not None and self.failed is None:
                self.failed, bad = error, start
        return bad

    def _frame(self, head: bytes) -> WebSocketError | None:
        opcode, masked, size = head[0] & 0x0F, bool(head[1] & 0x80), head[1] & 0x7F
        if size == 126:
            size = struct.unpack_from(">H", head, 2)[0]
        elif size == 127:
            size = struct.unpack_from(">Q", head, 2)[0]
        self._mask = head[-4:] if masked else b""
        self._skip = size
        if self.failed is not None and opcode == _CLOSE:
            self._close = bytearray()
            if not size:
                self._closed()
        if not masked:
            return WebSocketError(WSCloseCode.PROTOCOL_ERROR,
                                  "the browser sent an unmasked websocket frame (RFC 6455 says"
                                  " they must be masked)")
        if opcode in _DATA_OPCODES and self._max and size > self._max:
            return WebSocketError(WSCloseCode.MESSAGE_TOO_BIG,
                                  f"the browser sent a websocket message of {size} bytes; at"
                                  f" most {self._max} are accepted")
        return None

    def _closed(self) -> None:
        if self._close is None:
            return
        payload = bytearray(self._close)
        if self._mask:
            for i in range(len(payload)):
                payload[i] ^= self._mask[i % 4]
        self.close_code = struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005
        self._close = None


class StrictReader(reader_py.WebSocketReader):
    """aiohttp's reader behind a ``FrameScanner``; errors become an ``ERROR`` message instead of
    a dropped TCP connection, and the client's bytes after an error are skipped."""

    def __init__(self, queue: Any, max_msg_size: int, *, compress: bool) -> None:
        super().__init__(queue, max_msg_size, compress=compress, decode_text=True)
        self._scanner = FrameScanner(max_msg_size)

    def feed_data(self, data: Any) -> tuple[bool, bytes]:
        if type(data) is not bytes:
            data = bytes(data)
        scanner = self._scanner
        if scanner.failed is not None:
            scanner.feed(data)
            self._close_seen()
            return False, b""
        bad = scanner.feed(data)
        error: WebSocketError | None = None
        try:
            self._feed_data(data if bad is None else data[:bad])
        except WebSocketError as exc:
            error = exc
        except Exception as exc:  # e.g. a corrupt deflate stream: a frame error all the same
            error = WebSocketError(WSCloseCode.PROTOCOL_ERROR, type(exc).__name__)
        error = error or scanner.failed
        if error is not None:
            scanner.failed = error
            self.queue.feed_data(WSMessage(WSMsgType.ERROR, error, None), 0)
            self._close_seen()
        return False, b""

    def _close_seen(self) -> None:
        code = self._scanner.close_code
        if code is not None:
            self._scanner.close_code = None
            self.queue.feed_data(WSMessage(WSMsgType.CLOSE, code, ""), 0)


class RelayWebSocket(web.WebSocketResponse):
    """``web.WebSocketResponse`` reading through ``StrictReader`` (see the module docstring).

    Overrides aiohttp's ``_post_start`` (3.14): the same steps with another reader."""

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        assert self._loop is not None
        self._reader = reader_py.WebSocketDataQueue(request._protocol, DEFAULT_CHUNK_SIZE,
                                                    loop=self._loop)
        self._parser = StrictReader(self._reader, self._max_msg_size,
                                    compress=bool(self._compress))
        cb = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=cb)
        request.protocol.keep_alive(False)  # no HTTP keep-alive after a websocket
