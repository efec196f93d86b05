"""Malformed websocket traffic against the real gateway and a real Xvnc: every connection ends
with a close frame carrying a code and a reason, its row closed and its live entry gone."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from relaysupport import Closed, RawWebSocket, live_count, row_of, store_of
from websupport import app_client, connect, eventually, sign_in

from gateway.config import Settings
from gateway.errors import ProtocolError
from gateway.keys import METRICS
from gateway.proxy.browserws import BrowserSocket
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

MIB = 1 << 20


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, desktop=desktop, max_sessions_per_user=64) as c:
        yield c


@pytest.fixture
async def open_desktop(tmp_path: Path) -> AsyncIterator[XvncDisplay]:
    """A real Xvnc (security type None) without TigerVNC's blacklist: under 16 connections at a
    time, some reset by their browsers, the blacklist here began refusing the gateway ("Too many
    security failures"), which would hide what this test looks at."""
    port = free_tcp_port()
    for display in range(70, 100):
        if not Path(f"/tmp/.X{display}-lock").exists() and not Path(
                f"/tmp/.X11-unix/X{display}").exists():
            break
    proc = await asyncio.create_subprocess_exec(
        "Xvnc", f":{display}", "-geometry", "640x480", "-depth", "24", "-rfbport", str(port),
        "-localhost", "-interface", "127.0.0.1", "-nolisten", "tcp", "-AlwaysShared",
        "-desktop", "fuzz", "-SecurityTypes", "None", "-UseBlacklist=0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                banner = await asyncio.wait_for(reader.readexactly(12), 5)
                writer.close()
                if banner.startswith(b"RFB "):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        yield XvncDisplay(display=display, rfbport=port, unix_path=None, pids=[proc.pid],
                          state_dir=tmp_path)
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def fuzz_client(settings: Settings, open_desktop: XvncDisplay
                      ) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, desktop=open_desktop, max_sessions_per_user=64) as c:
        yield c


async def _relay(client: TestClient, csrf: str, *, handshake: bool = True  # type: ignore[type-arg]
                 ) -> tuple[RawWebSocket, str]:
    conn = await connect(client, csrf)
    raw = await RawWebSocket.open(client, conn["ws_url"])
    assert raw.status == 101
    if handshake:
        await raw.rfb_handshake()
    return raw, conn["session_id"]


async def _socket_pair() -> tuple[BrowserSocket, socket.socket]:
    """A ``BrowserSocket`` on one end of a real socket pair (its frames to the browser go out
    there); the other end, to read them."""
    ours, theirs = socket.socketpair()
    _, browser = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: BrowserSocket(max_message=1000, ping_interval=3600.0, close_timeout=1.0),
        sock=ours)
    theirs.setblocking(False)
    return browser, theirs


async def _outcome(browser: BrowserSocket) -> tuple[list[bytes], int | None]:
    """The messages ``receive`` gives, then the close code of the error it raises (None if it
    ends without one)."""
    messages: list[bytes] = []
    browser.stop_pings()
    while True:
        try:
            async with asyncio.timeout(0.05):
                data = await browser.receive()
        except TimeoutError:
            return messages, None
        except ProtocolError as exc:
            return messages, exc.ws_code
        if data is None:
            return messages, None
        messages.append(data)


async def test_browser_frames_are_parsed_alike_however_they_are_split() -> None:
    """Whole, one byte at a time and split at every offset: the same messages, the same error
    at the bad frame, PINGs answered, and after an error the browser's close frame still found."""
    raw = RawWebSocket(None, None)  # type: ignore[arg-type]
    message = b"\x05\x00\x00\x01\x00\x01"
    good = raw.frame(2, message) + raw.frame(9, b"hi") + raw.frame(2, b"a", fin=False) + \
        raw.frame(0, b"b")
    unmasked = raw.frame(2, message, mask=False)
    close = raw.frame(8, struct.pack(">H", 1002))
    cases = ((good, None), (good + unmasked + close, 1002),
             (good + raw.frame(2, b"x" * 2000) + close, 1009), (good + raw.frame(1, b"t"), 1003),
             (good + raw.frame(1, b"\xff"), 1007), (good + raw.frame(0, b"c"), 1002),
             (good + bytes([0x82 | 0x40, 0x80]) + b"\0\0\0\0", 1002),
             (good + bytes([0x09, 0x82]) + b"\0\0\0\0\0\0", 1002))
    for data, code in cases:
        for cuts in ([len(data)], list(range(1, len(data) + 1)),
                     *([at, len(data)] for at in range(1, len(data)))):
            browser, theirs = await _socket_pair()
            try:
                start = 0
                for end in cuts:
                    browser.data_received(data[start:end])
                    start = end
                assert await _outcome(browser) == ([message, b"ab"], code), (code, cuts[:3])
                await asyncio.sleep(0)
                assert theirs.recv(64) == b"\x8a\x02hi"  # the PING's PONG, unmasked
                if close in data:
                    assert browser.browser_closed and browser.close_code == 1002
            finally:
                browser.abort()
                theirs.close()


@pytest.mark.parametrize(("case", "code", "words"), [
    ("unmasked", 1002, "masked"), ("oversized", 1009, "bytes"), ("text", 1003, "text"),
    ("bad rsv", 1002, "reserved")])
