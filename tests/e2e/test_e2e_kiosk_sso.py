"""A shared kiosk's single sign-on in Chromium: a real gateway, a real OpenID provider
(oidc-provider-mock), a kiosk created with the command line and enrolled in the browser.

A person signs in on the kiosk with the provider, then our TOTP, and lands on the kiosk's desktop
list; signing out passes through the provider's end-session endpoint (RP-initiated logout) and
comes back to the kiosk's sign-in screen, where the next person is asked by the provider again.

Every test runs twice: with the provider on the gateway's site (both on 127.0.0.1), and on
another site (``localhost``), as an organisation's provider usually is. SameSite cookies only
show their effect on the way back from another site: while the device cookie was Strict, the
provider's redirect to /login came without it, and the kiosk showed the ordinary sign-in page.

What the mock does on sign-out: its end-session endpoint is a dummy that keeps no session (it
says so on its page): it shows a form whose "End session" button posts to
/oauth2/end_session/confirm, which redirects to ``post_logout_redirect_uri``. It keeps no
session at its authorize endpoint either: every GET there shows its form.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from e2e_support import VIEWPORT, Gateway, private_runtime_dir, shot_to, stop_pid
from sso_support import (
    CALLBACK_PATH,
    CLIENT_ID,
    PROVIDER_LABEL,
    MockIdP,
    SsoAccount,
    audit_lines,
    authorize_at_idp,
    sso_button,
    sso_sign_in,
    start_mock_idp,
    start_sso_gateway,
    user_claims,
)

from gateway.xdisplay.numbers import xvnc_serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DESKTOP = "Hot desk desktop"
STAFF = "staff"  # the IdP group the desktop is assigned to
KIRA, LENA = "kira", "lena"
CODE_RE = re.compile(r"\b([A-Z2-9]{4}-[A-Z2-9]{4})\b")
GATEWAY_COOKIES = {"deskgate_device", "deskgate_pre", "deskgate_kiosk_grant"}


# -- fixtures: one provider and one gateway per variant --------------------------------------------


@dataclass
class KioskSso:
    gw: Gateway
    idp: MockIdP
    people: dict[str, SsoAccount]
    runtime: Path

    def add_kiosk(self, name: str) -> str:
        """A new shared kiosk; its pairing code."""
        out = self.gw.cli("kiosk", "add", name, "--location", "Floor 2")
        m = CODE_RE.search(out)
        assert m, f"no pairing code in {out!r}"
        return m.group(1)


@pytest.fixture(scope="module", params=["same-site-idp", "cross-site-idp"])
def ks(request: pytest.FixtureRequest,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskSso]:
    host = "127.0.0.1" if request.param == "same-site-idp" else "localhost"
    idp = start_mock_idp(tmp_path_factory.mktemp("oidc-mock"),
                         [user_claims(KIRA, [STAFF]), user_claims(LENA, [STAFF])],
                         public_host=host)
    runtime = private_runtime_dir()
    try:
        gw, proc = start_sso_gateway(tmp_path_factory.mktemp("kiosk-sso-gateway"), idp,
                                     env={"DESKGATE_DESKTOPS_RUNTIME_DIR": str(runtime)})
        try:
            out = gw.cli("desktop", "add", DESKTOP, "--provider", "local")
            m = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
            assert m, out
            gw.desktop_ids[DESKTOP] = m.group(1)
            gw.cli("assign", DESKTOP, "--group", STAFF)  # reached through the IdP group only
            yield KioskSso(gw, idp, {sub: SsoAccount(sub) for sub in (KIRA, LENA)}, runtime)
        finally:
            stop_pid(proc)
            for live in xvnc_serving(runtime / "desktops" / gw.desktop_ids.get(DESKTOP, "-")
                                     / "vnc.sock"):
                os.killpg(live.pid, signal.SIGKILL)  # not started unless someone connected
            print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
            print(f"\n--- oidc-provider-mock log (tail) ---\n{idp.log_tail()}")
    finally:
        stop_pid(idp.proc)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def contexts(browser: Any) -> Iterator[Any]:
    made: list[Any] = []

    def make() -> Any:
        ctx = browser.new_context(viewport=VIEWPORT)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


# -- helpers ----------------------------------------------------------------------------------------


def ready(page: Any, what: str, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(
        "w => document.getElementById('kiosk')?.dataset.ready === w", arg=what,
        timeout=timeout_ms)


def enrol(page: Any, ks: KioskSso, name: str) -> None:
    """The kiosk made with the command line, enrolled in this browser: its sign-in screen."""
    code = ks.add_kiosk(name)
    page.goto(ks.gw.base_url + "/kiosk")
    ready(page, "pair")
    page.fill("#pair-code", code)
    page.click("#pair-submit")
    ready(page, "signin")
    assert page.locator("#kiosk-name").text_content() == name


def gateway_cookies(ctx: Any) -> dict[str, str]:
    """The gateway's cookies in this browser (the provider's, on its own host, left out)."""
    return {c["name"]: c["value"] for c in ctx.cookies() if c["name"].startswith("deskgate_")}


def jwt_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    assert len(parts) == 3, "not a compact JWS"
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return claims


def kiosk_second_factor(page: Any, ks: KioskSso, account: SsoAccount) -> str:
    """At /login/totp on the kiosk: enrol on first use, else verify; back to /kiosk."""
    page.wait_for_url(re.compile(r"/login/totp"), timeout=15_000)
    if page.locator("#totp-secret").count():
        assert account.totp_secret is None, f"{account.sub} was asked to enrol again"
        secret = page.locator("#totp-secret").text_content() or ""
        account.totp_secret = secret
        account.last_step = int(time.time() // 30)  # this step's code is used
        page.fill("#totp-code", pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Confirm").click()
        page.locator("#continue").wait_for(timeout=15_000)
        account.recovery_codes = [c.strip() for c in page.locator(".recovery-code").all_text_contents()]
        page.locator("#continue").click()
        how = "enrolled"
    else:
        assert account.recovery_codes, f"{account.sub}: no recovery code left"
        page.fill("#totp-code", account.recovery_codes.pop())  # never waits for a fresh TOTP step
        page.get_by_role("button", name="Verify").click()
        how = "recovery"
    ready(page, "desktops")
    assert page.url == ks.gw.base_url + "/kiosk", page.url
    return how


def kiosk_sso_sign_in(page: Any, ks: KioskSso, account: SsoAccount) -> None:
    """On the kiosk's sign-in screen: "Sign in with <provider>", the provider, our TOTP."""
    ready(page, "signin")
    button = sso_button(page)
    assert button.count() == 1, page.content()
    assert (button.text_content() or "").strip() == f"Sign in with {PROVIDER_LABEL}"
    button.click()
    page.wait_for_url(re.compile(r"/oauth2/authorize\?"), timeout=15_000)
    authorize_at_idp(page, account.sub)
    kiosk_second_factor(page, ks, account)
    assert page.locator("#desktops-heading").text_content() == f"Hello, {account.sub}"


