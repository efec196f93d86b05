"""GET /metrics: the bearer token, the tokenless site, and counters that move with a session."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from websupport import (
    VNC_PASSWORD,
    app_client,
    base_url,
    connect,
    password_step,
    rfb_handshake,
    sign_in,
)

from gateway.audit import AuditKind
from gateway.config import Settings
from gateway.keys import STORE
from gateway.metrics import close_category, signin_failure_category
from gateway.model import Secret
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

TOKEN = "metrics-token-for-tests-0123456789"


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


async def test_token_is_required_and_compared(settings: Settings) -> None:
    async with await app_client(settings, metrics_token=Secret(TOKEN)) as client:
        assert (await client.get("/metrics")).status == 401
        wrong = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status == 401
        basic = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status == 401
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200
        text = await ok.text()
        assert "deskgate_sessions_active 0.0" in text and "deskgate_rdp_bridges 0.0" in text


async def test_no_token_means_no_metrics_on_the_main_port(settings: Settings) -> None:
    async with await app_client(settings, metrics_token=Secret("")) as client:
        assert (await client.get("/metrics", headers={"Authorization": "Bearer "})).status == 404
        assert (await client.get("/metrics")).status == 404


async def test_separate_site_without_token(settings: Settings) -> None:
    port = free_tcp_port()
    async with await app_client(settings, metrics_token=Secret(""), metrics_port=port,
                                 metrics_host="127.0.0.1"):
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert "deskgate_desktops" in await resp.text()


async def test_counters_move_when_a_session_runs(settings: Settings,
                                                 desktop: XvncDisplay) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with await app_client(settings, desktop=desktop, metrics_token=Secret(TOKEN)) as client:
        base = base_url(client)

        async def scrape() -> str:
            resp = await client.get("/metrics", headers=headers)
            assert resp.status == 200
            return await resp.text()

        before = await scrape()
        # Before anyone connected: the desktop is probed (a login, closed at once) and runs.
        assert value(before, 'deskgate_desktops{state="running"}') == 1
        assert value(before, 'deskgate_desktops{state="unknown"}') == 0
        # A failed sign-in, counted from the audit trail.
        await password_step(client, "alice", "wrong one")
        csrf_token = await sign_in(client.session, "alice", base=base)
        conn = await connect(client.session, csrf_token, base=base)
        async with client.ws_connect(conn["ws_url"], origin=base) as ws:
            await rfb_handshake(ws)
            await ws.send_bytes(bytes([3, 0, 0, 0, 0, 0, 2, 128, 1, 224]))  # update request
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.BINARY
            during = await scrape()
            assert value(during, "deskgate_sessions_active") == 1
            assert value(during, "deskgate_sessions_started_total") == 1
            assert value(during, 'deskgate_relay_bytes_total{direction="down"}') > 1000
            assert value(during, "deskgate_connect_latency_seconds_count") == 1
        for _ in range(50):
            session = await client.server.app[STORE].get_session(conn["session_id"])
            if session is not None and session.close_reason:
                break
            await asyncio.sleep(0.1)
        after = await scrape()
        assert value(after, "deskgate_sessions_active") == 0
        assert value(after, 'deskgate_sessions_closed_total{reason="user"}') == 1
        assert value(after, 'deskgate_relay_bytes_total{direction="up"}') >= 10
        assert value(after, 'deskgate_relay_bytes_total{direction="down"}') >= value(
            during, 'deskgate_relay_bytes_total{direction="down"}')
        assert value(after, 'deskgate_signin_failures_total{reason="password"}') == 1
        assert value(after, 'deskgate_signin_failures_total{reason="second_factor"}') == 0
        assert VNC_PASSWORD not in after


def test_label_sets_are_bounded() -> None:
    assert close_category(4030, "anything an admin typed") == "admin"
    assert close_category(1000, "the connection to the browser was lost") == "browser_lost"
    assert close_category(1000, "closed by the user") == "user"
    assert close_category(1013, "the gateway is full; try again later") == "refused"
    assert close_category(4999, "?") == "other"
    # Sign-in failures are counted by their reason code, never by the detail text.
    assert signin_failure_category(AuditKind.SIGNIN_FAILED, "sso") == "sso"
    assert signin_failure_category(AuditKind.SIGNIN_FAILED, "something new") == "other"
    assert signin_failure_category(AuditKind.SIGNIN_FAILED, None) == "other"
    assert signin_failure_category(AuditKind.SIGNIN_OK, None) is None
