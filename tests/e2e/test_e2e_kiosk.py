"""Kiosks in Chromium against a real `deskgate serve` and real Xvnc desktops: enrolment with a
pairing code, a shared kiosk's sign-in, idle warning and wipe, a copied device cookie, roaming
between two browsers, a dedicated kiosk through desktop and gateway restarts, the admin's fleet
page, revocation from that page, and a view-only dedicated kiosk."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from e2e_support import (
    ARTIFACTS,
    REPO,
    VIEWPORT,
    Account,
    Gateway,
    deskgate_exe,
    free_port,
    healthy,
    private_runtime_dir,
    run_cli,
    screen_box,
    shot,
    shot_to,
    sign_in,
    stop_pid,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
    wait_state,
    wait_until,
)
from pngpixels import count, is_ansi_blue

from gateway.xdisplay.numbers import xvnc_serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DESKTOP = "Kiosk desktop"
LOBBY = "Lobby desktop"
WALL = "Wall desktop"  # the view-only kiosk's alone, so typing there cannot reach another test
DESKTOPS = (DESKTOP, LOBBY, WALL)
IDLE_SECONDS = 24
WARNING_SECONDS = 12
CODE_RE = re.compile(r"\b([A-Z2-9]{4}-[A-Z2-9]{4})\b")


@dataclass
class KioskGateway:
    """A gateway for the kiosk tests, which the dedicated kiosk's test restarts."""

    gw: Gateway
    runtime: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.gw.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [deskgate_exe(), "--config", str(self.gw.config), "serve",
                 "--stop-desktops-on-exit"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True,
                env={**os.environ, "DESKGATE_DESKTOPS_RUNTIME_DIR": str(self.runtime)})
        proc = self.proc
        wait_until(lambda: healthy(self.gw.base_url) or proc.poll() is not None, 30,
                   "GET /healthz")
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{self.gw.log_tail()}"

    def stop(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self.proc = None

    def desktop_dir(self, name: str) -> Path:
        return self.runtime / "desktops" / self.gw.desktop_ids[name]

    def xvnc_pids(self, name: str) -> list[int]:
        return [p.pid for p in xvnc_serving(self.desktop_dir(name) / "vnc.sock")]

    def kiosk(self, *args: str) -> str:
        return self.gw.cli("kiosk", *args)

    def add_kiosk(self, name: str, *args: str) -> str:
        """A new kiosk; its pairing code."""
        out = self.kiosk("add", name, *args)
        m = CODE_RE.search(out)
        assert m, f"no pairing code in {out!r}"
        return m.group(1)


@pytest.fixture(scope="module")
def kg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskGateway]:
    data = tmp_path_factory.mktemp("kiosk")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--port", str(port), "--public-url", base,
                  "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, out
    # Short kiosk times, for the gateway and the command line alike (pairing codes last 30 s).
    with open(data / "deskgate.toml", "a") as config:
        config.write(f"\n[kiosks]\nkiosk_idle_seconds = {IDLE_SECONDS}\n"
                     f"kiosk_idle_warning_seconds = {WARNING_SECONDS}\n"
                     "kiosk_heartbeat_seconds = 2\nkiosk_pairing_minutes = 0.5\n")
    gw = Gateway(base_url=base, data_dir=data, config=data / "deskgate.toml",
                 log_path=data / "serve.log", admin=Account("admin", m.group(1)), accounts={},
                 desktop_ids={}, pid=0)
    for name in ("kim", "lee", "pat"):
        password = f"{name}-Pw-{os.urandom(4).hex()}"
        gw.cli("user", "add", name, "--password-stdin", stdin=password + "\n")
        gw.accounts[name] = Account(name, password)
    for desktop in DESKTOPS:
        added = gw.cli("desktop", "add", desktop, "--provider", "local")
        found = re.search(r"^Desktop\s+(\S+)\s", added, re.M)
        assert found, added
        gw.desktop_ids[desktop] = found.group(1)
    gw.cli("assign", DESKTOP, "kim")
    gw.cli("assign", DESKTOP, "lee")
    gw.cli("assign", DESKTOP, "pat")
    k = KioskGateway(gw, private_runtime_dir())
    k.start()
    try:
        yield k
    finally:
        if k.proc is not None:
            stop_pid(k.proc)
        for desktop in DESKTOPS:
            for pid in k.xvnc_pids(desktop):
                os.killpg(pid, signal.SIGKILL)
        print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
        shutil.rmtree(k.runtime, ignore_errors=True)


@pytest.fixture
def contexts(browser: Any) -> Iterator[Any]:
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        ctx = browser.new_context(viewport=VIEWPORT, **kwargs)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


