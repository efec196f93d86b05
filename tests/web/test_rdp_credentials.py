"""Per-user RDP desktops: each person's own account, asked at connect (428), stored encrypted
(write-only), forgotten on request or when the desktop refuses it (424)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from websupport import Client, app_client, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import ACCOUNTS, BROKER, CATALOG, STORE
from gateway.model import Endpoint
from gateway.rdp.errors import REASON_CERTIFICATE, REASON_CREDENTIALS, BridgeError
from gateway.rdp.target import RdpTarget

CLI = Actor.cli()  # who makes the changes that set the scene

SECRET = "My-Own-Windows-Pw-7"  # noqa: S105 - a test password that must never come back
BOB_SECRET = "Bobs-Own-Pw-99"  # noqa: S105


class FakeBridges:
    """Stands in for RdpBridges: records targets, refuses the password "wrong"."""

    def __init__(self) -> None:
        self.targets: list[RdpTarget] = []
        self.live: set[str] = set()  # keys whose "bridge" runs (a test ends one by removing it)

    async def acquire(self, key: str, target: RdpTarget, width: int = 1280,
                      height: int = 800) -> Endpoint:
        self.targets.append(target)
        if target.password is not None and target.password.reveal().startswith("wrong"):
            raise BridgeError.of(REASON_CREDENTIALS, "credentials")
        if target.password is not None and target.password.reveal().startswith("cert"):
            raise BridgeError.of(REASON_CERTIFICATE, "certificate")
        self.live.add(key)
        return Endpoint(host="127.0.0.1", port=1)

    def release(self, key: str, *, handover: bool = False) -> None:
        pass

    def running(self, key: str) -> bool:
        return key in self.live


@pytest.fixture
async def rdp_port() -> AsyncIterator[int]:
    """Something listening, so that the static provider's probe finds the "RDP server"."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def client(settings: Settings, rdp_port: int) -> AsyncIterator[Client]:
    c = await app_client(settings, {"root": True, "alice": False, "bob": False})
    async with c:
        catalog = c.server.app[CATALOG]
        own = await catalog.add_desktop(CLI, "Own", "static", host="127.0.0.1", port=rdp_port,
                                        protocol="rdp", options={"credentials": "per_user",
                                                                 "domain": "CORP"})
        await catalog.assign(CLI, own.id, user_ref="alice")
        await catalog.assign(CLI, own.id, user_ref="bob")
        c.server.app[BROKER].bridges = FakeBridges()  # type: ignore[assignment]
        yield c


def fake(client: Client) -> FakeBridges:
    bridges: Any = client.server.app[BROKER].bridges
    assert isinstance(bridges, FakeBridges)
    return bridges


async def as_user(client: Client, name: str) -> tuple[aiohttp.ClientSession, str, str]:
    base = f"http://127.0.0.1:{client.port}"
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    csrf = await sign_in(session, name, base=base)
    return session, csrf, base


def headers(csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf, "Accept": "application/json"}


async def post_connect(s: aiohttp.ClientSession, base: str, csrf: str) -> aiohttp.ClientResponse:
    return await s.post(f"{base}/desktops/1/connect", headers=headers(csrf))


async def save(s: aiohttp.ClientSession, base: str, csrf: str | None, password: str,
               username: str = "alice.w", **extra: Any) -> aiohttp.ClientResponse:
    h = headers(csrf) if csrf else {"Accept": "application/json"}
    return await s.post(f"{base}/desktops/1/credentials", headers=h,
                        json={"username": username, "domain": "CORP", "password": password,
                              **extra})


async def everything_seen(client: Client, s: aiohttp.ClientSession, base: str) -> str:
    """Every page and answer a person or an admin could read about this desktop, and the audit."""
    texts = [await (await s.get(f"{base}/desktops/1")).text(),
             await (await s.get(f"{base}/")).text()]
    for event in await client.server.app[STORE].list_audit(limit=1000):
        texts.append(f"{event.kind} {event.user} {event.desktop} {event.detail}")
    return "\n".join(texts)


