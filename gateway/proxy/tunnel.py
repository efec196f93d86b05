"""The VNC byte path: one browser channel, one desktop socket, the RFB machines between them.

Over 400 lines as one concern: the relay loop and the three things it must do per connection
(read the desktop into reused buffers, meter and parse the browser's input, watch the desktop's
liveness); splitting them would put the loop's shared state behind more calls.

``relay_vnc`` connects to the desktop, authenticates to it with the credentials the gateway
holds, offers the browser security type None, and relays until either side ends:

- desktop -> browser: raw bytes, read into two reused buffers in turn (``_DesktopStream``, a
  ``BufferedProtocol``): one fills while the other is being sent to the browser, straight from
  the buffer (``ClientChannel.send_chunk``: no copy, the frame header written into room left
  before the bytes; chunks under ``SMALL_CHUNK`` are copied instead, so a quiet session keeps
  to one buffer). A buffer that fills while the relay holds nothing is set aside for it and
  reading goes on into the other; reading pauses only when both are taken, so a slow browser
  slows the desktop down instead of filling memory, and a relay that keeps up does not pause and
  resume reading for every chunk.
  This direction is not parsed, so ``RelayPolicy.clipboard_from_desktop`` is not enforced here:
  ServerCutText passes unchanged.
- browser -> desktop: every message goes through ``rfb_messages.ClientMessageParser``, which
  drops what the policy forbids and raises ``ProtocolError`` on anything it cannot frame. Before
  parsing, each message is charged to the session's input budget (``InputBudget``): a browser
  sending more than a person can is closed with ``InputLimit``.
- the desktop's liveness: when nothing has come from the desktop for ``unresponsive_after``
  seconds (``idle_probe_after`` while the person has given no key or pointer input for as
  long: an unattended session is asked every few minutes, not every few seconds), the relay
  asks it for one pixel (a non-incremental FramebufferUpdateRequest of 1x1,
  written between whole client messages; an idle desktop answers it at once, while it need not
  answer the browser's incremental requests). No answer within as long again: ``on_responding
  (False)``; its next bytes: ``on_responding(True)``. The browser gets the one-pixel update like
  any other.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from gateway.errors import DesktopUnavailable, InputLimit, ProtocolError, UpstreamClosed
from gateway.model import Endpoint, RelayCounters, RelayPolicy
from gateway.proxy.rfb import BrowserHandshake, DesktopHandshake
from gateway.proxy.rfb_messages import SET_DESKTOP_SIZE, ClientMessageParser

log = logging.getLogger("deskgate.relay")

# Bigger reads mean fewer websocket messages and event-loop turns per byte, but colder copies.
# Measured with ``bench/relay.py --phases relay --rounds 3 --paths socat,gateway`` three times per
# size, interleaved (2 CPUs, socat 0.50-0.60 s/GB meanwhile), the gateway's CPU per GB was, with the
# bytes unaligned: 256 KiB 0.62, 512 KiB 0.54, 1 MiB 0.46-0.49; aligned (DATA_ALIGN): 256 KiB 0.52,
# 512 KiB 0.42, 1 MiB 0.44. Above 512 KiB the cost also moves elsewhere: the bench's websocket
# client spent about 0.45, 0.5, 0.56 s/GB on 256 KiB, 512 KiB, 1 MiB frames, and at 1 MiB over half
# the sends were partial (the transport copies what the kernel did not take).
# A session that streamed keeps 2 x this resident; an idle one, only what its small reads touched.
READ_BUFFER_SIZE = 512 * 1024
# Room left before the bytes of each chunk for the channel's framing: the longest header of an
# unmasked websocket frame (2 + 8 bytes of length).
HEADER_ROOM = 10
# Where the bytes start in each buffer: on a cache line. Measured as READ_BUFFER_SIZE was, twice,
# interleaved: bytes at offset HEADER_ROOM (unaligned) 0.48 and 0.50 CPU-s/GB, at 64 0.42 and 0.42,
# at 4096 0.42 and 0.48: the kernel's copies into and out of the buffer are cheaper aligned.
DATA_ALIGN = 64
# Chunks smaller than this are copied: the copy is cheap.
SMALL_CHUNK = 4 * 1024
# A quiet stream (its last chunk was small) reads into one buffer that all streams share, and keeps
# what came as a copy while it stays small: an idle session's trickle (the desktop's handshake,
# answers to liveness probes, a blinking cursor) never touches its own buffers' pages. Sharing is
# safe: asyncio calls get_buffer(), recv_into() and buffer_updated() in one callback.
QUIET_READ = 64 * 1024
_QUIET = memoryview(bytearray(QUIET_READ))
# Nothing from the desktop for this long: ask it for a pixel; no answer for as long again: frozen.
UNRESPONSIVE_AFTER = 10.0
# One pixel, non-incremental: a desktop must answer it however idle it is.
PROBE = struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1)


class InputBudget:
    """Token buckets of bytes and of messages from one browser (rates from ``RelayPolicy``)."""

    def __init__(self, policy: RelayPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate_bytes = float(policy.input_bytes_per_second)
        self._rate_messages = float(policy.input_messages_per_second)
        self._burst_bytes = float(max(policy.input_burst_bytes,
                                      policy.max_clipboard_bytes + 256 * 1024))
        self._burst_messages = float(policy.input_burst_messages)
        self._bytes, self._messages = self._burst_bytes, self._burst_messages
        self._clock = clock
        self._at = clock()

    def charge(self, size: int) -> int:
        """Take ``size`` bytes (before parsing); raise ``InputLimit`` when the byte bucket is
        empty. Returns how many RFB messages may be parsed now (see ``spend``)."""
        now = self._clock()
        elapsed, self._at = max(0.0, now - self._at), now
        self._bytes = min(self._burst_bytes, self._bytes + elapsed * self._rate_bytes) - size
        self._messages = min(self._burst_messages, self._messages + elapsed * self._rate_messages)
        if self._bytes < 0:
            raise InputLimit(f"the browser sent more input than a person can (over "
                             f"{self._rate_bytes / 1024:g} KiB/s); the connection was closed")
        return int(self._messages)

    def spend(self, messages: int, *, more: bool) -> None:
        """``messages`` were parsed; ``more``: the parser stopped at the allowance."""
        self._messages -= messages
        if more:
            raise InputLimit(f"the browser sent more messages than a person can (over "
                             f"{self._rate_messages:g} a second); the connection was closed")


class ClientChannel(Protocol):
    """The browser's side of the relay: binary messages, for instance over a websocket."""

    async def receive(self) -> bytes | None:
        """The next binary message from the browser; None once the browser closed."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one binary message to the browser; awaiting it is the backpressure."""
        ...


