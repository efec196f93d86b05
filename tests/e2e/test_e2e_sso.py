"""Single sign-on in Chromium: a real gateway, a real OpenID provider (oidc-provider-mock), a real
Xvnc desktop reached through an IdP group.

The provider runs in its own virtualenv (`make oidc-mock`) and is started and stopped by PID.
It keeps no session: every sign-in shows its authorize page, where a person picks a subject.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from e2e_support import (
    STATIC_VNC_PASSWORD,
    Gateway,
    Relay,
    Watched,
    screen_box,
    shot_to,
    stop_pid,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
    wait_state,
)
from pngpixels import distinct_colours, is_green
from sso_support import (
    ADMIN_GROUP,
    CALLBACK_PATH,
    CLIENT_ID,
    PROVIDER_ID,
    MockIdP,
    SsoAccount,
    audit_lines,
    authorize_at_idp,
    authorize_outside_browser,
    complete_second_factor,
    csrf_token,
    fetch_status,
    sso_button,
    sso_sign_in,
    start_at_idp,
    start_mock_idp,
    start_sso_gateway,
    user_claims,
)

pytestmark = pytest.mark.e2e

DESIGN_DESKTOP = "Design desktop"
DESIGNERS = "designers"


# -- fixtures: one provider and one gateway for this module ----------------------------------------


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockIdP]:
    provider = start_mock_idp(
        tmp_path_factory.mktemp("oidc-mock"),
        [user_claims("carol", [DESIGNERS]), user_claims("erin", [ADMIN_GROUP, DESIGNERS])],
    )
    try:
        yield provider
    finally:
        stop_pid(provider.proc)


@pytest.fixture(scope="module")
def sso_gw(tmp_path_factory: pytest.TempPathFactory, idp: MockIdP, relay: Relay) -> Iterator[Gateway]:
    gw, proc = start_sso_gateway(tmp_path_factory.mktemp("sso-gateway"), idp)
    try:
        out = gw.cli("desktop", "add", DESIGN_DESKTOP, "--provider", "static",
                     "--vnc", f"127.0.0.1:{relay.port}", "--password-stdin",
                     stdin=STATIC_VNC_PASSWORD + "\n")
        m = re.search(r"^Desktop\s+(\S+)\s+(.+?)\s*$", out, re.M)
        assert m, f"no 'Desktop <id> <name>' line in {out!r}"
        gw.desktop_ids[DESIGN_DESKTOP] = m.group(1)
        # Assigned to the IdP group only: nobody reaches it by name.
        gw.cli("assign", DESIGN_DESKTOP, "--group", DESIGNERS)
        yield gw
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
        print(f"\n--- oidc-provider-mock log (tail) ---\n{idp.log_tail()}")


@pytest.fixture(scope="module")
def people() -> dict[str, SsoAccount]:
    """TOTP secrets and recovery codes, kept across the tests of this module."""
    return {sub: SsoAccount(sub) for sub in ("carol", "erin", "dan", "gina")}


def portal_desktop_ids(page: Any) -> list[str]:
    return [str(x) for x in page.locator("a.desktop-connect").evaluate_all(
        "links => links.map(a => a.dataset.desktopId)")]


def real_errors(w: Watched) -> list[str]:
    """Console errors, without the mock provider's stylesheet from a CDN (no Internet here)."""
    return [e for e in w.real_console_errors() if "cdn.jsdelivr.net" not in e]


def navigation_status(page: Any, url: str) -> int:
    resp = page.goto(url)
    assert resp is not None
    return int(resp.status)


def jwt_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    assert len(parts) == 3, "not a compact JWS"
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return claims


# -- 1. the whole journey: IdP, our TOTP, a desktop reached through a group -------------------------


def test_sso_sign_in_enrol_and_connect_through_group(
    sso_gw: Gateway, idp: MockIdP, people: dict[str, SsoAccount],
    new_page: Callable[..., Watched], artifacts: Path,
) -> None:
    carol = people["carol"]
    w = new_page()
    page = w.page

    how = sso_sign_in(page, sso_gw, carol, shots="sso")
    assert how == "enrolled"
    callback = urlsplit(carol.callback_urls[-1])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == sso_gw.base_url + CALLBACK_PATH
    assert {"code", "state"} <= set(parse_qs(callback.query)), callback.query

    shot_to(page, "sso-portal.png")
    header = page.locator("header")
    assert header.locator(".user-name").text_content() == "carol"
    assert header.locator(".badge-admin").count() == 0, "carol is not in the admin group"
    desktop_id = sso_gw.desktop_ids[DESIGN_DESKTOP]
    assert portal_desktop_ids(page) == [desktop_id]

    page.locator(f'a.desktop-connect[data-desktop-id="{desktop_id}"]').click()
    page.wait_for_url(re.compile(rf"/desktops/{desktop_id}$"))
    wait_state(page, "connected")
    img, box = wait_for_xterm(page, failed_shot="failed-sso-xterm-missing.png")
    page.screenshot(path=str(artifacts / "sso-desktop.png"))
    assert distinct_colours(img, screen_box(page)) >= 8, "the desktop area looks blank"

    # Input reaches the desktop too.
    type_into_xterm(page, box, r"printf '\033[42m'; clear")
    wait_for_colour(page, is_green, 100_000, "the xterm to turn green")
    page.screenshot(path=str(artifacts / "sso-desktop-green.png"))
    assert real_errors(w) == []

    ok = [ln for ln in audit_lines(sso_gw, "signin.ok") if "user=carol" in ln]
    assert ok, audit_lines(sso_gw)
    assert f"idp {PROVIDER_ID}; groups: {DESIGNERS}; second factor: " in ok[-1], ok[-1]
    assert any("user provisioned from idp mock" in ln and "user=carol" in ln
               for ln in audit_lines(sso_gw, "admin")), audit_lines(sso_gw)
    assert any("user=carol" in ln and f"desktop={DESIGN_DESKTOP}" in ln
               for ln in audit_lines(sso_gw, "session.connect")), audit_lines(sso_gw)


