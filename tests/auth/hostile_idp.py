"""A controllable (and, when asked, hostile) OpenID Connect provider for tests.

An aiohttp app on 127.0.0.1 at a free port. By default it behaves like an honest provider for the
authorization code flow with PKCE:

* ``/.well-known/openid-configuration`` (issuer = its own base URL, ``http://127.0.0.1:<port>``)
* ``/jwks`` — the public halves of :attr:`HostileIdp.keys` (RSA 2048 by default, each with a kid)
* ``/authorize`` — approves at once as :attr:`HostileIdp.user_claims` and redirects to
  ``redirect_uri?code=...&state=...`` (with ``&iss=...`` if :attr:`HostileIdp.send_iss`; use it
  for web-level tests; follow the redirects yourself), or, as a mix-up attacker, sends the browser
  wherever :attr:`HostileIdp.authorize_redirect` says
* ``/token`` — checks client authentication, the code, ``redirect_uri`` and the PKCE verifier,
  records every request in :attr:`HostileIdp.token_requests`, and answers with an ID token it
  signs itself (nonce from the authorization request, ``at_hash`` of the access token)
* ``/userinfo`` (Bearer access token) and ``/end_session`` (redirects to post_logout_redirect_uri)

Everything can be overridden by the test: ``discovery_overrides`` (a ``None`` value removes the
entry), ``id_token`` (a raw string, or a callable ``(grant_or_None, access_token) -> str``, returned
for any code), ``token_error = (status, json_body)``, ``userinfo`` / ``userinfo_error``,
``rotate()`` / ``add_key()`` for the key set, and ``mint()`` for tokens with any header, claims,
alg and key (``alg="none"`` and HS256 included).

Reuse from another test folder::

    sys.path.insert(0, str(Path(__file__).parents[1] / "auth"))
    from hostile_idp import HostileIdp, hostile_idp  # noqa: F401 (the fixture)

    async def test_x(hostile_idp: HostileIdp) -> None:
        cfg = hostile_idp.config(client_id="deskgate", use_userinfo=True)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.config import OidcProviderConfig
from gateway.model import Secret

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_PKCE_FAILED = {"error": "invalid_grant", "error_description": "PKCE verification failed"}
_HASHLIB = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "ES256": (ec.SECP256R1(), "P-256", 32),
    "ES384": (ec.SECP384R1(), "P-384", 48),
    "ES512": (ec.SECP521R1(), "P-521", 66),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


def pkce_s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def at_hash(access_token: str, alg: str = "RS256") -> str:
    digest = _HASHLIB[alg[-3:]](access_token.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])


@dataclass
class IdpKey:
    """A signing key. ``private`` is an RSA or EC private key from ``cryptography``."""

    kid: str
    private: Any

    @classmethod
    def generate(cls, kind: str = "RSA", *, kid: str | None = None, bits: int = 2048) -> IdpKey:
        kid = kid or secrets.token_hex(6)
        if kind == "RSA":
            return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))
        return cls(kid, ec.generate_private_key(_CURVES[kind][0]))

    def public_jwk(self, *, with_kid: bool = True) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            out: dict[str, Any] = {"kty": "RSA", "use": "sig", "n": _int_b64(nums.n), "e": _int_b64(nums.e)}
        else:
            enums = pub.public_numbers()
            crv, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}[
                pub.curve.name
            ]
            out = {
                "kty": "EC",
                "use": "sig",
                "crv": crv,
                "x": _int_b64(enums.x, size),
                "y": _int_b64(enums.y, size),
            }
        if with_kid:
            out["kid"] = self.kid
        return out

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def sign(signing_input: bytes, alg: str, key: Any) -> bytes:
    """A JWS signature of ``signing_input`` with ``alg``. ``key`` is an :class:`IdpKey`, a
    ``cryptography`` private key, or bytes/str for HS*; ``alg="none"`` gives an empty signature."""
    if alg == "none":
        return b""
    if isinstance(key, IdpKey):
        key = key.private
    bits = alg[-3:]
    if alg.startswith("HS"):
        secret = key.encode() if isinstance(key, str) else bytes(key)
        return hmac.new(secret, signing_input, _HASHLIB[bits]).digest()
    if alg.startswith("RS"):
        return bytes(key.sign(signing_input, padding.PKCS1v15(), _HASHES[bits]()))
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(_HASHES[bits]()), salt_length=_HASHES[bits]().digest_size)
        return bytes(key.sign(signing_input, pss, _HASHES[bits]()))
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASHES[bits]())))
        size = _CURVES[alg][2]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f"cannot sign with {alg}")


@dataclass
class Grant:
    """What /authorize (or :meth:`HostileIdp.grant`) remembered for a code."""

    client_id: str
    redirect_uri: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    claims: dict[str, Any]


@dataclass
class TokenRequest:
    auth_method: str  # "client_secret_basic", "client_secret_post" or "none"
    client_id: str | None
    client_secret: str | None
    form: dict[str, str]

    @property
    def code_verifier(self) -> str | None:
        return self.form.get("code_verifier")

    @property
    def redirect_uri(self) -> str | None:
        return self.form.get("redirect_uri")


@dataclass
class HostileIdp:
    client_id: str = "deskgate"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_urlsafe(24))
    user_claims: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "alice",
            "preferred_username": "alice",
            "email": "alice@example.test",
            "groups": ["desk-users"],
            "amr": ["pwd"],
        }
    )
    token_lifetime: int = 300
    clock: Callable[[], float] = time.time

    # test controls
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    discovery_status: int = 200
    id_token: str | Callable[[Grant | None, str], str] | None = None
    access_token: str | None = None  # fixed access token (default: a fresh one per answer)
    token_error: tuple[int, Any] | None = None
    token_extra: dict[str, Any] = field(default_factory=dict)  # merged into the token answer
    userinfo: dict[str, Any] | None = None  # answered instead of the user's claims
    userinfo_error: tuple[int, Any] | None = None
    send_iss: bool = False  # RFC 9207: add iss=<issuer> to the authorization response
    # A mix-up attacker: /authorize sends the browser to the URL this returns (given the query)
    # instead of approving; e.g. to an honest provider's authorize endpoint with parameters of
    # the attacker's choice.
    authorize_redirect: Callable[[dict[str, str]], str] | None = None

    # what happened
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    token_requests: list[TokenRequest] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    userinfo_requests: list[str] = field(default_factory=list)  # the Bearer tokens presented
    end_session_requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.signing_key = IdpKey.generate()
        self.keys: list[IdpKey] = [self.signing_key]
        self.jwks_without_kid = False
        self.clients: dict[str, str] = {self.client_id: self.client_secret}
        self._grants: dict[str, Grant] = {}
        self._access: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self.issuer = ""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> HostileIdp:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/userinfo", self._userinfo)
        app.router.add_get("/end_session", self._end_session)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.issuer = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        """Take the provider down (its port then refuses connections)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ helpers for tests

    def config(self, client_id: str | None = None, **overrides: Any) -> OidcProviderConfig:
        client_id = client_id or self.client_id
        self.clients.setdefault(client_id, self.client_secret)
        values: dict[str, Any] = {"display_name": "Hostile IdP", "id": "hostile"}
        values.update(overrides)
        return OidcProviderConfig(
            issuer=self.issuer,
            client_id=client_id,
            client_secret=Secret(self.clients[client_id]),
            **values,
        )

    def default_claims(self, nonce: str | None, **overrides: Any) -> dict[str, Any]:
        """Valid ID token claims for :attr:`client_id`; an override of ``None`` removes a claim."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "auth_time": now,
            **self.user_claims,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        header: dict[str, Any] | None = None,
        key: Any = None,
        alg: str = "RS256",
        kid: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """A compact JWS. ``claims`` default to :meth:`default_claims(nonce)`; ``alg`` is the
        algorithm actually used to sign (and the header's unless ``header`` says otherwise);
        ``key`` defaults to the current signing key; the header's kid is that key's kid unless
        ``kid`` or ``header`` say otherwise (``header={"kid": None}`` leaves it out)."""
        if claims is None:
            claims = self.default_claims(nonce)
        key = self.signing_key if key is None else key
        head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            head["kid"] = kid
        elif isinstance(key, IdpKey):
            head["kid"] = key.kid
        for name, value in (header or {}).items():
            if value is None:
                head.pop(name, None)
            else:
                head[name] = value
        signing_input = (
            b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode())
        ).encode("ascii")
        return signing_input.decode("ascii") + "." + b64url(sign(signing_input, alg, key))

    def rotate(self, kind: str = "RSA") -> IdpKey:
        """A new signing key; every old key leaves the JWKS. Returns the new key."""
        self.signing_key = IdpKey.generate(kind)
        self.keys = [self.signing_key]
        return self.signing_key

    def add_key(self, kind: str = "RSA", *, sign_with: bool = False) -> IdpKey:
        """Publish one more key (and sign with it if ``sign_with``)."""
        new = IdpKey.generate(kind)
        self.keys.append(new)
        if sign_with:
            self.signing_key = new
        return new

    def grant(
        self,
        *,
        nonce: str | None,
        code_challenge: str | None = None,
        redirect_uri: str | None = None,
        client_id: str | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """Register a code, as /authorize would; returns the code."""
        code = "code-" + secrets.token_urlsafe(16)
        self._grants[code] = Grant(
            client_id=client_id or self.client_id,
            redirect_uri=redirect_uri,
            nonce=nonce,
            code_challenge=code_challenge,
            code_challenge_method="S256" if code_challenge else None,
            claims=dict(claims if claims is not None else self.user_claims),
        )
        return code

    def discovery_document(self) -> dict[str, Any]:
        base = self.issuer
        doc: dict[str, Any] = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "userinfo_endpoint": f"{base}/userinfo",
            "end_session_endpoint": f"{base}/end_session",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "RS384", "PS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email"],
        }
        for key, value in self.discovery_overrides.items():
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        return doc

    # ------------------------------------------------------------ endpoints

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        if self.discovery_status != 200:
            return web.json_response({"error": "unavailable"}, status=self.discovery_status)
        return web.json_response(self.discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(
            {"keys": [k.public_jwk(with_kid=not self.jwks_without_kid) for k in self.keys]}
        )

    async def _authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.authorize_requests.append(q)
        if self.authorize_redirect is not None:
            raise web.HTTPFound(self.authorize_redirect(q))
        if q.get("client_id") not in self.clients or q.get("response_type") != "code":
            return web.Response(status=400, text="bad authorization request")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri:
            return web.Response(status=400, text="redirect_uri missing")
        code = self.grant(
            nonce=q.get("nonce"),
            code_challenge=q.get("code_challenge"),
            redirect_uri=redirect_uri,
            client_id=q["client_id"],
        )
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        if self.send_iss:
            params["iss"] = self.issuer
        sep = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(redirect_uri + sep + urlencode(params))

    def _client_auth(self, request: web.Request, form: dict[str, str]) -> TokenRequest:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            raw = base64.b64decode(header[6:]).decode()
            cid, _, secret = raw.partition(":")
            return TokenRequest("client_secret_basic", unquote(cid), unquote(secret), form)
        if "client_secret" in form:
            return TokenRequest("client_secret_post", form.get("client_id"), form["client_secret"], form)
        return TokenRequest("none", form.get("client_id"), None, form)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        req = self._client_auth(request, form)
        self.token_requests.append(req)
        if self.token_error is not None:
            status, body = self.token_error
            return web.json_response(body, status=status)
        allowed = self.discovery_document().get(
            "token_endpoint_auth_methods_supported", ["client_secret_basic"]
        )
        expected = self.clients.get(req.client_id or "")
        if (
            req.auth_method not in allowed
            or expected is None
            or req.client_secret is None
            or not hmac.compare_digest(expected, req.client_secret)
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self._grants.pop(form.get("code", ""), None)
        if grant is not None:
            if grant.client_id != req.client_id or grant.redirect_uri not in (None, form.get("redirect_uri")):
                return web.json_response({"error": "invalid_grant"}, status=400)
            if grant.code_challenge is not None:
                verifier = form.get("code_verifier", "")
                if not verifier or pkce_s256(verifier) != grant.code_challenge:
                    return web.json_response(_PKCE_FAILED, status=400)
        elif self.id_token is None:
            return web.json_response({"error": "invalid_grant"}, status=400)

        access = self.access_token or "at-" + secrets.token_urlsafe(24)
        if self.id_token is None:
            assert grant is not None
            claims = self.default_claims(grant.nonce, aud=grant.client_id)
            claims.update(grant.claims)
            claims["at_hash"] = at_hash(access)
            id_token = self.mint(claims)
        elif callable(self.id_token):
            id_token = self.id_token(grant, access)
        else:
            id_token = self.id_token
        self._access[access] = grant.claims if grant is not None else dict(self.user_claims)
        body = {"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": id_token}
        body.update(self.token_extra)
        return web.json_response({k: v for k, v in body.items() if v is not None})

    async def _userinfo(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        self.userinfo_requests.append(token)
        if self.userinfo_error is not None:
            status, body = self.userinfo_error
            return web.json_response(body, status=status)
        if token not in self._access:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self.userinfo if self.userinfo is not None else self._access[token])

    async def _end_session(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.end_session_requests.append(q)
        target = q.get("post_logout_redirect_uri")
        if target:
            raise web.HTTPFound(target)
        return web.Response(text="signed out")


@pytest.fixture
async def hostile_idp() -> AsyncIterator[HostileIdp]:
    """A started :class:`HostileIdp`; stopped after the test."""
    idp = await HostileIdp().start()
    try:
        yield idp
    finally:
        await idp.stop()
