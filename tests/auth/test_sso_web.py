"""Single sign-on through the whole app: the redirect, the callback, users, groups, the audit.

The identity provider is the controllable ``hostile_idp``: its /authorize approves at once, so the
flow runs without a browser; the real-browser journey against oidc-provider-mock is in tests/e2e.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hostile_idp import Grant, HostileIdp, IdpKey, at_hash

from gateway.app import build_cases, create_app
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import STORE
from gateway.store.sqlite import SQLiteStore

CLI = Actor.cli()  # who makes the changes that set the scene

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def make_client(settings: Settings, hostile_idp: HostileIdp
                      ) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Any] = []

    async def make(**overrides: Any) -> Any:
        config = hostile_idp.config(admin_group="admins", **overrides)
        s = dataclasses.replace(settings, oidc=(config,))
        store = SQLiteStore(s.database_path)
        await store.open()
        cases = build_cases(s, store)
        if await store.get_desktop_by_name("Design VM") is None:
            vm = await cases.catalog.add_desktop(CLI, "Design VM", "static", host="127.0.0.1",
                                                 port=1)
            await cases.catalog.assign(CLI, vm.id, group="designers")
        await store.close()
        client = TestClient(TestServer(create_app(s)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def idp_round(client: Client, *, follow_idp: bool = True) -> tuple[aiohttp.ClientResponse, str]:
    """Start at /login/oidc/hostile, pass the IdP, and call our callback. Returns the callback
    response and the callback path (to replay it)."""
    start = await client.get("/login/oidc/hostile", allow_redirects=False)
    assert start.status == 303, await start.text()
    async with aiohttp.ClientSession() as idp:
        answer = await idp.get(start.headers["Location"], allow_redirects=False)
        assert answer.status == 302
        target = urlsplit(answer.headers["Location"])
    assert target.path == "/login/oidc/hostile/callback"
    path = f"{target.path}?{target.query}"
    return await client.get(path, allow_redirects=False), path


async def audit_details(client: Client, kind: str) -> list[str]:
    return [e.detail for e in await client.server.app[STORE].list_audit(kind=kind, limit=50)]


async def test_sign_in_provisions_the_user_with_groups_then_totp(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    hostile_idp.user_claims.update(sub="s-123", preferred_username="carol",
                                   groups=["designers", "admins"])
    client = await make_client()
    resp, _ = await idp_round(client)
    assert resp.status == 303 and resp.headers["Location"] == "/login/totp"
    assert "deskgate_session" in resp.cookies
    store = client.server.app[STORE]
    user = await store.get_user_by_name("carol")
    assert user is not None and user.is_admin and user.source == "hostile"
    assert await store.user_groups(user.id) == ["admins", "designers"]
    assert await store.identity_user("hostile", "s-123") == user.id
    # Half signed in: our TOTP follows the IdP by default.
    assert (await client.get("/", allow_redirects=False)).headers["Location"] == "/login"
    page = await (await client.get("/login/totp")).text()
    assert 'id="totp-secret"' in page
    assert any("groups: admins, designers; second factor: our TOTP follows" in d
               for d in await audit_details(client, "signin.ok"))
    # PKCE and the exact redirect URI reached the token endpoint.
    request = hostile_idp.token_requests[-1]
    assert request.code_verifier and request.redirect_uri == (
        "http://127.0.0.1:8080/login/oidc/hostile/callback")


async def test_same_subject_is_the_same_user_never_matched_by_name_or_email(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client()
    store = client.server.app[STORE]
    local = await store.create_user("alice", None, False)  # a local account with the same name
    await idp_round(client)
    provisioned = await store.identity_user("hostile", "alice")
    assert provisioned is not None and provisioned != local.id
    assert (await store.get_user(provisioned)).name == "alice@hostile"  # type: ignore[union-attr]
    hostile_idp.user_claims["preferred_username"] = "renamed"
    await idp_round(client)
    assert await store.identity_user("hostile", "alice") == provisioned
    assert await store.get_user_by_name("renamed") is None


async def test_trusted_idp_mfa_skips_totp_only_when_amr_shows_it(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client(trust_idp_mfa=True)
    hostile_idp.user_claims["amr"] = ["pwd"]
    resp, _ = await idp_round(client)
    assert resp.headers["Location"] == "/login/totp"
    hostile_idp.user_claims["amr"] = ["pwd", "otp"]
    resp, _ = await idp_round(client)
    assert resp.headers["Location"] == "/"
    assert "second factor: identity provider (amr: otp)" in " ".join(
        await audit_details(client, "signin.ok"))


async def test_leaving_a_group_loses_its_desktops_at_next_sign_in(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client(require_totp=False)
    hostile_idp.user_claims["groups"] = ["designers"]
    resp, _ = await idp_round(client)
    assert resp.headers["Location"] == "/"
    portal = await (await client.get("/")).text()
    assert "Design VM" in portal
    csrf = re.search(r'name="_csrf" value="([^"]+)"', portal)
    assert csrf
    hostile_idp.user_claims["groups"] = ["somewhere-else"]
    client.session.cookie_jar.clear()  # a new sign-in, as on another day
    await idp_round(client)
    portal = await (await client.get("/")).text()
    assert "Design VM" not in portal
    csrf = re.search(r'name="_csrf" value="([^"]+)"', portal)
    assert csrf
    resp = await client.post("/desktops/1/connect", headers={
        "X-CSRF-Token": csrf.group(1), "Accept": "application/json"})
    assert resp.status == 404  # no longer theirs: as if it did not exist


async def test_disabled_user_cannot_sign_in_through_the_idp(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client()
    await idp_round(client)
    store = client.server.app[STORE]
    user = await store.get_user_by_name("alice")
    assert user is not None
    await store.set_disabled(user.id, True)
    resp, _ = await idp_round(client)
    assert resp.status == 401 and "disabled" in await resp.text()
    assert "deskgate_session" not in resp.cookies


async def test_key_rotation_needs_exactly_one_jwks_refresh(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client()
    assert (await idp_round(client))[0].status == 303
    fetches = hostile_idp.jwks_fetches
    hostile_idp.rotate()
    assert (await idp_round(client))[0].status == 303
    assert hostile_idp.jwks_fetches == fetches + 1


def _token(idp: HostileIdp, case: str) -> Callable[[Grant | None, str], str]:
    def make(grant: Grant | None, access: str) -> str:
        nonce = grant.nonce if grant else None
        now = int(time.time())
        claims = idp.default_claims(nonce, at_hash=at_hash(access))
        if case == "bad signature":
            return idp.mint(claims, key=IdpKey.generate(), kid=idp.signing_key.kid)
        if case == "alg none":
            return idp.mint(claims, alg="none")
        if case == "hs256 with the public key":
            return idp.mint(claims, alg="HS256", key=idp.signing_key.public_pem(),
                            kid=idp.signing_key.kid)
        if case == "unknown kid":
            return idp.mint(claims, kid="no-such-key")
        if case == "rotated-out key":
            old = idp.signing_key
            idp.rotate()
            return idp.mint(claims, key=old)
        changes: dict[str, dict[str, Any]] = {
            "wrong issuer": {"iss": "https://evil.example"},
            "wrong audience": {"aud": "another-client"},
            "expired": {"exp": now - 3600, "iat": now - 7200},
            "nbf in the future": {"nbf": now + 3600},
            "missing nonce": {"nonce": None},
            "wrong nonce": {"nonce": "not-the-one-we-sent"},
            "at_hash mismatch": {"at_hash": at_hash("another-access-token")},
        }
        claims.update(changes[case])
        return idp.mint({k: v for k, v in claims.items() if v is not None})
    return make


@pytest.mark.parametrize("case,detail", [
    ("bad signature", "bad signature"),
    ("alg none", "alg not allowed"),
    ("hs256 with the public key", "alg not allowed"),
    ("wrong issuer", "wrong issuer"),
    ("wrong audience", "wrong audience"),
    ("expired", "expired"),
    ("nbf in the future", "not yet valid"),
    ("missing nonce", "nonce missing"),
    ("wrong nonce", "nonce mismatch"),
    ("unknown kid", "unknown kid"),
    ("rotated-out key", "unknown kid"),
    ("at_hash mismatch", "at_hash mismatch"),
])
async def test_bad_tokens_are_refused_with_the_precise_audit_reason(
        make_client: Callable[..., Any], hostile_idp: HostileIdp, case: str, detail: str) -> None:
    client = await make_client()
    hostile_idp.id_token = _token(hostile_idp, case)
    resp, _ = await idp_round(client)
    page = await resp.text()
    assert resp.status == 401 and "deskgate_session" not in resp.cookies
    assert re.search(r'href="/login" id="retry"', page) and "Traceback" not in page
    assert "sign-in with Hostile IdP failed" in page
    assert await audit_details(client, "signin.failed") == [f"idp hostile: {detail}"]
    assert await client.server.app[STORE].get_user_by_name("alice") is None


async def test_replayed_state_and_other_browser_and_denied_consent(
        make_client: Callable[..., Any], hostile_idp: HostileIdp) -> None:
    client = await make_client()
    resp, path = await idp_round(client)
    assert resp.status == 303
    replay = await client.get(path, allow_redirects=False)
    assert replay.status == 401 and "expired or was already used" in await replay.text()
    # A callback that reaches another browser (no binding cookie) is refused.
    start = await client.get("/login/oidc/hostile", allow_redirects=False)
    state = re.search(r"state=([^&]+)", start.headers["Location"])
    assert state
    client.session.cookie_jar.clear(lambda c: c.key == "deskgate_oidc")
    other = await client.get(f"/login/oidc/hostile/callback?code=x&state={state.group(1)}",
                             allow_redirects=False)
    assert other.status == 401 and "another browser" in await other.text()
    # The person said no at the provider.
    start = await client.get("/login/oidc/hostile", allow_redirects=False)
    state = re.search(r"state=([^&]+)", start.headers["Location"])
    assert state
    denied = await client.get(f"/login/oidc/hostile/callback?error=access_denied&state={state.group(1)}",
                              allow_redirects=False)
    assert denied.status == 401 and "access denied" in await denied.text()
    assert await audit_details(client, "signin.failed") == [
        "idp hostile: consent denied",
        "idp hostile: state bound to another browser",
        "idp hostile: state unknown, expired or already used",
    ]


async def test_idp_unreachable_is_a_clear_page(make_client: Callable[..., Any],
                                               hostile_idp: HostileIdp) -> None:
    client = await make_client()
    await hostile_idp.stop()
    resp = await client.get("/login/oidc/hostile", allow_redirects=False)
    page = await resp.text()
    assert resp.status == 401 and "could not be reached" in page and 'id="retry"' in page
    assert await audit_details(client, "signin.failed") == ["idp hostile: idp unreachable"]


async def test_sign_out_ends_the_session_at_the_idp(make_client: Callable[..., Any],
                                                    hostile_idp: HostileIdp) -> None:
    client = await make_client(require_totp=False)
    await idp_round(client)
    portal = await (await client.get("/")).text()
    csrf = re.search(r'name="_csrf" value="([^"]+)"', portal)
    assert csrf
    resp = await client.post("/logout", data={"_csrf": csrf.group(1)}, allow_redirects=False)
    # Browsers apply form-action to the redirect after a form post: the IdP must be allowed.
    assert f"form-action 'self' {hostile_idp.issuer};" in resp.headers["Content-Security-Policy"]
    location = resp.headers["Location"]
    assert location.startswith(hostile_idp.issuer + "/end_session?")
    assert "id_token_hint=" in location
    assert "post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Flogin" in location
    assert (await client.get("/", allow_redirects=False)).headers["Location"] == "/login"


async def test_local_accounts_can_be_turned_off(settings: Settings,
                                                hostile_idp: HostileIdp) -> None:
    s = dataclasses.replace(settings, oidc=(hostile_idp.config(),), local_accounts=False)
    async with TestClient(TestServer(create_app(s))) as client:
        page = await (await client.get("/login")).text()
        assert "Sign in with Hostile IdP" in page and 'name="password"' not in page
        assert 'name="_csrf"' not in page  # no form at all: the buttons are links
        token = client.session.cookie_jar.filter_cookies(client.make_url("/")).get("deskgate_pre")
        assert token is not None
        resp = await client.post("/login", data={"username": "x", "password": "y" * 10,
                                                 "_csrf": token.value})
        assert resp.status == 403 and "local accounts are turned off" in await resp.text()
