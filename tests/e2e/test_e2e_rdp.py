"""RDP desktops in Chromium through a real gateway: real xrdp (TLS, pinned certificate) and
FreeRDP's shadow server (NLA), bridged by xfreerdp in a private Xvnc.

Pixels are the evidence: the remote xterm's distinctive colour in the browser's screenshot, and
typed commands that turn it another colour. The gateway here is its own process (see
rdp_e2e_support.rdp_gateway) with a 2 s bridge grace time and a private runtime folder, so that
"no bridge left running" looks at this gateway's bridges only.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rdp_servers
from e2e_support import Watched, screen_box, shot, shot_to, sign_in, wait_for_colour, wait_state, wait_until
from pngpixels import Pixel, count, is_ansi_blue, is_ansi_magenta, is_white, near
from rdp_e2e_support import (
    GRACE_SECONDS,
    LOGON_TIMEOUT_SECONDS,
    RdpGateway,
    bridge_displays,
    bridge_processes,
    connect_posts,
    ps_args,
    rdp_gateway,
    remote_display_env,
    type_with_shift,
    wait_keys_arrive,
    x_tool,
)
from rdp_servers import RdpServer, free_port, needs_rdp

# The real RDP servers' fixtures (tests/rdp_servers.py), found by pytest by name.
xrdp_server = rdp_servers.xrdp_server
shadow_server = rdp_servers.shadow_server
rdp_server_factory = rdp_servers.rdp_server_factory

pytestmark = [pytest.mark.e2e, needs_rdp, pytest.mark.timeout(240)]

FAILURE_WITHIN = 10.0  # "a clear message within a few seconds" (measured: about 0.5-3 s)
# Every RDP password used in this module: none may show up in the gateway's log.
PASSWORDS: list[str] = []


@pytest.fixture(scope="module")
def rdpgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RdpGateway]:
    with rdp_gateway(tmp_path_factory.mktemp("rdp-gateway"), ("carol", "erin")) as g:
        yield g


@pytest.fixture(scope="module")
def erin_state(browser: Any, rdpgw: RdpGateway) -> dict[str, Any]:
    """erin, fully signed in (password + TOTP enrolment) once for the module."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        sign_in(ctx.new_page(), rdpgw.gw, rdpgw.gw.accounts["erin"])
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


def open_rdp(page: Any, rdpgw: RdpGateway, desktop_id: str) -> None:
    page.goto(f"{rdpgw.gw.base_url}/desktops/{desktop_id}")


def status_of(page: Any) -> tuple[str, str, str]:
    """(data-state, status text, status detail) of the client page; the detail as the gateway
    said it (the page shows it as a sentence: capital first letter, full stop)."""
    state, text, detail = page.evaluate(
        """() => [document.getElementById('deskgate-client').dataset.state,
                  document.getElementById('status-text').textContent,
                  document.getElementById('status-detail').textContent]"""
    )
    detail = detail.removesuffix(".")
    return state, text, detail[:1].lower() + detail[1:]


def wait_no_bridges(rdpgw: RdpGateway, within: float = GRACE_SECONDS + 3) -> float:
    """Seconds until no xfreerdp/Xvnc of this gateway's bridges is left (bounded)."""
    t0 = time.monotonic()
    try:
        wait_until(lambda: not bridge_processes(rdpgw.runtime_dir), within, "no bridge process left", 0.2)
    except AssertionError:
        left = bridge_processes(rdpgw.runtime_dir)
        raise AssertionError(f"bridge processes still running: {left}") from None
    return time.monotonic() - t0


def assert_not_received(w: Watched, secret: str) -> None:
    needle = secret.encode()
    bodies = w.received_bodies()
    assert bodies, "no response bodies were recorded"
    for url, body in bodies:
        assert needle not in body, f"the RDP password appears in the response of {url}"
    assert w.ws_frames, "no websocket frames were recorded"
    for frame in w.ws_frames:
        assert needle not in frame, "the RDP password appears in a websocket frame"


# -- 1. xrdp (Xvnc sessions, TLS, pinned certificate) -------------------------------------------


