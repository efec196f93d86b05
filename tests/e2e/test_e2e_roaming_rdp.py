"""Roaming with an RDP desktop in Chromium: one person, two sign-ins (two browser contexts, as
two devices), a real xrdp server (TLS, pinned certificate) bridged by xfreerdp in a private Xvnc.

The first device leaves something on the remote desktop (a magenta xterm whose title carries a
marker); the second device opens the same desktop and shows it, the first says "moved to another
device" and stays disconnected, and the bridge is the same one: same xfreerdp and Xvnc PIDs, no
second xfreerdp started (the RDP session was taken along, not signed in again).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rdp_servers
from e2e_support import (
    Account,
    Watched,
    screen_box,
    shot_to,
    sign_in,
    wait_for_colour,
    wait_state,
    wait_until,
)
from pngpixels import is_ansi_blue, is_ansi_magenta, near
from rdp_e2e_support import (
    GRACE_SECONDS,
    RdpGateway,
    bridge_processes,
    connect_posts,
    rdp_gateway,
    remote_display_env,
    type_with_shift,
    wait_keys_arrive,
    x_tool,
)
from rdp_servers import RdpServer, needs_rdp

# The real xrdp server's fixture (tests/rdp_servers.py), found by pytest by name.
xrdp_server = rdp_servers.xrdp_server

pytestmark = [pytest.mark.e2e, needs_rdp, pytest.mark.timeout(240)]

MOVED = "moved to another device"
STAYS_DISCONNECTED = 4.0  # seconds the first device is watched for a reconnect (there is none)


@pytest.fixture(scope="module")
def rdpgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RdpGateway]:
    with rdp_gateway(tmp_path_factory.mktemp("rdp-gateway-roaming"), ("gina",)) as g:
        yield g


def sign_in_again(page: Any, rdpgw: RdpGateway, account: Account) -> None:
    """A second sign-in of an enrolled account, with a recovery code (the TOTP code of the
    first sign-in cannot be used again within its 30 s)."""
    page.goto(rdpgw.gw.base_url + "/login")
    page.fill("#username", account.name)
    page.fill("#password", account.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/login/totp"))
    page.fill("#totp-code", account.recovery_codes.pop())
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(rdpgw.gw.base_url + "/")


def state_of(page: Any) -> str:
    state: str = page.evaluate("() => document.getElementById('deskgate-client').dataset.state")
    return state


def remote_titles(remote: dict[str, str]) -> list[str]:
    """The names of the remote session's windows (for a failure's message)."""
    return [x_tool(remote, "xdotool", "getwindowname", wid).strip()
            for wid in x_tool(remote, "xdotool", "search", "--name", ".").split()]  # fmt: skip


def xfreerdp_pids(rdpgw: RdpGateway) -> list[int]:
    return sorted(pid for pid, argv in bridge_processes(rdpgw.runtime_dir).items()
                  if argv.split()[0].rsplit("/", 1)[-1] == "xfreerdp3")  # fmt: skip


def test_rdp_desktop_moves_to_another_device_with_its_running_session(
    rdpgw: RdpGateway, xrdp_server: RdpServer, new_page: Callable[..., Watched]
) -> None:
    t_start = time.monotonic()
    desktop_id = rdpgw.add_rdp_desktop(
        "xrdp roaming", xrdp_server.port, xrdp_server.username, xrdp_server.password,
        "--security", "tls", "--cert-fingerprint", xrdp_server.certificate_sha256(), assign=("gina",),
    )  # fmt: skip
    gina = rdpgw.gw.accounts["gina"]
    url = f"{rdpgw.gw.base_url}/desktops/{desktop_id}"

    # Two devices: two browser contexts, two sign-ins (TOTP enrolment, then a recovery code).
    first_w, second_w = new_page(), new_page()
    first, second = first_w.page, second_w.page
    sign_in(first, rdpgw.gw, gina)
    assert gina.recovery_codes, "no recovery codes kept from the enrolment"
    sign_in_again(second, rdpgw, gina)
    first_cookies = {(c["name"], c["value"]) for c in first.context.cookies()}
    second_cookies = {(c["name"], c["value"]) for c in second.context.cookies()}
    assert first_cookies and second_cookies and not first_cookies & second_cookies, \
        "the two devices share a sign-in"

    # The first device: the remote xterm (green, the xrdp session fresh), then something left
    # on it: a marker in its title (seen by the remote session's X tools) and a magenta screen.
    first_posts = connect_posts(first)
    first.goto(url)
    wait_state(first, "connected", 60_000)
    area = screen_box(first)
    box_area = (area[2] - area[0]) * (area[3] - area[1])
    most = int(0.6 * box_area)
    wait_for_colour(first, lambda p: near(xrdp_server.colour)(p) or is_ansi_blue(p) or is_ansi_magenta(p),
                    box_area // 2, "the remote xterm", timeout=40)  # fmt: skip
    first.mouse.click((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    wait_keys_arrive(first, area)
    marker = f"dg-roam-{secrets.token_hex(4)}"
    # (A plain prompt first: Debian's bash prompt sets the xterm's title at every prompt.)
    type_with_shift(first, f"PS1='$ '; printf '\\033]2;{marker}\\007\\033[45m' && clear")
    first.keyboard.press("Enter")
    wait_for_colour(first, is_ansi_magenta, most, "the remote xterm to turn magenta", timeout=20)
    remote = remote_display_env(xrdp_server)
    assert remote is not None, "the xrdp session's Xvnc was not found"
    try:
        windows = wait_until(lambda: x_tool(remote, "xdotool", "search", "--name", marker).split(), 10,
                             f"a window titled {marker} on the remote session")  # fmt: skip
    except AssertionError:
        raise AssertionError(f"no window titled {marker}; remote titles {remote_titles(remote)}") from None
    shot_to(first, "rdp-roaming-first-before.png")

    before = bridge_processes(rdpgw.runtime_dir)
    assert {argv.split()[0].rsplit("/", 1)[-1] for argv in before.values()} == {"xfreerdp3", "Xvnc"}, before
    xfreerdp_before = xfreerdp_pids(rdpgw)
    assert len(xfreerdp_before) == 1, before
    started_lines = len(re.findall(r"xfreerdp pid \d+", rdpgw.log_text()))
    assert started_lines == 1, f"{started_lines} xfreerdp starts in the log before the move"
    posts_before_move = len(first_posts)

    # The second device opens the same desktop: the same magenta screen, at once.
    t0 = time.monotonic()
    second.goto(url)
    wait_state(second, "connected", 30_000)
    to_connected = time.monotonic() - t0
    wait_for_colour(second, is_ansi_magenta, most, "the same magenta on the second device", timeout=15)
    to_content = time.monotonic() - t0

    # The first device: told where its desktop went, final (Reconnect offered, no retry).
    wait_state(first, "disconnected", 15_000)
    to_moved = time.monotonic() - t0
    status = first.locator("#status").text_content() or ""
    assert MOVED in status, status
    assert first.locator("#status").is_visible()
    assert first.locator("#reconnect").is_visible(), "the overlay is not final (no Reconnect button)"
    shot_to(first, "rdp-roaming-first-moved.png")
    shot_to(second, "rdp-roaming-second.png")
    first.wait_for_timeout(STAYS_DISCONNECTED * 1000)
    assert state_of(first) == "disconnected", "the first device reconnected by itself"
    assert len(first_posts) == posts_before_move, "the first device asked to connect again"
    assert MOVED in (first.locator("#status").text_content() or "")
    assert state_of(second) == "connected"

    # The same bridge: same xfreerdp and Xvnc processes, no xfreerdp started again.
    after = bridge_processes(rdpgw.runtime_dir)
    xfreerdp_after = xfreerdp_pids(rdpgw)
    assert set(after) == set(before), f"the bridge changed: before {before}, after {after}"
    assert xfreerdp_after == xfreerdp_before
    log_text = rdpgw.log_text()
    assert len(re.findall(r"xfreerdp pid \d+", log_text)) == 1, "xfreerdp was started again"
    assert MOVED in log_text, "the gateway's log does not say the connection moved"
    # The same remote session: the marker still in the remote xterm's title.
    assert x_tool(remote, "xdotool", "search", "--name", marker).split() == windows

    # The second device works the session: typed text reaches it (the xterm turns blue).
    second.mouse.click((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    type_with_shift(second, "printf '\\033[44m' && clear")
    second.keyboard.press("Enter")
    wait_for_colour(second, is_ansi_blue, most, "the remote xterm to turn blue from the second device",
                    timeout=20)  # fmt: skip
    shot_to(second, "rdp-roaming-second-typed.png")
    assert state_of(first) == "disconnected"
    assert xfreerdp_pids(rdpgw) == xfreerdp_before
    assert second_w.real_console_errors() == []
    assert xrdp_server.password not in rdpgw.log_text()

    print(f"\nroaming RDP: xfreerdp pid {xfreerdp_before[0]} before and {xfreerdp_after[0]} after the move;"
          f" bridge pids {sorted(before)}; second device connected {to_connected:.1f} s, content"
          f" {to_content:.1f} s, first told 'moved' {to_moved:.1f} s after opening; test"
          f" {time.monotonic() - t_start:.1f} s")  # fmt: skip

    # Leaving from the second device: the bridge goes after the grace time.
    second.goto(rdpgw.gw.base_url + "/")
    wait_until(lambda: not bridge_processes(rdpgw.runtime_dir), GRACE_SECONDS + 5, "no bridge process left",
               0.2)  # fmt: skip
