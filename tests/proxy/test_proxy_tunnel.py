"""relay_vnc against small scripted RFB servers: the socket wiring, errors, backpressure."""

from __future__ import annotations

import asyncio
import ctypes
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.errors import DesktopUnavailable, ProtocolError, UpstreamClosed
from gateway.model import Endpoint, RelayCounters, RelayPolicy
from gateway.proxy import relay_vnc
from gateway.proxy.tunnel import DATA_ALIGN, HEADER_ROOM, READ_BUFFER_SIZE, _DesktopStream

if TYPE_CHECKING:
    from conftest import MemoryChannel

PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_INIT = struct.pack(">HH", 640, 480) + PIXEL_FORMAT + struct.pack(">I", 4) + b"fake"
KEY_EVENT = b"\x04\x01\x00\x00\x00\x00\xff\x0d"
POINTER_EVENT = b"\x05\x01\x00\x10\x00\x20"

Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeDesktop:
    """An RFB 3.8 server with security None; after ServerInit it runs ``session``."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.received = bytearray()  # client messages after ClientInit
        self.closed = asyncio.Event()  # the gateway closed its end
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"RFB 003.008\n")
            assert await reader.readexactly(12) == b"RFB 003.008\n"
            writer.write(b"\x01\x01")
            assert await reader.readexactly(1) == b"\x01"
            writer.write(b"\0\0\0\0")
            assert await reader.readexactly(1) == b"\x01"  # shared
            writer.write(SERVER_INIT)
            if self.session is not None:
                await self.session(reader, writer)
            while data := await reader.read(65536):
                self.received += data
            self.closed.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.set()
        finally:
            writer.close()


@pytest.fixture
async def fake_desktop() -> AsyncIterator[FakeDesktop]:
    desktop = FakeDesktop()
    server = await asyncio.start_server(desktop.handle, "127.0.0.1", 0)
    desktop.port = server.sockets[0].getsockname()[1]
    async with server:
        yield desktop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_relay_both_ways_with_counters(fake_desktop: FakeDesktop, channel: MemoryChannel) -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x02")  # a Bell
        await writer.drain()

    fake_desktop.session = session
    counters = RelayCounters()
    names: list[str] = []
    relay = asyncio.create_task(
        relay_vnc(
            channel,
            Endpoint(port=fake_desktop.port),
            RelayPolicy(),
            counters,
            on_ready=names.append,
        )
    )
    assert await channel.handshake() == (640, 480, "fake")
    assert names == ["fake"]
    assert await channel.read(1) == b"\x02"
    before = time.time()
    channel.push(KEY_EVENT[:3])
    channel.push(KEY_EVENT[3:] + POINTER_EVENT)
    channel.close()
    await asyncio.wait_for(relay, 5)  # the browser closed: a normal return
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)
    assert bytes(fake_desktop.received) == KEY_EVENT + POINTER_EVENT
    assert counters.bytes_up == len(KEY_EVENT + POINTER_EVENT)
    assert counters.bytes_down == len(SERVER_INIT) + 1
    assert counters.last_input >= before
    assert counters.messages_dropped == 0


async def test_view_only_drops_input(fake_desktop: FakeDesktop, channel: MemoryChannel) -> None:
    counters = RelayCounters()
    policy = RelayPolicy(view_only=True)
    relay = asyncio.create_task(relay_vnc(channel, Endpoint(port=fake_desktop.port), policy, counters))
    await channel.handshake()
    update_request = b"\x03\x01\x00\x00\x00\x00\x00\x10\x00\x10"
    channel.push(KEY_EVENT + POINTER_EVENT + update_request)
    channel.close()
    await asyncio.wait_for(relay, 5)
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)
    assert bytes(fake_desktop.received) == update_request
    assert counters.messages_dropped == 2
    assert counters.last_input == 0.0


async def test_unknown_message_closes_upstream_and_forwards_nothing_of_it(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters())
    )
    await channel.handshake()
    channel.push(KEY_EVENT)
    channel.push(b"\x4d" + KEY_EVENT)
    with pytest.raises(ProtocolError, match="unknown RFB client message type 77"):
        await asyncio.wait_for(relay, 5)
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)
    assert bytes(fake_desktop.received) == KEY_EVENT


async def test_desktop_closing_after_handshake_is_upstream_closed(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    fake_desktop.session = session
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters())
    )
    await channel.handshake()
    with pytest.raises(UpstreamClosed):
        await asyncio.wait_for(relay, 5)


async def test_browser_leaving_during_its_handshake_returns(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters())
    )
    assert await channel.read(12) == b"RFB 003.008\n"
    channel.close()
    await asyncio.wait_for(relay, 5)


async def test_silent_browser_does_not_hold_the_desktop(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters(),
                  connect_timeout=0.3)
    )
    assert await channel.read(12) == b"RFB 003.008\n"  # and then the browser says nothing
    with pytest.raises(ProtocolError, match="did not finish the RFB handshake"):
        await asyncio.wait_for(relay, 5)
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)


async def test_browser_garbage_during_its_handshake(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters())
    )
    channel.push(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="the browser does not speak RFB"):
        await asyncio.wait_for(relay, 5)
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)


async def test_cancellation_closes_upstream_and_propagates(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    ready = asyncio.Event()
    relay = asyncio.create_task(
        relay_vnc(
            channel,
            Endpoint(port=fake_desktop.port),
            RelayPolicy(),
            RelayCounters(),
            on_ready=lambda name: ready.set(),
        )
    )
    await channel.handshake()
    await asyncio.wait_for(ready.wait(), 5)
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)


async def test_cancellation_during_the_desktop_handshake(channel: MemoryChannel) -> None:
    accepted = asyncio.Event()
    peer_closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # returns at EOF
            peer_closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        relay = asyncio.create_task(relay_vnc(channel, Endpoint(port=port), RelayPolicy(), RelayCounters()))
        await asyncio.wait_for(accepted.wait(), 5)
        relay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await relay
        await asyncio.wait_for(peer_closed.wait(), 5)


async def test_silent_desktop_times_out(channel: MemoryChannel) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(DesktopUnavailable, match="did not complete the RFB handshake"):
            await relay_vnc(channel, Endpoint(port=port), RelayPolicy(), RelayCounters(), connect_timeout=0.3)


async def test_nothing_listening_is_desktop_unavailable(channel: MemoryChannel) -> None:
    with pytest.raises(DesktopUnavailable, match="cannot be reached"):
        await relay_vnc(channel, Endpoint(port=free_port()), RelayPolicy(), RelayCounters())
    assert channel.sent == []


async def test_missing_unix_socket_is_desktop_unavailable(channel: MemoryChannel, tmp_path: Path) -> None:
    endpoint = Endpoint(unix_path=str(tmp_path / "absent.sock"))
    with pytest.raises(DesktopUnavailable):
        await relay_vnc(channel, endpoint, RelayPolicy(), RelayCounters())


async def test_unix_socket_endpoint(channel: MemoryChannel, tmp_path: Path) -> None:
    desktop = FakeDesktop()
    path = tmp_path / "desk.sock"
    server = await asyncio.start_unix_server(desktop.handle, str(path))
    async with server:
        relay = asyncio.create_task(
            relay_vnc(channel, Endpoint(unix_path=str(path)), RelayPolicy(), RelayCounters())
        )
        assert await channel.handshake() == (640, 480, "fake")
        channel.close()
        await asyncio.wait_for(relay, 5)


@pytest.fixture
def stuck_channel(channel: MemoryChannel) -> MemoryChannel:
    """A browser that stops reading once ``stuck`` is set: every send hangs."""

    class StuckChannel(type(channel)):  # type: ignore[misc]
        stuck = False
        in_flight = 0
        most_in_flight = 0

        async def send(self, data: bytes) -> None:
            if self.stuck:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await asyncio.Event().wait()  # never returns; cancelled at the end
            await super().send(data)

    return StuckChannel()  # type: ignore[no-any-return]


async def test_a_stuck_browser_stops_reading_from_the_desktop(
    fake_desktop: FakeDesktop, stuck_channel: MemoryChannel
) -> None:
    blocked = asyncio.Event()
    written = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        chunk = b"\x02" * (1 << 20)
        try:
            for _ in range(64):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                written += len(chunk)
        except TimeoutError:
            blocked.set()

    fake_desktop.session = flood
    channel: Any = stuck_channel
    counters = RelayCounters()
    relay = asyncio.create_task(relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), counters))
    await channel.handshake()
    channel.stuck = True
    await asyncio.wait_for(blocked.wait(), 30)
    assert written < 64 << 20  # the desktop was held back: the gateway stopped reading
    assert channel.most_in_flight == 1
    assert counters.bytes_down <= len(SERVER_INIT) + READ_BUFFER_SIZE  # at most one buffer
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay


async def test_set_desktop_size_is_reported(fake_desktop: FakeDesktop, channel: MemoryChannel) -> None:
    sizes: list[tuple[int, int]] = []
    relay = asyncio.create_task(
        relay_vnc(channel, Endpoint(port=fake_desktop.port), RelayPolicy(), RelayCounters(),
                  on_resize=lambda w, h: sizes.append((w, h)))
    )
    await channel.handshake()
    screen = struct.pack(">IHHHHI", 0, 0, 0, 1600, 900, 0)
    resize = struct.pack(">BxHHBx", 251, 1600, 900, 1) + screen
    channel.push(resize)
    channel.close()
    await asyncio.wait_for(relay, 5)
    await asyncio.wait_for(fake_desktop.closed.wait(), 5)
    assert sizes == [(1600, 900)]
    assert bytes(fake_desktop.received) == resize  # forwarded unchanged


async def test_chunks_sent_from_the_buffer_are_not_overwritten_while_in_flight(
    fake_desktop: FakeDesktop, channel: MemoryChannel
) -> None:
    """A channel with ``send_chunk`` gets the relay's own buffer (no copy), with room for its
    header in front; while it is still sending, the desktop's next bytes go elsewhere."""
    stream = bytes(range(251)) * (24 * 1024 * 1024 // 251)  # 24 MB, no period of 256 KiB

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for at in range(0, len(stream), 100_003):  # odd-sized writes: chunks start anywhere
            writer.write(stream[at:at + 100_003])
            await writer.drain()

    class SlowChunkChannel(type(channel)):  # type: ignore[misc]
        chunks = 0
        changed = 0

        async def send_chunk(self, buffer: memoryview) -> None:
            self.chunks += 1
            assert len(buffer) > HEADER_ROOM
            buffer[:HEADER_ROOM] = b"\xee" * HEADER_ROOM  # the room is the channel's to write
            before = bytes(buffer[HEADER_ROOM:])
            for _ in range(3):  # a slow send: the desktop keeps arriving meanwhile
                await asyncio.sleep(0.002)
            if bytes(buffer[HEADER_ROOM:]) != before:
                self.changed += 1
            await self.send(before)

    slow: Any = SlowChunkChannel()
    fake_desktop.session = session
    counters = RelayCounters()
    relay = asyncio.create_task(relay_vnc(slow, Endpoint(port=fake_desktop.port), RelayPolicy(),
                                          counters))
    await slow.handshake()
    assert await slow.read(len(stream), timeout=60) == stream
    assert slow.chunks > 0 and slow.changed == 0
    assert counters.bytes_down == len(SERVER_INIT) + len(stream)
    slow.close()
    await asyncio.wait_for(relay, 10)


async def test_a_full_buffer_is_set_aside_and_reading_pauses_only_when_both_are_taken() -> None:
    """A buffer that fills while the relay holds nothing is set aside and reading goes on into
    the other one; reading pauses once both are taken, and a chunk the relay holds is never
    refilled, whichever way the buffers were handed over."""
    size = 64 * 1024
    data = bytes(range(251)) * (8 * size // 251)  # no period of the buffer size
    sent, finished = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(data)
            await writer.drain()
            sent.set()
            await reader.read()  # until the stream closes its end
            writer.close()
            await writer.wait_closed()
        finally:
            finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: _DesktopStream(size), "127.0.0.1", port)

    async def until_paused() -> None:
        async with asyncio.timeout(30):
            while not stream.paused:
                await asyncio.sleep(0.001)

    try:
        await until_paused()  # nothing taken: one buffer set aside, the other full
        received = bytearray()
        chunk = await stream.read_chunk()
        assert isinstance(chunk, memoryview) and len(chunk) == HEADER_ROOM + size
        assert stream.paused  # the relay holds one buffer, the other is full
        held = bytes(chunk[HEADER_ROOM:])
        assert held == data[:size]  # the set-aside buffer comes first
        received += held
        chunk = await stream.read_chunk()  # the first one is free again: reading resumes
        assert isinstance(chunk, memoryview) and bytes(chunk[HEADER_ROOM:]) == data[size:2 * size]
        held = bytes(chunk[HEADER_ROOM:])
        await until_paused()  # the freed buffer fills while the relay holds this chunk
        assert bytes(chunk[HEADER_ROOM:]) == held  # not refilled while held
        received += held
        while len(received) < len(data):
            next_chunk = await asyncio.wait_for(stream.read_chunk(), 30)
            assert next_chunk is not None
            received += next_chunk[HEADER_ROOM:] if isinstance(next_chunk, memoryview) else next_chunk
        assert received == data
        await asyncio.wait_for(sent.wait(), 30)
    finally:
        stream.close()
        await asyncio.wait_for(finished.wait(), 30)
        server.close()
        await server.wait_closed()


def test_the_bytes_of_each_buffer_start_on_a_cache_line() -> None:
    """The kernel copies into and out of the buffers: aligned, those copies cost less."""
    for size in (READ_BUFFER_SIZE, 64 * 1024, 1000):
        stream = _DesktopStream(size)
        for buffer in stream._buffers:
            assert len(buffer) == HEADER_ROOM + size
            start = ctypes.addressof(ctypes.c_char.from_buffer(buffer, HEADER_ROOM))
            assert start % DATA_ALIGN == 0


def resident_kib(stream: _DesktopStream) -> int:
    """Resident KiB of the stream's own buffers (their mapping in /proc/self/smaps)."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(stream._buffers[0]))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            low, high = (int(x, 16) for x in head.split("-"))
            if low <= start < high:
                for field in lines[i + 1:]:
                    if field.startswith("Rss:"):
                        return int(field.split()[1])
    raise AssertionError("the stream's mapping is not in /proc/self/smaps")


async def test_a_quiet_stream_keeps_no_resident_buffers() -> None:
    """A trickle of small reads never touches the stream's own buffers; a burst does, and once
    the stream is quiet again ``release_pages`` gives them back; no byte is lost or reordered."""
    peer: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.append(writer)
        connected.set()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: _DesktopStream(), "127.0.0.1", port)
    await asyncio.wait_for(connected.wait(), 10)
    desktop = peer[0]

    async def receive(count: int) -> bytes:
        got = bytearray()
        async with asyncio.timeout(30):
            while len(got) < count:
                chunk = await stream.read_chunk()
                assert chunk is not None
                got += chunk[HEADER_ROOM:] if isinstance(chunk, memoryview) else chunk
        return bytes(got)

    try:
        assert resident_kib(stream) == 0
        for i in range(50):  # a trickle: answers to probes, a blinking cursor
            desktop.write(bytes([i]) * 20)
            await desktop.drain()
            assert await receive(20) == bytes([i]) * 20
        assert resident_kib(stream) == 0, "small reads touched the stream's own buffers"
        burst = bytes(range(256)) * (3 * READ_BUFFER_SIZE // 256)
        desktop.write(burst)
        await desktop.drain()
        assert await receive(len(burst)) == burst
        desktop.write(b"tail")  # small again: the stream is quiet
        await desktop.drain()
        assert await receive(4) == b"tail"
        assert resident_kib(stream) > 0
        assert stream.release_pages()
        assert resident_kib(stream) == 0
        desktop.write(burst)  # the next burst on fresh pages: the same bytes
        await desktop.drain()
        assert await receive(len(burst)) == burst
    finally:
        stream.close()
        desktop.close()
        server.close()
        await server.wait_closed()