# -- 2. groups are refreshed at each sign-in; access follows them -------------------------------


def test_group_removed_at_idp_takes_the_desktop_away(
    sso_gw: Gateway, idp: MockIdP, people: dict[str, SsoAccount],
    new_page: Callable[..., Watched], artifacts: Path,
) -> None:
    carol = people["carol"]
    desktop_id = sso_gw.desktop_ids[DESIGN_DESKTOP]
    connect_url = f"/desktops/{desktop_id}/connect"

    # Before: carol in "designers" reaches the desktop (enrols if this test runs alone).
    before = new_page().page
    sso_sign_in(before, sso_gw, carol)
    assert portal_desktop_ids(before) == [desktop_id]
    old_token = csrf_token(before)

    idp.set_user("carol", user_claims("carol", ["marketing"]))
    try:
        after = new_page().page
        how = sso_sign_in(after, sso_gw, carol)
        assert how in ("totp", "recovery"), how
        shot_to(after, "sso-group-removed-portal.png")
        assert portal_desktop_ids(after) == [], "the desktop is still listed"
        token = csrf_token(after)
        assert fetch_status(after, connect_url, "POST", {"X-CSRF-Token": token}) == 403
        assert navigation_status(after, sso_gw.base_url + f"/desktops/{desktop_id}") == 403
        shot_to(after, "sso-group-removed-403.png")
        # The session signed in before the change does not keep the group either.
        assert fetch_status(before, connect_url, "POST", {"X-CSRF-Token": old_token}) == 403

        ok = [ln for ln in audit_lines(sso_gw, "signin.ok") if "user=carol" in ln]
        assert "groups: marketing;" in ok[-1], ok[-1]
    finally:
        idp.set_user("carol", user_claims("carol", [DESIGNERS]))


# -- 3. the admin role follows the configured IdP group ----------------------------------------


def test_admin_role_follows_idp_group(
    sso_gw: Gateway, idp: MockIdP, people: dict[str, SsoAccount],
    new_page: Callable[..., Watched],
) -> None:
    erin = people["erin"]
    page = new_page().page
    sso_sign_in(page, sso_gw, erin)
    shot_to(page, "sso-admin-badge.png")
    badge = page.locator("header .badge-admin")
    assert badge.count() == 1 and badge.is_visible(), "no admin badge for a deskgate-admins member"
    assert (badge.text_content() or "").strip() == "admin"

    idp.set_user("erin", user_claims("erin", [DESIGNERS]))
    try:
        again = new_page().page
        sso_sign_in(again, sso_gw, erin)
        shot_to(again, "sso-admin-badge-gone.png")
        assert again.locator("header .user-name").text_content() == "erin"
        assert again.locator("header .badge-admin").count() == 0, "admin badge kept after group removal"
        ok = [ln for ln in audit_lines(sso_gw, "signin.ok") if "user=erin" in ln]
        assert len(ok) >= 2 and ADMIN_GROUP in ok[-2] and ADMIN_GROUP not in ok[-1], ok
    finally:
        idp.set_user("erin", user_claims("erin", [ADMIN_GROUP, DESIGNERS]))


# -- 4. refusals: consent denied, a replayed callback, a callback in another browser -------------


def test_consent_denied_shows_error_and_retry(
    sso_gw: Gateway, idp: MockIdP, new_page: Callable[..., Watched],
) -> None:
    page = new_page().page
    start_at_idp(page, sso_gw)
    with page.expect_response(lambda r: CALLBACK_PATH in r.url) as info:
        page.get_by_role("button", name="Deny access").click()
    resp = info.value
    query = parse_qs(urlsplit(resp.url).query)
    assert query.get("error") == ["access_denied"] and query.get("state"), resp.url
    assert 400 <= resp.status < 500, resp.status
    page.locator("#retry").wait_for()
    shot_to(page, "sso-consent-denied.png")
    message = page.locator("#error-heading").text_content() or ""
    assert "access denied" in message.lower() or "did not sign you in" in message, message
    assert page.locator("header .user-name").count() == 0, "signed in after a denial"
    assert page.locator("#retry").get_attribute("href") == "/login"
    page.locator("#retry").click()
    page.wait_for_url(sso_gw.base_url + "/login")
    assert sso_button(page).count() == 1

    failed = audit_lines(sso_gw, "signin.failed")
    assert any(f"idp {PROVIDER_ID}: consent denied" in ln for ln in failed), failed


