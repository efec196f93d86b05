"""The sign-in pages, CSRF, web session lifetime and security headers, through the real app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from websupport import csrf_of, password_step, secret_of

from gateway.app import Cases, create_app
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import SETTINGS
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()  # who makes the changes that set the scene

PASSWORD = "alice's long password"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    store = SQLiteStore(settings.database_path)
    await store.open()
    from gateway.app import build_cases

    cases = build_cases(settings, store)
    await cases.accounts.add_user(CLI, "alice", password=PASSWORD)
    await cases.accounts.add_user(CLI, "bob", password=PASSWORD)
    desktop = await cases.catalog.add_desktop(CLI, "Alice's desktop", "static", host="127.0.0.1",
                                              port=1)
    await cases.catalog.assign(CLI, desktop.id, user_ref="alice")
    await store.close()
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


async def second_factor_page(client: TestClient, user: str = "alice",  # type: ignore[type-arg]
                             password: str = PASSWORD) -> str:
    resp = await password_step(client, user, password)
    assert resp.status == 303 and resp.headers["Location"] == "/login/totp"
    return await (await client.get("/login/totp")).text()


async def full_sign_in(client: TestClient, user: str = "alice") -> str:  # type: ignore[type-arg]
    page = await second_factor_page(client, user)
    secret = secret_of(page)
    resp = await client.post("/login/totp", data={"code": pyotp.TOTP(secret).now(),
                                                  "_csrf": csrf_of(page)})
    html = await resp.text()
    assert resp.status == 200 and len(re.findall(r'class="recovery-code"', html)) == 10
    return secret


async def test_anonymous_is_sent_to_login(client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/", "/desktops/1"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp = await client.post("/desktops/1/connect", headers={"Accept": "application/json"})
    assert resp.status == 401 and (await resp.json())["error"]


async def test_security_headers(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert "no-store" in resp.headers["Cache-Control"]


async def test_login_form_needs_csrf(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.get("/login")
    resp = await client.post("/login", data={"username": "alice", "password": PASSWORD},
                             allow_redirects=False)
    assert resp.status == 403
    resp = await client.post("/login", data={"username": "alice", "password": PASSWORD,
                                             "_csrf": "forged"}, allow_redirects=False)
    assert resp.status == 403


async def test_half_signed_in_reaches_nothing(client: TestClient) -> None:  # type: ignore[type-arg]
    page = await second_factor_page(client)
    assert 'id="totp-secret"' in page
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp = await client.post("/desktops/1/connect", headers={
        "Accept": "application/json", "X-CSRF-Token": csrf_of(page)})
    assert resp.status == 401


async def test_full_sign_in_then_portal_and_logout(client: TestClient) -> None:  # type: ignore[type-arg]
    await full_sign_in(client)
    portal = await (await client.get("/")).text()
    assert "Alice&#39;s desktop" in portal and "desktop-connect" in portal
    resp = await client.post("/logout", data={"_csrf": csrf_of(portal)}, allow_redirects=False)
    assert resp.status == 303
    resp = await client.get("/", allow_redirects=False)
    assert resp.headers["Location"] == "/login"


async def test_session_cookie_flags_and_rotation(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await password_step(client, "alice", PASSWORD)
    cookie = resp.cookies["deskgate_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    half = cookie.value
    page = await (await client.get("/login/totp")).text()
    resp = await client.post("/login/totp", data={"code": pyotp.TOTP(secret_of(page)).now(),
                                                  "_csrf": csrf_of(page)}, allow_redirects=False)
    assert resp.cookies["deskgate_session"].value != half  # rotated on the second factor


async def test_wrong_totp_code_keeps_user_out(client: TestClient) -> None:  # type: ignore[type-arg]
    page = await second_factor_page(client)
    resp = await client.post("/login/totp", data={"code": "000000", "_csrf": csrf_of(page)})
    assert resp.status == 401 and "wrong or already used code" in await resp.text()
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_connect_needs_csrf_header_and_assignment(client: TestClient) -> None:  # type: ignore[type-arg]
    await full_sign_in(client, "bob")
    portal = await (await client.get("/")).text()
    assert "Alice" not in portal
    token = csrf_of(portal)
    headers = {"Accept": "application/json"}
    assert (await client.post("/desktops/1/connect", headers=headers)).status == 403
    resp = await client.post("/desktops/1/connect", headers={**headers, "X-CSRF-Token": token})
    assert resp.status == 404 and (await resp.json())["error"] == "no such desktop"
    assert (await client.get("/desktops/1")).status == 404
    resp = await client.post("/desktops/999/connect", headers={**headers, "X-CSRF-Token": token})
    assert resp.status == 404


async def test_unreachable_desktop_is_a_clear_error(client: TestClient) -> None:  # type: ignore[type-arg]
    await full_sign_in(client)
    page = await (await client.get("/desktops/1")).text()
    resp = await client.post("/desktops/1/connect", headers={
        "Accept": "application/json", "X-CSRF-Token": csrf_of(page)})
    assert resp.status == 200
    conn = await resp.json()
    origin = client.server.app[SETTINGS].public_origin
    async with client.ws_connect(conn["ws_url"], headers={"Origin": origin}) as ws:
        msg = await ws.receive(timeout=15)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4010
    assert msg.extra == "the desktop cannot be reached"
    status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
    assert status["close_reason"] == "the desktop cannot be reached" and status["reconnect"]
    assert "stopped" in await (await client.get("/")).text()


async def test_idle_timeout_ends_the_web_session(settings: Settings,
                                                 store: SQLiteStore, cases: Cases) -> None:
    from gateway.auth.sessions import WebSessions
    from gateway.model import WebSessionState

    now = [1000.0]
    sessions = WebSessions(store, settings, clock=lambda: now[0])
    user, _ = await cases.accounts.add_user(CLI, "ida", password=PASSWORD)
    token, _ = await sessions.create(user, WebSessionState.AUTHENTICATED, "1.2.3.4", "ua")
    now[0] += settings.session_idle_minutes * 60 - 1
    assert await sessions.load(token) is not None
    now[0] += settings.session_idle_minutes * 60 + 1
    assert await sessions.load(token) is None
    token, _ = await sessions.create(user, WebSessionState.AUTHENTICATED, "1.2.3.4", "ua")
    for _ in range(settings.session_lifetime_hours * 2 + 1):  # active, but past the lifetime
        now[0] += 1800
        loaded = await sessions.load(token)
    assert loaded is None