def test_xrdp_desktop_type_clipboard_resize(
    rdpgw: RdpGateway, xrdp_server: RdpServer, new_page: Callable[..., Watched], artifacts: Path
) -> None:
    PASSWORDS.append(xrdp_server.password)
    desktop_id = rdpgw.add_rdp_desktop(
        "xrdp desktop", xrdp_server.port, xrdp_server.username, xrdp_server.password,
        "--security", "tls", "--cert-fingerprint", xrdp_server.certificate_sha256(), assign=("carol",),
    )  # fmt: skip
    w = new_page()
    page = w.page
    sign_in(page, rdpgw.gw, rdpgw.gw.accounts["carol"])
    t0 = time.monotonic()
    page.locator(f'a.desktop-connect[data-desktop-id="{desktop_id}"]').click()
    page.wait_for_url(re.compile(rf"/desktops/{desktop_id}$"))
    wait_state(page, "connected", 60_000)
    area = screen_box(page)
    wait_for_colour(page, near(xrdp_server.colour), 200_000, "the remote xterm colour", timeout=40)
    print(f"\nxrdp: click to remote xterm colour in the browser {time.monotonic() - t0:.1f} s")
    shot_to(page, "rdp-xrdp-connected.png")

    # The password: not on any command line while the session runs.
    assert xrdp_server.password not in ps_args()
    bridges = bridge_processes(rdpgw.runtime_dir)
    assert {c.split()[0].rsplit("/", 1)[-1] for c in bridges.values()} == {"xfreerdp3", "Xvnc"}, bridges

    # Keys, shifted characters included (typed with Shift held, as on a keyboard): the command
    # only turns the xterm blue when every character arrived (the remote shell checks a digest).
    phrase = 'Hello, World! (ok) #1 <x> {y} ~$%^&*_+|:"?'
    digest = hashlib.md5(phrase.encode()).hexdigest()[:12]  # noqa: S324 - not security
    quoted = phrase.replace("'", "'\\''")
    page.mouse.click((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    wait_keys_arrive(page, area)
    type_with_shift(page, f"h=$(printf %s '{quoted}' | md5sum); [ \"${{h:0:12}}\" = {digest} ] "
                          "&& printf '\\033[44m' && clear")  # fmt: skip
    page.keyboard.press("Enter")
    blue = wait_for_colour(page, is_ansi_blue, 200_000, "the remote xterm to turn blue", timeout=20)
    page.screenshot(path=str(artifacts / "rdp-xrdp-typed-blue.png"))
    box_area = (area[2] - area[0]) * (area[3] - area[1])
    assert count(blue, is_ansi_blue, area, step=4) > 0.6 * box_area

    remote = remote_display_env(xrdp_server)
    assert remote is not None, "the xrdp session's Xvnc was not found"

    # Clipboard, browser -> remote session (through the bridge's Xvnc, xfreerdp and xrdp).
    page.locator("#clipboard-toggle").click()
    to_remote = f"to the remote desktop {time.time_ns()} (Ünïcode-free)"
    page.fill("#clipboard-text", to_remote)
    page.locator("#clipboard-send").click()
    wait_until(lambda: x_tool(remote, "xclip", "-o", "-selection", "clipboard") == to_remote, 15,
               "the text in the remote session's clipboard", 0.3)  # fmt: skip

    # Clipboard, remote session -> browser: xclip owns the remote selection until stopped.
    to_browser = f"from the remote desktop {time.time_ns()}"
    owner = subprocess.Popen(["xclip", "-quiet", "-i", "-selection", "clipboard"], env=remote,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert owner.stdin is not None
        owner.stdin.write(to_browser.encode())
        owner.stdin.close()
        page.wait_for_function("t => document.getElementById('clipboard-text').value === t",
                               arg=to_browser, timeout=15_000)  # fmt: skip
    finally:
        owner.terminate()
        owner.wait(5)
    page.locator("#clipboard-close").click()

    # Resize: the remote session follows the browser's desktop area.
    def remote_size() -> tuple[int, int] | None:
        out = x_tool(remote, "xdotool", "getdisplaygeometry").split()
        return (int(out[0]), int(out[1])) if len(out) == 2 else None

    def matches(size: tuple[int, int] | None, box: tuple[int, int, int, int]) -> bool:
        return (size is not None and abs(size[0] - (box[2] - box[0])) <= 2
                and abs(size[1] - (box[3] - box[1])) <= 2)

    wait_until(lambda: matches(remote_size(), area), 10, f"remote size {remote_size()} ~ browser area {area}")
    before = remote_size()
    page.set_viewport_size({"width": 1000, "height": 700})
    t1 = time.monotonic()
    page.wait_for_timeout(300)
    new_area = screen_box(page)
    assert new_area != area
    try:
        wait_until(lambda: matches(remote_size(), new_area), 15, "the remote session to follow the browser")
    except AssertionError:
        shot_to(page, "failed-rdp-resize.png")
        raise AssertionError(f"remote size {remote_size()} (was {before}), browser area {new_area}") from None
    print(f"xrdp: remote session {before} -> {remote_size()} in {time.monotonic() - t1:.2f} s")
    wait_for_colour(page, is_ansi_blue, int(0.6 * (new_area[2] - new_area[0]) * (new_area[3] - new_area[1])),
                    "the resized remote screen to fill the browser", timeout=15)  # fmt: skip
    page.screenshot(path=str(artifacts / "rdp-xrdp-resized.png"))

    # The password: not on a command line, not in what the browser received, not in the log.
    assert xrdp_server.password not in ps_args()
    assert_not_received(w, xrdp_server.password)
    assert xrdp_server.password not in rdpgw.log_text()
    assert w.real_console_errors() == []

    # Leaving: the bridge goes after the grace time, with nothing left behind.
    page.goto(rdpgw.gw.base_url + "/")
    took = wait_no_bridges(rdpgw)
    print(f"xrdp: bridge gone {took:.1f} s after leaving (grace {GRACE_SECONDS:g} s)")


# -- 2. FreeRDP shadow server with NLA -------------------------------------------------------------


def test_shadow_nla_desktop_shows_remote_colour(
    rdpgw: RdpGateway, shadow_server: RdpServer, erin_state: dict[str, Any],
    new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    PASSWORDS.append(shadow_server.password)
    desktop_id = rdpgw.add_rdp_desktop("shadow nla", shadow_server.port, shadow_server.username,
                                       shadow_server.password, "--security", "nla",
                                       assign=("erin",))  # fmt: skip
    w = new_page(erin_state)
    page = w.page
    t0 = time.monotonic()
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(shadow_server.colour), 200_000, "the shadow xterm colour", timeout=30)
    print(f"\nshadow+NLA: page to remote colour {time.monotonic() - t0:.1f} s")
    shot_to(page, "rdp-shadow-connected.png")
    assert shadow_server.password not in ps_args()
    # The bridge's X display comes from [rdp] rdp_display_base (not a fixed :60).
    displays = bridge_displays(rdpgw.runtime_dir)
    assert len(displays) == 1 and displays[0] >= rdpgw.display_base, (displays, rdpgw.display_base)
    page.wait_for_timeout(1000)  # let a few more framebuffer updates arrive
    assert_not_received(w, shadow_server.password)
    assert shadow_server.password not in rdpgw.log_text()
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 3. failures: a clear message, no retry loop for a refusal, nothing left running ----------------


def test_wrong_password_is_final_and_clear(
    rdpgw: RdpGateway, shadow_server: RdpServer, erin_state: dict[str, Any],
    new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    wrong = f"Wrong-{time.time_ns()}"
    PASSWORDS.append(wrong)
    desktop_id = rdpgw.add_rdp_desktop("shadow wrong password", shadow_server.port, shadow_server.username,
                                       wrong, "--security", "nla", assign=("erin",))  # fmt: skip
    w = new_page(erin_state)
    page = w.page
    posts = connect_posts(page)
    t0 = time.monotonic()
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "disconnected", int(FAILURE_WITHIN * 1000))
    took = time.monotonic() - t0
    state, text, detail = status_of(page)
    shot_to(page, "rdp-wrong-password.png")
    print(f"\nwrong password: {text!r} / {detail!r} after {took:.1f} s")
    assert text == "Could not connect"
    assert "refused the user name or password" in detail, detail
    assert page.locator("#status").is_visible() and page.locator("#reconnect").is_visible()
    # No retry loop: still one request and still disconnected a while later.
    page.wait_for_timeout(3000)
    assert status_of(page)[0] == "disconnected"
    assert len(posts) == 1, f"{len(posts)} connect requests"
    wait_no_bridges(rdpgw)
    assert wrong not in ps_args()
    assert_not_bodies(w, wrong)
    assert wrong not in rdpgw.log_text()


def assert_not_bodies(w: Watched, secret: str) -> None:
    for url, body in w.received_bodies():
        assert secret.encode() not in body, f"the RDP password appears in the response of {url}"
    for frame in w.ws_frames:
        assert secret.encode() not in frame


def test_server_down_is_clear(
    rdpgw: RdpGateway, erin_state: dict[str, Any], new_page: Callable[..., Watched]
) -> None:
    password = f"Down-{time.time_ns()}"
    PASSWORDS.append(password)
    desktop_id = rdpgw.add_rdp_desktop("rdp down", free_port(), "nobody", password, assign=("erin",))
    page = new_page(erin_state).page
    posts = connect_posts(page)
    t0 = time.monotonic()
    open_rdp(page, rdpgw, desktop_id)
    try:
        page.wait_for_function(
            "() => /cannot be reached|is not answering/.test("
            "document.getElementById('status-detail').textContent)",
            timeout=int(FAILURE_WITHIN * 1000),
        )
    except Exception:
        shot_to(page, "failed-rdp-server-down.png")
        raise AssertionError(f"no clear message: {status_of(page)}, {len(posts)} request(s)") from None
    took = time.monotonic() - t0
    state, text, detail = status_of(page)
    shot_to(page, "rdp-server-down.png")
    print(f"\nserver down: {state} {text!r} / {detail!r} after {took:.1f} s, {len(posts)} request(s)")
    # The static provider's port probe answers first ("desktop <name> is not answering"); the
    # bridge's own answer for an unreachable server is "the remote desktop cannot be reached".
    assert detail in ("desktop rdp down is not answering", "the remote desktop cannot be reached"), detail
    # Said at once; the page may try again a few times (bounded) before it gives up.
    assert text == "Could not connect" or text.startswith("Trying again"), text
    assert state in ("disconnected", "reconnecting"), state
    assert len(posts) <= 3, f"{len(posts)} connect requests within {took:.1f} s"
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


def test_server_killed_mid_session_is_clear(
    rdpgw: RdpGateway, rdp_server_factory: Callable[[str], RdpServer], erin_state: dict[str, Any],
    new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    server = rdp_server_factory("shadow")
    PASSWORDS.append(server.password)
    desktop_id = rdpgw.add_rdp_desktop("shadow doomed", server.port, server.username, server.password,
                                       "--security", "nla", assign=("erin",))  # fmt: skip
    page = new_page(erin_state).page
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(server.colour), 200_000, "the doomed shadow's colour", timeout=30)
    assert len(bridge_processes(rdpgw.runtime_dir)) >= 2

    server.kill()
    t0 = time.monotonic()
    page.wait_for_function(
        """() => { const s = document.getElementById('status');
                   const t = s.textContent;
                   return !s.hidden && /remote desktop/.test(t); }""",
        timeout=int(FAILURE_WITHIN * 1000),
    )
    took = time.monotonic() - t0
    state, text, detail = status_of(page)
    shot_to(page, "rdp-server-killed.png")
    print(f"\nserver killed: {state} {text!r} / {detail!r} after {took:.1f} s")
    assert state in ("reconnecting", "disconnected"), state
    assert re.search(r"the connection to the remote desktop was lost|the remote desktop ended the session"
                     r"|the remote desktop cannot be reached", detail), detail  # fmt: skip
    # Leaving the page stops the client's retries; the bridge is gone within the grace time.
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 3b. per-user accounts: the browser asks for the person's own account -------------------------


def add_per_user_desktop(rdpgw: RdpGateway, name: str, port: int, *extra: str, assign: str) -> str:
    out = rdpgw.gw.cli("desktop", "add", name, "--provider", "static", "--rdp", f"127.0.0.1:{port}",
                       "--per-user-credentials", *extra)  # fmt: skip
    m = re.search(r"^Desktop\s+(\S+)\s+(.+?)\s*$", out, re.M)
    assert m, f"no 'Desktop <id> <name>' line in {out!r}"
    rdpgw.gw.cli("assign", name, assign)
    return m.group(1)


def wait_account_form(page: Any, timeout: float = FAILURE_WITHIN) -> None:
    try:
        page.wait_for_function(
            "() => !document.getElementById('rdp-credentials').hidden"
            " && document.getElementById('deskgate-client').dataset.state === 'disconnected'",
            timeout=int(timeout * 1000),
        )
    except Exception:
        shot_to(page, "failed-rdp-account-form.png")
        raise AssertionError(f"the account form did not show: {status_of(page)}") from None


def enter_account(page: Any, username: str, password: str) -> None:
    page.fill("#rdp-username", username)
    page.fill("#rdp-domain", "")
    page.fill("#rdp-password", password)
    page.locator("#rdp-save").click()


def test_per_user_account_is_asked_in_the_browser(
    rdpgw: RdpGateway, rdp_server_factory: Callable[[str], RdpServer], shadow_server: RdpServer,
    erin_state: dict[str, Any], new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    server = rdp_server_factory("xrdp")  # a fresh xrdp session: its xterm has its own colour
    PASSWORDS.append(server.password)
    desktop_id = add_per_user_desktop(rdpgw, "xrdp per user", server.port, "--security", "tls",
                                      "--cert-fingerprint", server.certificate_sha256(),
                                      assign="erin")  # fmt: skip
    w = new_page(erin_state)
    page = w.page
    posts = connect_posts(page)
    open_rdp(page, rdpgw, desktop_id)
    wait_account_form(page)
    state, text, detail = status_of(page)
    shot_to(page, "rdp-per-user-asks.png")
    assert detail == "enter your account for this desktop", detail
    assert not bridge_processes(rdpgw.runtime_dir), "a bridge started without an account"

    t0 = time.monotonic()
    enter_account(page, server.username, server.password)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(server.colour), 200_000, "the remote xterm colour", timeout=40)
    print(f"\nper-user xrdp: account entered to remote xterm colour {time.monotonic() - t0:.1f} s")
    shot_to(page, "rdp-per-user-connected.png")
    assert len(posts) == 2, f"{len(posts)} connect requests"  # the 428, then the real one
    assert page.locator("#rdp-credentials").is_hidden()
    assert server.password not in ps_args()
    page.wait_for_timeout(500)
    assert_not_received(w, server.password)
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)

    # A wrong password: refused with a clear message, forgotten, and the form shows again. (The
    # NLA server tells a refused login at once; xrdp over TLS shows its own login dialog instead.)
    wrong = f"Wrong-{time.time_ns()}"
    PASSWORDS.append(wrong)
    shadow_id = add_per_user_desktop(rdpgw, "shadow per user", shadow_server.port, "--security", "nla",
                                     assign="erin")  # fmt: skip
    w = new_page(erin_state)
    page = w.page
    open_rdp(page, rdpgw, shadow_id)
    wait_account_form(page)
    enter_account(page, shadow_server.username, wrong)
    page.wait_for_function(
        "() => /refused the user name or password/.test(document.getElementById('status-detail').textContent)"
        " && !document.getElementById('rdp-credentials').hidden",
        timeout=int(FAILURE_WITHIN * 1000) * 2,
    )  # fmt: skip
    state, text, detail = status_of(page)
    shot_to(page, "rdp-per-user-refused.png")
    print(f"\nper-user wrong password: {text!r} / {detail!r}")
    assert state == "disconnected" and "enter it again" in detail, (state, detail)
    assert page.input_value("#rdp-username") == shadow_server.username
    assert page.input_value("#rdp-password") == ""
    page.wait_for_timeout(2000)  # no retry loop: the form waits for the person
    assert status_of(page)[0] == "disconnected"
    wait_no_bridges(rdpgw)
    assert_not_bodies(w, wrong)
    assert wrong not in rdpgw.log_text() and wrong not in ps_args()

    # The right password in the same form then connects.
    enter_account(page, shadow_server.username, shadow_server.password)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(shadow_server.colour), 200_000, "the shadow xterm colour", timeout=30)

    # "Forget my account" ends the connection; the next one asks for the account again.
    forget = page.locator("#forget-account")
    assert forget.is_visible()
    forget.click()
    wait_state(page, "disconnected", 15_000)
    assert "was forgotten" in status_of(page)[2]
    page.locator("#reconnect").click()
    page.wait_for_selector("#rdp-username", state="visible", timeout=15_000)
    assert page.input_value("#rdp-password") == ""  # asked again: the gateway forgot it

    # Not remembered: it serves this connection (while its bridge runs); the next asks again.
    page.uncheck("#rdp-remember")
    enter_account(page, shadow_server.username, shadow_server.password)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(shadow_server.colour), 200_000, "the shadow xterm colour", timeout=30)
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)
    open_rdp(page, rdpgw, shadow_id)
    wait_account_form(page)
    assert page.is_checked("#rdp-remember")  # the default stays: remember
    shot_to(page, "rdp-per-user-not-remembered-asks-again.png")
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 3a. servers without NLA: a refused account never shows the server's own sign-in screen --------

