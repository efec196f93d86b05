"""The live sessions dashboard in Chromium: a user's session appears live, the admin messages,
watches (view only, enforced by the gateway) and disconnects it with a reason."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    STATIC_DESKTOP,
    VIEWPORT,
    Account,
    Gateway,
    Watched,
    open_desktop,
    screen_box,
    sign_in,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
    wait_state,
    wait_until,
)
from pngpixels import count, decode, is_ansi_blue, is_ansi_green

pytestmark = pytest.mark.e2e

# Records, in the dashboard page, when each live-session row first appeared (wall clock, ms).
ROW_OBSERVER = """() => {
    window.rowSeen = {};
    const body = document.querySelector('#live-sessions tbody');
    new MutationObserver((records) => {
        for (const r of records) {
            for (const n of r.addedNodes) {
                if (n.dataset && n.dataset.sessionId && !(n.dataset.sessionId in window.rowSeen)) {
                    window.rowSeen[n.dataset.sessionId] = Date.now();
                }
            }
        }
    }).observe(body, {childList: true});
}"""


def _state(browser: Any, gw: Gateway, account: Account) -> dict[str, Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        sign_in(ctx.new_page(), gw, account)
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def accounts(browser: Any, gateway: Gateway) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(admin storage state, user storage state): accounts of their own, both with TOTP."""
    suffix = os.urandom(4).hex()
    admin = Account(f"sessions-admin-{suffix}", f"admin-{suffix}-Pw")
    user = Account(f"erin-{suffix}", f"erin-{suffix}-Pw")
    gateway.cli("user", "add", admin.name, "--admin", "--password-stdin", stdin=admin.password + "\n")
    gateway.cli("user", "add", user.name, "--password-stdin", stdin=user.password + "\n")
    gateway.cli("assign", STATIC_DESKTOP, user.name)
    yield _state(browser, gateway, admin), _state(browser, gateway, user)


def _dashboard(new_page: Callable[..., Watched], gw: Gateway, state: dict[str, Any]) -> Watched:
    w = new_page(state)
    w.page.goto(gw.base_url + "/admin/sessions")
    w.page.wait_for_function(
        "() => document.getElementById('stream-state').textContent === 'live'", timeout=10_000)
    w.page.evaluate(ROW_OBSERVER)
    return w


def _open_user_session(new_page: Callable[..., Watched], gw: Gateway, state: dict[str, Any],
                       dashboard: Any) -> tuple[Watched, str, tuple[int, int, int, int]]:
    """The user opens the static desktop; returns (page, session id, xterm box) once the
    dashboard shows the session, printing how long that took."""
    user = new_page(state)
    clicked = time.time()
    open_desktop(user.page, gw, STATIC_DESKTOP)
    connected = time.time()
    sid = user.page.evaluate("() => document.getElementById('deskgate-client').dataset.sessionId")
    dashboard.wait_for_selector(f'#live-sessions tr[data-session-id="{sid}"]', timeout=5_000)
    seen = dashboard.evaluate("sid => window.rowSeen[sid]", sid) / 1000.0
    print(f"\ndashboard showed the new session {seen - clicked:.3f} s after the page was opened,"
          f" {seen - connected:+.3f} s after the client reported 'connected'")
    _, box = wait_for_xterm(user.page)
    return user, sid, box


def _row(dashboard: Any, sid: str) -> Any:
    return dashboard.locator(f'#live-sessions tr[data-session-id="{sid}"]')


