"""The relay's one ping timer per session: sequence-numbered PINGs whose PONGs give the round
trip, and a browser that stops answering is dropped and recorded as lost (real gateway, real
Xvnc, real websocket client)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from relaysupport import row_of, store_of
from websupport import app_client, base_url, connect, sign_in

from gateway import relay as relay_module
from gateway.config import Settings
from gateway.keys import LIVE
from gateway.metrics import BROWSER_LOST
from gateway.xdisplay.xvnc import XvncDisplay


class Browser:
    """A websocket client that answers PINGs only if ``answers``; records their payloads."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, answers: bool) -> None:
        self.ws, self.answers, self.pings, self.buf = ws, answers, [], bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            msg = await self.ws.receive(timeout=10)
            if msg.type is aiohttp.WSMsgType.PING:
                self.pings.append(msg.data)
                if self.answers:
                    await self.ws.pong(msg.data)
                continue
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            self.buf += msg.data
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def handshake(self) -> None:
        assert await self.read(12) == b"RFB 003.008\n"
        await self.ws.send_bytes(b"RFB 003.008\n")
        await self.read((await self.read(1))[0])
        await self.ws.send_bytes(b"\x01")
        assert await self.read(4) == b"\0\0\0\0"
        await self.ws.send_bytes(b"\x01")
        head = await self.read(24)
        await self.read(struct.unpack_from(">I", head, 20)[0])

    async def pinged(self, count: int) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.PING:
                self.pings.append(msg.data)
                await self.ws.pong(msg.data)
            if len(self.pings) >= count:
                return


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    monkeypatch.setattr(relay_module, "PING_INTERVAL", 0.5)
    async with await app_client(settings, {"alice": False}, desktop) as c:
        yield c


async def test_pings_measure_the_round_trip_and_find_a_vanished_browser(
        client: TestClient) -> None:  # type: ignore[type-arg]
    base = base_url(client)
    csrf = await sign_in(client, "alice")
    browsers, sids = [], []
    for answers in (True, True, False):
        conn = await connect(client.session, csrf, base=base)
        ws = await client.session.ws_connect(base + conn["ws_url"], origin=base, autoping=False)
        browser = Browser(ws, answers)
        await browser.handshake()
        browsers.append(browser)
        sids.append(conn["session_id"])
    answering, mute = browsers[:2], browsers[2]

    async with asyncio.timeout(30):
        await asyncio.gather(*(b.pinged(4) for b in answering))
    seen = [b.pings for b in answering]
    for pings in seen:  # 8-byte sequence numbers, one after another: no random payload
        numbers = [struct.unpack(">Q", p)[0] for p in pings]
        assert numbers == list(range(numbers[0], numbers[0] + 4)), numbers
    for sid in sids[:2]:
        live = client.server.app[LIVE].get(sid)
        assert live is not None and live.rtt_ms is not None and live.rtt_ms >= 0

    # The browser that never answers is dropped and recorded as lost; the others stay.
    row = await row_of(store_of(client), sids[2], timeout=20)
    assert row.close_reason == BROWSER_LOST
    for browser, sid in zip(answering, sids, strict=False):
        assert client.server.app[LIVE].get(sid) is not None
        await browser.ws.close()
    await mute.ws.close()