async def test_connect_asks_then_uses_the_persons_own_account(client: Client) -> None:
    s, csrf, base = await as_user(client, "alice")
    async with s:
        page = await (await s.get(f"{base}/desktops/1")).text()
        assert 'data-credentials="per_user"' in page and 'id="rdp-username"' in page
        resp = await post_connect(s, base, csrf)
        assert resp.status == 428
        assert await resp.json() == {"error": "enter your account for this desktop",
                                     "credentials": "required"}
        assert fake(client).targets == []  # nothing started without an account

        # CSRF required; a bad body is refused.
        assert (await save(s, base, None, SECRET)).status == 403
        assert (await save(s, base, "forged", SECRET)).status == 403
        assert (await save(s, base, csrf, "")).status == 400
        bad = await s.post(f"{base}/desktops/1/credentials", headers=headers(csrf),
                           json={"username": 5, "password": SECRET})
        assert bad.status == 400
        assert (await post_connect(s, base, csrf)).status == 428

        resp = await save(s, base, csrf, SECRET)
        assert resp.status == 200 and SECRET not in await resp.text()
        resp = await post_connect(s, base, csrf)
        assert resp.status == 200, await resp.text()
        target = fake(client).targets[-1]
        assert (target.username, target.domain) == ("alice.w", "CORP")
        assert target.password is not None and target.password.reveal() == SECRET

        # Stored encrypted: not in the database file in clear.
        raw = sqlite3.connect(client.server.app[STORE].path)  # type: ignore[attr-defined]
        try:
            rows = raw.execute("SELECT username, password_enc FROM user_credentials").fetchall()
        finally:
            raw.close()
        assert rows and rows[0][0] == "alice.w" and SECRET not in rows[0][1]

        seen = await everything_seen(client, s, base)
        assert SECRET not in seen
        assert "credentials saved (alice.w)" in seen


async def test_other_people_keep_their_own_account(client: Client) -> None:
    a, a_csrf, base = await as_user(client, "alice")
    b, b_csrf, _ = await as_user(client, "bob")
    async with a, b:
        assert (await save(a, base, a_csrf, SECRET)).status == 200
        assert (await post_connect(b, base, b_csrf)).status == 428  # alice's is not bob's
        assert (await save(b, base, b_csrf, BOB_SECRET, username="bob.w")).status == 200
        assert (await post_connect(a, base, a_csrf)).status == 200
        assert fake(client).targets[-1].username == "alice.w"
        assert (await post_connect(b, base, b_csrf)).status == 200
        assert fake(client).targets[-1].username == "bob.w"

        # Forgetting is one's own: bob's account stays.
        resp = await a.delete(f"{base}/desktops/1/credentials", headers={"Accept": "application/json"})
        assert resp.status == 403  # CSRF
        resp = await a.delete(f"{base}/desktops/1/credentials", headers=headers(a_csrf))
        assert resp.status == 200 and (await resp.json())["forgotten"] is True
        assert (await post_connect(a, base, a_csrf)).status == 428
        assert (await post_connect(b, base, b_csrf)).status == 200
        seen = await everything_seen(client, a, base)
        assert "credentials forgotten (by the user)" in seen
        assert SECRET not in seen and BOB_SECRET not in seen


async def test_a_refused_account_is_forgotten_and_asked_again(client: Client) -> None:
    s, csrf, base = await as_user(client, "alice")
    async with s:
        assert (await save(s, base, csrf, "wrong-password-1")).status == 200
        resp = await post_connect(s, base, csrf)
        assert resp.status == 424
        body = await resp.json()
        assert body["credentials"] == "required"
        reason = body["error"]
        assert "refused the user name or password" in reason and "enter it again" in reason
        assert await client.server.app[STORE].get_user_credentials(2, 1) is None
        assert (await post_connect(s, base, csrf)).status == 428
        seen = await everything_seen(client, s, base)
        assert "credentials forgotten (refused by the desktop)" in seen
        assert "wrong-password-1" not in seen


async def test_other_refusals_keep_the_account(client: Client) -> None:
    s, csrf, base = await as_user(client, "alice")
    async with s:
        assert (await save(s, base, csrf, "cert-refused-pw")).status == 200
        resp = await post_connect(s, base, csrf)
        assert resp.status == 424
        body = await resp.json()
        body.pop("session_id", None)  # the attempt a retry would continue
        assert body == {"error": REASON_CERTIFICATE}  # no "credentials": asked
        assert await client.server.app[STORE].get_user_credentials(2, 1) is not None


async def test_not_assigned_and_shared_desktops_refuse_credentials(client: Client,
                                                                  rdp_port: int) -> None:
    catalog = client.server.app[CATALOG]
    shared = await catalog.add_desktop(CLI, "Shared", "static", host="127.0.0.1", port=rdp_port,
                                       protocol="rdp", options={"username": "svc"},
                                       password="svc-pw")
    await catalog.add_desktop(CLI, "Hers", "static", host="127.0.0.1", port=rdp_port,
                              protocol="rdp", options={"credentials": "per_user"})
    await catalog.assign(CLI, shared.id, user_ref="alice")
    s, csrf, base = await as_user(client, "alice")
    async with s:
        resp = await s.post(f"{base}/desktops/2/credentials", headers=headers(csrf),
                            json={"username": "x", "password": SECRET})
        assert resp.status == 400  # a shared desktop has its own account
        resp = await s.post(f"{base}/desktops/3/credentials", headers=headers(csrf),
                            json={"username": "x", "password": SECRET})
        assert resp.status == 404  # not assigned: the same answer as a missing desktop