def on_kiosk_signins(ks: KioskSso, sub: str) -> list[str]:
    return [ln for ln in audit_lines(ks.gw, "signin.ok") if f"user={sub}" in ln]


# -- 1. sign in with the provider on the kiosk, sign out through the provider ----------------------


def test_kiosk_sso_sign_in_and_rp_initiated_sign_out(ks: KioskSso, contexts: Any,
                                                     request: pytest.FixtureRequest) -> None:
    variant = request.node.callspec.id
    gw, idp = ks.gw, ks.idp
    name = "Hot desk SSO"
    ctx = contexts()
    page = ctx.new_page()
    enrol(page, ks, name)
    device = gateway_cookies(ctx)["deskgate_device"]
    assert "deskgate_kiosk_grant" in gateway_cookies(ctx)
    shot_to(page, f"kiosk-sso-{variant}-signin.png")

    kiosk_sso_sign_in(page, ks, ks.people[KIRA])
    desktop_id = gw.desktop_ids[DESKTOP]
    assert page.locator(".desktop-connect").evaluate_all(
        "links => links.map(a => a.dataset.desktopId)") == [desktop_id]
    cookies = gateway_cookies(ctx)
    assert "deskgate_session" in cookies and "deskgate_kiosk_grant" not in cookies, cookies
    shot_to(page, f"kiosk-sso-{variant}-desktops.png")
    signins = on_kiosk_signins(ks, KIRA)
    assert signins and f"on kiosk '{name}'" in signins[-1], signins
    assert f"idp mock; groups: {STAFF};" in signins[-1], signins[-1]

    # Sign out: our session ends, then the provider's end-session endpoint with the ID token.
    end_session = idp.discovery().get("end_session_endpoint")
    assert end_session == idp.base_url + "/oauth2/end_session", end_session
    page.locator("#kiosk-signout").click()
    page.wait_for_url(re.compile(re.escape(end_session) + r"\?"), timeout=15_000)
    shot_to(page, f"kiosk-sso-{variant}-end-session.png")
    query = parse_qs(urlsplit(page.url).query)
    assert query.get("post_logout_redirect_uri") == [gw.base_url + "/login"], query
    assert query.get("client_id") == [CLIENT_ID], query
    claims = jwt_claims(query.get("id_token_hint", [""])[0])
    assert claims["sub"] == KIRA and claims["iss"] == idp.issuer, claims
    assert "deskgate_session" not in gateway_cookies(ctx)
    assert any(f"user={KIRA}" in ln for ln in audit_lines(gw, "signout")), audit_lines(gw)
    # The mock's end session is a dummy (it keeps no session, and says so); its button posts to
    # its confirm endpoint, which sends the browser to post_logout_redirect_uri.
    assert "does not keep track of a user session" in page.content()
    with page.expect_response(lambda r: "/oauth2/end_session/confirm" in r.url) as info:
        page.get_by_role("button", name="End session").click()
    confirm = info.value
    assert confirm.status == 302 and confirm.headers.get("location") == gw.base_url + "/login", (
        confirm.status, confirm.headers)
    # /login sends a kiosk (its device cookie) to its own sign-in screen.
    try:
        ready(page, "signin")
    except Exception as exc:  # noqa: BLE001 - say where the browser ended up instead
        shot_to(page, f"failed-kiosk-sso-{variant}-after-end-session.png")
        raise AssertionError(f"back from the provider's sign-out, the kiosk shows {page.url}"
                             f" ({page.title()!r}), not its sign-in screen") from exc
    assert page.url == gw.base_url + "/kiosk", page.url
    shot_to(page, f"kiosk-sso-{variant}-signed-out.png")
    cookies = gateway_cookies(ctx)
    assert "deskgate_session" not in cookies and set(cookies) <= GATEWAY_COOKIES, cookies
    assert cookies["deskgate_device"] == device
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0

    # The next person: "Sign in with" shows the provider's authorize page again (nobody is
    # signed in silently), and they sign in as themselves.
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if CALLBACK_PATH in r.url else None)
    sso_button(page).click()
    page.wait_for_url(re.compile(r"/oauth2/authorize\?"), timeout=15_000)
    assert page.url.startswith(idp.base_url + "/oauth2/authorize?"), page.url
    page.get_by_role("button", name=f"Authorize as {KIRA}").wait_for()
    page.wait_for_timeout(1000)
    assert callbacks == [] and "/oauth2/authorize?" in page.url, (callbacks, page.url)
    shot_to(page, f"kiosk-sso-{variant}-idp-asks-again.png")
    authorize_at_idp(page, LENA)
    kiosk_second_factor(page, ks, ks.people[LENA])
    assert page.locator("#desktops-heading").text_content() == f"Hello, {LENA}"
    assert len(callbacks) == 1, callbacks
    lena = on_kiosk_signins(ks, LENA)
    assert lena and f"on kiosk '{name}'" in lena[-1], lena