# What xrdp's own screens say (its "Connection Log" dialog after a refused login, its login form).
XRDP_SCREEN_WORDS = ("login failed", "connection log", "sesman", "session manager", "xrdp")
REFUSAL_WITHIN = LOGON_TIMEOUT_SECONDS + FAILURE_WITHIN


def ocr(page: Any, name: str) -> str:
    """The text tesseract reads on a screenshot of the page (saved as an artifact)."""
    path = shot_to(page, name)
    out = subprocess.run(["tesseract", str(path), "-"], capture_output=True, text=True, timeout=60)
    return out.stdout.lower()


def watch_screens_until(page: Any, done_js: str, within: float, prefix: str) -> list[str]:
    """Screenshots read by OCR every ~0.7 s until ``done_js`` holds (bounded): their texts."""
    texts = []
    deadline = time.monotonic() + within
    for i in range(int(within / 0.5) + 2):
        texts.append(ocr(page, f"{prefix}-{i:02d}.png"))
        if page.evaluate(done_js):
            return texts
        if time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    last = " ".join(texts[-1].split()) if texts else ""
    raise AssertionError(f"not done within {within} s: {status_of(page)}; the page read: {last!r}")


def session_close_reasons(rdpgw: RdpGateway, desktop_id: str) -> list[str]:
    """The recorded close reason of every session of the desktop (the gateway's database)."""
    db = sqlite3.connect(f"file:{rdpgw.gw.data_dir / 'deskgate.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT close_reason FROM sessions WHERE desktop_id = ? ORDER BY started_at",
                          (int(desktop_id),)).fetchall()  # fmt: skip
    finally:
        db.close()
    return [r[0] for r in rows]


