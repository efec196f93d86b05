"""Single sign-on starts are an anonymous GET that writes a pre-login record: throttled per client
address, and the records waiting for a callback are capped in all and per address.

The whole app runs on a real port with the controllable ``hostile_idp`` as the provider (its
discovery answers; starting a sign-in needs nothing else from it). Many starts are in flight at
once; what they wrote is counted in the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hostile_idp import HostileIdp

from gateway.app import create_app
from gateway.cases.sso import LOGIN_TTL
from gateway.config import Settings
from gateway.keys import STORE
from gateway.store.sqlite import SQLiteStore

Client = TestClient  # type: ignore[type-arg]
BURST = 300
THROTTLED = "too many sign-ins started from your address; wait a minute and try again"
FULL = "too many sign-ins are waiting for the identity provider; finish one or wait a few minutes"


@pytest.fixture
async def make_gateway(settings: Settings, hostile_idp: HostileIdp
                       ) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(**changes: Any) -> Client:
        s = dataclasses.replace(settings, oidc=(hostile_idp.config(),), trust_proxy_headers=True,
                                **changes)
        client = TestClient(TestServer(create_app(s), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def starts(client: Client, addresses: list[str]) -> list[tuple[int, str, str]]:
    """One anonymous start per address, all at once: (status, page heading, Location + the
    browser cookie it set, as "URL cookie")."""
    base = str(client.make_url(""))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one(ip: str) -> tuple[int, str, str]:
            resp = await http.get(base + "/login/oidc/hostile", allow_redirects=False,
                                  headers={"X-Forwarded-For": ip})
            heading = re.search(r'id="error-heading">(.*?)<', await resp.text(), re.S)
            browser = resp.cookies.get("deskgate_oidc")
            location = resp.headers.get("Location", "")
            return (resp.status, heading.group(1) if heading else "",
                    f"{location} {browser.value}" if browser else location)

        return await asyncio.gather(*(one(ip) for ip in addresses))


async def waiting(client: Client, ip: str | None = None) -> int:
    store: SQLiteStore = client.server.app[STORE]
    row = await store._one("SELECT COUNT(*) FROM oidc_logins WHERE ? IS NULL OR client_ip = ?",
                           (ip, ip))
    return int(row[0])


async def test_starts_are_throttled_per_address(make_gateway: Callable[..., Any],
                                                hostile_idp: HostileIdp) -> None:
    client = await make_gateway(sso_starts_per_minute=30)
    results = await starts(client, ["10.4.0.1"] * BURST)
    statuses = [status for status, _, _ in results]
    assert 500 not in statuses
    started = [loc for status, _, loc in results if status == 303]
    assert 0 < len(started) <= 30  # sso_starts_per_minute
    assert all(loc.startswith(hostile_idp.issuer) for loc in started)
    assert {heading for status, heading, _ in results if status != 303} == {THROTTLED}
    assert statuses.count(429) == BURST - len(started)
    assert await waiting(client) == len(started)  # refused starts wrote no record
    # Another address starts as usual.
    assert [status for status, _, _ in await starts(client, ["10.4.0.2"])] == [303]


async def test_waiting_records_are_capped_per_address_and_in_all(
        make_gateway: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_gateway(sso_starts_per_minute=10_000, sso_pending_per_address=20,
                                sso_pending_max=50)
    results = await starts(client, ["10.3.0.1"] * 100)
    first = [started for status, _, started in results if status == 303]
    assert len(first) == 20
    assert {heading for status, heading, _ in results if status == 429} == {FULL}
    assert await waiting(client, "10.3.0.1") == 20
    # Many addresses at once: the total stops at 50.
    results = await starts(client, [f"10.3.1.{i % 100 + 1}" for i in range(BURST)])
    assert 500 not in [status for status, _, _ in results]
    assert [status for status, _, _ in results].count(303) == 30
    assert await waiting(client) == 50
    # A sign-in that comes back frees its place for its address (and in all).
    full = await starts(client, ["10.3.0.1"])
    assert full[0][:2] == (429, FULL)
    assert await callback(client, first[0])
    _, _, location = (await starts(client, ["10.3.0.1"]))[0]
    assert location.startswith(hostile_idp.issuer)
    # Records past their lifetime no longer count, and are purged.
    store: SQLiteStore = client.server.app[STORE]
    await store._exec("UPDATE oidc_logins SET created_at = created_at - ?", (LOGIN_TTL + 1,))
    results = await starts(client, ["10.3.0.1"] * 30)
    assert [status for status, _, _ in results].count(303) == 20
    assert await waiting(client) == 20


async def callback(client: Client, started: str) -> bool:
    """Let the IdP approve a started sign-in and bring its code back to the gateway in the
    browser that started it; True when that used up its waiting record."""
    location, browser = started.split(" ")
    async with aiohttp.ClientSession() as idp:
        answer = await idp.get(location, allow_redirects=False)
        assert answer.status == 302
        target = answer.headers["Location"]
    before = await waiting(client)
    resp = await client.get(target[target.index("/", len("http://")):], allow_redirects=False,
                            headers={"Cookie": f"deskgate_oidc={browser}"})
    assert resp.status == 303 and resp.headers["Location"] == "/login/totp"
    return await waiting(client) == before - 1