# -- 2. a spent sign-in grant binds nothing: an ordinary session elsewhere --------------------------


def test_spent_kiosk_grant_gives_an_ordinary_session(ks: KioskSso, contexts: Any) -> None:
    gw = ks.gw
    lena = ks.people[LENA]
    kiosk_ctx = contexts()
    kiosk = kiosk_ctx.new_page()
    enrol(kiosk, ks, "Hot desk SSO 2")
    grant = gateway_cookies(kiosk_ctx)["deskgate_kiosk_grant"]
    kiosk_sso_sign_in(kiosk, ks, lena)  # spends that grant
    assert "on kiosk 'Hot desk SSO 2'" in on_kiosk_signins(ks, LENA)[-1]

    # An ordinary browser (no device cookie) holding the spent grant: its OIDC callback gives an
    # ordinary session, which lands on "/", not on a kiosk.
    ctx = contexts()
    ctx.add_cookies([{"name": "deskgate_kiosk_grant", "value": grant, "url": gw.base_url}])
    page = ctx.new_page()
    how = sso_sign_in(page, gw, lena)  # waits for gw.base_url + "/" after the second factor
    assert how in ("totp", "recovery"), how
    assert page.url == gw.base_url + "/"
    assert page.locator("header .user-name").text_content() == LENA
    latest = on_kiosk_signins(ks, LENA)[-1]
    assert "on kiosk" not in latest, latest
    assert "deskgate_device" not in gateway_cookies(ctx)
    page.goto(gw.base_url + "/kiosk")
    ready(page, "pair")  # this browser is no kiosk: its session is not bound to one