class ChunkChannel(ClientChannel, Protocol):
    """A channel that sends the relay's buffer as it is (used when the channel has it)."""

    async def send_chunk(self, buffer: memoryview) -> None:
        """Send ``buffer[HEADER_ROOM:]`` as one binary message; ``buffer[:HEADER_ROOM]`` is free
        for framing. The relay overwrites the buffer once this returns: the channel must be done
        with it (sent, or copied) by then."""
        ...


class WriteFlow:
    """asyncio's write flow control for a protocol: the transport's ``pause_writing`` makes a
    future that ``resume_writing`` (or the connection's loss) resolves; whoever writes awaits
    ``_drained`` while it is set. The protocol sets both slots in its ``__init__``."""

    __slots__ = ("_drained", "_loop")
    _drained: asyncio.Future[None] | None
    _loop: asyncio.AbstractEventLoop | None

    def pause_writing(self) -> None:
        if self._drained is None:
            assert self._loop is not None
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None


class _DesktopStream(WriteFlow, asyncio.BufferedProtocol):
    """The desktop socket, read into two reused buffers of ``size`` bytes, in turn.

    Reads append to the filling buffer while the relay is busy sending the other one, so a busy
    relay takes bigger chunks instead of more of them. A buffer that fills up while the other one
    is free (the relay is not holding it) is set aside for the relay and reading goes on into the
    other one at once; only when both are taken (one full, one with the relay) does reading pause,
    until ``read_chunk()`` gives one back. So a relay that keeps up never pauses and resumes
    reading (two ``epoll_ctl`` calls per chunk), and a browser that stops reading stops the
    gateway reading from the desktop after at most ``size`` bytes more.
    Each buffer has ``HEADER_ROOM`` bytes in front of the data for the channel's framing.
    While the stream is quiet (its last chunk was small), reads go into a buffer all streams
    share and are kept as a copy (``QUIET_READ``); the first read that is not small moves them
    into the own buffers. ``release_pages`` gives those buffers' pages back once it is quiet again.
    """

    def __init__(self, size: int = READ_BUFFER_SIZE) -> None:
        # Anonymous memory: only the pages a read touched are resident, so an idle session costs a
        # few KiB however large the buffers are (a bytearray would be zero-filled, all resident).
        # The bytes start on a cache line (HEADER_ROOM before them is free for the header).
        stride = -(-(DATA_ALIGN + size) // DATA_ALIGN) * DATA_ALIGN
        mapping = mmap.mmap(-1, 2 * stride)
        memory = memoryview(mapping)
        self._buffers = tuple(memory[at + DATA_ALIGN - HEADER_ROOM : at + DATA_ALIGN + size]
                              for at in (0, stride))
        self._turn = 0  # which buffer fills
        self._view = self._buffers[0]
        self._size = size
        self._filled = 0  # bytes in the filling buffer, after its HEADER_ROOM
        self._full: memoryview | None = None  # the other buffer, full, set aside for the relay
        self._lent = False  # the relay holds the other buffer (until its next read_chunk())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False
        self._eof = False
        self._wakeup: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._memory = mapping
        self._quiet = True  # the last chunk was small: read into _QUIET (see QUIET_READ)
        self._in_quiet = False  # the read under way goes into _QUIET
        self._small = b""  # bytes read while quiet, copied, not yet taken
        self._touched = False  # the own buffers hold resident pages (see release_pages)
        self.last_received = time.monotonic()  # when the desktop last sent anything

    @property
    def paused(self) -> bool:
        """Reading paused because the browser is slow: the desktop's silence says nothing."""
        return self._paused

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # Kept: each asyncio.get_running_loop() costs a getpid() system call on Python 3.11.
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._quiet and self._filled == 0 and self._full is None:
            self._in_quiet = True
            return _QUIET
        self._in_quiet = False
        # Never empty: a full buffer is set aside, or reading pauses.
        return self._view[HEADER_ROOM + self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_received = time.monotonic()
        if self._in_quiet:
            self._in_quiet = False
            if len(self._small) + nbytes < SMALL_CHUNK:
                self._small += _QUIET[:nbytes]
                self._wake()
                return
            # No longer a trickle: these bytes and what is kept go into the filling buffer.
            self._quiet = False
            self._touched = True
            kept = len(self._small)
            view = self._view
            view[HEADER_ROOM : HEADER_ROOM + kept] = self._small
            view[HEADER_ROOM + kept : HEADER_ROOM + kept + nbytes] = _QUIET[:nbytes]
            self._small = b""
            nbytes += kept
        else:
            self._touched = True
        self._filled += nbytes
        if self._filled >= self._size:
            if self._full is None and not self._lent:  # the other buffer is free: fill it next
                self._full = self._view[: HEADER_ROOM + self._filled]
                self._turn ^= 1
                self._view = self._buffers[self._turn]
                self._filled = 0
            else:
                assert self._transport is not None
                self._transport.pause_reading()
                self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        self.resume_writing()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # used by the relay
    async def _received(self) -> bool:
        """Wait for bytes (a full buffer set aside, or some in the filling one); False once the
        desktop closed without more."""
        while self._filled == 0 and self._full is None and not self._small:
            if self._eof:
                return False
            assert self._loop is not None
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return True

    async def read(self) -> bytes | None:
        """The bytes received so far, at most ``size``, copied; None once the desktop closed."""
        if not await self._received():
            return None
        if self._small:
            data, self._small = self._small, b""
            return data
        if self._full is not None:
            data = bytes(self._full[HEADER_ROOM:])
            self._full = None
            self._resume()
            return data
        data = bytes(self._view[HEADER_ROOM : HEADER_ROOM + self._filled])
        self._emptied()
        return data

    async def read_chunk(self) -> bytes | memoryview | None:
        """The bytes received so far (at most ``size``): below ``SMALL_CHUNK`` bytes a copy;
        else, not copied, a buffer with ``HEADER_ROOM`` bytes of room before the data, handed
        over while the other one fills: valid until the next ``read_chunk()``, which may refill
        it. None once the desktop closed."""
        self._lent = False  # the caller is done with the last chunk
        if (self._filled == 0 and self._full is None and not self._small
                and not await self._received()):
            return None
        if self._small:  # quiet: a copy already
            data, self._small = self._small, b""
            return data
        chunk = self._full
        if chunk is not None:  # set aside while the relay was busy: older than the filling one
            self._full = None
            self._lent = True
            # A full filling buffer stays paused: the other one is lent now.
            return chunk
        if self._filled < SMALL_CHUNK:
            data = bytes(self._view[HEADER_ROOM : HEADER_ROOM + self._filled])
            self._quiet = True  # a trickle again: the next reads go into _QUIET
            self._emptied()
            return data
        chunk = self._view[: HEADER_ROOM + self._filled]
        self._lent = True
        self._turn ^= 1
        self._view = self._buffers[self._turn]
        self._emptied()
        return chunk

    def _emptied(self) -> None:
        self._filled = 0
        self._resume()

    def _resume(self) -> None:
        if self._paused and self._filled < self._size:
            self._paused = False
            if self._transport is not None and not self._eof:
                self._transport.resume_reading()

    def release_pages(self) -> bool:
        """Give the own buffers' pages back to the system when the stream is quiet and holds
        nothing (a session that once streamed a full screen and then went idle keeps no
        resident buffers); True if it did. The next burst starts on fresh zero pages."""
        if not (self._touched and self._quiet and self._filled == 0 and self._full is None
                and not self._lent and not self._in_quiet):
            return False
        self._memory.madvise(mmap.MADV_DONTNEED)
        self._touched = False
        return True

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def drain(self) -> None:
        if self._drained is not None:
            await asyncio.shield(self._drained)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def relay_vnc(
    channel: ClientChannel,
    endpoint: Endpoint,
    policy: RelayPolicy,
    counters: RelayCounters,
    *,
    connect_timeout: float = 10.0,
    on_ready: Callable[[str], None] | None = None,
    on_resize: Callable[[int, int], None] | None = None,
    on_responding: Callable[[bool], None] | None = None,
    unresponsive_after: float = UNRESPONSIVE_AFTER,
    idle_probe_after: float | None = None,
) -> None:
    """Relay one browser channel to one VNC desktop until either side ends.

    Returns normally when the browser closes. Raises ``DesktopUnavailable`` (cannot connect, or
    no handshake within ``connect_timeout``), ``UpstreamAuthFailed`` (credentials refused, or no
    usable security type), ``UpstreamClosed`` (the desktop ended the session) and
    ``ProtocolError`` (the browser or the desktop broke RFB). ``on_ready`` gets the desktop name
    once ServerInit has been forwarded; ``on_responding`` is told when the desktop stops
    answering and when it answers again (see the module docstring). Whatever happens,
    cancellation included, the desktop socket is closed on the way out; ``CancelledError`` propagates.

    ``counters.bytes_down`` counts the bytes forwarded to the browser from ServerInit on;
    ``counters.bytes_up`` the client messages forwarded to the desktop after ClientInit.
    """
    stream = await _connect(endpoint, connect_timeout)
    try:
        await _session(channel, stream, endpoint, policy, counters, connect_timeout, on_ready,
                       on_resize, on_responding, unresponsive_after, idle_probe_after)
    except BaseException:
        stream.abort()  # errors and cancellation: drop the desktop connection at once
        raise
    stream.close()  # the browser left: flush what it sent last, then close


async def _session(
    channel: ClientChannel,
    stream: _DesktopStream,
    endpoint: Endpoint,
    policy: RelayPolicy,
    counters: RelayCounters,
    timeout: float,
    on_ready: Callable[[str], None] | None,
    on_resize: Callable[[int, int], None] | None = None,
    on_responding: Callable[[bool], None] | None = None,
    unresponsive_after: float = UNRESPONSIVE_AFTER,
    idle_probe_after: float | None = None,
) -> None:
    # The handshakes run in a frame of their own, so that nothing of them is kept for the
    # session's life (thousands of idle sessions).
    started = await _handshakes(channel, stream, endpoint, counters, timeout, on_ready)
    if started is None:
        return
    remainder = started[0]
    del started
    parser = ClientMessageParser(policy)
    budget = InputBudget(policy)
    watch = _DesktopWatch(stream, unresponsive_after, on_responding, counters,
                          idle_probe_after or unresponsive_after)
    watch.start()
    try:
        await _relay(
            down=_pump_down(stream, channel, counters),
            up=_pump_up(channel, stream, parser, counters, remainder, on_resize, budget,
                        watch.input),
        )
    finally:
        watch.stop()


async def _handshakes(
    channel: ClientChannel,
    stream: _DesktopStream,
    endpoint: Endpoint,
    counters: RelayCounters,
    timeout: float,
    on_ready: Callable[[str], None] | None,
) -> tuple[bytes | None] | None:
    """Both RFB handshakes, ServerInit forwarded; (the browser's bytes after its handshake,);
    None when the browser left during its handshake."""
    desktop = DesktopHandshake(endpoint.password)
    await _desktop_until(stream, desktop, lambda: desktop.authenticated, timeout)

    browser = BrowserHandshake()
    await channel.send(BrowserHandshake.GREETING)
    try:
        # A browser that never finishes its handshake must not hold the desktop connection.
        async with asyncio.timeout(timeout):
            while not browser.done:
                data = await channel.receive()
                if data is None:
                    return None
                reply = browser.feed(data)
                if reply:
                    await channel.send(reply)
    except TimeoutError:
        raise ProtocolError("the browser did not finish the RFB handshake in time") from None

    stream.write(desktop.client_init())
    await _desktop_until(stream, desktop, lambda: desktop.done, timeout)
    assert desktop.server_init is not None
    first = desktop.server_init.raw + desktop.remainder()
    await channel.send(first)
    counters.bytes_down += len(first)
    if on_ready is not None:
        on_ready(desktop.server_init.name)
    return (browser.remainder(),)


async def _connect(endpoint: Endpoint, timeout: float) -> _DesktopStream:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if endpoint.unix_path:
                _, stream = await loop.create_unix_connection(_DesktopStream, endpoint.unix_path)
            else:
                _, stream = await loop.create_connection(_DesktopStream, endpoint.host, endpoint.port)
    except TimeoutError:
        raise DesktopUnavailable(f"the desktop did not answer within {timeout:g} s") from None
    except OSError as exc:
        # The reason reaches the person; the desktop's address on the private network does not.
        log.warning("desktop connect failed: %s", exc)
        raise DesktopUnavailable("the desktop cannot be reached") from None
    return stream


async def _desktop_until(
    stream: _DesktopStream,
    machine: DesktopHandshake,
    finished: Callable[[], bool],
    timeout: float,
) -> None:
    """Feed the desktop's bytes to the handshake machine until ``finished()``."""
    try:
        async with asyncio.timeout(timeout):
            while not finished():
                data = await stream.read()
                if data is None:
                    raise machine.eof_error()
                reply = machine.feed(data)
                if reply:
                    stream.write(reply)
    except TimeoutError:
        raise DesktopUnavailable(
            f"the desktop did not complete the RFB handshake within {timeout:g} s"
        ) from None


async def _pump_down(stream: _DesktopStream, channel: ClientChannel, counters: RelayCounters) -> None:
    send_chunk = getattr(channel, "send_chunk", None)
    while True:
        chunk = await stream.read_chunk()
        if chunk is None:
            raise UpstreamClosed()
        if isinstance(chunk, bytes):
            await channel.send(chunk)
            counters.bytes_down += len(chunk)
            continue
        if send_chunk is not None:
            await send_chunk(chunk)
        else:
            await channel.send(bytes(chunk[HEADER_ROOM:]))
        counters.bytes_down += len(chunk) - HEADER_ROOM


async def _pump_up(
    channel: ClientChannel,
    stream: _DesktopStream,
    parser: ClientMessageParser,
    counters: RelayCounters,
    data: bytes | None,
    on_resize: Callable[[int, int], None] | None = None,
    budget: InputBudget | None = None,
    on_input: Callable[[], None] | None = None,
) -> None:
    while data is not None:
        # Charged before parsing: a flood costs no more parsing than its budget.
        allowed = None if budget is None else budget.charge(len(data))
        messages = parser.feed(data, allowed)
        if budget is not None:
            budget.spend(len(messages), more=parser.limited)
        forward = []
        had_input = False
        for message in messages:
            if not message.forward:
                counters.messages_dropped += 1
                continue
            forward.append(message.data)
            if message.is_input:
                had_input = True
            elif message.type == SET_DESKTOP_SIZE and on_resize is not None:
                width, height = struct.unpack_from(">HH", message.data, 2)
                on_resize(width, height)
        if had_input:
            counters.last_input = time.time()
            if on_input is not None:
                on_input()
        if forward:
            payload = b"".join(forward)
            stream.write(payload)
            counters.bytes_up += len(payload)
            await stream.drain()
        data = await channel.receive()


class _DesktopWatch:
    """Probe a silent desktop with one pixel; report when it stops and starts answering.

    A timer callback, not a task: it runs only when something can be due (the silence before a
    probe from the desktop's last bytes, or ``after`` from the probe; at the earliest a quarter
    of ``after`` later; ``input()`` cuts an unattended session's long wait short), so that
    thousands of idle relays cost little memory and few wake-ups. The silence before a probe
    is ``after`` while the person gives input (a key or the pointer, ``counters.last_input``)
    and ``idle_after`` once they have given none for as long: whoever waits on a frozen screen
    is told within ``2 * after``, an unattended session is asked far less often."""

    __slots__ = ("_stream", "_after", "_idle_after", "_counters", "_on_responding",
                 "_responding", "_probe_at", "_timer", "_loop", "_long")

    def __init__(self, stream: _DesktopStream, after: float,
                 on_responding: Callable[[bool], None] | None,
                 counters: RelayCounters | None = None, idle_after: float | None = None) -> None:
        self._stream, self._after, self._on_responding = stream, after, on_responding
        self._idle_after = max(after, idle_after or after)
        self._counters = counters
        self._responding = True
        self._probe_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._long = False  # the timer waits out an unattended session's long silence

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _silence(self) -> float:
        """How long the desktop may be silent before it is asked for a pixel."""
        if self._idle_after == self._after or self._counters is None:
            return self._after
        idle_for = time.time() - self._counters.last_input
        return self._after if idle_for < self._idle_after else self._idle_after

    def input(self) -> None:
        """The person gave input (a key, the pointer): an unattended session's long wait ends,
        so that whoever starts typing on a frozen screen is told within ``2 * after``."""
        if self._long and self._timer is not None:
            self._timer.cancel()
            self._schedule()

    def _schedule(self) -> None:
        stream, after = self._stream, self._after
        silence = self._silence()
        if self._probe_at is None:
            due = stream.last_received + silence
        else:
            due = self._probe_at + after
        self._long = self._probe_at is None and silence > after
        delay = max(after / 4, due - time.monotonic())
        self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self._check()
        finally:
            self._schedule()

    def _check(self) -> None:
        stream, after = self._stream, self._after
        now = time.monotonic()
        if stream.paused:  # a slow browser, not a silent desktop
            self._probe_at = None
            return
        stream.release_pages()  # a stream gone quiet keeps no resident buffers
        if self._probe_at is not None and stream.last_received >= self._probe_at:
            self._probe_at = None  # answered
            if not self._responding:
                self._responding = True
                log.info("the desktop answers again")
                if self._on_responding is not None:
                    self._on_responding(True)
        if self._probe_at is None:
            if now - stream.last_received >= self._silence():
                stream.write(PROBE)  # between whole client messages: the pumps write whole ones
                self._probe_at = now
        elif self._responding and now - self._probe_at >= after:
            self._responding = False
            log.info("the desktop has not answered for %.0f s", now - stream.last_received)
            if self._on_responding is not None:
                self._on_responding(False)


async def _relay(down: Coroutine[Any, Any, None], up: Coroutine[Any, Any, None]) -> None:
    """Run ``up`` in this task and ``down`` in a task of its own until the first ends; stop the
    other; re-raise the first one's error. (One task per session fewer than a task per pump and
    a wait: thousands of idle sessions.)"""
    current = asyncio.current_task()
    assert current is not None
    task = asyncio.ensure_future(down)
    up_running, interrupted = True, False

    def down_done(_task: asyncio.Task[None]) -> None:
        nonlocal interrupted
        if up_running:  # down ended first: stop up, which waits in this task
            interrupted = True
            current.cancel()

    task.add_done_callback(down_done)
    try:
        await up
    except asyncio.CancelledError:
        # Cancelled by down_done only (not also from outside): down's outcome is the relay's.
        if not interrupted or current.uncancel() > 0:
            raise
    finally:
        up_running = False
        task.remove_done_callback(down_done)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