def test_replayed_callback_is_refused(
    sso_gw: Gateway, idp: MockIdP, people: dict[str, SsoAccount],
    new_page: Callable[..., Watched],
) -> None:
    """gina is not predefined at the provider: the Subject field; the mock gives her no name claim."""
    gina = people["gina"]
    page = new_page().page
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if CALLBACK_PATH in r.url else None)
    start_at_idp(page, sso_gw)
    authorize_at_idp(page, "gina", predefined=False)
    page.wait_for_url(re.compile(r"/login/totp"))
    assert len(callbacks) == 1, callbacks

    # Same browser, same state, same code: refused; no second session.
    assert navigation_status(page, callbacks[0]) in range(400, 500)
    shot_to(page, "sso-replayed-callback.png")
    message = page.locator("#error-heading").text_content() or ""
    assert "expired or was already used" in message or "already used" in message, message
    assert page.locator("#retry").get_attribute("href") == "/login"
    failed = audit_lines(sso_gw, "signin.failed")
    assert any("state unknown, expired or already used" in ln for ln in failed), failed
    # The first callback's half-signed-in session still needs our second factor.
    page.goto(sso_gw.base_url + "/")
    assert page.url.startswith(sso_gw.base_url + "/login"), page.url
    complete_second_factor(page, sso_gw, gina)
    assert page.locator("header .user-name").text_content() == "gina"


def test_callback_opened_in_another_browser_is_refused(
    sso_gw: Gateway, idp: MockIdP, new_page: Callable[..., Watched],
) -> None:
    """The state is bound to the browser that started the sign-in (login CSRF)."""
    victim = new_page().page
    start_at_idp(victim, sso_gw)
    authorize_url = victim.url
    # The provider's redirect for the victim's request, taken outside the victim's browser.
    callback = authorize_outside_browser(authorize_url, "carol")
    assert callback.startswith(sso_gw.base_url + CALLBACK_PATH + "?"), callback

    attacker = new_page().page
    assert navigation_status(attacker, callback) in range(400, 500)
    shot_to(attacker, "sso-other-browser.png")
    message = attacker.locator("#error-heading").text_content() or ""
    assert "another browser" in message, message
    assert attacker.locator("header .user-name").count() == 0
    failed = audit_lines(sso_gw, "signin.failed")
    assert any("state bound to another browser" in ln for ln in failed), failed


# -- 5. sign-out ends the session at the provider too (RP-initiated logout) ----------------------


def test_sign_out_is_rp_initiated_logout(
    sso_gw: Gateway, idp: MockIdP, people: dict[str, SsoAccount],
    new_page: Callable[..., Watched],
) -> None:
    dan = people["dan"]
    idp.set_user("dan", user_claims("dan", []))
    w = new_page()
    page = w.page
    sso_sign_in(page, sso_gw, dan, predefined=False)
    assert page.locator("header .user-name").text_content() == "dan"
    end_session = idp.discovery().get("end_session_endpoint")

    page.get_by_role("button", name="Sign out").click()
    if not end_session:
        page.wait_for_url(sso_gw.base_url + "/login")
    else:
        assert end_session == idp.base_url + "/oauth2/end_session"
        try:
            page.wait_for_url(re.compile(re.escape(end_session) + r"\?"), timeout=10_000)
        except Exception as exc:  # noqa: BLE001 - report what the browser did instead
            shot_to(page, "failed-sso-end-session.png")
            raise AssertionError(
                f"after Sign out the browser did not reach the provider's end_session_endpoint:"
                f" it shows {page.url}; console: {real_errors(w)}") from exc
        shot_to(page, "sso-end-session.png")
        query = parse_qs(urlsplit(page.url).query)
        assert query.get("post_logout_redirect_uri") == [sso_gw.base_url + "/login"], query
        hint = query.get("id_token_hint", [""])[0]
        claims = jwt_claims(hint)
        assert claims["sub"] == "dan" and claims["iss"] == idp.issuer, claims
        assert claims["aud"] in (CLIENT_ID, [CLIENT_ID]), claims
        # The mock's page confirms, then sends the browser back to our sign-in page.
        page.get_by_role("button", name="End session").click()
        page.wait_for_url(sso_gw.base_url + "/login", timeout=15_000)
    shot_to(page, "sso-signed-out.png")
    # Our session is gone.
    page.goto(sso_gw.base_url + "/")
    assert page.url.startswith(sso_gw.base_url + "/login"), page.url
    assert page.locator("header .user-name").count() == 0
    assert any("user=dan" in ln for ln in audit_lines(sso_gw, "signout")), audit_lines(sso_gw)
