"""Binary frames written from the relay's buffer on a connection taken over from aiohttp
(``browserws``): the same bytes as aiohttp's, one write each, and the buffer is the caller's
again only once the transport has let go of it."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.proxy.browserws import BrowserSocket, take_over
from gateway.proxy.tunnel import HEADER_ROOM

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 256 * 1024]
Handler = Callable[[web.WebSocketResponse], Awaitable[None]]
Taken = Callable[[BrowserSocket], Awaitable[None]]


def browser_socket() -> BrowserSocket:
    return BrowserSocket(max_message=1 << 20, ping_interval=3600.0, close_timeout=5.0)


async def serve(handler: Handler | None = None, taken: Taken | None = None
                ) -> AsyncIterator[TestServer]:
    """A server whose websocket is given to ``handler`` as aiohttp's, or to ``taken`` once
    taken over, in a task of its own, as the relay does (aiohttp's handler returns)."""
    tasks: set[asyncio.Task[None]] = set()

    async def ws_view(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        if handler is not None:
            await handler(ws)
        else:
            assert taken is not None
            task = asyncio.ensure_future(taken(await take_over(request.transport, browser_socket)))
            tasks.add(task)
        return ws  # no close handshake: the raw clients read to the end of the connection

    app = web.Application()
    app.router.add_get("/ws", ws_view)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def open_raw(server: TestServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client that reads the server's bytes as they are on the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def payload(size: int) -> bytes:
    return bytes((i * 7 + size) % 256 for i in range(size))


HEADERS = [2, 2, 2, 4, 4, 4, 10, 10, 10]  # the header of each of SIZES' frames


async def wire_bytes(handler: Handler | None = None, taken: Taken | None = None) -> bytes:
    """The server's bytes after the upgrade: as long as the frames of SIZES, and then more
    if there are any (a few ms to show them)."""
    async for server in serve(handler, taken):
        reader, writer = await open_raw(server)
        data = await asyncio.wait_for(reader.readexactly(sum(HEADERS) + sum(SIZES)), 30)
        try:
            data += await asyncio.wait_for(reader.read(1), 0.05)
        except TimeoutError:
            pass
        writer.close()
        return data
    raise AssertionError("no server")


async def test_frames_from_the_buffer_are_byte_identical_to_aiohttps() -> None:
    async def by_aiohttp(ws: web.WebSocketResponse) -> None:
        for size in SIZES:
            await ws.send_bytes(payload(size))

    writes: list[int] = []

    async def by_sender(browser: BrowserSocket) -> None:
        transport = browser._transport
        assert transport is not None
        write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]
        for size in SIZES:
            buffer = memoryview(bytearray(HEADER_ROOM + size))
            buffer[HEADER_ROOM:] = payload(size)
            await browser.send_chunk(buffer)
        transport.write = write  # type: ignore[method-assign]

    frames = sum(HEADERS) + sum(SIZES)
    expected = await wire_bytes(by_aiohttp)
    assert expected[frames:frames + 1] == b"\x88"  # aiohttp's close frame when its handler returns
    # Taken over: the same frames, and nothing from aiohttp after them.
    assert await wire_bytes(taken=by_sender) == expected[:frames]
    assert writes == [h + s for h, s in zip(HEADERS, SIZES, strict=True)]  # one write per frame


async def test_a_browser_that_does_not_read_holds_the_sender_and_nothing_is_lost() -> None:
    size = 16 * 1024 * 1024  # more than the loopback socket buffers take
    sent, held = asyncio.Event(), asyncio.Event()
    left: list[int] = []

    async def handler(browser: BrowserSocket) -> None:
        transport = browser._transport
        assert transport is not None
        buffer = memoryview(bytearray(HEADER_ROOM + size))
        for turn in range(3):
            buffer[HEADER_ROOM:] = bytes([turn + 1]) * size
            task = asyncio.create_task(browser.send_chunk(buffer))
            if turn == 0:  # the browser reads nothing until ``held``: the send cannot finish
                await asyncio.sleep(0.1)
                assert not task.done()
                left.append(transport.get_write_buffer_size())
                held.set()
            await task
            # returned: the transport holds none of the buffer, which is rewritten at once
            assert transport.get_write_buffer_size() == 0
        sent.set()

    async for server in serve(taken=handler):
        reader, writer = await open_raw(server)
        await asyncio.wait_for(held.wait(), 30)
        received = bytearray()
        for turn in range(3):
            head = await reader.readexactly(10)
            assert head[:2] == b"\x82\x7f" and int.from_bytes(head[2:], "big") == size
            body = await asyncio.wait_for(reader.readexactly(size), 30)
            assert body == bytes([turn + 1]) * size  # not overwritten by the next turn
            received += body
        await asyncio.wait_for(sent.wait(), 10)
        writer.close()
    assert left[0] > 0  # the sender waited while the transport held part of the buffer
