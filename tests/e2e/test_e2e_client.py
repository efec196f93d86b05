"""The user's journey in Chromium against a real gateway and real Xvnc desktops.

Pixels are the primary evidence: a test that says "the desktop is visible" looks at the
browser's screenshot, and typing into the xterm must change its colour there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    LOCAL_DESKTOP,
    STATIC_DESKTOP,
    STATIC_VNC_PASSWORD,
    Desktop,
    Gateway,
    Relay,
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
from pngpixels import count, distinct_colours, is_ansi_blue, is_ansi_green

pytestmark = pytest.mark.e2e


def assert_no_secret(w: Watched, secret: str) -> None:
    needle = secret.encode()
    bodies = w.received_bodies()
    assert bodies, "no response bodies were recorded"
    for url, body in bodies:
        assert needle not in body, f"the desktop's VNC password appears in the response of {url}"
    for frame in w.ws_frames:
        assert needle not in frame, "the desktop's VNC password appears in a websocket frame"


# -- 1. the full journey ---------------------------------------------------------------------


def test_full_journey_sign_in_enrol_connect_type(
    gateway: Gateway, new_page: Callable[..., Watched], artifacts: Path
) -> None:
    w = new_page()
    page = w.page
    alice = gateway.accounts["alice"]

    sign_in(page, gateway, alice, shots=artifacts)
    assert alice.totp_secret
    assert len(alice.recovery_codes) >= 4, alice.recovery_codes
    assert all(alice.recovery_codes), alice.recovery_codes

    # Portal: both of alice's desktops as cards, her name and a sign-out button in the header.
    page.screenshot(path=str(artifacts / "portal.png"), full_page=True)
    assert page.locator("header").get_by_text("alice").count() >= 1
    assert page.get_by_role("button", name="Sign out").is_visible()
    links = page.locator("a.desktop-connect")
    assert links.count() == 2
    static_id = gateway.desktop_ids[STATIC_DESKTOP]
    link = page.locator(f'a.desktop-connect[data-desktop-id="{static_id}"]')
    assert link.get_attribute("href") == f"/desktops/{static_id}"

    link.click()
    page.wait_for_url(re.compile(rf"/desktops/{static_id}$"))
    wait_state(page, "connected")
    assert page.locator("#status").is_hidden()

    img, box = wait_for_xterm(page)
    page.screenshot(path=str(artifacts / "journey-desktop.png"))
    area = screen_box(page)
    # A desktop, not a blank or error page: many colours, the window manager's decorations.
    assert distinct_colours(img, area) >= 8, "the desktop area looks blank"

    # The canvas has keyboard focus after clicking it; typing reaches the xterm.
    type_into_xterm(page, box, r"printf '\033[42m'; clear")
    green = wait_for_colour(page, is_ansi_green, 100_000, "the xterm to turn green")
    page.screenshot(path=str(artifacts / "journey-xterm-green.png"))
    assert count(green, is_ansi_green, box, step=4) > 0.5 * (box[2] - box[0]) * (box[3] - box[1])

    assert_no_secret(w, STATIC_VNC_PASSWORD)
    assert w.ws_urls and all("/ws/sessions/" in u for u in w.ws_urls), w.ws_urls
    assert w.real_console_errors() == []


def test_typed_text_is_readable(
    gateway: Gateway, dave_state: dict[str, Any], new_page: Callable[..., Watched], artifacts: Path
) -> None:
    page = new_page(dave_state).page
    open_desktop(page, gateway, STATIC_DESKTOP)
    _, box = wait_for_xterm(page)
    type_into_xterm(page, box, "printf '\\033[0m'; clear; echo DESKGATE OCR CHECK")
    path = artifacts / "ocr.png"
    text = ""
    deadline = time.monotonic() + 20
    while "DESKGATE OCR CHECK" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        page.screenshot(path=str(path))
        text = subprocess.run(["tesseract", str(path), "-"], capture_output=True, text=True,
                              timeout=60).stdout
    assert "DESKGATE OCR CHECK" in text, text


# -- 2. clipboard both ways --------------------------------------------------------------------


def xclip_out(desktop: Desktop) -> str:
    proc = subprocess.run(
        ["xclip", "-o", "-selection", "clipboard"],
        env=desktop.env,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return proc.stdout


def test_clipboard_both_ways(
    gateway: Gateway,
    static_xvnc: Desktop,
    dave_state: dict[str, Any],
    new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    if shutil.which("xclip") is None:
        pytest.skip("xclip is not installed")
    page = new_page(dave_state).page
    open_desktop(page, gateway, STATIC_DESKTOP)
    wait_for_xterm(page)

    # Browser -> desktop
    page.locator("#clipboard-toggle").click()
    to_desktop = f"from the browser {time.time_ns()}"
    page.fill("#clipboard-text", to_desktop)
    page.locator("#clipboard-send").click()
    wait_until(lambda: xclip_out(static_xvnc) == to_desktop, 10, "the desktop's clipboard")

    # Desktop -> browser: xclip owns the selection until we stop it (by PID).
    to_browser = f"from the desktop {time.time_ns()}"
    owner = subprocess.Popen(
        ["xclip", "-quiet", "-i", "-selection", "clipboard"],
        env=static_xvnc.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert owner.stdin is not None
        owner.stdin.write(to_browser.encode())
        owner.stdin.close()
        page.wait_for_function(
            "t => document.getElementById('clipboard-text').value === t",
            arg=to_browser,
            timeout=10_000,
        )
        page.screenshot(path=str(artifacts / "clipboard.png"))
    finally:
        owner.terminate()
        owner.wait(5)


# -- 3. automatic reconnect --------------------------------------------------------------------


def test_reconnects_after_upstream_drop(
    gateway: Gateway,
    relay: Relay,
    dave_state: dict[str, Any],
    new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    page = new_page(dave_state).page
    open_desktop(page, gateway, STATIC_DESKTOP)
    wait_for_xterm(page)
    first_session = page.locator("#deskgate-client").get_attribute("data-session-id")
    page.evaluate(
        """() => {
            const root = document.getElementById('deskgate-client');
            window.__states = [];
            window.__texts = [];
            new MutationObserver(() => window.__states.push(root.dataset.state))
                .observe(root, {attributes: true, attributeFilter: ['data-state']});
            new MutationObserver(() => window.__texts.push(
                    document.getElementById('status-text').textContent))
                .observe(document.getElementById('status'),
                         {subtree: true, childList: true, characterData: true});
        }"""
    )
    accepted = relay.accepted
    assert relay.cut() >= 1, "the browser's connection did not go through the relay"

    wait_state(page, "reconnecting", 10_000)
    page.screenshot(path=str(artifacts / "reconnecting.png"))
    wait_state(page, "connected", 40_000)
    _, box = wait_for_xterm(page)
    page.screenshot(path=str(artifacts / "reconnected.png"))

    states = page.evaluate("window.__states")
    texts = page.evaluate("window.__texts")
    assert states[0] == "reconnecting" and states[-1] == "connected", states
    assert "disconnected" not in states, states
    assert any(re.search(r"Reconnecting in \d+ s \(attempt 1\)", t) for t in texts), texts
    assert relay.accepted > accepted, "no new upstream connection was made"
    second_session = page.locator("#deskgate-client").get_attribute("data-session-id")
    assert second_session, "no session id after the reconnect"
    assert first_session, "no session id before the drop"
    # The reconnected desktop takes input again.
    type_into_xterm(page, box, r"printf '\033[42m'; clear")
    wait_for_colour(page, is_ansi_green, 100_000, "the xterm to turn green after the reconnect")


def test_user_disconnect_is_final_until_reconnect_clicked(
    gateway: Gateway,
    dave_state: dict[str, Any],
    new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    w = new_page(dave_state)
    page = w.page
    open_desktop(page, gateway, STATIC_DESKTOP)

    # Toolbar: full screen on and off, Ctrl+Alt+Del reaches the desktop without errors.
    page.locator("#fullscreen").click()
    page.wait_for_function(
        """() => document.fullscreenElement?.id === 'deskgate-client'
            && document.getElementById('fullscreen').textContent === 'Exit full screen'"""
    )
    page.locator("#fullscreen").click()
    page.wait_for_function(
        """() => document.fullscreenElement === null
            && document.getElementById('fullscreen').textContent === 'Full screen'"""
    )
    page.locator("#ctrl-alt-del").click()
    assert page.evaluate("() => document.activeElement.tagName") == "CANVAS"

    page.locator("#disconnect").click()
    wait_state(page, "disconnected", 10_000)
    assert page.locator("#status-text").text_content() == "Disconnected"
    assert page.locator("#reconnect").is_visible()
    assert page.locator("#back-to-portal").get_attribute("href") == "/"
    page.screenshot(path=str(artifacts / "disconnected.png"))
    time.sleep(2.5)  # longer than the first backoff: nothing reconnects by itself
    assert page.locator("#deskgate-client").get_attribute("data-state") == "disconnected"
    page.locator("#reconnect").click()
    wait_state(page, "connected")
    wait_for_xterm(page)
    assert w.real_console_errors() == []


def test_signed_out_client_goes_to_sign_in(
    gateway: Gateway, relay: Relay, new_page: Callable[..., Watched], artifacts: Path
) -> None:
    """Sign in with a recovery code, sign out in another tab: after the next drop the
    client asks about its session, gets 401 and goes to the sign-in page."""
    alice = gateway.accounts["alice"]
    w = new_page()
    page = w.page
    if not alice.recovery_codes:
        sign_in(page, gateway, alice)
    else:
        page.goto(gateway.base_url + "/login")
        page.fill("#username", alice.name)
        page.fill("#password", alice.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/login/totp"))
        assert page.locator("#totp-secret").count() == 0, "enrolment shown again"
        page.fill("#totp-code", alice.recovery_codes.pop())
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url(gateway.base_url + "/")
    open_desktop(page, gateway, STATIC_DESKTOP)

    other = page.context.new_page()
    other.goto(gateway.base_url + "/")
    other.get_by_role("button", name="Sign out").click()
    other.wait_for_url(re.compile(r"/login"))
    other.close()

    relay.cut()
    page.wait_for_url(re.compile(r"/login(\?.*)?$"), timeout=20_000)
    page.screenshot(path=str(artifacts / "signed-out.png"))


# -- 4. a local-provider desktop ---------------------------------------------------------------


def test_local_desktop_shows_its_xterm(
    gateway: Gateway,
    dave_state: dict[str, Any],
    new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    w = new_page(dave_state)
    page = w.page
    open_desktop(page, gateway, LOCAL_DESKTOP, 45_000)
    img, box = wait_for_xterm(page, timeout=30)
    page.screenshot(path=str(artifacts / "local-desktop.png"))
    assert distinct_colours(img, screen_box(page)) >= 8
    type_into_xterm(page, box, r"printf '\033[44m'; clear")
    wait_for_colour(page, is_ansi_blue, 100_000, "the local xterm to turn blue")
    page.screenshot(path=str(artifacts / "local-desktop-blue.png"))
    assert w.real_console_errors() == []
