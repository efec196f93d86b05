"""Two identity providers on one gateway, in Chromium.

1. The OIDC mix-up attack (RFC 9700 4.4), against a real gateway with two providers:
the real oidc-provider-mock (honest, "Mock IdP") and a hostile one ("Partner SSO", the aiohttp
provider of tests/auth/hostile_idp.py, run by the attacker).

The attacker opens a sign-in at Mock IdP in their own browser and reads its authorization request
(state, nonce, PKCE challenge, redirect URI) from the address bar. The victim signs in with Partner
SSO; its authorize endpoint sends the victim's browser on to Mock IdP with the victim's state and
the attacker's nonce and challenge; the victim approves there as they always do. Before each
provider had its own redirect URI, the answer reached the one shared callback, the gateway
redeemed Mock IdP's code at Partner SSO's token endpoint, and the attacker, replaying that code
through their own sign-in, was signed in as the victim. Now the answer reaches Mock IdP's own
callback with a state that Partner SSO's sign-in started: refused, and the code goes nowhere.

2. Look-alike names: someone whose provider calls them "Аdmin" (Cyrillic А) signs in; the account
they get is not a second "admin", and the admin pages and CLI show which provider it came from.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from e2e_support import REPO, Gateway, LoopThread, Watched, shot_to, sign_in, stop_pid
from sso_support import (
    CLIENT_ID,
    PROVIDER_ID,
    MockIdP,
    audit_lines,
    authorize_at_idp,
    start_at_idp,
    start_mock_idp,
    start_sso_gateway,
    user_claims,
)

sys.path.insert(0, str(REPO / "tests" / "auth"))
from hostile_idp import HostileIdp  # noqa: E402

pytestmark = pytest.mark.e2e

HOSTILE_ID = "partner"
HOSTILE_LABEL = "Partner SSO"
IMPOSTOR_NAME = "\u0410dmin"  # Cyrillic capital A, then "dmin"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockIdP]:
    provider = start_mock_idp(tmp_path_factory.mktemp("oidc-mock"), [
        user_claims("carol", ["designers"]),
        user_claims("impostor", [], preferred_username=IMPOSTOR_NAME)])
    try:
        yield provider
    finally:
        stop_pid(provider.proc)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileIdp]:
    loop = LoopThread()
    provider = loop.run(HostileIdp(client_id=CLIENT_ID).start())
    try:
        yield provider
    finally:
        loop.run(provider.stop())
        loop.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, idp: MockIdP,
       hostile: HostileIdp) -> Iterator[Gateway]:
    partner = (f"\n[oidc.{HOSTILE_ID}]\n"
               f'display_name = "{HOSTILE_LABEL}"\n'
               f'issuer = "{hostile.issuer}"\n'
               f'client_id = "{CLIENT_ID}"\n'
               f'client_secret = "{hostile.client_secret}"\n')
    # Without our TOTP after Mock IdP, a code that signs someone in signs them in completely.
    gateway, proc = start_sso_gateway(tmp_path_factory.mktemp("mixup-gateway"), idp,
                                      require_totp=False, more_toml=partner)
    try:
        yield gateway
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gateway.log_tail()}")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_mix_up_attack_with_a_hostile_second_provider_is_refused(
    gw: Gateway, idp: MockIdP, hostile: HostileIdp, new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    # 1. The attacker's own sign-in at Mock IdP, left open at its authorize page.
    attacker = new_page().page
    start_at_idp(attacker, gw)
    theirs = query(attacker.url)
    assert theirs["state"] and theirs["code_challenge"] and theirs["redirect_uri"]

    def to_mock(q: dict[str, str]) -> str:
        return f"{idp.base_url}/oauth2/authorize?{urlencode({**theirs, 'state': q['state']})}"

    hostile.authorize_redirect = to_mock

    # 2. The victim signs in with Partner SSO and lands at Mock IdP, where they approve.
    victim = new_page().page
    victim.goto(gw.base_url + "/login")
    victim.locator(f'.sso-button[data-provider="{HOSTILE_ID}"]').click()
    victim.wait_for_url(re.compile(re.escape(idp.base_url + "/oauth2/authorize?")),
                        timeout=15_000)
    with victim.expect_response(lambda r: r.url.startswith(gw.base_url + "/login/oidc/")
                                and "code=" in r.url) as info:
        authorize_at_idp(victim, "carol")
    answer = info.value
    victim.wait_for_load_state()
    shot_to(victim, "sso-mixup-victim.png")

    # 3. Whatever code reached the hostile provider's token endpoint, the attacker replays
    #    through their own sign-in.
    leaked = [r.form["code"] for r in hostile.token_requests]
    for code in leaked:
        attacker.goto(f"{theirs['redirect_uri']}?{urlencode({'code': code, 'state': theirs['state']})}")
    attacker.goto(gw.base_url + "/")
    shot_to(attacker, "sso-mixup-attacker.png")
    signed_in = attacker.locator("header .user-name")
    assert signed_in.count() == 0, f"the attacker is signed in as {signed_in.text_content()}"
    assert attacker.url.startswith(gw.base_url + "/login"), attacker.url

    # What the victim sees, and what the audit says.
    assert leaked == [], "Mock IdP's code was sent to the hostile provider"
    assert urlsplit(answer.url).path == f"/login/oidc/{PROVIDER_ID}/callback"
    assert answer.status == 401
    message = victim.locator("#error-heading").text_content() or ""
    assert "did not come from the identity provider you chose" in message, message
    assert victim.locator("#retry").get_attribute("href") == "/login"
    assert victim.locator("header .user-name").count() == 0
    failed = audit_lines(gw, "signin.failed")
    assert any(f"idp {PROVIDER_ID}: provider mix-up (the sign-in was started at idp {HOSTILE_ID})"
               in line for line in failed), failed
    assert not any("user=carol" in line for line in audit_lines(gw, "signin.ok"))


def test_a_look_alike_of_admin_signing_in_gets_a_name_that_shows_its_provider(
    gw: Gateway, idp: MockIdP, new_page: Callable[..., Watched],
) -> None:
    person = new_page().page
    start_at_idp(person, gw)
    authorize_at_idp(person, "impostor")
    person.wait_for_url(gw.base_url + "/", timeout=15_000)
    shot_to(person, "sso-lookalike-portal.png")
    assert person.locator("header .user-name").text_content() == f"{IMPOSTOR_NAME}@{PROVIDER_ID}"

    added = gw.cli("desktop", "add", "Lab", "--provider", "static", "--vnc", "127.0.0.1:5999")
    desktop_id = re.search(r"^Desktop\s+(\d+)\s+Lab", added, re.M)
    assert desktop_id, added
    with pytest.raises(AssertionError) as refused:
        gw.cli("assign", "Lab", "Admin")
    assert "'Admin' names no user exactly, but looks like: #1 admin (local)." in str(refused.value)
    lines = gw.cli("user", "list").splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "IDENTITY"]
    assert [f"{IMPOSTOR_NAME}@{PROVIDER_ID}", f"{PROVIDER_ID}:impostor"] in [
        line.split()[1:3] for line in lines]

    admin = new_page().page
    sign_in(admin, gw, gw.admin)
    admin.goto(gw.base_url + "/admin/users")
    shot_to(admin, "sso-lookalike-users.png")
    row = admin.locator(f'tr[data-user="{IMPOSTOR_NAME}@{PROVIDER_ID}"]')
    assert row.locator("td").nth(2).text_content() == PROVIDER_ID
    assert admin.locator('tr[data-user="admin"] td').nth(2).text_content() == "local"
    admin.goto(f"{gw.base_url}/admin/desktops/{desktop_id.group(1)}")
    shot_to(admin, "sso-lookalike-desktop.png")
    options = [o.strip() for o in admin.locator("#assign-user-id option").all_text_contents()]
    assert "admin (local)" in options
    assert f"{IMPOSTOR_NAME}@{PROVIDER_ID} (via {PROVIDER_ID})" in options