async def test_api_and_admin_pages_show_the_credentials_mode(client: Client) -> None:
    s, csrf, base = await as_user(client, "root")
    async with s:
        root = await client.server.app[STORE].get_user_by_name("root")
        assert root is not None
        _, token = await client.server.app[ACCOUNTS].create_token(Actor.of(root), root, "test",
                                                                  read_only=False)
        api = {"Authorization": f"Bearer {token}"}
        resp = await s.get(f"{base}/api/v1/desktops/1", headers=api)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["rdp"]["credentials"] == "per_user"
        resp = await s.post(f"{base}/api/v1/desktops", headers=api, json={
            "name": "Own via API", "provider": "static", "host": "10.9.9.8", "port": 3389,
            "protocol": "rdp", "rdp": {"credentials": "per_user"}})
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["rdp"]["credentials"] == "per_user"
        resp = await s.post(f"{base}/api/v1/desktops", headers=api, json={
            "name": "Bad", "provider": "static", "host": "10.9.9.8", "port": 3389,
            "protocol": "rdp", "rdp": {"credentials": "everyone"}})
        assert resp.status == 400 and "shared, per_user" in await resp.text()
        page = await (await s.get(f"{base}/admin/desktops/1")).text()
        assert "credentials: per user" in page
        listing = await (await s.get(f"{base}/admin/desktops")).text()
        assert 'id="new-rdp-credentials"' in listing and "credentials: per user" in listing
        form = {"_csrf": csrf, "name": "Own via form", "provider": "static",
                "host": "10.9.9.9", "port": "3389", "protocol": "rdp",
                "rdp_credentials": "per_user", "rdp_security": "nla"}
        resp = await s.post(f"{base}/admin/desktops", data=form, allow_redirects=False)
        assert resp.status == 303, await resp.text()
    created = await client.server.app[STORE].get_desktop_by_name("Own via form")
    assert created is not None and created.option("credentials") == "per_user"
    assert created.option("username") == ""


async def test_an_account_not_remembered_serves_one_connection_only(client: Client) -> None:
    s, csrf, base = await as_user(client, "alice")
    async with s:
        page = await (await s.get(f"{base}/desktops/1")).text()
        assert 'id="rdp-remember"' in page
        assert (await save(s, base, csrf, SECRET, remember="no")).status == 400
        await save(s, base, csrf, "Old-Stored-Pw-1")  # stored earlier ...
        alice = await client.server.app[STORE].get_user_by_name("alice")
        assert alice is not None
        assert await client.server.app[STORE].get_user_credentials(alice.id, 1) is not None
        resp = await save(s, base, csrf, SECRET, remember=False)  # ... and now not wanted
        assert resp.status == 200 and await resp.json() == {"saved": False}
        assert await client.server.app[STORE].get_user_credentials(alice.id, 1) is None
        assert (await post_connect(s, base, csrf)).status == 200
        target = fake(client).targets[-1]
        assert target.password is not None and target.password.reveal() == SECRET
        # While its bridge runs (a reconnect), the same account; once it ends, asked again.
        assert (await post_connect(s, base, csrf)).status == 200
        assert fake(client).targets[-1] == target
        fake(client).live.clear()
        assert (await post_connect(s, base, csrf)).status == 428
        seen = await everything_seen(client, s, base)
        assert SECRET not in seen
        assert "credentials entered for one connection (alice.w), not stored" in seen
        assert "credentials forgotten (not to be remembered)" in seen


async def test_storing_can_be_switched_off_for_the_gateway(settings: Settings,
                                                           rdp_port: int) -> None:
    c = await app_client(replace(settings, rdp_store_credentials=False), {"alice": False})
    async with c:
        catalog = c.server.app[CATALOG]
        own = await catalog.add_desktop(CLI, "Own", "static", host="127.0.0.1", port=rdp_port,
                                        protocol="rdp", options={"credentials": "per_user"})
        await catalog.assign(CLI, own.id, user_ref="alice")
        c.server.app[BROKER].bridges = FakeBridges()  # type: ignore[assignment]
        s, csrf, base = await as_user(c, "alice")
        async with s:
            page = await (await s.get(f"{base}/desktops/1")).text()
            assert 'id="rdp-remember"' not in page and "used for this connection only" in page
            resp = await save(s, base, csrf, SECRET, remember=True)
            assert await resp.json() == {"saved": False}
            alice = await c.server.app[STORE].get_user_by_name("alice")
            assert alice is not None
            assert await c.server.app[STORE].get_user_credentials(alice.id, 1) is None
            assert (await post_connect(s, base, csrf)).status == 200
            fake(c).live.clear()
            assert (await post_connect(s, base, csrf)).status == 428