def assert_no_server_screen(texts: list[str], server: RdpServer, w: Watched, *,
                            account_form: bool = False) -> None:
    """No text of xrdp's screens (nor the account's name, unless the gateway's own account form
    shows it) in any screenshot, and no websocket."""
    words = XRDP_SCREEN_WORDS if account_form else (*XRDP_SCREEN_WORDS, server.username.lower())
    for text in texts:
        for word in words:
            assert word not in text, f"the xrdp screen showed in the browser ({word!r}): {text!r}"
    # The browser never got as far as the desktop's picture: no websocket was opened.
    assert w.ws_urls == [], w.ws_urls


def test_xrdp_over_tls_wrong_password_is_refused_not_shown(
    rdpgw: RdpGateway, xrdp_server: RdpServer, erin_state: dict[str, Any],
    new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    """xrdp without NLA keeps a refused login's connection open on its own "login failed"
    dialog (naming the account, then a login form for any account): the person sees the
    gateway's refusal instead, and the audit and the session's close reason say so."""
    wrong = f"Wrong-{time.time_ns()}"
    PASSWORDS.append(wrong)
    name = "tls refused"
    desktop_id = rdpgw.add_rdp_desktop(name, xrdp_server.port, xrdp_server.username, wrong,
                                       "--security", "tls", "--cert-fingerprint",
                                       xrdp_server.certificate_sha256(), assign=("erin",))  # fmt: skip
    w = new_page(erin_state)
    page = w.page
    posts = connect_posts(page)
    t0 = time.monotonic()
    open_rdp(page, rdpgw, desktop_id)
    texts = watch_screens_until(
        page, "document.getElementById('deskgate-client').dataset.state === 'disconnected'",
        REFUSAL_WITHIN, "rdp-xrdp-wrong-password",
    )  # fmt: skip
    took = time.monotonic() - t0
    state, text, detail = status_of(page)
    texts.append(ocr(page, "rdp-xrdp-wrong-password.png"))
    print(f"\nxrdp over TLS, wrong password: {text!r} / {detail!r} after {took:.1f} s")
    assert text == "Could not connect"
    assert detail == "the remote desktop refused the user name or password", detail
    assert "refused the user name" in " ".join(texts[-1].split()), texts[-1]  # what the person reads
    assert_no_server_screen(texts, xrdp_server, w)
    page.wait_for_timeout(2000)  # final: no retry loop
    assert status_of(page)[0] == "disconnected" and len(posts) == 1, (status_of(page), len(posts))

    audit = rdpgw.gw.cli("audit", "--limit", "20")
    assert re.search(rf"session\.failed.*desktop={re.escape(name)}.*the remote desktop refused"
                     r" the user name or password", audit), audit  # fmt: skip
    refused = "the remote desktop refused the user name or password"
    assert session_close_reasons(rdpgw, desktop_id) == [refused]
    assert "did not sign" in rdpgw.log_text()  # why, for the admin
    wait_no_bridges(rdpgw)
    assert wrong not in ps_args() and wrong not in rdpgw.log_text()
    assert_not_bodies(w, wrong)


def test_xrdp_over_tls_per_user_wrong_password_is_forgotten_and_asked_again(
    rdpgw: RdpGateway, rdp_server_factory: Callable[[str], RdpServer], erin_state: dict[str, Any],
    new_page: Callable[..., Watched],
) -> None:  # fmt: skip
    xrdp_server = rdp_server_factory("xrdp")  # a fresh xrdp session: its xterm has its own colour
    PASSWORDS.append(xrdp_server.password)
    desktop_id = add_per_user_desktop(rdpgw, "tls per user", xrdp_server.port, "--security", "tls",
                                      "--cert-fingerprint", xrdp_server.certificate_sha256(),
                                      assign="erin")  # fmt: skip
    wrong = f"Wrong-{time.time_ns()}"
    PASSWORDS.append(wrong)
    w = new_page(erin_state)
    page = w.page
    posts = connect_posts(page)
    open_rdp(page, rdpgw, desktop_id)
    wait_account_form(page)
    enter_account(page, xrdp_server.username, wrong)
    texts = watch_screens_until(
        page, "/refused the user name or password/.test(document.getElementById('status-detail')"
              ".textContent) && !document.getElementById('rdp-credentials').hidden",
        REFUSAL_WITHIN, "rdp-xrdp-per-user-wrong",
    )  # fmt: skip
    state, text, detail = status_of(page)
    print(f"\nxrdp over TLS, per-user wrong password: {text!r} / {detail!r}")
    assert state == "disconnected" and "was forgotten: enter it again" in detail, (state, detail)
    assert page.input_value("#rdp-username") == xrdp_server.username
    assert page.input_value("#rdp-password") == ""
    assert_no_server_screen(texts, xrdp_server, w, account_form=True)
    assert "credentials forgotten" in rdpgw.gw.cli("audit", "--limit", "20")
    page.wait_for_timeout(2000)  # no retry loop: the form waits for the person
    assert status_of(page)[0] == "disconnected" and len(posts) == 2, len(posts)
    wait_no_bridges(rdpgw)

    # The right password in the same form signs in: the remote xterm's colour.
    enter_account(page, xrdp_server.username, xrdp_server.password)
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(xrdp_server.colour), 200_000, "the xrdp xterm colour", timeout=40)
    shot_to(page, "rdp-xrdp-per-user-connected.png")
    assert_not_bodies(w, wrong)
    assert wrong not in rdpgw.log_text() and wrong not in ps_args()
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 3c. a reload resumes the same bridge; the wheel reaches the remote desktop --------------------

