"""The sessions dashboard in Chromium with a real session: session id, links from user and
desktop to their pages, the desktop's address, a readable browser and OS, labelled directions,
filtering, sorting, history pages beyond 25 rows with a link to each session's audit, and
failed attempts in a table of their own."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    STATIC_DESKTOP,
    VIEWPORT,
    Account,
    Gateway,
    LoopThread,
    Relay,
    Watched,
    open_desktop,
    sign_in,
    wait_until,
)

from gateway.config import load_settings
from gateway.model import Session, SessionState
from gateway.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

OLD_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"


def state_of(browser: Any, gateway: Gateway, account: Account) -> dict[str, Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        sign_in(ctx.new_page(), gateway, account)
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


async def add_history(gateway: Gateway, user: str, count: int, failed: int) -> None:
    """Closed sessions (bytes to the browser: 1000 * (i + 1)) and failed attempts of ``user``,
    written through the gateway's own store."""
    store = SQLiteStore(load_settings(gateway.config).database_path)
    await store.open()
    try:
        u = await store.get_user_by_name(user)
        d = await store.get_desktop_by_name(STATIC_DESKTOP)
        assert u is not None and d is not None
        now = time.time() - 3600
        rows = [Session(f"hist-{user}-{i:02d}", u.id, d.id, "ws", SessionState.CLOSED,
                        now + i, now + i + 30, "closed by the user", False, 10 * i,
                        1000 * (i + 1), "192.0.2.10", OLD_UA) for i in range(count)]
        rows += [Session(f"fail-{user}-{i}", u.id, d.id, "ws", SessionState("failed"),
                         now + 100 + i, now + 130 + i, "the desktop is not answering", True, 0,
                         0, "198.51.100.9", OLD_UA) for i in range(failed)]
        await asyncio.gather(*(store.create_session(s) for s in rows))
    finally:
        await store.close()


def cell(row: Any, col: str) -> Any:
    return row.locator(f'td[data-col="{col}"]')


def column(page: Any, table: str, col: str) -> list[str]:
    return [c.strip() for c in page.locator(
        f'#{table} tbody tr:not([hidden]) td[data-col="{col}"]').all_inner_texts()]