def test_message_and_watch_view_only(
    gateway: Gateway, accounts: tuple[dict[str, Any], dict[str, Any]],
    new_page: Callable[..., Watched], artifacts: Path,
) -> None:
    admin_state, user_state = accounts
    board = _dashboard(new_page, gateway, admin_state)
    dashboard = board.page
    user, sid, box = _open_user_session(new_page, gateway, user_state, dashboard)
    page = user.page
    row = _row(dashboard, sid)
    assert row.locator('[data-col="desktop"]').inner_text() == STATIC_DESKTOP
    assert row.locator('[data-col="watchers"]').inner_text() == "0"
    try:
        # The admin's message appears as a banner in the user's client.
        row.locator('button[data-action="message"]').click()
        dashboard.fill("#action-text", "Please save your work: maintenance at noon.")
        dashboard.click("#action-submit")
        page.locator("#admin-message").wait_for(state="visible", timeout=5_000)
        assert "maintenance at noon" in page.inner_text("#admin-message-text")
        assert page.locator("#watched-indicator").is_hidden()
        page.screenshot(path=str(artifacts / "admin-message-banner.png"))
        page.click("#admin-message-dismiss")
        assert page.locator("#admin-message").is_hidden()

        # The user's xterm turns green.
        type_into_xterm(page, box, r"printf '\033[42m'; clear")
        wait_for_colour(page, is_ansi_green, 100_000, "the user's xterm to turn green")

        # The admin watches: the same pixels, and the user sees that they are watched.
        watch = new_page(admin_state)
        wpage = watch.page
        wpage.goto(f"{gateway.base_url}/admin/sessions/{sid}/watch")
        wpage.wait_for_function(
            "() => document.getElementById('deskgate-watch').dataset.state === 'connected'",
            timeout=15_000)
        wait_for_colour(wpage, is_ansi_green, 100_000, "the watched xterm to show green")
        page.locator("#watched-indicator").wait_for(state="visible", timeout=5_000)
        wait_until(lambda: _row(dashboard, sid).locator('[data-col="watchers"]').inner_text() == "1",
                   5, "the dashboard to count one watcher")
        user_img = decode(page.screenshot(path=str(artifacts / "watched-user.png")))
        admin_img = decode(wpage.screenshot(path=str(artifacts / "watched-admin.png")))
        user_green = count(user_img, is_ansi_green, screen_box(page), step=4)
        admin_green = count(admin_img, is_ansi_green, screen_box(wpage), step=4)
        assert abs(user_green - admin_green) < 0.1 * user_green, (user_green, admin_green)

        # Keys typed in the admin's view never reach the desktop: the xterm stays green.
        left, top, right, bottom = screen_box(wpage)
        wpage.mouse.click((left + right) / 2, (top + bottom) / 2)
        wpage.keyboard.type(r"printf '\033[44m'; clear", delay=15)
        wpage.keyboard.press("Enter")
        time.sleep(2)
        after = decode(page.screenshot(path=str(artifacts / "watched-after-admin-typed.png")))
        assert count(after, is_ansi_blue, screen_box(page), step=4) < 1_000
        assert count(after, is_ansi_green, screen_box(page), step=4) >= 0.9 * user_green

        # Closing the watch clears the indicator.
        watch.page.close()
        page.locator("#watched-indicator").wait_for(state="hidden", timeout=5_000)
        assert board.real_console_errors() == [] and user.real_console_errors() == []
    finally:
        if page.locator("#deskgate-client").get_attribute("data-state") == "connected":
            type_into_xterm(page, box, r"printf '\033[0m'; clear")  # leave a white xterm


def test_disconnect_with_reason_is_final(
    gateway: Gateway, accounts: tuple[dict[str, Any], dict[str, Any]],
    new_page: Callable[..., Watched], artifacts: Path,
) -> None:
    admin_state, user_state = accounts
    dashboard = _dashboard(new_page, gateway, admin_state).page
    user, sid, _ = _open_user_session(new_page, gateway, user_state, dashboard)
    page = user.page

    _row(dashboard, sid).locator('button[data-action="disconnect"]').click()
    dashboard.fill("#action-text", "the desktop is being moved to a new host")
    dashboard.click("#action-submit")

    wait_state(page, "disconnected", timeout_ms=10_000)
    assert "moved to a new host" in page.inner_text("#status-detail")
    # The closed session shows in the dashboard with the admin's reason.
    dashboard.wait_for_selector(f'#recent-sessions tr[data-session-id="{sid}"]', timeout=5_000)
    reason = dashboard.inner_text(f'#recent-sessions tr[data-session-id="{sid}"] .close-reason')
    assert "moved to a new host" in reason
    assert _row(dashboard, sid).count() == 0
    # No automatic reconnect: still disconnected a few seconds later, with the same session.
    time.sleep(4)
    assert page.locator("#deskgate-client").get_attribute("data-state") == "disconnected"
    assert page.evaluate("() => document.getElementById('deskgate-client').dataset.sessionId") == sid
    assert page.locator("#reconnect").is_visible()
    page.screenshot(path=str(artifacts / "admin-disconnected.png"))