@pytest.fixture(scope="module")
def admin_state(kg: KioskGateway, browser: Any) -> dict[str, Any]:
    """The module gateway's admin, signed in once through /login (password, then TOTP enrolment):
    a TOTP code is good once in its 30 s, so the tests share this browser state."""
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        sign_in(ctx.new_page(), kg.gw, kg.gw.admin)
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


def fleet_page(kg: KioskGateway, contexts: Any, admin_state: dict[str, Any]) -> Any:
    page = contexts(storage_state=admin_state).new_page()
    page.goto(kg.gw.base_url + "/admin/kiosks")
    page.locator("#kiosks-table").wait_for()
    return page


def fleet_id(page: Any, name: str) -> str:
    """The id of the kiosk named ``name`` on the fleet page."""
    row = page.locator("tr[data-kiosk-part='row']",
                       has=page.locator("td[data-col='name']", has_text=re.compile(
                           f"^{re.escape(name)}$")))
    kiosk_id = row.get_attribute("data-kiosk-id")
    assert kiosk_id, f"no row for kiosk {name!r}"
    return str(kiosk_id)


def fleet_shows(page: Any, kiosk_id: str, part: str, value: str, timeout_ms: int = 15_000) -> None:
    """Waits until the fleet page's ``part`` of the kiosk shows ``value`` (the state part: its
    data-state; the others: their text), as the page's event stream updates it."""
    page.wait_for_function(
        """([id, part, value]) => {
            const el = document.querySelector(
                `[data-kiosk-id="${id}"][data-kiosk-part="${part}"]`);
            return !!el && (part === 'state' ? el.dataset.state : el.textContent.trim()) === value;
        }""", arg=[kiosk_id, part, value], timeout=timeout_ms)