async def test_a_broken_frame_closes_with_its_code_and_reason(
        client: TestClient, case: str, code: int, words: str) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    raw, sid = await _relay(client, csrf)
    if case == "unmasked":
        raw.send(2, b"\x05\x00\x00\x01\x00\x01", mask=False)
    elif case == "text":
        raw.send(1, b"hello")
    elif case == "bad rsv":
        frame = bytearray(raw.frame(2, b"\x05\x00\x00\x01\x00\x01"))
        frame[0] |= 0x40
        raw.writer.write(bytes(frame))
    else:  # 2 MiB announced and sent while the gateway answers
        payload = os.urandom(2 * MIB)
        raw.writer.write(raw.frame(2, payload)[:64 * 1024])
        close = asyncio.ensure_future(raw.close_frame())
        frame = raw.frame(2, payload)
        for at in range(64 * 1024, len(frame), 256 * 1024):
            raw.writer.write(frame[at:at + 256 * 1024])
            await raw.writer.drain()
        got = await close
    if case != "oversized":
        got = await raw.close_frame()
    assert got[0] == code and words in got[1], got
    assert await raw.ends_cleanly(), "the gateway reset the connection instead of closing it"
    row = await row_of(store_of(client), sid)
    assert row.close_reason == got[1] or (row.close_reason or "").startswith(got[1])
    assert await eventually(lambda: live_count(client) == 0)


async def _one(client: TestClient, csrf: str, case: str, rng: random.Random  # type: ignore[type-arg]
               ) -> tuple[str, int | None, str, str]:
    """One hostile connection; (case, close code or None, reason, session id)."""
    try:
        raw, sid = await _relay(client, csrf, handshake=case != "mid-handshake")
    except Closed as exc:  # ended before the hostile part (e.g. the desktop was too slow)
        return "before", exc.code, exc.reason, ""
    if case == "mid-handshake":
        await raw.read_data()  # the greeting
        raw.send(2, b"RFB 003.008\n")
        raw.send(8, struct.pack(">H", 1000) + b"bye")
    elif case == "reset":
        raw.send(2, struct.pack(">BBHH", 5, 0, 10, 10))
        await raw.writer.drain()
        raw.reset()
        return case, None, "", sid
    elif case == "garbage":
        raw.send(2, bytes([rng.choice([9, 77, 200, 255])]) + os.urandom(rng.randrange(1, 64)))
    elif case == "truncated":  # a ClientCutText that announces more than the limit
        raw.send(2, struct.pack(">BxxxI", 6, 64 * MIB) + b"x" * 100)
    elif case == "oversized":
        raw.writer.write(raw.frame(2, os.urandom(MIB + 8192)))
    elif case == "text":
        raw.send(1, "ça".encode())
    elif case == "bad utf-8":
        raw.send(1, b"\xff\xfe")
    elif case == "unmasked":
        raw.send(2, struct.pack(">BBHH", 5, 0, 1, 1), mask=False)
    elif case == "fragmented ping":
        raw.writer.write(bytes([0x09, 0x80 | 2]) + b"\0\0\0\0" + b"\0\0")
    try:
        code, reason = await raw.close_frame()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return case, -1, "no close frame", sid
    assert await raw.ends_cleanly(), f"{case}: reset instead of close"
    return case, code, reason, sid


CASES = ("mid-handshake", "reset", "garbage", "truncated", "oversized", "text", "bad utf-8",
         "unmasked", "fragmented ping")


async def test_fuzzed_websockets_leave_nothing_behind(fuzz_client: TestClient) -> None:  # type: ignore[type-arg]
    """400 hostile connections, 16 at a time, through the real gateway to a real Xvnc."""
    client = fuzz_client
    csrf = await sign_in(client, "alice")
    rng = random.Random(9)  # noqa: S311 - a reproducible mix, not a secret
    chosen = os.environ.get("FUZZ_CASES", ",".join(CASES)).split(",")
    cases = [chosen[i % len(chosen)] for i in range(400)]
    rng.shuffle(cases)
    gate = asyncio.Semaphore(16)

    async def bounded(case: str) -> tuple[str, int | None, str, str]:
        async with gate:
            return await _one(client, csrf, case, rng)

    results = await asyncio.gather(*(bounded(c) for c in cases))
    missing = [(c, code, r) for c, code, r, _ in results
               if c != "reset" and (not code or code < 1000 or code >= 5000 or not r)]
    assert missing == [], missing[:10]
    codes = Counter((c, code) for c, code, _, _ in results)
    # Under this load the desktop now and then misses the handshake time (4010, with reason).
    assert {code for c, code, _, _ in results if c == "before"} <= {4010}, codes
    assert codes[("before", 4010)] < len(cases) // 20, codes
    for case, code in (("mid-handshake", 1000), ("garbage", 4013), ("truncated", 4013),
                       ("oversized", 1009), ("text", 1003), ("bad utf-8", 1007),
                       ("unmasked", 1002), ("fragmented ping", 1002)):
        assert codes[(case, code)] + codes[("before", 4010)] >= cases.count(case) > 0, (
            case, codes)
    assert await eventually(lambda: live_count(client) == 0, 20)
    store = store_of(client)
    assert await store.list_sessions(active_only=True, limit=10) == []
    for case, _, reason, sid in results[:40]:
        if not sid:
            continue
        row = await row_of(store, sid)
        if case == "reset":
            assert row.close_reason == "the connection to the browser was lost"
        elif case != "mid-handshake":
            assert (row.close_reason or "").startswith(reason), (case, row.close_reason, reason)
    exposition = client.server.app[METRICS].exposition().decode()
    assert "deskgate_sessions_active 0.0" in exposition
    assert 'deskgate_sessions_closed_total{reason="protocol_error"} 0.0' not in exposition