RESUME_GRACE_SECONDS = 15.0  # room for a page reload (the module's gateway has 2 s)


def is_ansi_red(p: Pixel) -> bool:
    """xterm's ANSI red background (205, 0, 0)."""
    r, g, b = p
    return r > 170 and g < 60 and b < 60


@pytest.fixture(scope="module")
def rdpgw_resume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RdpGateway]:
    """A gateway of its own whose bridges outlive a closed browser connection for 15 s."""
    with rdp_gateway(tmp_path_factory.mktemp("rdp-gateway-resume"), ("frank",),
                     grace=RESUME_GRACE_SECONDS) as g:  # fmt: skip
        yield g


def test_reconnect_resumes_the_same_remote_session(
    rdpgw_resume: RdpGateway, xrdp_server: RdpServer, new_page: Callable[..., Watched]
) -> None:
    rdpgw = rdpgw_resume
    PASSWORDS.append(xrdp_server.password)
    desktop_id = rdpgw.add_rdp_desktop(
        "xrdp resume", xrdp_server.port, xrdp_server.username, xrdp_server.password,
        "--security", "tls", "--cert-fingerprint", xrdp_server.certificate_sha256(), assign=("frank",),
    )  # fmt: skip
    page = new_page().page
    sign_in(page, rdpgw.gw, rdpgw.gw.accounts["frank"])
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    area = screen_box(page)
    box_area = (area[2] - area[0]) * (area[3] - area[1])
    most = int(0.6 * box_area)
    # The remote session may be fresh (green) or the one an earlier test turned blue.
    wait_for_colour(page, lambda p: near(xrdp_server.colour)(p) or is_ansi_blue(p), box_area // 2,
                    "the remote xterm", timeout=40)  # fmt: skip
    page.mouse.click((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    wait_keys_arrive(page, area)
    type_with_shift(page, "printf '\\033[45m' && clear")
    page.keyboard.press("Enter")
    wait_for_colour(page, is_ansi_magenta, most, "the remote xterm to turn magenta", timeout=20)
    shot_to(page, "rdp-resume-before-reload.png")
    before = bridge_processes(rdpgw.runtime_dir)
    assert {c.split()[0].rsplit("/", 1)[-1] for c in before.values()} == {"xfreerdp3", "Xvnc"}, before

    # Reload: the browser's connection ends and a new one starts, well inside the grace time.
    t0 = time.monotonic()
    page.reload()
    wait_state(page, "connected", 30_000)
    took = time.monotonic() - t0
    wait_for_colour(page, is_ansi_magenta, most, "the same magenta after the reload", timeout=15)
    print(f"\nresume: reload to connected {took:.1f} s, to magenta {time.monotonic() - t0:.1f} s "
          f"(grace {RESUME_GRACE_SECONDS:g} s)")  # fmt: skip
    shot_to(page, "rdp-resume-after-reload.png")
    assert took < RESUME_GRACE_SECONDS / 2, f"the reload took {took:.1f} s: too close to the grace time"
    after = bridge_processes(rdpgw.runtime_dir)
    assert set(after) == set(before), f"the bridge changed: before {before}, after {after}"
    page.wait_for_timeout(1000)
    assert set(bridge_processes(rdpgw.runtime_dir)) == set(before)
    assert xrdp_server.password not in rdpgw.log_text()

    # Leaving: the bridge still goes after the (longer) grace time.
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw, within=RESUME_GRACE_SECONDS + 5)


def test_mouse_wheel_reaches_the_remote_desktop(
    rdpgw: RdpGateway, xrdp_server: RdpServer, erin_state: dict[str, Any], new_page: Callable[..., Watched]
) -> None:
    PASSWORDS.append(xrdp_server.password)
    desktop_id = rdpgw.add_rdp_desktop(
        "xrdp wheel", xrdp_server.port, xrdp_server.username, xrdp_server.password,
        "--security", "tls", "--cert-fingerprint", xrdp_server.certificate_sha256(), assign=("erin",),
    )  # fmt: skip
    page = new_page(erin_state).page
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    area = screen_box(page)
    box_area = (area[2] - area[0]) * (area[3] - area[1])
    # Any earlier test's colour will do: the remote xterm fills the desktop area.
    wait_for_colour(page, lambda p: not is_white(p) and not is_ansi_red(p), int(0.6 * box_area),
                    "the remote xterm", timeout=40)  # fmt: skip
    middle = ((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    page.mouse.click(*middle)
    wait_keys_arrive(page, area)
    # A red marker line (100 columns), then 300 numbered lines push it out of view.
    type_with_shift(page, "clear; printf '\\033[0m\\033[41m%100s\\033[0m\\n' TOP; seq 1 300")
    page.keyboard.press("Enter")

    def red() -> int:
        return count(shot(page), is_ansi_red, area, step=2)

    marker = 10 * 20 * 60  # well over half the marker line (100 columns of 10x20 pixels)
    try:
        wait_until(lambda: red() == 0, 15, "the red marker to scroll out of view", 0.3)
    except AssertionError:
        shot_to(page, "failed-rdp-wheel-marker-visible.png")
        raise
    page.wait_for_timeout(500)
    assert red() == 0
    shot_to(page, "rdp-wheel-before.png")

    page.mouse.move(*middle)
    t0 = time.monotonic()
    clicks = 0
    while (seen := red()) < marker:
        if time.monotonic() - t0 > 30:
            shot_to(page, "failed-rdp-wheel.png")
            raise AssertionError(f"the red marker did not come back after {clicks} wheel steps up "
                                 f"({seen} red pixels)")  # fmt: skip
        page.mouse.wheel(0, -120)
        clicks += 1
        page.wait_for_timeout(150)
    print(f"\nwheel: the marker is back after {clicks} wheel steps, {time.monotonic() - t0:.1f} s")
    shot_to(page, "rdp-wheel-marker-back.png")
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 4. keyboard layouts: scancodes pass through, the server's layout applies ----------------------

KEY_LOG_COLOUR = (0xC0, 0x60, 0x00)  # orange: a small xterm top left that writes keys to a file
# Keys pressed on a US keyboard in the browser (by position), and what a German layout makes of
# them: Y and Z swap, AltGr+Q is "@", Shift+2 is '"', the key left of 1 is a dead "^" and the key
# left of Backspace a dead acute, so "^ e" is "ê" and "´ e" is "é". Ctrl+Alt+Del (the toolbar
# button) reaches the xterm as the key combination, which it reports as ESC [ 3 ; 7 ~.
GERMAN_TYPED = 'zy@"êé'
CTRL_ALT_DEL = "\x1b[3;7~"


@contextlib.contextmanager
def key_log(env: dict[str, str], path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An xterm at the top left of the remote screen whose terminal hands every key, as it
    arrives, to ``cat >> path`` (UTF-8, so dead keys compose in the xterm)."""
    path.touch()
    path.chmod(0o666)
    bg = "#{:02x}{:02x}{:02x}".format(*KEY_LOG_COLOUR)
    proc = subprocess.Popen(
        ["xterm", "-fn", "10x20", "-bg", bg, "-fg", "white", "-geometry", "60x6+0+0",
         "-T", "deskgate-keys", "-e", "sh", "-c", f"stty -icanon min 1; exec cat >> '{path}'"],
        env={**env, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        rdp_servers.stop_group(proc)


def type_german_keys(page: Any, log: Path, at: tuple[float, float]) -> str:
    """Point at the key log (the remote focus follows the pointer), wait until keys arrive, then
    press the keys of GERMAN_TYPED, Ctrl+Alt+Del from the toolbar and Enter; what was logged."""
    page.mouse.move(*at)
    deadline = time.monotonic() + 20
    while "x" not in log.read_text(errors="replace"):  # a fresh session drops its first keys
        if time.monotonic() > deadline:
            shot_to(page, "failed-rdp-layout-keys.png")
            raise AssertionError("no key reached the remote key log in 20 s")
        page.keyboard.press("KeyX")
        page.wait_for_timeout(300)
    page.wait_for_timeout(300)
    start = len(log.read_text(errors="replace"))
    for key in ("KeyY", "KeyZ"):
        page.keyboard.press(key)
    page.keyboard.down("AltRight")
    page.keyboard.press("KeyQ")
    page.keyboard.up("AltRight")
    page.keyboard.down("Shift")
    page.keyboard.press("Digit2")
    page.keyboard.up("Shift")
    for key in ("Backquote", "KeyE", "Equal", "KeyE"):
        page.keyboard.press(key)
        page.wait_for_timeout(30)
    page.locator("#ctrl-alt-del").click()
    page.mouse.move(*at)
    page.keyboard.press("Enter")
    wait_until(lambda: log.read_text(errors="replace").endswith("\n"), 10, "Enter in the key log", 0.2)
    page.wait_for_timeout(500)  # the echo on the remote screen, for the screenshot
    return log.read_text(errors="replace")[start:]


def wait_key_log(page: Any, area: tuple[int, int, int, int]) -> tuple[float, float]:
    """The key log's middle in page coordinates, once the browser shows it."""
    wait_for_colour(page, near(KEY_LOG_COLOUR), 30_000, "the key log xterm", timeout=20)
    return area[0] + 150, area[1] + 50


def test_german_layout_on_xrdp_altgr_dead_keys_ctrl_alt_del(
    rdpgw: RdpGateway, xrdp_server: RdpServer, erin_state: dict[str, Any],
    new_page: Callable[..., Watched], tmp_path: Path,
) -> None:  # fmt: skip
    """xrdp maps scancodes with the layout the client announces: the desktop's keyboard_layout.
    The server's certificate is verified against its CA (policy ca) on the way."""
    PASSWORDS.append(xrdp_server.password)
    ca = tmp_path / "xrdp-ca.pem"
    ca.write_text(xrdp_server.ca_pem)
    desktop_id = rdpgw.add_rdp_desktop(
        "xrdp german", xrdp_server.port, xrdp_server.username, xrdp_server.password,
        "--security", "tls", "--cert-ca", str(ca), "--keyboard-layout", "de", assign=("erin",),
    )  # fmt: skip
    page = new_page(erin_state).page
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    area = screen_box(page)
    wait_for_colour(page, lambda p: not is_white(p), int(0.5 * (area[2] - area[0]) * (area[3] - area[1])),
                    "the remote xterm", timeout=40)  # fmt: skip
    bridges = bridge_processes(rdpgw.runtime_dir)
    assert any("/kbd:layout:0x00000407" in c and "/cert:deny" in c for c in bridges.values()), bridges
    remote = remote_display_env(xrdp_server)
    assert remote is not None, "the xrdp session's Xvnc was not found"
    log = tmp_path / "keys.txt"
    with key_log(remote, log):
        at = wait_key_log(page, area)
        got = type_german_keys(page, log, at)
        shot_to(page, "rdp-xrdp-german-keys.png")
    assert got == GERMAN_TYPED + CTRL_ALT_DEL + "\n", f"the remote xterm got {got!r}"
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


def test_german_layout_of_the_remote_x_server_applies_through_the_shadow_server(
    rdpgw: RdpGateway, rdp_server_factory: Callable[[str], RdpServer], erin_state: dict[str, Any],
    new_page: Callable[..., Watched], tmp_path: Path,
) -> None:  # fmt: skip
    """The shadow server injects the scancodes as X keycodes: the remote X server's own layout
    (German here, set with setxkbmap) decides the characters, and the desktop stays on 'us'."""
    server = rdp_server_factory("shadow")
    PASSWORDS.append(server.password)
    display = next(a for a in server.procs[0].args if str(a).startswith(":"))
    remote = {"PATH": "/usr/bin:/bin", "DISPLAY": str(display)}
    subprocess.run(["setxkbmap", "de"], env=remote, check=True, timeout=10)
    desktop_id = rdpgw.add_rdp_desktop("shadow german", server.port, server.username,
                                       server.password, "--security", "nla", assign=("erin",))
    page = new_page(erin_state).page
    open_rdp(page, rdpgw, desktop_id)
    wait_state(page, "connected", 60_000)
    area = screen_box(page)
    wait_for_colour(page, near(server.colour), 200_000, "the shadow xterm colour", timeout=30)
    log = tmp_path / "keys.txt"
    with key_log(remote, log):
        at = wait_key_log(page, area)
        got = type_german_keys(page, log, at)
        shot_to(page, "rdp-shadow-german-keys.png")
    assert got == GERMAN_TYPED + CTRL_ALT_DEL + "\n", f"the remote xterm got {got!r}"
    page.goto(rdpgw.gw.base_url + "/")
    wait_no_bridges(rdpgw)


# -- 5. the passwords, once more, over the whole log ------------------------------------------------


def test_no_rdp_password_in_the_gateway_log(rdpgw: RdpGateway) -> None:
    log = rdpgw.log_text()
    assert "[bridge=" in log, "the bridge logged nothing: did the RDP tests run?"
    assert PASSWORDS, "no RDP desktop was added"
    for password in PASSWORDS:
        assert password not in log
    assert not [line for line in ps_args().splitlines() if any(p in line for p in PASSWORDS)]
    assert not bridge_processes(rdpgw.runtime_dir)