def test_sessions_dashboard_features_with_a_real_session(
        gateway: Gateway, browser: Any, new_page: Callable[..., Watched], relay: Relay,
        loop_thread: LoopThread, artifacts: Path) -> None:
    tag = os.urandom(3).hex()
    admin = Account(f"dash-admin-{tag}", f"dash-{tag}-Pw")
    user = Account(f"dash-user-{tag}", f"user-{tag}-Pw")
    gateway.cli("user", "add", admin.name, "--admin", "--password-stdin", stdin=admin.password + "\n")
    gateway.cli("user", "add", user.name, "--password-stdin", stdin=user.password + "\n")
    gateway.cli("assign", STATIC_DESKTOP, user.name)
    admin_state, user_state = state_of(browser, gateway, admin), state_of(browser, gateway, user)
    loop_thread.run(add_history(gateway, user.name, count=30, failed=2))

    board = new_page(admin_state)
    page = board.page
    page.goto(gateway.base_url + "/admin/sessions")
    page.wait_for_function("() => document.getElementById('stream-state').textContent === 'live'")

    person = new_page(user_state)
    open_desktop(person.page, gateway, STATIC_DESKTOP)
    sid = person.page.evaluate("() => document.getElementById('deskgate-client').dataset.sessionId")
    row = page.locator(f'#live-sessions tr[data-session-id="{sid}"]')
    row.wait_for(timeout=10_000)

    # What the admin reads in the live row.
    assert cell(row, "session").inner_text() == sid[:8]
    assert cell(row, "session").get_attribute("title") == sid
    user_link = cell(row, "user").get_by_role("link", name=user.name)
    assert re.fullmatch(r"/admin/users/\d+", user_link.get_attribute("href") or "")
    desktop_link = cell(row, "desktop").get_by_role("link", name=STATIC_DESKTOP)
    assert desktop_link.get_attribute("href") == (
        f"/admin/desktops/{gateway.desktop_ids[STATIC_DESKTOP]}")
    assert cell(row, "address").inner_text() == f"127.0.0.1:{relay.port}"
    assert re.fullmatch(r"(Headless)?Chrome \d+ on Linux", cell(row, "browser").inner_text())
    assert "Mozilla" in (cell(row, "browser").get_attribute("title") or "")
    headers = page.locator("#live-sessions thead").inner_text()
    assert "TO DESKTOP" in headers.upper() and "TO BROWSER" in headers.upper()
    wait_until(lambda: re.fullmatch(r"\d.* · \d.*/s", cell(row, "to_browser").inner_text())
               and not cell(row, "to_browser").inner_text().startswith("0 B"), 10,
               "bytes to the browser")
    assert re.fullmatch(r"\d.* · \d.*/s", cell(row, "to_desktop").inner_text())
    page.screenshot(path=str(artifacts / "sessions-dashboard.png"), full_page=True)

    # Filter: the live row stays for its user's name, goes for a name nobody has.
    page.fill("#session-search", "nobody-has-this-name")
    wait_until(lambda: row.is_hidden(), 5, "live row hidden by the filter")
    assert page.locator("#live-empty").inner_text() == "No live session matches the filter."
    page.fill("#session-search", user.name)
    wait_until(lambda: row.is_visible(), 5, "live row shown again")
    assert page.locator("#filter-count").inner_text() == "1 of 1 live sessions match"

    # History of that user: 25 on the first page, the rest on the next; failed attempts apart.
    wait_until(lambda: page.evaluate("() => document.getElementById('sessions-dashboard')"
                                     ".dataset.search") == user.name, 10, "filtered snapshot")
    ids = column(page, "recent-sessions", "session")
    assert len(ids) == 25 and all(i.startswith("hist-") for i in ids)
    failed_ids = page.locator("#failed-sessions tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.sessionId)")
    assert sorted(failed_ids) == [f"fail-{user.name}-0", f"fail-{user.name}-1"]
    assert not any("fail-" in (r or "") for r in page.locator("#recent-sessions tbody tr")
                   .evaluate_all("rows => rows.map(r => r.dataset.sessionId)"))
    assert column(page, "failed-sessions", "close_reason")[0] == "The desktop is not answering"
    assert column(page, "failed-sessions", "browser")[0] == "Firefox 121 on Windows 10"

    page.get_by_role("button", name="Older").click()
    wait_until(lambda: page.inner_text("#page-label") == "Page 2"
               and len(column(page, "recent-sessions", "session")) == 5, 10, "page 2")
    assert page.locator("#page-older").is_disabled()
    page.get_by_role("button", name="Newer").click()
    wait_until(lambda: page.inner_text("#page-label") == "Page 1", 10, "page 1 again")

    # Sorting by bytes to the browser, both ways (the figures were made to differ).
    sort = page.locator("#recent-sessions thead").get_by_role("button", name="To browser")
    sort.click()
    wait_until(lambda: page.locator("#recent-sessions th[aria-sort=ascending]").count() == 1, 5,
               "ascending")
    ascending = page.locator('#recent-sessions td[data-col="to_browser"]').evaluate_all(
        "cells => cells.map(c => Number(c.dataset.sort))")
    assert ascending == sorted(ascending) and len(set(ascending)) == 25
    sort.click()
    wait_until(lambda: page.locator('#recent-sessions td[data-col="to_browser"]').evaluate_all(
        "cells => cells.map(c => Number(c.dataset.sort))") == sorted(ascending, reverse=True),
        5, "descending (kept across snapshots)")

    # The user link leads to the user's admin page; each closed session links to its audit.
    audit = page.locator("#recent-sessions a.audit-link").first.get_attribute("href") or ""
    assert audit.startswith("/admin/audit?") and f"user={user.name}" in audit
    user_link.click()
    page.wait_for_url(re.compile(r"/admin/users/\d+$"))
    assert user.name in page.inner_text("h1")
    person.page.close()
    assert [e for e in board.real_console_errors() if "favicon" not in e] == []