def ready(page: Any, what: str, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(
        "w => document.getElementById('kiosk')?.dataset.ready === w", arg=what,
        timeout=timeout_ms)


def enrol(page: Any, kg: KioskGateway, code: str) -> None:
    page.goto(kg.gw.base_url + "/kiosk")
    ready(page, "pair")
    page.fill("#pair-code", code.lower().replace("-", " "))  # as a person might type it
    page.click("#pair-submit")


def kiosk_sign_in(page: Any, kg: KioskGateway, account: Account) -> None:
    """On a shared kiosk's sign-in screen: password, then TOTP (enrolled on first use)."""
    ready(page, "signin")
    page.fill("#username", account.name)
    page.fill("#password", account.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/login/totp"))
    if page.locator("#totp-secret").count():
        secret = page.locator("#totp-secret").text_content()
        assert secret
        account.totp_secret = secret
        page.fill("#totp-code", pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Confirm").click()
        page.locator("#continue").wait_for()
        account.recovery_codes = [c.strip() for c in
                                  page.locator(".recovery-code").all_text_contents()]
        page.locator("#continue").click()
    else:
        assert account.totp_secret
        page.fill("#totp-code", account.recovery_codes.pop())
        page.get_by_role("button", name="Verify").click()
    ready(page, "desktops")


def cookie_names(ctx: Any) -> set[str]:
    return {c["name"] for c in ctx.cookies()}


def post(base: str, path: str, cookies: dict[str, str], body: dict[str, Any]) -> int:
    req = urllib.request.Request(  # noqa: S310 - loopback
        base + path, method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "X-CSRF-Token": cookies.get("deskgate_pre", ""),
                 "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_enrol_with_a_pairing_code_once(kg: KioskGateway, contexts: Any) -> None:
    code = kg.add_kiosk("Front desk", "--location", "Hall A")
    page = contexts().new_page()
    enrol(page, kg, "ZZZZ-ZZZZ")
    page.locator("#pair-error").wait_for()
    assert "wrong, used or expired" in page.locator("#pair-error").text_content()
    page.fill("#pair-code", code)
    page.click("#pair-submit")
    ready(page, "signin")
    assert page.locator("#kiosk-name").text_content() == "Front desk"
    shot_to(page, "kiosk-signin.png")
    # The same code in another browser: used.
    other = contexts().new_page()
    enrol(other, kg, code)
    other.locator("#pair-error").wait_for()
    assert "wrong, used or expired" in other.locator("#pair-error").text_content()
    # An expired code (codes last 30 s here).
    late = kg.add_kiosk("Late desk")
    time.sleep(31)
    enrol(other, kg, late)
    other.locator("#pair-error").wait_for()
    assert "wrong, used or expired" in other.locator("#pair-error").text_content()
    listing = kg.kiosk("list")
    assert re.search(r"Front desk.*online", listing), listing


def test_shared_kiosk_sign_in_idle_warning_and_wipe(kg: KioskGateway, contexts: Any) -> None:
    code = kg.add_kiosk("Hot desk 1")
    ctx = contexts()
    page = ctx.new_page()
    enrol(page, kg, code)
    ready(page, "signin")
    device = {c["value"] for c in ctx.cookies() if c["name"] == "deskgate_device"}
    assert len(device) == 1
    kiosk_sign_in(page, kg, kg.gw.accounts["kim"])
    assert "deskgate_session" in cookie_names(ctx)
    page.click(f".desktop-connect[data-desktop-id='{kg.gw.desktop_ids[DESKTOP]}']")
    wait_state(page, "connected", 45_000)
    _, box = wait_for_xterm(page, timeout=30)
    type_into_xterm(page, box, r"printf '\033[44m'; clear")
    wait_for_colour(page, is_ansi_blue, 100_000, "the xterm to turn blue")
    page.evaluate("localStorage.setItem('left-behind', 'x'); sessionStorage.setItem('s', 'y')")
    page.evaluate("document.getElementById('clipboard-text').value = 'secret of kim'")
    # No input now: the warning with its countdown, then the sign-in screen again.
    page.locator("#kiosk-idle-warning").wait_for(state="visible",
                                                 timeout=(IDLE_SECONDS + 5) * 1000)
    assert int(page.locator("#kiosk-idle-countdown").text_content() or "0") <= WARNING_SECONDS
    shot_to(page, "kiosk-idle-warning.png")
    ready(page, "signin", (WARNING_SECONDS + 10) * 1000)
    shot_to(page, "kiosk-after-idle.png")
    names = cookie_names(ctx)
    assert "deskgate_session" not in names
    # What is left: the device's credential, and the next person's anonymous sign-in form
    # token and grant (made after the wipe, by the sign-in screen).
    assert names <= {"deskgate_device", "deskgate_pre", "deskgate_kiosk_grant"}, names
    assert {c["value"] for c in ctx.cookies() if c["name"] == "deskgate_device"} == device
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.locator("#screen").count() == 0  # the desktop's page (and canvas) is gone
    # The person's session is over on the gateway too.
    assert "Hot desk 1" in kg.kiosk("list")


def test_copied_device_cookie_without_the_key_is_refused(kg: KioskGateway,
                                                         contexts: Any) -> None:
    code = kg.add_kiosk("Hot desk 2")
    ctx = contexts()
    page = ctx.new_page()
    enrol(page, kg, code)
    ready(page, "signin")
    stolen = [c for c in ctx.cookies() if c["name"] == "deskgate_device"]
    assert stolen
    thief = contexts()
    thief.add_cookies(stolen)
    page2 = thief.new_page()
    page2.goto(kg.gw.base_url + "/kiosk")
    ready(page2, "unproven")
    assert "does not hold the key" in page2.locator("#kiosk-unproven-reason").text_content()
    assert "deskgate_kiosk_grant" not in cookie_names(thief)
    # Straight to the gateway with the cookie and a made-up signature: refused.
    cookies = {c["name"]: c["value"] for c in thief.cookies()}
    assert post(kg.gw.base_url, "/kiosk/start", cookies,
                {"challenge": "x" * 32, "signature": "A" * 88}) == 401
    # The real device still works.
    page.reload()
    ready(page, "signin")


def test_roaming_between_two_browsers(kg: KioskGateway, contexts: Any) -> None:
    lee = kg.gw.accounts["lee"]
    first, second = contexts().new_page(), contexts().new_page()
    for page in (first, second):
        page.goto(kg.gw.base_url + "/login")
        page.fill("#username", lee.name)
        page.fill("#password", lee.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/login/totp"))
        if page.locator("#totp-secret").count():
            lee.totp_secret = page.locator("#totp-secret").text_content()
            page.fill("#totp-code", pyotp.TOTP(lee.totp_secret or "").now())
            page.get_by_role("button", name="Confirm").click()
            page.locator("#continue").wait_for()
            lee.recovery_codes = [c.strip() for c in
                                  page.locator(".recovery-code").all_text_contents()]
            page.locator("#continue").click()
        else:
            page.fill("#totp-code", lee.recovery_codes.pop())
            page.get_by_role("button", name="Verify").click()
        page.wait_for_url(kg.gw.base_url + "/")
    url = f"{kg.gw.base_url}/desktops/{kg.gw.desktop_ids[DESKTOP]}"
    first.goto(url)
    wait_state(first, "connected", 45_000)
    _, box = wait_for_xterm(first, timeout=30)
    type_into_xterm(first, box, r"printf '\033]2;dg-roam\007\033[44m'; clear")
    wait_for_colour(first, is_ansi_blue, 100_000, "the xterm to turn blue")
    second.goto(url)
    wait_state(second, "connected", 45_000)
    wait_for_colour(second, is_ansi_blue, 100_000, "the same blue xterm on the second device")
    wait_state(first, "disconnected", 15_000)
    text = first.locator("#status").text_content() or ""
    assert "moved to another device" in text, text
    shot_to(first, "kiosk-moved.png")
    time.sleep(4)  # it does not reconnect by itself
    assert first.evaluate("document.getElementById('deskgate-client').dataset.state") == \
        "disconnected"
    assert second.evaluate("document.getElementById('deskgate-client').dataset.state") == \
        "connected"


def test_dedicated_kiosk_comes_back_after_desktop_and_gateway_restarts(
        kg: KioskGateway, contexts: Any) -> None:
    code = kg.add_kiosk("Lobby screen", "--mode", "dedicated", "--desktop", LOBBY)
    page = contexts().new_page()
    enrol(page, kg, code)
    page.wait_for_url(re.compile(r"/kiosk/desktops/\d+$"), timeout=20_000)
    wait_state(page, "connected", 45_000)
    wait_for_xterm(page, timeout=30)
    shot_to(page, "kiosk-dedicated.png")
    # The desktop dies (its X server killed): the kiosk is back by itself.
    pids = kg.xvnc_pids(LOBBY)
    assert pids
    t0 = time.monotonic()
    os.killpg(pids[0], signal.SIGKILL)
    wait_until(lambda: not kg.xvnc_pids(LOBBY) or kg.xvnc_pids(LOBBY) != pids, 10,
               "the desktop to go")
    wait_until(lambda: kg.xvnc_pids(LOBBY) and kg.xvnc_pids(LOBBY) != pids, 60,
               "the desktop to start again")
    wait_state(page, "connected", 60_000)
    wait_for_xterm(page, timeout=30)
    desktop_back = time.monotonic() - t0
    # The gateway restarts: back by itself as well, nobody signing in.
    t0 = time.monotonic()
    kg.stop()
    wait_until(lambda: page.evaluate(
        "document.getElementById('deskgate-client').dataset.state") != "connected", 15,
        "the kiosk to notice the gateway went")
    kg.start()
    wait_state(page, "connected", 60_000)
    wait_for_xterm(page, timeout=30)
    gateway_back = time.monotonic() - t0
    print(f"dedicated kiosk back after a desktop restart in {desktop_back:.1f} s,"
          f" after a gateway restart in {gateway_back:.1f} s")
    (ARTIFACTS / "kiosk-times.txt").write_text(
        f"desktop restart: {desktop_back:.1f} s\ngateway restart: {gateway_back:.1f} s\n")


def test_fleet_page_shows_each_kiosk_live(kg: KioskGateway, contexts: Any,
                                          admin_state: dict[str, Any]) -> None:
    lobby = contexts().new_page()
    enrol(lobby, kg, kg.add_kiosk("Lobby display", "--mode", "dedicated", "--desktop", LOBBY))
    lobby.wait_for_url(re.compile(r"/kiosk/desktops/\d+$"), timeout=20_000)
    wait_state(lobby, "connected", 45_000)
    person = contexts().new_page()
    enrol(person, kg, kg.add_kiosk("Hot desk 3", "--location", "Hall B"))
    kiosk_sign_in(person, kg, kg.gw.accounts["pat"])
    person.click(f".desktop-connect[data-desktop-id='{kg.gw.desktop_ids[DESKTOP]}']")
    wait_state(person, "connected", 45_000)
    person.mouse.move(20, 300)  # input: the idle countdown starts over
    page = fleet_page(kg, contexts, admin_state)
    shared, dedicated = fleet_id(page, "Hot desk 3"), fleet_id(page, "Lobby display")
    for kiosk_id, who, desktop in ((shared, "pat", DESKTOP), (dedicated, "", LOBBY)):
        fleet_shows(page, kiosk_id, "state", "online")
        fleet_shows(page, kiosk_id, "current_user", who)
        fleet_shows(page, kiosk_id, "current_desktop", desktop)
    row = page.locator(f"#kiosk-{shared}")
    assert row.locator("[data-col='location']").text_content() == "Hall B"
    assert row.locator("[data-col='mode']").text_content() == "shared"
    assert page.locator(f"#kiosk-{dedicated} [data-col='input']").text_content() == "allowed"
    page.locator("#kiosk-stream-state").wait_for(state="visible")
    assert page.locator("#kiosk-stream-state").text_content() == "live"
    shot_to(page, "kiosk-fleet.png")
    # The person signs out on the kiosk: the page says nobody is on it, live.
    person.click("#kiosk-menu-toggle")
    person.click("#kiosk-signout")
    ready(person, "signin")
    fleet_shows(page, shared, "current_user", "")
    fleet_shows(page, shared, "state", "online")


def test_revocation_from_the_fleet_page_ends_the_kiosk_at_once(
        kg: KioskGateway, contexts: Any, admin_state: dict[str, Any]) -> None:
    code = kg.add_kiosk("Revoked screen", "--mode", "dedicated", "--desktop", LOBBY)
    ctx = contexts()
    page = ctx.new_page()
    enrol(page, kg, code)
    page.wait_for_url(re.compile(r"/kiosk/desktops/\d+$"), timeout=20_000)
    wait_state(page, "connected", 45_000)
    device = {c["name"]: c["value"] for c in ctx.cookies()}
    admin = fleet_page(kg, contexts, admin_state)
    kiosk_id = fleet_id(admin, "Revoked screen")
    fleet_shows(admin, kiosk_id, "state", "online")
    admin.locator(f"#kiosk-confirm-{kiosk_id} > summary").click()
    # The wrong name: refused, nothing revoked.
    admin.fill(f"#confirm-revoke-{kiosk_id}", "Revoked")
    admin.click(f"#kiosk-confirm-{kiosk_id} [data-kiosk-action='revoke']")
    admin.locator(".error", has_text="type its name").wait_for()
    assert page.evaluate("document.getElementById('deskgate-client').dataset.state") == \
        "connected"
    admin.fill(f"#confirm-revoke-{kiosk_id}", "Revoked screen")
    t0 = time.monotonic()
    admin.click(f"#kiosk-confirm-{kiosk_id} [data-kiosk-action='revoke']")
    ready(page, "pair", 15_000)
    cleared = time.monotonic() - t0
    assert "not enrolled" in (page.locator("#kiosk-error").text_content() or "")
    shot_to(page, "kiosk-revoked.png")
    admin.wait_for_url(re.compile(r"info=kiosk-revoked$"))
    fleet_shows(admin, kiosk_id, "state", "revoked")
    assert post(kg.gw.base_url, "/kiosk/challenge", device, {}) == 401
    print(f"revocation on the fleet page to a cleared kiosk screen: {cleared:.2f} s")
    with open(ARTIFACTS / "kiosk-times.txt", "a") as f:
        f.write(f"revocation (fleet page click) to cleared screen: {cleared:.2f} s\n")


def most_blue(page: Any, seconds: float) -> int:
    """The most ANSI-blue pixels the desktop area showed in screenshots over ``seconds``."""
    area = screen_box(page)
    most, ends = 0, time.monotonic() + seconds
    while time.monotonic() < ends:
        most = max(most, count(shot(page), is_ansi_blue, area, step=4))
        time.sleep(0.3)
    return most


def test_view_only_dedicated_kiosk_sends_no_input(kg: KioskGateway, contexts: Any) -> None:
    code = kg.add_kiosk("Wall screen", "--mode", "dedicated", "--desktop", WALL, "--view-only")
    page = contexts().new_page()
    enrol(page, kg, code)
    page.wait_for_url(re.compile(r"/kiosk/desktops/\d+$"), timeout=20_000)
    wait_state(page, "connected", 45_000)
    assert page.locator("#deskgate-client").get_attribute("data-view-only") == "true"
    _, box = wait_for_xterm(page, timeout=30)
    type_into_xterm(page, box, r"printf '\033[44m'; clear")
    blue = most_blue(page, 5)
    shot_to(page, "kiosk-view-only.png")
    assert blue < 5_000, f"{blue} blue pixels: keys reached a view-only kiosk's desktop"
    # The same keys once the admin allows input: the kiosk starts over, and they do arrive.
    kg.kiosk("set", "Wall screen", "--input")
    page.wait_for_function(
        "() => document.getElementById('deskgate-client')?.dataset.viewOnly === 'false'",
        timeout=30_000)
    wait_state(page, "connected", 45_000)
    _, box = wait_for_xterm(page, timeout=30)
    type_into_xterm(page, box, r"printf '\033[44m'; clear")
    wait_for_colour(page, is_ansi_blue, 100_000, "the xterm to turn blue once input is allowed")
