"""One person cannot stall everyone: input per session and sessions per person are bounded
(real gateway, real Xvnc)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from relaysupport import close_of, closed_count, live_count, open_relay, row_of, store_of
from websupport import (
    app_client,
    base_url,
    eventually,
    key_event,
    keys_down,
    pointer_at,
    pointer_event,
    sign_in,
)

from gateway.config import Settings
from gateway.model import RelayPolicy
from gateway.xdisplay.xvnc import XvncDisplay

MIB = 1 << 20
SHIFT_L = 0xFFE1


@pytest.fixture
async def client(settings: Settings, desktop: XvncDisplay) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with await app_client(settings, desktop=desktop, max_sessions_per_user=3) as c:
        yield c


async def test_a_flood_of_valid_input_is_closed_and_the_other_session_keeps_working(
        client: TestClient, desktop: XvncDisplay) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    calm, calm_sid = await open_relay(client, csrf)
    flood, flood_sid = await open_relay(client, csrf)
    message = pointer_event(10, 10) * (MIB // 6)  # 1 MiB of valid PointerEvents
    sent = 0
    with pytest.raises((ConnectionError, aiohttp.ClientError)):  # noqa: PT012
        for _ in range(40):
            await flood.send_bytes(message)
            sent += len(message)
            await asyncio.sleep(0)
        raise ConnectionError("never closed")
    code, reason = await close_of(flood)
    assert code == 4021 and "more messages than a person can" in reason, (code, reason)
    row = await row_of(store_of(client), flood_sid)
    assert row.close_reason == reason and row.close_final  # no automatic reconnect
    # What reached the desktop: at most the burst of RFB messages (6 bytes each) plus what the
    # rate refilled meanwhile, not the flood.
    policy = RelayPolicy()
    assert row.bytes_up <= 6 * (policy.input_burst_messages
                                + policy.input_messages_per_second * 30)
    assert row.bytes_up < MIB < sent
    # The other session still works: a key and a pointer move reach the desktop.
    await calm.send_bytes(key_event(SHIFT_L, True))
    assert await eventually(lambda: keys_down(desktop) == 1)
    await calm.send_bytes(key_event(SHIFT_L, False) + pointer_event(123, 45))
    assert await eventually(lambda: keys_down(desktop) == 0 and pointer_at(desktop) == (123, 45))
    await calm.close()
    assert (await row_of(store_of(client), calm_sid)).close_reason == "closed by the user"
    assert await eventually(lambda: closed_count(client, "input_limit") == 1)
    assert await eventually(lambda: live_count(client) == 0)


async def test_a_flood_of_bytes_is_closed_with_its_reason(client: TestClient) -> None:  # type: ignore[type-arg]
    """Large messages, few of them: the byte budget (one clipboard paste and then some)."""
    csrf = await sign_in(client, "alice")
    ws, sid = await open_relay(client, csrf)
    text = b"x" * (MIB - 64)
    cut = struct.pack(">BxxxI", 6, len(text)) + text  # the largest clipboard paste allowed
    with pytest.raises((ConnectionError, aiohttp.ClientError)):  # noqa: PT012
        for _ in range(20):
            await ws.send_bytes(cut)
            await asyncio.sleep(0)
        raise ConnectionError("never closed")
    code, reason = await close_of(ws)
    assert code == 4021 and "more input than a person can" in reason
    row = await row_of(store_of(client), sid)
    assert row.bytes_up < 3 * MIB


async def test_sessions_per_person_are_bounded_under_a_burst(client: TestClient) -> None:  # type: ignore[type-arg]
    csrf = await sign_in(client, "alice")
    base = base_url(client)

    async def one() -> tuple[int, dict[str, str]]:
        resp = await client.session.post(f"{base}/desktops/1/connect",
                                         headers={"X-CSRF-Token": csrf,
                                                  "Accept": "application/json"})
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(one() for _ in range(60)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 3 + [429] * 57
    refusal = next(body for status, body in answers if status == 429)
    assert "3 desktop connections open" in refusal["error"]
    assert len(await store_of(client).list_sessions(active_only=True, limit=100)) == 3
    denied = await store_of(client).list_audit(limit=200, kind="session.denied")
    assert sum(e.detail == "session limit" for e in denied) == 57
