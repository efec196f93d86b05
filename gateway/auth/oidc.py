"""OpenID Connect relying party: authorization code flow with PKCE, for one configured provider.

One :class:`OidcClient` per ``[oidc.<id>]`` table. It discovers the provider, builds the
authorization URL (the web layer keeps ``state``, ``nonce`` and ``code_verifier`` server-side),
exchanges the code and validates the ID token, failing closed on anything unexpected.

Every failure is an :class:`OidcError` whose ``detail`` names the exact cause for the audit log
(one of :data:`DETAILS`) and whose ``reason`` is safe to show. Tokens, codes and secrets are never
logged, and never appear in an error.

One module because every step above checks what the previous one fetched (discovery -> keys ->
token -> claims) against the same provider's configuration; split, each part would need it all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
from jose import jwk, jws, jwt
from jose.exceptions import JOSEError, JWTClaimsError

from ..config import OidcProviderConfig
from ..errors import WS_UNAUTHORIZED, GatewayError

log = logging.getLogger("deskgate.oidc")

DISCOVERY_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0  # keys removed by the provider stop being accepted at the latest after this
HTTP_TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 1 << 20
MAX_TOKEN_CHARS = 64 * 1024
MIN_RSA_BITS = 2048

# python-jose verifies these; it has no RSASSA-PSS (PS256...), so those are never allowed either.
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# detail -> the end of the person-readable sentence "sign-in with <provider> failed: ..."
_UNVERIFIED = "the identity provider's answer could not be verified"
_REASONS: dict[str, str] = {
    "idp unreachable": "the identity provider could not be reached",
    "discovery invalid": "the identity provider's configuration is not usable",
    "token endpoint error": "the identity provider did not accept the sign-in; please try again",
    "token response invalid": _UNVERIFIED,
    "bad signature": _UNVERIFIED,
    "alg not allowed": _UNVERIFIED,
    "unknown kid": _UNVERIFIED,
    "wrong issuer": _UNVERIFIED,
    "wrong audience": _UNVERIFIED,
    "wrong azp": _UNVERIFIED,
    "expired": "the sign-in took too long or the clocks disagree; please try again",
    "not yet valid": "the sign-in is not valid yet; the clocks disagree",
    "issued in the future": "the sign-in is not valid yet; the clocks disagree",
    "nonce missing": _UNVERIFIED,
    "nonce mismatch": _UNVERIFIED,
    "at_hash mismatch": _UNVERIFIED,
    "sub missing": _UNVERIFIED,
    "userinfo error": "the identity provider's user information could not be read",
    "userinfo sub mismatch": _UNVERIFIED,
    "malformed token": _UNVERIFIED,
    # mix-up (RFC 9700 4.4): an answer meant for, or coming from, another provider
    "issuer mix-up": "the answer did not come from the identity provider you chose; start again",
    "iss missing": "the answer did not say which identity provider sent it; start again",
    "provider mix-up": "the answer did not come from the identity provider you chose; start again",
}
DETAILS: frozenset[str] = frozenset(_REASONS)


class OidcError(GatewayError):
    """A failed OIDC step. ``detail`` (one of :data:`DETAILS`) is for the audit log; ``reason`` is
    for the person. Neither ever holds a token, a code or a secret."""

    http_status = 401
    ws_code = WS_UNAUTHORIZED
    reason = "sign-in with the identity provider failed"

    def __init__(self, detail: str, reason: str | None = None) -> None:
        self.detail = detail
        if reason is None:
            reason = f"sign-in with the identity provider failed: {_REASONS.get(detail, _UNVERIFIED)}"
        super().__init__(reason)

    def __repr__(self) -> str:
        return f"OidcError({self.detail!r})"


@dataclass(frozen=True)
class AuthRequest:
    url: str  # the provider's authorization URL with all query parameters
    state: str  # random, 256 bits
    nonce: str  # random, 256 bits
    code_verifier: str  # PKCE (RFC 7636), 64 characters


@dataclass(frozen=True)
class OidcIdentity:
    provider_id: str
    sub: str
    claims: dict[str, Any]  # ID token claims; with use_userinfo, userinfo claims under them
    id_token: str  # raw, kept only for RP-initiated logout's id_token_hint
    amr: tuple[str, ...]

    def __repr__(self) -> str:  # the raw token stays out of logs and tracebacks
        return f"OidcIdentity(provider_id={self.provider_id!r}, sub={self.sub!r}, amr={self.amr!r})"


def pkce_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(code_verifier))) without padding (RFC 7636 S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to (and replacing the same names in) its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OidcClient:
    def __init__(
        self,
        config: OidcProviderConfig,
        http: aiohttp.ClientSession,
        redirect_uri: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._http = http
        self._redirect_uri = redirect_uri
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
        self._discovery: dict[str, Any] | None = None
        self._discovery_at = 0.0
        self._discovery_lock = asyncio.Lock()
        self._jwks: list[dict[str, Any]] | None = None
        self._jwks_at = 0.0
        self._jwks_lock = asyncio.Lock()
        self._last_kid_refresh: float | None = None
        self._jwks_fetches = 0

    @property
    def jwks_fetches(self) -> int:
        return self._jwks_fetches

    @property
    def redirect_uri(self) -> str:
        """This provider's own callback: an answer arriving there can only be meant for it."""
        return self._redirect_uri

    # ---------------------------------------------------------------- errors and HTTP

    def _fail(self, detail: str, note: str = "") -> OidcError:
        """The error to raise; logs the (secret-free) detail."""
        log.warning("[idp=%s] sign-in failed: %s%s", self.config.id, detail, f" ({note})" if note else "")
        return OidcError(detail, f"sign-in with {self.config.label} failed: {_REASONS[detail]}")

    async def _http_call(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body). No redirects are followed; the body is capped; network trouble and
        timeouts become "idp unreachable"."""
        try:
            async with self._http.request(
                method, url, headers=headers, data=data, timeout=self._timeout, allow_redirects=False
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise self._fail("idp unreachable", f"{method} answer over {MAX_BODY_BYTES} bytes")
                    chunks.append(chunk)
                return resp.status, b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            note = f"{method} {urlsplit(url).path}: {type(exc).__name__}"
            raise self._fail("idp unreachable", note) from None

    @staticmethod
    def _json_object(body: bytes) -> dict[str, Any] | None:
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def _valid_url(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        parts = urlsplit(value)
        if not parts.netloc or parts.fragment:
            return False
        # plain http only to this machine (a test or development provider), as config allows for the issuer
        return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)

    # ---------------------------------------------------------------- discovery

    async def discovery(self) -> dict[str, Any]:
        """The provider's metadata, fetched at most once an hour and checked before use."""
        async with self._discovery_lock:
            now = self._clock()
            if self._discovery is not None and now - self._discovery_at < DISCOVERY_TTL_SECONDS:
                return self._discovery
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            status, body = await self._http_call("GET", url, headers={"Accept": "application/json"})
            if status >= 500:
                raise self._fail("idp unreachable", f"discovery answered HTTP {status}")
            doc = self._json_object(body) if status == 200 else None
            if doc is None:
                raise self._fail("discovery invalid", f"HTTP {status}, not a JSON object")
            problem = self._discovery_problem(doc)
            if problem:
                raise self._fail("discovery invalid", problem)
            self._discovery, self._discovery_at = doc, now
            return doc

    def _discovery_problem(self, doc: dict[str, Any]) -> str:
        if doc.get("issuer") != self.config.issuer:
            return "issuer differs from the configured issuer"
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not self._valid_url(doc.get(key)):
                return f"{key} missing or not a usable URL"
        for key in ("userinfo_endpoint", "end_session_endpoint"):
            if key in doc and not self._valid_url(doc[key]):
                return f"{key} not a usable URL"
        if self.config.use_userinfo and "userinfo_endpoint" not in doc:
            return "use_userinfo is set but there is no userinfo_endpoint"
        if not isinstance(doc.get("authorization_response_iss_parameter_supported", False), bool):
            return "authorization_response_iss_parameter_supported is not a boolean"
        if self._auth_method(doc) is None:
            return "neither client_secret_basic nor client_secret_post is supported"
        algs = doc.get("id_token_signing_alg_values_supported")
        if algs is not None and not (isinstance(algs, list) and all(isinstance(a, str) for a in algs)):
            return "id_token_signing_alg_values_supported is not a list of strings"
        return ""

    @staticmethod
    def _auth_method(doc: Mapping[str, Any]) -> str | None:
        methods = doc.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        if not isinstance(methods, list):
            return None
        for method in ("client_secret_basic", "client_secret_post"):
            if method in methods:
                return method
        return None

    @staticmethod
    def _allowed_algs(doc: Mapping[str, Any]) -> tuple[str, ...]:
        listed = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        return tuple(a for a in ASYMMETRIC_ALGS if a in listed)

    # ---------------------------------------------------------------- authorization

    async def authorization_request(self) -> AuthRequest:
        doc = await self.discovery()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
        url = _with_query(
            doc["authorization_endpoint"],
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self._redirect_uri,
                "scope": " ".join(self.config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            },
        )
        return AuthRequest(url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207: the authorization response's ``iss`` must be this provider's issuer. Required
        when the provider advertises ``authorization_response_iss_parameter_supported``; checked
        whenever present. Raises "issuer mix-up" or "iss missing"."""
        doc = await self.discovery()
        if iss is None:
            if doc.get("authorization_response_iss_parameter_supported") is True:
                raise self._fail("iss missing")
            return
        if iss != self.config.issuer:  # RFC 9207 2.4: simple string comparison; issuers are public
            raise self._fail("issuer mix-up", f"iss={iss[:128]!r}")

    async def end_session_url(self, *, id_token_hint: str, post_logout_redirect_uri: str) -> str | None:
        doc = await self.discovery()
        endpoint = doc.get("end_session_endpoint")
        if not endpoint:
            return None
        return _with_query(
            endpoint,
            {
                "id_token_hint": id_token_hint,
                "post_logout_redirect_uri": post_logout_redirect_uri,
                "client_id": self.config.client_id,
            },
        )

    # ---------------------------------------------------------------- code exchange

    async def finish(self, *, code: str, nonce: str, code_verifier: str) -> OidcIdentity:
        doc = await self.discovery()
        tokens = await self._exchange(doc, code, code_verifier)
        id_token, access_token = tokens["id_token"], tokens["access_token"]
        claims = await self._validate_id_token(doc, id_token, nonce=nonce, access_token=access_token)
        if self.config.use_userinfo:
            info = await self._userinfo(doc, access_token, claims["sub"])
            claims = {**info, **claims}
        amr = claims.get("amr")
        amr_tuple = tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else ()
        log.info("[idp=%s] sign-in verified (amr=%s)", self.config.id, ",".join(amr_tuple) or "-")
        return OidcIdentity(
            provider_id=self.config.id, sub=claims["sub"], claims=claims, id_token=id_token, amr=amr_tuple
        )

    async def _exchange(self, doc: Mapping[str, Any], code: str, code_verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {"Accept": "application/json"}
        client_id, secret = self.config.client_id, self.config.client_secret.reveal()
        if self._auth_method(doc) == "client_secret_basic":
            # RFC 6749 2.3.1: both parts form-encoded before base64
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"] = client_id
            form["client_secret"] = secret
        status, body = await self._http_call("POST", doc["token_endpoint"], headers=headers, data=form)
        if status != 200:
            answer = self._json_object(body) or {}
            error = answer.get("error")
            code_name = error if isinstance(error, str) and _ERROR_CODE.match(error) else "-"
            raise self._fail("token endpoint error", f"HTTP {status}, error={code_name}")
        tokens = self._json_object(body)
        if tokens is None:
            raise self._fail("token response invalid", "not a JSON object")
        for key in ("id_token", "access_token", "token_type"):
            if not isinstance(tokens.get(key), str) or not tokens[key]:
                raise self._fail("token response invalid", f"{key} missing")
        if tokens["token_type"].lower() != "bearer":
            raise self._fail("token response invalid", "token_type is not Bearer")
        return tokens

    async def _userinfo(self, doc: Mapping[str, Any], access_token: str, sub: str) -> dict[str, Any]:
        status, body = await self._http_call(
            "GET",
            doc["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        info = self._json_object(body) if status == 200 else None
        if info is None:
            raise self._fail("userinfo error", f"HTTP {status}" if status != 200 else "not a JSON object")
        got = info.get("sub")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), sub.encode()):
            raise self._fail("userinfo sub mismatch")
        return info

    # ---------------------------------------------------------------- keys

    async def _fetch_jwks(self, doc: Mapping[str, Any]) -> None:
        """Fetch the key set (the caller holds the lock)."""
        self._jwks_fetches += 1
        status, body = await self._http_call("GET", doc["jwks_uri"], headers={"Accept": "application/json"})
        if status >= 500:
            raise self._fail("idp unreachable", f"jwks answered HTTP {status}")
        jwks = self._json_object(body) if status == 200 else None
        keys = jwks.get("keys") if jwks is not None else None
        if not isinstance(keys, list):
            raise self._fail("discovery invalid", f"jwks_uri: HTTP {status}, not a key set")
        self._jwks = [k for k in keys if isinstance(k, dict)]
        self._jwks_at = self._clock()

    async def _key_set(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        async with self._jwks_lock:
            if self._jwks is None or self._clock() - self._jwks_at >= JWKS_TTL_SECONDS:
                await self._fetch_jwks(doc)
            assert self._jwks is not None
            return self._jwks

    async def _refresh_for_kid(
        self, doc: Mapping[str, Any], seen: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """A kid-triggered refresh, at most one per jwks_min_refresh_seconds. If another task
        refreshed while we waited for the lock, its result is used instead."""
        async with self._jwks_lock:
            if self._jwks is not None and self._jwks is not seen:
                return self._jwks
            now = self._clock()
            last = self._last_kid_refresh
            if last is None or now - last >= self.config.jwks_min_refresh_seconds:
                self._last_kid_refresh = now
                await self._fetch_jwks(doc)
            assert self._jwks is not None
            return self._jwks

    @staticmethod
    def _usable(key: Mapping[str, Any], alg: str) -> bool:
        if key.get("use", "sig") != "sig" or key.get("alg", alg) != alg:
            return False
        ops = key.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            return False
        if alg in _EC_CURVES:
            return key.get("kty") == "EC" and key.get("crv") == _EC_CURVES[alg]
        if key.get("kty") != "RSA" or not isinstance(key.get("n"), str):
            return False
        try:
            return len(_b64url_decode(key["n"]).lstrip(b"\0")) * 8 >= MIN_RSA_BITS
        except (ValueError, binascii.Error):
            return False

    @classmethod
    def _candidates(cls, keys: list[dict[str, Any]], kid: str | None, alg: str) -> list[Any]:
        """jose Key objects that may have signed a token with this kid and alg."""
        if kid is None:
            matching = [k for k in keys if cls._usable(k, alg)]
            if len(matching) != 1:  # without a kid, only an unambiguous key set is acceptable
                return []
        else:
            matching = [k for k in keys if k.get("kid") == kid and cls._usable(k, alg)]
        built = []
        for key in matching:
            try:
                built.append(jwk.construct(key, alg))
            except (JOSEError, ValueError, TypeError, KeyError):
                continue
        return built

    # ---------------------------------------------------------------- ID token

    def _parse(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) of a compact JWS, strictly parsed; the signature is checked later."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise self._fail("malformed token", "not a compact JWS")
        head, body, sig = token.split(".")
        try:
            header = json.loads(_b64url_decode(head))
            claims = json.loads(_b64url_decode(body))
            _b64url_decode(sig)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise self._fail("malformed token", "undecodable segment") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise self._fail("malformed token", "header or claims not a JSON object")
        return header, claims

    async def _validate_id_token(
        self, doc: Mapping[str, Any], token: str, *, nonce: str, access_token: str
    ) -> dict[str, Any]:
        header, claims = self._parse(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed_algs(doc):
            raise self._fail("alg not allowed", f"alg={str(alg)[:16]!r}")
        if "crit" in header:
            raise self._fail("malformed token", "crit header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._fail("malformed token", "kid is not a string")
        if not token.rsplit(".", 1)[1]:
            raise self._fail("bad signature", "empty signature")

        keys = await self._key_set(doc)
        candidates = self._candidates(keys, kid, alg)
        ok = bool(candidates) and self._signature_ok(token, candidates, alg)
        if not ok and (not candidates or kid is None):
            # an unknown kid, or no kid and the single key did not match: the provider may have
            # new keys. One refresh, rate-limited; then fail closed.
            newer = await self._refresh_for_kid(doc, keys)
            if newer is not keys:
                candidates = self._candidates(newer, kid, alg)
                ok = bool(candidates) and self._signature_ok(token, candidates, alg)
        if not candidates:
            raise self._fail("unknown kid", f"kid={str(kid)[:64]!r}" if kid is not None else "no kid")
        if not ok:
            raise self._fail("bad signature")

        self._check_claims(claims, nonce)
        if "at_hash" in claims:
            self._check_at_hash(token, candidates, alg, access_token)
        return claims

    @staticmethod
    def _signature_ok(token: str, candidates: list[Any], alg: str) -> bool:
        try:
            jws.verify(token, candidates, algorithms=[alg])
        except JOSEError:
            return False
        return True

    def _check_claims(self, claims: dict[str, Any], nonce: str) -> None:
        cfg = self.config
        if claims.get("iss") != cfg.issuer:
            raise self._fail("wrong issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise self._fail("wrong audience", "aud missing or not strings")
        if cfg.client_id not in audiences:
            raise self._fail("wrong audience")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != cfg.client_id:
            raise self._fail("wrong azp")

        now, leeway = self._clock(), cfg.leeway_seconds
        for name in ("exp", "iat"):
            if not _is_number(claims.get(name)):
                raise self._fail("malformed token", f"{name} missing or not a number")
        if "nbf" in claims and not _is_number(claims["nbf"]):
            raise self._fail("malformed token", "nbf not a number")
        if now >= claims["exp"] + leeway:
            raise self._fail("expired")
        if "nbf" in claims and claims["nbf"] > now + leeway:
            raise self._fail("not yet valid")
        if claims["iat"] > now + leeway:
            raise self._fail("issued in the future")

        got = claims.get("nonce")
        if got is None:
            raise self._fail("nonce missing")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise self._fail("nonce mismatch")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise self._fail("sub missing")

    def _check_at_hash(self, token: str, candidates: list[Any], alg: str, access_token: str) -> None:
        """python-jose compares at_hash with the access token; the rest was checked above."""
        options = {
            "verify_signature": True,
            "verify_at_hash": True,
            **{f"verify_{name}": False for name in ("aud", "iat", "exp", "nbf", "iss", "sub", "jti")},
        }
        try:
            jwt.decode(token, candidates, algorithms=[alg], access_token=access_token, options=options)
        except JWTClaimsError:
            raise self._fail("at_hash mismatch") from None
        except JOSEError:
            raise self._fail("malformed token", "at_hash check") from None
