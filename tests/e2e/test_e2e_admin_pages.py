"""Admin pages in Chromium: create a desktop, assign it, put it in maintenance, find it in the
audit trail and delete it, with no script errors and the desktop's password never shown."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import Account, Gateway, Watched, sign_in

pytestmark = pytest.mark.e2e

VNC_PASSWORD = "e2e-Admin-Pages-Pw"


def test_admin_pages_smoke(gateway: Gateway, new_page: Callable[..., Watched],
                           artifacts: Path) -> None:
    # An admin of its own: a TOTP code is good once, so sharing one with other tests could clash.
    admin = Account("pages-admin", f"pages-{os.urandom(4).hex()}-Pw")
    gateway.cli("user", "add", admin.name, "--admin", "--password-stdin", stdin=admin.password + "\n")
    w = new_page()
    page = w.page
    sign_in(page, gateway, admin)
    base = gateway.base_url

    page.goto(base + "/admin/desktops")
    page.fill("#new-name", "E2E lab")
    page.select_option("#new-provider", "static")
    page.fill("#new-host", "127.0.0.1")
    page.fill("#new-port", "5999")
    page.fill("#new-password", VNC_PASSWORD)
    page.get_by_role("button", name="Add desktop").click()
    page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    assert "Desktop created" in page.inner_text("[role=status]")

    page.select_option("#assign-user-id", label="bob (local)")
    page.get_by_role("button", name="Assign user").click()
    page.wait_for_url(re.compile(r"info=assigned$"))
    page.check("input[name=maintenance]")
    page.get_by_role("button", name="Save changes").click()
    page.wait_for_url(re.compile(r"info=saved$"))
    assert page.locator("#maintenance-flag").is_visible()
    assert page.locator("#assigned-users").inner_text().strip().startswith("bob")
    page.screenshot(path=str(artifacts / "admin-desktop.png"), full_page=True)

    page.goto(base + "/admin/audit?desktop=E2E+lab")
    assert page.locator("#audit-table tbody tr").count() >= 3
    page.goto(base + "/admin/users?q=bob")
    assert page.locator("#users-table tbody tr").count() == 1

    page.goto(base + "/admin/desktops")
    page.get_by_role("link", name="E2E lab").click()
    page.get_by_role("button", name="Delete…").click()
    page.locator("#confirm-delete").wait_for()
    page.get_by_role("button", name="Delete for good").click()
    page.wait_for_url(re.compile(r"/admin/desktops\?info=deleted$"))
    assert page.get_by_role("link", name="E2E lab").count() == 0

    assert w.real_console_errors() == []
    assert all(VNC_PASSWORD.encode() not in body for _, body in w.received_bodies())
