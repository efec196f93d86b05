"""The OIDC mix-up attack (RFC 9700 4.4) with two providers, one of them hostile.

``corp`` is an honest provider; ``hostile`` is a second provider configured on the same gateway
and run by an attacker. The attacker starts a sign-in at ``corp`` in their own browser and reads
its authorization request (state, nonce, PKCE challenge, redirect URI). When the victim then signs
in with ``hostile``, its authorize endpoint sends the victim's browser on to ``corp`` with the
victim's state but the attacker's nonce and challenge. ``corp`` (where the victim is signed in)
answers with a code. If the gateway redeems that code at ``hostile``'s token endpoint, the attacker
has it, and replays it through their own sign-in at ``corp``: they are signed in as the victim.

The gateway must refuse the victim's answer before the code leaves it: each provider has its own
redirect URI and the state is bound to the provider it was issued for, and the answer's ``iss``
(RFC 9207) must name the provider whose callback it reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port
from hostile_idp import HostileIdp

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import STORE

Client = TestClient  # type: ignore[type-arg]

VICTIM = {"sub": "victim-sub", "preferred_username": "victim", "groups": ["finance"],
          "amr": ["pwd"]}


@pytest.fixture
async def corp() -> AsyncIterator[HostileIdp]:
    idp = await HostileIdp(user_claims=dict(VICTIM)).start()
    try:
        yield idp
    finally:
        await idp.stop()


@pytest.fixture
async def gateway(settings: Settings, corp: HostileIdp, hostile_idp: HostileIdp
                  ) -> AsyncIterator[Client]:
    """A gateway with both providers, served at its public URL (the redirect URIs point there)."""
    port = unused_port()
    s = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}", oidc=(
        corp.config(id="corp", display_name="Corp SSO", require_totp=False),
        hostile_idp.config(id="hostile", display_name="Partner SSO", require_totp=False)))
    async with TestClient(TestServer(create_app(s), host="127.0.0.1", port=port)) as client:
        yield client


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def follow(session: aiohttp.ClientSession, url: str, until: str, hops: int = 5) -> str:
    """Follow redirects by hand until a URL starting with ``until``; returns it."""
    for _ in range(hops):
        if url.startswith(until):
            return url
        async with session.get(url, allow_redirects=False) as resp:
            assert resp.status in (302, 303), (url, resp.status, await resp.text())
            url = resp.headers["Location"]
    raise AssertionError(f"did not reach {until}")


async def signed_in_as(session: aiohttp.ClientSession, base: str) -> str | None:
    async with session.get(base + "/", allow_redirects=False) as resp:
        if resp.status != 200:
            return None
        page = await resp.text()
    start = page.find('class="user-name">')
    return page[start + 18:page.index("<", start + 18)] if start >= 0 else "?"


@pytest.mark.parametrize("route,corp_sends_iss", [
    ("corp's redirect URI", True),          # stopped by the state's provider binding
    ("corp's redirect URI", False),
    ("hostile's redirect URI", True),       # stopped by the iss check (RFC 9207)
    ("hostile's redirect URI", False),      # code leaks; replay fails on corp's redirect URI check
])
async def test_mix_up_attack_does_not_sign_the_attacker_in_as_the_victim(
        corp: HostileIdp, hostile_idp: HostileIdp, gateway: Client, route: str,
        corp_sends_iss: bool) -> None:
    corp.send_iss = corp_sends_iss
    if corp_sends_iss:
        corp.discovery_overrides["authorization_response_iss_parameter_supported"] = True
    client = gateway
    base = str(client.make_url("")).rstrip("/")
    jar = {"unsafe": True}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(**jar)) as attacker, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(**jar)) as victim:
        # 1. The attacker's own sign-in at corp: its parameters are visible in the URL.
        async with attacker.get(base + "/login/oidc/hostile", allow_redirects=False) as resp:
            hostile_redirect = query(resp.headers["Location"])["redirect_uri"]
        async with attacker.get(base + "/login/oidc/corp", allow_redirects=False) as resp:
            theirs = query(resp.headers["Location"])
        redirect_uri = theirs["redirect_uri"] if route.startswith("corp") else hostile_redirect

        def to_corp(q: dict[str, str]) -> str:
            mixed = {**theirs, "state": q["state"], "redirect_uri": redirect_uri}
            return f"{corp.issuer}/authorize?{urlencode(mixed)}"

        hostile_idp.authorize_redirect = to_corp
        # 2. The victim signs in with "Partner SSO"; the browser ends at the gateway's callback.
        async with victim.get(base + "/login/oidc/hostile", allow_redirects=False) as resp:
            url = resp.headers["Location"]
        answer = await follow(victim, url, base)
        assert "code" in query(answer)
        async with victim.get(answer, allow_redirects=False) as resp:
            victim_status, victim_page = resp.status, await resp.text()
        # 3. Whatever code reached the hostile provider, the attacker replays through their own
        #    sign-in at corp.
        leaked = [r.form["code"] for r in hostile_idp.token_requests]
        for code in leaked:
            replay = {"code": code, "state": theirs["state"]}
            if corp_sends_iss:
                replay["iss"] = corp.issuer
            async with attacker.get(f"{theirs['redirect_uri']}?{urlencode(replay)}",
                                    allow_redirects=False) as resp:
                await resp.read()
        assert await signed_in_as(attacker, base) is None, "the attacker is signed in as the victim"
        assert await client.server.app[STORE].identity_user("corp", "victim-sub") is None

    assert victim_status == 401, victim_page
    if route.startswith("corp") or corp_sends_iss:
        assert "did not come from the identity provider you chose" in victim_page

    failed = [e.detail for e in await client.server.app[STORE].list_audit(kind="signin.failed")]
    if route.startswith("corp"):
        assert failed[0] == "idp corp: provider mix-up (the sign-in was started at idp hostile)"
        assert leaked == [], "the honest provider's code was sent to the hostile provider"
    elif corp_sends_iss:
        assert failed[0] == "idp hostile: issuer mix-up"
        assert leaked == [], "the honest provider's code was sent to the hostile provider"
    else:
        # Without iss the hostile callback cannot tell; corp refuses the replay because the
        # code was issued for another redirect URI than corp's own.
        assert len(leaked) == 1 and corp.token_requests[-1].form["code"] == leaked[0]


async def test_iss_is_required_when_the_provider_advertises_it(
        corp: HostileIdp, hostile_idp: HostileIdp, gateway: Client) -> None:
    corp.discovery_overrides["authorization_response_iss_parameter_supported"] = True
    client = gateway
    base = str(client.make_url("")).rstrip("/")
    outcomes: dict[str, int] = {}
    for case in ("without iss", "with corp's iss", "with another iss"):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(base + "/login/oidc/corp", allow_redirects=False) as resp:
                url = resp.headers["Location"]
            async with browser.get(url, allow_redirects=False) as resp:  # corp approves
                answer = resp.headers["Location"]
            if case == "with corp's iss":
                answer += "&" + urlencode({"iss": corp.issuer})
            elif case == "with another iss":
                answer += "&" + urlencode({"iss": hostile_idp.issuer})
            async with browser.get(answer, allow_redirects=False) as resp:
                outcomes[case] = resp.status
                await resp.read()
    assert outcomes == {"without iss": 401, "with corp's iss": 303, "with another iss": 401}
    failed = [e.detail for e in await client.server.app[STORE].list_audit(kind="signin.failed")]
    assert failed == ["idp corp: issuer mix-up", "idp corp: iss missing"]


async def test_each_provider_has_its_own_redirect_uri_and_the_shared_one_is_refused(
        corp: HostileIdp, hostile_idp: HostileIdp, gateway: Client) -> None:
    client = gateway
    seen: dict[str, Any] = {}
    for pid in ("corp", "hostile"):
        resp = await client.get(f"/login/oidc/{pid}", allow_redirects=False)
        seen[pid] = query(resp.headers["Location"])["redirect_uri"]
    base = str(client.make_url("")).rstrip("/")
    assert seen == {"corp": f"{base}/login/oidc/corp/callback",
                    "hostile": f"{base}/login/oidc/hostile/callback"}
    start = await client.get("/login/oidc/corp", allow_redirects=False)
    state = query(start.headers["Location"])["state"]
    browser = start.cookies["deskgate_oidc"].value
    old = await client.get(f"/login/oidc/callback?code=x&state={state}", allow_redirects=False)
    assert old.status == 401 and "old address" in await old.text()
    unknown = await client.get(f"/login/oidc/nope/callback?code=x&state={state}",
                               allow_redirects=False)
    assert unknown.status == 404
    # The refusals above did not use up the state (they end the sign-in in this browser, though:
    # its binding cookie is gone). With the cookie back, corp's own callback accepts the state.
    client.session.cookie_jar.update_cookies({"deskgate_oidc": browser})
    answer = await client.get(f"/login/oidc/corp/callback?code=x&state={state}",
                              allow_redirects=False)
    assert answer.status == 401  # "x" is no code corp issued; the state itself was accepted
    failed = [e.detail for e in await client.server.app[STORE].list_audit(kind="signin.failed")]
    assert failed[0] == "idp corp: token endpoint error"
    assert "idp: answer at the retired shared callback /login/oidc/callback" in failed
