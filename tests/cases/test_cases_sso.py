"""Single sign-on on the store, against a controllable identity provider: a first sign-in
provisions the account once however many arrive at once; failures are one row each, with the
reason code "sso"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from hostile_idp import HostileIdp

from gateway.app import Cases, pre_logins
from gateway.audit import AuditKind
from gateway.auth.oidc import OidcClient, OidcError
from gateway.cases.sso import SingleSignOn
from gateway.config import Settings
from gateway.errors import NotFound

CALLBACK = "http://gateway.test/login/oidc/hostile/callback"


@pytest.fixture
async def sso(settings: Settings, cases: Cases,
              hostile_idp: HostileIdp) -> AsyncIterator[tuple[SingleSignOn, aiohttp.ClientSession]]:
    config = hostile_idp.config(require_totp=False)
    async with aiohttp.ClientSession() as http:
        client = OidcClient(config, http, CALLBACK)
        yield (SingleSignOn(cases.store, cases.box, cases.audit, cases.signin.sessions,
                            {config.id: client}, {config.id: config},
                            prelogins=pre_logins(settings, cases.store)), http)


async def _answer(sso: SingleSignOn, http: aiohttp.ClientSession, browser: str,
                  ip: str) -> dict[str, str]:
    """Start at the provider and follow its answer as far as the callback's query."""
    url = await sso.begin("hostile", browser, ip)
    async with http.get(url, allow_redirects=False) as resp:
        location = resp.headers["Location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def test_a_first_sign_in_provisions_the_account(sso: tuple[SingleSignOn, aiohttp.ClientSession],
                                                      cases: Cases) -> None:
    service, http = sso
    answer = await _answer(service, http, "browser-1", "10.0.0.1")
    result = await service.complete("hostile", state=answer["state"], code=answer["code"],
                                    error=None, iss=answer.get("iss"), browser_token="browser-1",
                                    ip="10.0.0.1", user_agent="ua")
    assert result.user.name == "alice" and result.user.source == "hostile"
    assert not result.needs_totp  # the provider is trusted for it here (require_totp=False)
    kinds = [e.kind for e in await cases.store.list_audit(limit=10)]
    assert kinds[:3] == ["second_factor.ok", "signin.ok", "admin"]  # newest first


async def test_a_bad_answer_is_one_failure_row_with_the_code_sso(
        sso: tuple[SingleSignOn, aiohttp.ClientSession], cases: Cases) -> None:
    service, _ = sso
    codes: list[tuple[AuditKind, str | None]] = []
    cases.audit.listen(lambda kind, code: codes.append((kind, code)))
    with pytest.raises(OidcError):
        await service.complete("hostile", state="forged", code="x", error=None, iss=None,
                               browser_token="b", ip="10.0.0.9", user_agent="ua")
    assert codes == [(AuditKind.SIGNIN_FAILED, "sso")]
    [row] = await cases.store.list_audit(limit=1)
    assert row.detail == "idp hostile: state unknown, expired or already used"
    with pytest.raises(NotFound):
        service.config("nobody")


async def test_fifty_first_sign_ins_at_once_make_one_account(
        sso: tuple[SingleSignOn, aiohttp.ClientSession], cases: Cases) -> None:
    service, http = sso
    answers = [await _answer(service, http, f"browser-{i}", f"10.2.0.{i}") for i in range(50)]
    results = await asyncio.gather(*(service.complete(
        "hostile", state=a["state"], code=a["code"], error=None, iss=a.get("iss"),
        browser_token=f"browser-{i}", ip=f"10.2.0.{i}", user_agent="ua")
        for i, a in enumerate(answers)))
    assert len({r.user.id for r in results}) == 1
    rows = await cases.store.list_audit(limit=500)
    assert sum(r.kind == "admin" and "provisioned" in r.detail for r in rows) == 1
    assert sum(r.kind == "signin.ok" for r in rows) == 50
