"""A desktop that stops answering (its Xvnc stopped with SIGSTOP, the connection still open):
the person's page says so, and the message goes away by itself when the desktop answers again.
Real gateway (desktop_unresponsive_seconds = 2), real Xvnc, Chromium."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    STATIC_DESKTOP,
    Desktop,
    Gateway,
    Watched,
    open_desktop,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
)
from pngpixels import is_ansi_blue

from gateway.xdisplay.numbers import lock_file

pytestmark = pytest.mark.e2e

BANNER = "#desktop-unresponsive"


def test_a_frozen_desktop_is_announced_and_recovers(
    gateway: Gateway,
    static_xvnc: Desktop,
    dave_state: dict[str, Any],
    new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    page = new_page(dave_state).page
    open_desktop(page, gateway, STATIC_DESKTOP)
    _, box = wait_for_xterm(page)
    page.evaluate(
        """() => {
            const banner = document.getElementById('desktop-unresponsive');
            window.__shown = 0;
            new MutationObserver(() => { if (!banner.hidden) window.__shown += 1; })
                .observe(banner, {attributes: true, attributeFilter: ['hidden']});
        }"""
    )
    # Idle but alive: no message, however long nothing changes on the screen (4 x the time).
    time.sleep(8)
    assert page.evaluate("window.__shown") == 0, "an idle desktop was reported as not responding"
    assert page.locator(BANNER).is_hidden()

    xvnc = int(lock_file(static_xvnc.display).read_text().strip())
    os.kill(xvnc, signal.SIGSTOP)
    try:
        page.wait_for_selector(BANNER, state="visible", timeout=20_000)
        assert "The desktop is not responding" in page.locator(BANNER).inner_text()
        page.screenshot(path=str(artifacts / "desktop-not-responding.png"))
        assert page.locator("#deskgate-client").get_attribute("data-state") == "connected"
    finally:
        os.kill(xvnc, signal.SIGCONT)
    page.wait_for_selector(BANNER, state="hidden", timeout=20_000)
    page.screenshot(path=str(artifacts / "desktop-responding-again.png"))
    # The same connection works again: typing reaches the xterm (Ctrl+U first: the desktop is
    # shared with earlier tests, whose keys may have left something on the command line).
    page.mouse.click((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    page.keyboard.press("Control+u")
    type_into_xterm(page, box, r"printf '\033[44m'; clear")
    wait_for_colour(page, is_ansi_blue, 100_000, "the xterm to turn blue after the desktop woke",
                    timeout=40)
