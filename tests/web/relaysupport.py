"""Helpers for the relay websocket's tests: close frames, session rows, audit and metrics."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from websupport import base_url, connect, rfb_handshake
from yarl import URL

from gateway.keys import LIVE, METRICS, STORE
from gateway.model import Session
from gateway.store.sqlite import SQLiteStore


async def close_of(ws: aiohttp.ClientWebSocketResponse, timeout: float = 20.0
                   ) -> tuple[int | None, str]:
    """Read (skipping desktop bytes) until the close frame: (code, reason); (None, "") when the
    connection ended without one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        msg = await ws.receive(timeout=max(0.1, deadline - loop.time()))
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data, msg.extra or ""
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return None, ""
    raise AssertionError("no close frame in time")


async def open_relay(client: TestClient, csrf: str, http: Any = None  # type: ignore[type-arg]
                     ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """Connect to desktop 1 and finish the RFB handshake: (websocket, session id)."""
    base = base_url(client)
    http = http or client.session
    conn = await connect(http, csrf, base=base)
    ws = await http.ws_connect(base + conn["ws_url"], origin=base)
    await rfb_handshake(ws)
    return ws, conn["session_id"]


async def row_of(store: SQLiteStore, session_id: str, timeout: float = 15.0) -> Session:
    """The session's row once it has ended: closed, or failed (never reached the desktop)."""
    for _ in range(int(timeout / 0.1)):
        session = await store.get_session(session_id)
        assert session is not None
        if session.state.value in ("closed", "failed"):
            return session
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} still open")


async def disconnect_detail(store: SQLiteStore, session_id: str) -> str:
    """The audit's disconnect event of the session (written just after its row is closed)."""
    for _ in range(50):
        events = await store.list_audit(limit=1000, kind="session.disconnect")
        details = [e.detail for e in events if e.detail.startswith(f"session {session_id}:")]
        if details:
            assert len(details) == 1, details
            return details[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no disconnect event for session {session_id}")


def closed_count(client: TestClient, category: str) -> float:  # type: ignore[type-arg]
    value: float = client.server.app[METRICS].closed.labels(category)._value.get()
    return value


def live_count(client: TestClient) -> int:  # type: ignore[type-arg]
    return len(client.server.app[LIVE])


def store_of(client: TestClient) -> SQLiteStore:  # type: ignore[type-arg]
    store: SQLiteStore = client.server.app[STORE]
    return store


class Closed(Exception):
    """The gateway closed the websocket where data was expected."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code, self.reason = code, reason


class RawWebSocket:
    """A websocket client at the byte level, to send what no library sends (unmasked frames,
    oversized frames, resets) and to see exactly what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0

    @classmethod
    async def open(cls, client: TestClient, ws_url: str) -> RawWebSocket:  # type: ignore[type-arg]
        base = base_url(client)
        cookies = client.session.cookie_jar.filter_cookies(URL(base))
        cookie = "; ".join(f"{k}={v.value}" for k, v in cookies.items())
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {ws_url} HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n"
                      f"Origin: {base}\r\nCookie: {cookie}\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        raw = cls(reader, writer)
        raw.status = int(head.split()[1])
        return raw

    def frame(self, opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
        size = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        bit = 0x80 if mask else 0
        if size < 126:
            head += bytes([bit | size])
        elif size < 1 << 16:
            head += bytes([bit | 126]) + struct.pack(">H", size)
        else:
            head += bytes([bit | 127]) + struct.pack(">Q", size)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, opcode: int, payload: bytes, *, mask: bool = True) -> None:
        self.writer.write(self.frame(opcode, payload, mask=mask))

    async def read_frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next frame from the gateway (never masked): (opcode, payload)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "the server masked a frame"
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack(">H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, await self.reader.readexactly(size)

    async def read_data(self) -> bytes:
        """The next binary message, skipping the gateway's round-trip PINGs; a close frame
        raises ``Closed``."""
        while True:
            opcode, data = await self.read_frame()
            if opcode == 8:
                raise Closed(struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005,
                             data[2:].decode())
            if opcode not in (9, 10):
                assert opcode == 2, (opcode, data)
                return data

    async def rfb_handshake(self) -> None:
        buf = b""
        while len(buf) < 12:
            buf += await self.read_data()
        self.send(2, b"RFB 003.008\n")
        while len(buf) < 14:
            buf += await self.read_data()
        self.send(2, b"\x01")
        while len(buf) < 18:
            buf += await self.read_data()
        self.send(2, b"\x01")  # ClientInit
        while len(buf) < 18 + 24:
            buf += await self.read_data()

    async def close_frame(self, timeout: float = 15.0) -> tuple[int, str]:
        """Skip data frames until the close frame; answer it; (code, reason)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            opcode, payload = await self.read_frame(max(0.1, deadline - loop.time()))
            if opcode == 8:
                self.send(8, payload[:2])
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode()

    async def ends_cleanly(self, timeout: float = 10.0) -> bool:
        """True when the gateway ends the TCP connection with a FIN (no reset) after the close."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except ConnectionResetError:
            return False
        finally:
            self.writer.close()

    def reset(self) -> None:
        """Vanish: an RST, no close frame."""
        sock: socket.socket = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.writer.close()
