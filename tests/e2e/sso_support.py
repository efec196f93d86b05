"""Helpers for the single sign-on browser tests: a real OpenID provider (oidc-provider-mock in its
own virtualenv, started and stopped by PID), a gateway configured for it, and the browser's
journey through the provider's authorize page and our second factor.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from e2e_support import (
    REPO,
    Account,
    Gateway,
    deskgate_exe,
    free_port,
    healthy,
    run_cli,
    shot_to,
    stop_pid,
    wait_until,
)

OIDC_MOCK = REPO / ".venv-oidc" / "bin" / "oidc-provider-mock"
PROVIDER_ID = "mock"
PROVIDER_LABEL = "Mock IdP"
CALLBACK_PATH = f"/login/oidc/{PROVIDER_ID}/callback"  # each provider has its own redirect URI
CLIENT_ID = "deskgate"
CLIENT_SECRET = "s3cret-client"
ADMIN_GROUP = "deskgate-admins"


# -- the identity provider ------------------------------------------------------------------------


@dataclass
class MockIdP:
    """oidc-provider-mock on 127.0.0.1 (its issuer follows the Host header: one base URL only)."""

    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def issuer(self) -> str:
        return self.base_url

    def discovery(self) -> dict[str, Any]:
        return _get_json(self.base_url + "/.well-known/openid-configuration")

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        """PUT /users/<sub>: replaces every claim of that user (the mock stores the body as is)."""
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.base_url}/users/{sub}",
            data=json.dumps(claims).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.status == 204, resp.status

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def user_claims(sub: str, groups: list[str], **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "preferred_username": sub, "email": f"{sub}@example.org", "groups": groups, **extra}


def start_mock_idp(workdir: Path, users: list[dict[str, Any]], *,
                   public_host: str = "127.0.0.1") -> MockIdP:
    """The provider listens on 127.0.0.1; ``public_host`` is the name it is reached by (and its
    issuer's): ``localhost`` puts it on another site than a gateway at 127.0.0.1, as an
    organisation's identity provider usually is (SameSite cookies then behave as in production)."""
    if not OIDC_MOCK.exists():
        pytest.skip(f"{OIDC_MOCK} is missing: run `make oidc-mock`")
    port = free_port()
    base = f"http://{public_host}:{port}"
    args = [str(OIDC_MOCK), "--host", "127.0.0.1", "--port", str(port)]
    for claims in users:
        args += ["--user-claims", json.dumps(claims)]
    log_path = workdir / "oidc-mock.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    idp = MockIdP(base, proc, log_path)

    def ready() -> bool | str:
        if proc.poll() is not None:
            return "exited"
        try:
            return idp.discovery().get("issuer") == base
        except (OSError, urllib.error.URLError, ValueError):
            return False

    try:
        wait_until(ready, 20, "the OIDC provider's discovery document", 0.1)
        assert proc.poll() is None, f"oidc-provider-mock exited {proc.returncode}:\n{idp.log_tail()}"
    except BaseException:
        stop_pid(proc)
        raise
    return idp


# -- a gateway that trusts the provider -----------------------------------------------------------


def oidc_table(idp: MockIdP, require_totp: bool = True) -> str:
    # The mock's scopes_supported has no "groups" scope; its custom "groups" claim comes anyway.
    return (
        "\n[oidc.mock]\n"
        f'display_name = "{PROVIDER_LABEL}"\n'
        f'issuer = "{idp.issuer}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{CLIENT_SECRET}"\n'
        'scopes = ["openid", "profile", "email"]\n'
        'username_claim = "preferred_username"\n'
        'groups_claim = "groups"\n'
        f'admin_group = "{ADMIN_GROUP}"\n'
        f"require_totp = {'true' if require_totp else 'false'}\n"
        "trust_idp_mfa = false\n"
    )


def start_sso_gateway(data: Path, idp: MockIdP, *, require_totp: bool = True,
                      more_toml: str = "", env: dict[str, str] | None = None
                      ) -> tuple[Gateway, subprocess.Popen[bytes]]:
    """`deskgate init`, our provider's table (and ``more_toml``) appended to its configuration,
    `deskgate serve` (with ``env`` added to its environment: ``DESKGATE_SECTION_KEY`` settings)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
                  "--public-url", base, "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, f"no admin password in init output: {out!r}"
    config = data / "deskgate.toml"
    with open(config, "a", encoding="utf-8") as f:
        f.write(oidc_table(idp, require_totp) + more_toml)
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(config), "serve"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=REPO, start_new_session=True, env={**os.environ, **(env or {})},
        )
    gw = Gateway(base_url=base, data_dir=data, config=config, log_path=log_path,
                 admin=Account("admin", m.group(1)), accounts={}, desktop_ids={}, pid=proc.pid)
    try:
        wait_until(lambda: healthy(base) or (proc.poll() is not None and "exited"), 30, "GET /healthz")
        assert proc.poll() is None, f"deskgate serve exited {proc.returncode}:\n{gw.log_tail()}"
    except BaseException:
        stop_pid(proc)
        raise
    return gw, proc


def audit_lines(gw: Gateway, kind: str | None = None) -> list[str]:
    lines = gw.cli("audit", "--limit", "500").splitlines()
    return [ln for ln in lines if kind is None or re.search(rf"\s{re.escape(kind)}\s", ln)]


# -- the browser's journey --------------------------------------------------------------------------


@dataclass
class SsoAccount:
    """What a person keeps between sign-ins: the TOTP secret and unused recovery codes."""

    sub: str
    totp_secret: str | None = None
    recovery_codes: list[str] = field(default_factory=list)
    last_step: int | None = None  # the last TOTP time step used (codes are single use per step)
    callback_urls: list[str] = field(default_factory=list)


def sso_button(page: Any) -> Any:
    return page.locator(f'.sso-button[data-provider="{PROVIDER_ID}"]')


def start_at_idp(page: Any, gw: Gateway, shots: str | None = None) -> None:
    """From /login, click our provider's button; waits for the provider's authorize page."""
    page.goto(gw.base_url + "/login")
    # The contract said <button class="sso-button"> in a form POSTing /login/oidc/<id>; the back end
    # ships <a class="sso-button" href="/login/oidc/<id>"> (its CSP has form-action 'self', which
    # Chromium also applies to the redirect to the provider). Either starts the sign-in.
    button = sso_button(page)
    assert button.count() == 1, page.content()
    assert (button.text_content() or "").strip() == f"Sign in with {PROVIDER_LABEL}"
    if shots:
        shot_to(page, f"{shots}-login.png")
    button.click()
    page.wait_for_url(re.compile(r"/oauth2/authorize\?"), timeout=15_000)


def authorize_at_idp(page: Any, sub: str, predefined: bool = True) -> None:
    """On the mock's authorize page: the one-click button of a predefined user, or the Subject field."""
    if predefined:
        page.get_by_role("button", name=f"Authorize as {sub}").click()
    else:
        page.fill("#subject-input", sub)
        page.get_by_role("button", name="Authorize", exact=True).click()


def complete_second_factor(page: Any, gw: Gateway, account: SsoAccount, shots: str | None = None) -> str:
    """At /login/totp: enrol on first use (keeping secret and recovery codes), else verify.

    Returns how: "enrolled", "totp" or "recovery". A TOTP code is accepted once per 30-s step,
    so a step already used is answered with a recovery code instead of waiting.
    """
    page.wait_for_url(re.compile(r"/login/totp"), timeout=15_000)
    if page.locator("#totp-secret").count():
        assert account.totp_secret is None, f"{account.sub} was asked to enrol again"
        secret = page.locator("#totp-secret").text_content()
        assert secret and re.fullmatch(r"[A-Z2-7]+=*", secret), f"bad secret text {secret!r}"
        account.totp_secret = secret
        if shots:
            shot_to(page, f"{shots}-totp-enrol.png")
        account.last_step = int(time.time() // 30)
        page.fill("#totp-code", pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Confirm").click()
        page.locator("#continue").wait_for(timeout=15_000)
        account.recovery_codes = [c.strip() for c in page.locator(".recovery-code").all_text_contents()]
        assert len(account.recovery_codes) >= 2 and all(account.recovery_codes), account.recovery_codes
        if shots:
            shot_to(page, f"{shots}-recovery.png")
        page.locator("#continue").click()
        how = "enrolled"
    else:
        assert account.totp_secret, f"{account.sub}: asked to verify TOTP but never enrolled"
        step = int(time.time() // 30)
        if account.last_step is not None and step <= account.last_step:
            assert account.recovery_codes, "no recovery code left and this TOTP step is used"
            code, how = account.recovery_codes.pop(), "recovery"
        else:
            account.last_step = step
            code, how = pyotp.TOTP(account.totp_secret).now(), "totp"
        page.fill("#totp-code", code)
        page.get_by_role("button", name="Verify").click()
    page.wait_for_url(gw.base_url + "/", timeout=15_000)
    return how


def sso_sign_in(page: Any, gw: Gateway, account: SsoAccount, predefined: bool = True,
                shots: str | None = None) -> str:
    """The whole journey: our login page, the provider, the callback, our second factor, the portal."""
    callbacks: list[str] = []

    def on_request(req: Any) -> None:
        if CALLBACK_PATH in req.url:
            callbacks.append(req.url)

    page.on("request", on_request)
    try:
        start_at_idp(page, gw, shots)
        if shots:
            shot_to(page, f"{shots}-idp-authorize.png")
        authorize_at_idp(page, account.sub, predefined)
        how = complete_second_factor(page, gw, account, shots)
    finally:
        page.remove_listener("request", on_request)
    assert len(callbacks) == 1, callbacks
    account.callback_urls += callbacks
    return how


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def authorize_outside_browser(authorize_url: str, sub: str) -> str:
    """POST sub=<sub> to the provider's authorize URL (query kept); its redirect, not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(authorize_url, data=urllib.parse.urlencode({"sub": sub}).encode())  # noqa: S310
    try:
        opener.open(req, timeout=10)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code in (302, 303):
                return str(exc.headers.get("Location", ""))
            raise
    raise AssertionError("the provider did not redirect")


def csrf_token(page: Any) -> str:
    """The page's CSRF token (every signed-in page has the sign-out form)."""
    token = page.locator('form.logout-form input[name="_csrf"]').get_attribute("value")
    assert token, "no CSRF token on the page"
    return str(token)


def fetch_status(page: Any, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    """Status of a same-origin fetch() made by the page (its cookies, no redirect following)."""
    status: int = page.evaluate(
        """async ([url, method, headers]) => {
            const r = await fetch(url, {method, headers, credentials: 'same-origin', redirect: 'manual'});
            return r.status;
        }""",
        [url, method, headers or {}],
    )
    return status
