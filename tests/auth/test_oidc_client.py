"""OidcClient against a hostile provider: every rejection names its exact cause."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from hostile_idp import HostileIdp, IdpKey, at_hash, pkce_s256

from gateway.auth.oidc import DETAILS, OidcClient, OidcError, OidcIdentity
from gateway.errors import WS_UNAUTHORIZED

REDIRECT = "https://desk.example.test/auth/oidc/hostile/callback"
NONCE = "n-" + "x" * 40
VERIFIER = "v" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    hostile_idp: HostileIdp, http: aiohttp.ClientSession, clock: FakeClock
) -> Callable[..., OidcClient]:
    def make(**overrides: Any) -> OidcClient:
        return OidcClient(hostile_idp.config(**overrides), http, REDIRECT, clock=clock)

    return make


@pytest.fixture
def client(make_client: Callable[..., OidcClient]) -> OidcClient:
    return make_client()


async def finish_with(client: OidcClient, idp: HostileIdp, token: str, nonce: str = NONCE) -> OidcIdentity:
    idp.id_token = token
    return await client.finish(code="code-any", nonce=nonce, code_verifier=VERIFIER)


async def rejected(client: OidcClient, idp: HostileIdp, token: str, nonce: str = NONCE) -> str:
    with pytest.raises(OidcError) as info:
        await finish_with(client, idp, token, nonce)
    assert info.value.detail in DETAILS
    return info.value.detail


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


# ---------------------------------------------------------------- the honest path


async def test_happy_path_with_pkce_and_client_secret_basic(
    client: OidcClient, hostile_idp: HostileIdp, http: aiohttp.ClientSession
) -> None:
    req = await client.authorization_request()
    q = query(req.url)
    assert req.url.startswith(hostile_idp.issuer + "/authorize?")
    assert q == {
        "response_type": "code",
        "client_id": "deskgate",
        "redirect_uri": REDIRECT,
        "scope": "openid profile email",
        "state": req.state,
        "nonce": req.nonce,
        "code_challenge": pkce_s256(req.code_verifier),
        "code_challenge_method": "S256",
    }
    # the provider approves and sends the browser back with code and state
    async with http.get(req.url, allow_redirects=False) as resp:
        assert resp.status == 302
        back = resp.headers["Location"]
    assert back.startswith(REDIRECT + "?")
    assert query(back)["state"] == req.state

    identity = await client.finish(code=query(back)["code"], nonce=req.nonce, code_verifier=req.code_verifier)

    assert identity.provider_id == "hostile"
    assert identity.sub == "alice"
    assert identity.claims["email"] == "alice@example.test"
    assert identity.claims["groups"] == ["desk-users"]
    assert identity.claims["nonce"] == req.nonce
    assert identity.claims["at_hash"]  # checked by python-jose against the access token
    assert identity.amr == ("pwd",)
    assert identity.id_token.count(".") == 2
    assert identity.id_token not in repr(identity)

    (sent,) = hostile_idp.token_requests
    assert sent.auth_method == "client_secret_basic"
    assert sent.client_id == "deskgate"
    assert sent.client_secret == hostile_idp.client_secret
    assert "client_secret" not in sent.form
    assert sent.form["grant_type"] == "authorization_code"
    assert sent.redirect_uri == REDIRECT
    assert sent.code_verifier == req.code_verifier
    assert pkce_s256(sent.code_verifier) == q["code_challenge"]  # the S256 challenge matches
    assert client.jwks_fetches == hostile_idp.jwks_fetches == 1


async def test_client_secret_post_when_discovery_lists_only_that(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    hostile_idp.discovery_overrides["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
    req = await client.authorization_request()
    code = hostile_idp.grant(nonce=req.nonce, code_challenge=query(req.url)["code_challenge"])
    identity = await client.finish(code=code, nonce=req.nonce, code_verifier=req.code_verifier)
    assert identity.sub == "alice"
    (sent,) = hostile_idp.token_requests
    assert sent.auth_method == "client_secret_post"
    assert sent.form["client_id"] == "deskgate"
    assert sent.form["client_secret"] == hostile_idp.client_secret


async def test_basic_is_the_default_when_discovery_lists_no_methods(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    hostile_idp.discovery_overrides["token_endpoint_auth_methods_supported"] = None
    await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))
    assert hostile_idp.token_requests[0].auth_method == "client_secret_basic"


async def test_wrong_pkce_verifier_is_refused_by_the_provider(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    req = await client.authorization_request()
    code = hostile_idp.grant(nonce=req.nonce, code_challenge=query(req.url)["code_challenge"])
    with pytest.raises(OidcError) as info:
        await client.finish(code=code, nonce=req.nonce, code_verifier="w" * 64)
    assert info.value.detail == "token endpoint error"


async def test_secret_never_in_url_and_every_request_is_fresh(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    requests = [await client.authorization_request() for _ in range(5)]
    for req in requests:
        assert hostile_idp.client_secret not in req.url
        assert "client_secret" not in req.url
        assert 43 <= len(req.code_verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", req.code_verifier)
        assert len(req.state) >= 22 and len(req.nonce) >= 22  # >= 128 bits of url-safe base64
    for attr in ("state", "nonce", "code_verifier"):
        assert len({getattr(r, attr) for r in requests}) == 5
    assert len({r.state for r in requests} | {r.nonce for r in requests}) == 10
    assert hostile_idp.discovery_fetches == 1  # cached


async def test_discovery_cache_expires_after_an_hour(
    client: OidcClient, hostile_idp: HostileIdp, clock: FakeClock
) -> None:
    await client.discovery()
    clock.advance(3500)
    await client.discovery()
    assert hostile_idp.discovery_fetches == 1
    clock.advance(200)
    await client.discovery()
    assert hostile_idp.discovery_fetches == 2


async def test_other_signing_algorithms_and_leeway(client: OidcClient, hostile_idp: HostileIdp) -> None:
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE, alg="RS384"))).sub == "alice"
    # listed by the provider, but python-jose cannot verify RSASSA-PSS: never accepted
    pss = hostile_idp.mint(nonce=NONCE, alg="PS256")
    assert await rejected(client, hostile_idp, pss) == "alg not allowed"
    ec_key = hostile_idp.add_key("ES256")
    token = hostile_idp.mint(nonce=NONCE, alg="ES256", key=ec_key)
    assert (await finish_with(client, hostile_idp, token)).sub == "alice"  # one refresh finds the new key
    now = int(time.time())
    within = hostile_idp.default_claims(NONCE, exp=now - 30, iat=now + 30, nbf=now + 30)
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(within))).sub == "alice"
    both = hostile_idp.default_claims(NONCE, aud=["deskgate", "other"], azp="deskgate")
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(both))).sub == "alice"


async def test_userinfo_claims_are_merged_under_id_token_claims(
    make_client: Callable[..., OidcClient], hostile_idp: HostileIdp
) -> None:
    client = make_client(use_userinfo=True)
    hostile_idp.userinfo = {"sub": "alice", "phone_number": "+1 555", "email": "other@example.test"}
    identity = await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))
    assert identity.claims["phone_number"] == "+1 555"
    assert identity.claims["email"] == "alice@example.test"  # the signed ID token wins
    assert hostile_idp.userinfo_requests and hostile_idp.userinfo_requests[0].startswith("at-")


async def test_end_session_url(client: OidcClient, hostile_idp: HostileIdp) -> None:
    url = await client.end_session_url(
        id_token_hint="tok", post_logout_redirect_uri="https://desk.example.test/"
    )
    assert url is not None and url.startswith(hostile_idp.issuer + "/end_session?")
    assert query(url) == {
        "id_token_hint": "tok",
        "post_logout_redirect_uri": "https://desk.example.test/",
        "client_id": "deskgate",
    }


async def test_end_session_url_none_without_endpoint(
    make_client: Callable[..., OidcClient], hostile_idp: HostileIdp
) -> None:
    hostile_idp.discovery_overrides["end_session_endpoint"] = None
    assert (
        await make_client().end_session_url(id_token_hint="t", post_logout_redirect_uri="https://x/") is None
    )


# ---------------------------------------------------------------- rejected ID tokens


def _claims(**overrides: Any) -> Callable[[HostileIdp], str]:
    def build(idp: HostileIdp) -> str:
        now = int(time.time())
        claims = idp.default_claims(NONCE)
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value(now) if callable(value) else value
        return idp.mint(claims)

    return build


CLAIM_CASES: list[tuple[str, Callable[[HostileIdp], str], str]] = [
    ("wrong-iss", _claims(iss="https://evil.example"), "wrong issuer"),
    (
        "iss-trailing-slash",
        lambda idp: idp.mint(idp.default_claims(NONCE, iss=idp.issuer + "/")),
        "wrong issuer",
    ),
    ("no-iss", _claims(iss=None), "wrong issuer"),
    ("wrong-aud", _claims(aud="someone-else"), "wrong audience"),
    ("aud-list-without-us", _claims(aud=["a", "b"]), "wrong audience"),
    ("no-aud", _claims(aud=None), "wrong audience"),
    ("several-aud-no-azp", _claims(aud=["deskgate", "other"]), "wrong azp"),
    ("several-aud-wrong-azp", _claims(aud=["deskgate", "other"], azp="other"), "wrong azp"),
    ("single-aud-wrong-azp", _claims(azp="other"), "wrong azp"),
    ("expired", _claims(exp=lambda now: now - 120, iat=lambda now: now - 400), "expired"),
    ("nbf-future", _claims(nbf=lambda now: now + 600), "not yet valid"),
    ("iat-future", _claims(iat=lambda now: now + 600, exp=lambda now: now + 900), "issued in the future"),
    ("no-exp", _claims(exp=None), "malformed token"),
    ("string-exp", _claims(exp="tomorrow"), "malformed token"),
    ("no-nonce", _claims(nonce=None), "nonce missing"),
    ("wrong-nonce", _claims(nonce="n-" + "y" * 40), "nonce mismatch"),
    ("nonce-not-string", _claims(nonce=123), "nonce mismatch"),
    ("no-sub", _claims(sub=None), "sub missing"),
    ("empty-sub", _claims(sub=""), "sub missing"),
    ("at-hash-mismatch", _claims(at_hash=at_hash("a different access token")), "at_hash mismatch"),
]


@pytest.mark.parametrize(("build", "detail"), [c[1:] for c in CLAIM_CASES], ids=[c[0] for c in CLAIM_CASES])
async def test_claim_checks(
    client: OidcClient, hostile_idp: HostileIdp, build: Callable[[HostileIdp], str], detail: str
) -> None:
    assert await rejected(client, hostile_idp, build(hostile_idp)) == detail


async def test_bad_signature(client: OidcClient, hostile_idp: HostileIdp) -> None:
    forger = IdpKey.generate()
    token = hostile_idp.mint(nonce=NONCE, key=forger, kid=hostile_idp.signing_key.kid)
    assert await rejected(client, hostile_idp, token) == "bad signature"
    # a genuine token with edited claims
    genuine = hostile_idp.mint(nonce=NONCE).split(".")
    edited = hostile_idp.mint(hostile_idp.default_claims(NONCE, sub="root")).split(".")
    assert (
        await rejected(client, hostile_idp, ".".join([genuine[0], edited[1], genuine[2]])) == "bad signature"
    )
    assert await rejected(client, hostile_idp, ".".join([genuine[0], genuine[1], ""])) == "bad signature"
    assert client.jwks_fetches == 1  # a known kid never triggers a refresh


async def test_alg_none_is_refused_before_any_key_is_fetched(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    token = hostile_idp.mint(nonce=NONCE, alg="none")
    assert token.endswith(".")
    assert await rejected(client, hostile_idp, token) == "alg not allowed"
    for spelling in ("None", "NONE"):
        token = hostile_idp.mint(nonce=NONCE, alg="none", header={"alg": spelling})
        assert await rejected(client, hostile_idp, token) == "alg not allowed"
    assert hostile_idp.jwks_fetches == 0


async def test_hs256_signed_with_the_public_key_is_refused(
    make_client: Callable[..., OidcClient], hostile_idp: HostileIdp
) -> None:
    pem = hostile_idp.signing_key.public_pem()
    token = hostile_idp.mint(nonce=NONCE, alg="HS256", key=pem)
    assert await rejected(make_client(), hostile_idp, token) == "alg not allowed"
    # even when the provider's discovery claims to sign with HS256
    hostile_idp.discovery_overrides["id_token_signing_alg_values_supported"] = ["HS256", "RS256"]
    assert await rejected(make_client(), hostile_idp, token) == "alg not allowed"
    assert hostile_idp.jwks_fetches == 0


async def test_alg_outside_discovery_list_is_refused(client: OidcClient, hostile_idp: HostileIdp) -> None:
    assert (
        await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, alg="RS512")) == "alg not allowed"
    )


async def test_rs256_is_the_only_alg_when_discovery_lists_none(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    hostile_idp.discovery_overrides["id_token_signing_alg_values_supported"] = None
    assert (
        await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, alg="RS384")) == "alg not allowed"
    )
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"


async def test_header_alg_must_match_the_signature(client: OidcClient, hostile_idp: HostileIdp) -> None:
    token = hostile_idp.mint(nonce=NONCE, alg="RS256", header={"alg": "RS384"})
    assert await rejected(client, hostile_idp, token) == "bad signature"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d.e", "!!!.e30.AA", "e30.!!!.AA", "WzFd.e30.AA", "e30.WzFd.AA", "x" * 70000],
)
async def test_malformed_tokens(client: OidcClient, hostile_idp: HostileIdp, token: str) -> None:
    hostile_idp.id_token = "placeholder"
    hostile_idp.token_extra["id_token"] = token or None
    with pytest.raises(OidcError) as info:
        await client.finish(code="c", nonce=NONCE, code_verifier=VERIFIER)
    assert info.value.detail == ("token response invalid" if not token else "malformed token")


async def test_crit_header_is_refused(client: OidcClient, hostile_idp: HostileIdp) -> None:
    token = hostile_idp.mint(nonce=NONCE, header={"crit": ["exp"], "exp": 1})
    assert await rejected(client, hostile_idp, token) == "malformed token"


# ---------------------------------------------------------------- keys, kids and rotation


async def test_unknown_kid_refreshes_once_then_is_rate_limited(
    client: OidcClient, hostile_idp: HostileIdp, clock: FakeClock
) -> None:
    stranger = IdpKey.generate(kid="stranger")
    token = hostile_idp.mint(nonce=NONCE, key=stranger)
    assert await rejected(client, hostile_idp, token) == "unknown kid"
    assert client.jwks_fetches == hostile_idp.jwks_fetches == 2  # the initial load and exactly one refresh
    other = hostile_idp.mint(nonce=NONCE, key=IdpKey.generate(kid="another"))
    assert await rejected(client, hostile_idp, other) == "unknown kid"
    assert hostile_idp.jwks_fetches == 2  # no refetch within jwks_min_refresh_seconds
    clock.advance(30)
    assert await rejected(client, hostile_idp, other) == "unknown kid"
    assert hostile_idp.jwks_fetches == 2
    clock.advance(31)  # past the 60 s minimum: one more refresh is allowed
    assert await rejected(client, hostile_idp, other) == "unknown kid"
    assert hostile_idp.jwks_fetches == 3
    # known keys keep working meanwhile, without fetching
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    assert hostile_idp.jwks_fetches == 3


async def test_rotation_needs_exactly_one_extra_fetch(client: OidcClient, hostile_idp: HostileIdp) -> None:
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    assert hostile_idp.jwks_fetches == 1
    hostile_idp.rotate()
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    assert hostile_idp.jwks_fetches == 2
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    assert hostile_idp.jwks_fetches == 2


async def test_key_that_rotated_out_is_refused(
    client: OidcClient, hostile_idp: HostileIdp, clock: FakeClock
) -> None:
    old = hostile_idp.signing_key
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    hostile_idp.rotate()
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))).sub == "alice"
    assert hostile_idp.jwks_fetches == 2
    assert await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, key=old)) == "unknown kid"
    clock.advance(120)
    assert await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, key=old)) == "unknown kid"
    assert hostile_idp.jwks_fetches == 3


async def test_cached_key_set_expires(client: OidcClient, hostile_idp: HostileIdp, clock: FakeClock) -> None:
    """A key the provider withdrew stops working within the JWKS cache lifetime, even unprompted."""
    old = hostile_idp.signing_key
    await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE))
    hostile_idp.rotate()
    clock.advance(3601)
    hostile_idp.clock = lambda: clock.now  # tokens stay fresh for the client's clock
    assert await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, key=old)) == "unknown kid"


async def test_token_without_kid_and_a_single_key(client: OidcClient, hostile_idp: HostileIdp) -> None:
    token = hostile_idp.mint(nonce=NONCE, header={"kid": None})
    assert (await finish_with(client, hostile_idp, token)).sub == "alice"
    assert hostile_idp.jwks_fetches == 1


async def test_token_without_kid_against_a_key_set_without_kids(
    client: OidcClient, hostile_idp: HostileIdp, clock: FakeClock
) -> None:
    hostile_idp.jwks_without_kid = True
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE, header={"kid": None}))).sub
    # the provider restarts with a new key (the mock does on every start): one refresh recovers
    hostile_idp.rotate()
    assert (await finish_with(client, hostile_idp, hostile_idp.mint(nonce=NONCE, header={"kid": None}))).sub
    assert hostile_idp.jwks_fetches == 2
    forged = hostile_idp.mint(nonce=NONCE, key=IdpKey.generate(), header={"kid": None})
    assert await rejected(client, hostile_idp, forged) == "bad signature"
    assert hostile_idp.jwks_fetches == 2  # rate-limited


async def test_token_without_kid_is_refused_when_several_keys_fit(
    client: OidcClient, hostile_idp: HostileIdp
) -> None:
    hostile_idp.add_key()
    token = hostile_idp.mint(nonce=NONCE, header={"kid": None})
    assert await rejected(client, hostile_idp, token) == "unknown kid"


async def test_weak_rsa_keys_are_not_used(client: OidcClient, hostile_idp: HostileIdp) -> None:
    weak = IdpKey.generate(kid="weak", bits=1024)
    hostile_idp.keys.append(weak)
    assert await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE, key=weak)) == "unknown kid"


# ---------------------------------------------------------------- provider trouble


async def test_discovery_with_a_different_issuer(
    make_client: Callable[..., OidcClient], hostile_idp: HostileIdp
) -> None:
    hostile_idp.discovery_overrides["issuer"] = "https://evil.example"
    client = make_client()
    for call in (client.discovery, client.authorization_request):
        with pytest.raises(OidcError) as info:
            await call()
        assert info.value.detail == "discovery invalid"


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": None},
        {"token_endpoint": None},
        {"jwks_uri": None},
        {"authorization_endpoint": "javascript:alert(1)"},
        {"token_endpoint": "http://evil.example/token"},  # plain http to a non-loopback host
        {"token_endpoint_auth_methods_supported": ["private_key_jwt"]},
        {"authorization_response_iss_parameter_supported": "true"},  # RFC 9207: a boolean
    ],
)
async def test_unusable_discovery(
    make_client: Callable[..., OidcClient], hostile_idp: HostileIdp, overrides: dict[str, Any]
) -> None:
    hostile_idp.discovery_overrides.update(overrides)
    with pytest.raises(OidcError) as info:
        await make_client().authorization_request()
    assert info.value.detail == "discovery invalid"


async def test_discovery_http_error(make_client: Callable[..., OidcClient], hostile_idp: HostileIdp) -> None:
    hostile_idp.discovery_status = 404
    with pytest.raises(OidcError) as info:
        await make_client().discovery()
    assert info.value.detail == "discovery invalid"
    hostile_idp.discovery_status = 503
    with pytest.raises(OidcError) as info:
        await make_client().discovery()
    assert info.value.detail == "idp unreachable"


async def test_provider_down(make_client: Callable[..., OidcClient], hostile_idp: HostileIdp) -> None:
    client = make_client()
    await hostile_idp.stop()
    with pytest.raises(OidcError) as info:
        await client.authorization_request()
    err = info.value
    assert err.detail == "idp unreachable"
    assert err.http_status == 401 and err.ws_code == WS_UNAUTHORIZED
    assert err.reason == "sign-in with Hostile IdP failed: the identity provider could not be reached"


async def test_provider_down_after_discovery(client: OidcClient, hostile_idp: HostileIdp) -> None:
    await client.discovery()
    await hostile_idp.stop()
    with pytest.raises(OidcError) as info:
        await client.finish(code="c", nonce=NONCE, code_verifier=VERIFIER)
    assert info.value.detail == "idp unreachable"


async def test_token_endpoint_400(client: OidcClient, hostile_idp: HostileIdp) -> None:
    hostile_idp.token_error = (400, {"error": "invalid_grant", "error_description": "code reused"})
    with pytest.raises(OidcError) as info:
        await client.finish(code="c", nonce=NONCE, code_verifier=VERIFIER)
    assert info.value.detail == "token endpoint error"


@pytest.mark.parametrize(
    "extra",
    [{"access_token": None}, {"token_type": "MAC"}, {"token_type": None}, {"id_token": 42}],
)
async def test_token_response_invalid(
    client: OidcClient, hostile_idp: HostileIdp, extra: dict[str, Any]
) -> None:
    hostile_idp.id_token = hostile_idp.mint(nonce=NONCE)
    hostile_idp.token_extra.update(extra)
    with pytest.raises(OidcError) as info:
        await client.finish(code="c", nonce=NONCE, code_verifier=VERIFIER)
    assert info.value.detail == "token response invalid"


async def test_token_response_not_json(client: OidcClient, hostile_idp: HostileIdp) -> None:
    hostile_idp.token_error = (200, ["not", "an", "object"])
    with pytest.raises(OidcError) as info:
        await client.finish(code="c", nonce=NONCE, code_verifier=VERIFIER)
    assert info.value.detail == "token response invalid"


async def test_userinfo_sub_mismatch(make_client: Callable[..., OidcClient], hostile_idp: HostileIdp) -> None:
    hostile_idp.userinfo = {"sub": "mallory", "groups": ["admins"]}
    assert await rejected(make_client(use_userinfo=True), hostile_idp, hostile_idp.mint(nonce=NONCE)) == (
        "userinfo sub mismatch"
    )
    hostile_idp.userinfo = {"groups": ["admins"]}
    assert await rejected(make_client(use_userinfo=True), hostile_idp, hostile_idp.mint(nonce=NONCE)) == (
        "userinfo sub mismatch"
    )


async def test_userinfo_error(make_client: Callable[..., OidcClient], hostile_idp: HostileIdp) -> None:
    hostile_idp.userinfo_error = (500, {"error": "boom"})
    client = make_client(use_userinfo=True)
    assert await rejected(client, hostile_idp, hostile_idp.mint(nonce=NONCE)) == "userinfo error"


async def test_nothing_secret_in_logs_or_errors(
    client: OidcClient, hostile_idp: HostileIdp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="deskgate.oidc")
    good = hostile_idp.mint(nonce=NONCE)
    bad = hostile_idp.mint(hostile_idp.default_claims(NONCE, aud="x"))
    identity = await finish_with(client, hostile_idp, good)
    with pytest.raises(OidcError) as info:
        await finish_with(client, hostile_idp, bad)
    hostile_idp.token_error = (400, {"error": "invalid_grant"})
    with pytest.raises(OidcError):
        await client.finish(code="code-secret-value", nonce=NONCE, code_verifier=VERIFIER)
    text = caplog.text + str(info.value) + repr(info.value) + repr(identity)
    for secret in (good, bad, hostile_idp.client_secret, "code-secret-value", VERIFIER, NONCE):
        assert secret not in text
    assert all("[idp=hostile]" in r.getMessage() for r in caplog.records)
    assert "wrong audience" in caplog.text and "token endpoint error" in caplog.text
