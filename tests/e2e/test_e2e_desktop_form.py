"""The "Add a desktop" form in Chromium shows only the fields of the chosen provider and
protocol; without script every field shows with its note and the form still works."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import VIEWPORT, Account, Gateway, Watched, sign_in

pytestmark = pytest.mark.e2e

STATIC = ["new-host", "new-port", "new-protocol"]
RDP = ["new-rdp-credentials", "new-rdp-domain", "new-rdp-security", "new-rdp-cert-policy",
       "new-rdp-ca", "new-rdp-keyboard", "new-rdp-fingerprint"]
RDP_SHARED = ["new-rdp-user"]
ALL = ["new-name", "new-provider", *STATIC, "new-password", *RDP, *RDP_SHARED]


def visible(page: Any) -> set[str]:
    """The ids of the form's controls a person can see (laid out with a size, not hidden)."""
    return {i for i in ALL if page.locator(f"#{i}").is_visible()
            and (page.locator(f"#{i}").bounding_box() or {}).get("height", 0) > 0}


@pytest.fixture
def admin_state(gateway: Gateway, new_page: Callable[..., Watched]) -> dict[str, Any]:
    tag = os.urandom(4).hex()
    admin = Account(f"form-admin-{tag}", f"form-{tag}-Pw")
    gateway.cli("user", "add", admin.name, "--admin", "--password-stdin",
                stdin=admin.password + "\n")
    page = new_page().page
    sign_in(page, gateway, admin)
    state: dict[str, Any] = page.context.storage_state()
    return state


def test_the_form_shows_the_fields_of_the_chosen_protocol(
        gateway: Gateway, new_page: Callable[..., Watched], admin_state: dict[str, Any]) -> None:
    w = new_page(admin_state)
    page = w.page
    page.goto(gateway.base_url + "/admin/desktops")

    page.select_option("#new-provider", "static")
    page.select_option("#new-protocol", "vnc")
    assert visible(page) == {"new-name", "new-provider", *STATIC, "new-password"}
    labels = " ".join(page.locator("#create-desktop label:visible").all_inner_texts())
    assert "RDP" not in labels, labels  # what a person reads: nothing about RDP
    assert "Password (VNC, optional)" in labels
    assert page.get_attribute("#new-port", "placeholder") == "5901"

    page.select_option("#new-protocol", "rdp")
    assert visible(page) == set(ALL)
    assert page.get_attribute("#new-port", "placeholder") == "3389"
    page.select_option("#new-rdp-credentials", "per_user")
    assert visible(page) == {"new-name", "new-provider", *STATIC, *RDP}

    page.select_option("#new-provider", "local")
    assert visible(page) == {"new-name", "new-provider"}
    assert page.locator("#local-note").is_visible()

    # A local desktop: filled-in fields of other choices are not sent.
    page.select_option("#new-provider", "static")
    page.select_option("#new-protocol", "vnc")
    page.fill("#new-host", "10.9.9.9")
    page.fill("#new-password", "never-sent-pw")
    page.select_option("#new-provider", "local")
    page.fill("#new-name", "Form local")
    page.get_by_role("button", name="Add desktop").click()
    page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    listing = gateway.cli("desktop", "list")
    line = next(x for x in listing.splitlines() if "Form local" in x)
    assert "local" in line and "on this host" in line and "password set" not in line

    page.goto(gateway.base_url + "/admin/desktops")
    page.fill("#new-name", "Form VNC")
    page.select_option("#new-provider", "static")
    page.select_option("#new-protocol", "vnc")
    page.fill("#new-host", "127.0.0.1")
    page.fill("#new-port", "5998")
    page.get_by_role("button", name="Add desktop").click()
    page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    assert "VNC" in page.inner_text(".admin-head")

    # The certificate policy is chosen on the form, and the desktop's page says what it does.
    page.goto(gateway.base_url + "/admin/desktops")
    page.fill("#new-name", "Form RDP tofu")
    page.select_option("#new-provider", "static")
    page.select_option("#new-protocol", "rdp")
    page.fill("#new-host", "127.0.0.1")
    page.fill("#new-port", "3389")
    page.fill("#new-rdp-user", "anna")
    page.select_option("#new-rdp-cert-policy", "tofu")
    page.get_by_role("button", name="Add desktop").click()
    page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    assert "certificate trusted on first use" in page.inner_text("body")
    assert w.real_console_errors() == []


def test_without_script_every_field_shows_and_the_form_still_works(
        gateway: Gateway, browser: Any, admin_state: dict[str, Any]) -> None:
    ctx = browser.new_context(viewport=VIEWPORT, storage_state=admin_state,
                              java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.goto(gateway.base_url + "/admin/desktops")
        assert visible(page) == set(ALL)
        labels = page.locator("#create-desktop").inner_text()
        assert "(static only)" in labels and "(RDP only)" in labels
        page.fill("#new-name", "NoJS VNC")
        page.select_option("#new-provider", "static")
        page.fill("#new-host", "127.0.0.1")
        page.fill("#new-port", "5997")
        page.get_by_role("button", name="Add desktop").click()
        page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
        page.goto(gateway.base_url + "/admin/desktops")
        page.fill("#new-name", "NoJS local")
        page.select_option("#new-provider", "local")
        page.fill("#new-host", "10.9.9.9")  # does not apply: ignored
        page.fill("#new-password", "ignored-pw-1")
        page.get_by_role("button", name="Add desktop").click()
        page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    finally:
        ctx.close()
    listing = gateway.cli("desktop", "list")
    vnc = next(x for x in listing.splitlines() if "NoJS VNC" in x)
    local = next(x for x in listing.splitlines() if "NoJS local" in x)
    assert "vnc 127.0.0.1:5997" in vnc
    assert "on this host" in local and "password set" not in local
