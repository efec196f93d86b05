"""Binary websocket frames from the server, written in one piece from the caller's buffer.

aiohttp's ``WebSocketWriter`` writes a frame above 16 KiB as two writes (header, then payload: two
``send`` calls), and the relay would first copy each chunk into ``bytes``. ``FrameSender`` writes
the header into room the caller leaves before the payload and hands header and payload to the
transport as one memoryview: one ``send`` per frame and no copy. It only does this where the
frame is the same as aiohttp's: a server (no mask) without compression; otherwise it calls
``send_bytes``.

Reuse of the caller's buffer: the transport keeps a reference to what it could not send at once
(Python 3.12+ appends the memoryview to its buffer instead of copying it). The sender therefore
sets the transport's write buffer limits to zero, so the transport pauses the protocol whenever
anything is left over, and ``send`` waits (aiohttp's own drain) until the transport's buffer is
empty: when ``send`` returns, the kernel has every byte and the buffer may be overwritten. A slow
browser thereby applies backpressure at once.
"""

from __future__ import annotations

import struct

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from ..proxy.tunnel import HEADER_ROOM

_FIN_BINARY = 0x82
_LEN1 = struct.Struct("!BB").pack_into
_LEN2 = struct.Struct("!BBH").pack_into
_LEN3 = struct.Struct("!BBQ").pack_into


def write_header(buffer: memoryview, length: int) -> int:
    """Write a final, unmasked binary frame header for ``length`` bytes so that it ends at
    ``HEADER_ROOM``; return where it starts."""
    if length < 126:
        _LEN1(buffer, HEADER_ROOM - 2, _FIN_BINARY, length)
        return HEADER_ROOM - 2
    if length < 65536:
        _LEN2(buffer, HEADER_ROOM - 4, _FIN_BINARY, 126, length)
        return HEADER_ROOM - 4
    _LEN3(buffer, 0, _FIN_BINARY, 127, length)
    return 0


class FrameSender:
    """Sends ``buffer[HEADER_ROOM:]`` as one binary message on a prepared ``WebSocketResponse``."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        writer = ws._writer  # aiohttp's frame writer: its transport, protocol and closing state
        # Checked once: the relay's websocket is prepared with compress=False before it relays.
        self._direct = (writer is not None and not ws.compress and not writer.compress
                        and not writer.use_mask)
        if writer is not None and self._direct:
            writer.transport.set_write_buffer_limits(high=0)  # pause on any leftover byte

    async def send(self, buffer: memoryview) -> None:
        """Send ``buffer[HEADER_ROOM:]``; ``buffer[:HEADER_ROOM]`` is overwritten with the header.
        Returns once the transport holds no reference to ``buffer``."""
        writer = self._ws._writer
        if writer is None or not self._direct:
            await self._ws.send_bytes(bytes(buffer[HEADER_ROOM:]))
            return
        transport = writer.transport
        if writer._closing or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        start = write_header(buffer, len(buffer) - HEADER_ROOM)
        transport.write(buffer[start:])
        if transport.get_write_buffer_size():
            await writer.protocol._drain_helper()  # returns once the buffer is empty (limits are zero)
