"""The client when things are down, in Chromium against real gateway processes.

1. A desktop that does not answer (a static desktop at a closed loopback port): the page stops
   trying after a bounded time, says so, and offers the way back to the portal (which it offers
   all along); the audit holds one event for the whole attempt, and the dashboard's "Recently
   closed" no 0-byte rows from it.
2. A gateway restart (SIGTERM, started again on the same port and data folder) with a static
   Xvnc desktop: the client reconnects by itself as soon as the gateway answers; the time from
   the gateway answering again to the client's "connected" is printed (no timing assertion).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    STATIC_VNC_PASSWORD,
    VIEWPORT,
    Account,
    Desktop,
    Gateway,
    Relay,
    Watched,
    deskgate_exe,
    free_port,
    healthy,
    run_cli,
    sign_in,
    stop_pid,
    wait_for_xterm,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# The client gives up on a desktop that does not answer after 30 s (static/client.js
# GIVE_UP_AFTER_S), plus the last try; the page must say so well within this.
GIVE_UP_WAIT_MS = 90_000

# Records in the page every state the client passes through, with the wall clock (ms).
STATE_LOG = """() => {
    const root = document.getElementById('deskgate-client');
    window.stateLog = [[root.dataset.state, Date.now()]];
    new MutationObserver(() => {
        const last = window.stateLog[window.stateLog.length - 1];
        if (last[0] !== root.dataset.state) {
            window.stateLog.push([root.dataset.state, Date.now()]);
        }
    }).observe(root, {attributes: true, attributeFilter: ['data-state']});
}"""


def _signed_in(browser: Any, gw: Gateway, account: Account) -> dict[str, Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        sign_in(ctx.new_page(), gw, account)
        state: dict[str, Any] = ctx.storage_state()
        return state
    finally:
        ctx.close()


def _script_errors(w: Watched) -> list[str]:
    """Exceptions thrown by the page's scripts (failed requests to a gateway that is down are
    logged by the browser too: those are expected here)."""
    return [e for e in w.console_errors if e.startswith("pageerror")]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


def _session_audit(gw: Gateway, desktop: str) -> list[str]:
    """The session.* audit lines about ``desktop``, oldest first."""
    lines = gw.cli("audit", "--limit", "10000").splitlines()
    return [ln for ln in lines if f" desktop={desktop} " in ln and re.search(r"\ssession\.", ln)]


# -- 1. a desktop that does not answer ---------------------------------------------------------


def test_unreachable_desktop_gives_up_with_a_way_back(
    browser: Any, gateway: Gateway, new_page: Callable[..., Watched], artifacts: Path,
) -> None:
    suffix = os.urandom(3).hex()
    desktop = f"Unreachable-{suffix}"
    user = Account(f"ulla-{suffix}", f"ulla-{suffix}-Pw")
    admin = Account(f"attempts-admin-{suffix}", f"admin-{suffix}-Pw")
    gateway.cli("user", "add", user.name, "--password-stdin", stdin=user.password + "\n")
    gateway.cli("user", "add", admin.name, "--admin", "--password-stdin",
                stdin=admin.password + "\n")
    out = gateway.cli("desktop", "add", desktop, "--provider", "static", "--vnc",
                      f"127.0.0.1:{_closed_port()}", "--password-stdin",
                      stdin=STATIC_VNC_PASSWORD + "\n")
    m = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
    assert m, out
    desktop_id = m.group(1)
    gateway.cli("assign", desktop, user.name)

    w = new_page(_signed_in(browser, gateway, user))
    page = w.page
    opened = time.monotonic()
    page.goto(f"{gateway.base_url}/desktops/{desktop_id}")
    page.evaluate(STATE_LOG)

    # While it tries again, the overlay already offers the way back.
    wait_state(page, "reconnecting", 15_000)
    assert page.get_by_role("link", name="Back to your desktops").is_visible()
    page.screenshot(path=str(artifacts / "unreachable-retrying.png"))

    # It stops by itself, with a clear message.
    wait_state(page, "disconnected", GIVE_UP_WAIT_MS)
    gave_up = time.monotonic() - opened
    page.screenshot(path=str(artifacts / "unreachable-gave-up.png"))
    assert page.locator("#status-text").text_content() == "The desktop cannot be reached"
    detail = page.locator("#status-detail").text_content() or ""
    assert "stopped trying" in detail, detail
    tries = int(re.search(r"after (\d+) tries", detail).group(1))  # type: ignore[union-attr]
    print(f"\nthe client gave up after {gave_up:.1f} s and {tries} tries: {detail!r}")
    assert page.get_by_role("button", name="Reconnect").is_visible()
    back = page.get_by_role("link", name="Back to your desktops")
    assert back.is_visible()
    time.sleep(3)  # nothing retries once it has stopped
    assert page.evaluate("() => document.getElementById('deskgate-client').dataset.state") \
        == "disconnected"

    # One audit event for the whole attempt, however many tries it took.
    events = _session_audit(gateway, desktop)
    assert len(events) == 1 and " session.failed " in events[0], events
    assert "the desktop cannot be reached" in events[0], events

    # The way back leads to the portal.
    back.click()
    page.wait_for_url(gateway.base_url + "/")
    assert page.get_by_text(desktop).first.is_visible()
    assert _script_errors(w) == []

    # The dashboard: no 0-byte "Recently closed" rows from the failed attempt.
    dash = new_page(_signed_in(browser, gateway, admin)).page
    dash.goto(gateway.base_url + "/admin/sessions")
    dash.wait_for_function(
        "() => document.getElementById('stream-state').textContent === 'live'", timeout=10_000)
    recent = dash.locator("#recent-sessions tbody").inner_text()
    dash.screenshot(path=str(artifacts / "unreachable-dashboard.png"), full_page=True)
    assert desktop not in recent, recent


def test_desktop_that_drops_every_connection_is_not_retried_forever(
    browser: Any, gateway: Gateway, static_xvnc: Desktop, new_page: Callable[..., Watched],
    artifacts: Path,
) -> None:
    """A desktop that accepts each connection and drops it a moment later (here: a relay in
    front of the test Xvnc that cuts every connection after 0.5 s): each reconnect reaches the
    desktop, yet the client stops after a bounded time instead of looping."""
    suffix = os.urandom(3).hex()
    desktop = f"Flaky-{suffix}"
    user = Account(f"fred-{suffix}", f"fred-{suffix}-Pw")
    relay = Relay(static_xvnc.rfbport)
    stop = threading.Event()

    def cut_every_connection() -> None:
        seen = 0.0
        while not stop.wait(0.05):
            if relay.live == 0:
                seen = 0.0
            elif seen == 0.0:
                seen = time.monotonic()
            elif time.monotonic() - seen > 0.5:
                relay.cut()
                seen = 0.0

    cutter = threading.Thread(target=cut_every_connection, daemon=True)
    cutter.start()
    try:
        gateway.cli("user", "add", user.name, "--password-stdin", stdin=user.password + "\n")
        out = gateway.cli("desktop", "add", desktop, "--provider", "static", "--vnc",
                          f"127.0.0.1:{relay.port}", "--password-stdin",
                          stdin=STATIC_VNC_PASSWORD + "\n")
        m = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
        assert m, out
        gateway.cli("assign", desktop, user.name)
        w = new_page(_signed_in(browser, gateway, user))
        page = w.page
        opened = time.monotonic()
        page.goto(f"{gateway.base_url}/desktops/{m.group(1)}")
        page.evaluate(STATE_LOG)
        wait_state(page, "disconnected", GIVE_UP_WAIT_MS)
        page.screenshot(path=str(artifacts / "flaky-gave-up.png"))
        log = page.evaluate("() => window.stateLog")
        connects = sum(1 for state, _ in log if state == "connected")
        print(f"\nthe client stopped after {time.monotonic() - opened:.1f} s; it had reached the"
              f" desktop {connects} times, {relay.accepted} connections in all")
        assert connects >= 2, log
        assert page.locator("#status-text").text_content() == "The desktop cannot be reached"
        assert page.get_by_role("link", name="Back to your desktops").is_visible()
        assert _script_errors(w) == []
    finally:
        stop.set()
        cutter.join(5)
        relay.close()


# -- 2. a gateway restart ----------------------------------------------------------------------


class GatewayProcess:
    """A gateway of this test's own, which the test stops and starts again (same port, same
    data folder)."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        out = run_cli("init", "--data", str(data), "--host", "127.0.0.1", "--port",
                      str(self.port), "--public-url", self.base_url, "--no-demo")
        m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
        assert m, out
        self.config = data / "deskgate.toml"
        self.log_path = data / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.gw = Gateway(base_url=self.base_url, data_dir=data, config=self.config,
                          log_path=self.log_path, admin=Account("admin", m.group(1)),
                          accounts={}, desktop_ids={}, pid=0)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [deskgate_exe(), "--config", str(self.config), "serve"], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True)
        self.gw.pid = self.proc.pid

    def wait_healthy(self, timeout: float = 30) -> float:
        """Asks /healthz every 10 ms; returns the wall-clock time it first answered."""
        proc = self.proc
        assert proc is not None
        wait_until(lambda: healthy(self.base_url) or (proc.poll() is not None and "exited"),
                   timeout, "GET /healthz", interval=0.01)
        assert proc.poll() is None, f"deskgate serve exited:\n{self.gw.log_tail()}"
        return time.time()

    def terminate(self) -> None:
        proc = self.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)


@pytest.fixture
def own_gateway(tmp_path: Path, static_xvnc: Desktop) -> Iterator[GatewayProcess]:
    """A gateway with one user, "rita", assigned a static desktop: the fixture's Xvnc."""
    g = GatewayProcess(tmp_path / "gateway")
    g.start()
    try:
        g.wait_healthy()
        rita = Account("rita", f"rita-{os.urandom(4).hex()}-Pw")
        g.gw.cli("user", "add", rita.name, "--password-stdin", stdin=rita.password + "\n")
        g.gw.accounts[rita.name] = rita
        out = g.gw.cli("desktop", "add", "Restart desktop", "--provider", "static", "--vnc",
                       f"127.0.0.1:{static_xvnc.rfbport}", "--password-stdin",
                       stdin=STATIC_VNC_PASSWORD + "\n")
        m = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
        assert m, out
        g.gw.desktop_ids["Restart desktop"] = m.group(1)
        g.gw.cli("assign", "Restart desktop", rita.name)
        yield g
    finally:
        g.stop()
        print(f"\n--- restarted gateway's log (tail) ---\n{g.gw.log_tail(40)}")


@pytest.mark.parametrize("down_for", [0.0, 4.0], ids=["restart", "restart-after-4s"])
def test_reconnects_as_soon_as_the_restarted_gateway_answers(
    browser: Any, own_gateway: GatewayProcess, new_page: Callable[..., Watched], artifacts: Path,
    down_for: float,
) -> None:
    """``down_for``: how long the gateway stays stopped before it starts again (a slower
    restart: an upgrade, a busy host)."""
    g = own_gateway
    w = new_page(_signed_in(browser, g.gw, g.gw.accounts["rita"]))
    page = w.page
    # What the page asked and got, in order: ("request", method, path) / ("response", path, status).
    traffic: list[tuple[str, str, Any]] = []
    page.on("request", lambda r: traffic.append(("request", r.method, r.url.split("?")[0])))
    page.on("response", lambda r: traffic.append(("response", r.url.split("?")[0], r.status)))
    page.goto(f"{g.base_url}/desktops/{g.gw.desktop_ids['Restart desktop']}")
    wait_state(page, "connected")
    wait_for_xterm(page, failed_shot="failed-restart-xterm-before.png")
    first = page.evaluate("() => document.getElementById('deskgate-client').dataset.sessionId")
    page.evaluate(STATE_LOG)

    stopped_at = time.time()
    g.terminate()
    mark = len(traffic)
    wait_state(page, "reconnecting", 15_000)
    page.screenshot(path=str(artifacts / "restart-waiting.png"))
    time.sleep(down_for)
    g.start()
    up = g.wait_healthy()

    wait_state(page, "connected", 60_000)
    log = page.evaluate("() => window.stateLog")
    connected_at = [t for s, t in log if s == "connected"][-1] / 1000.0
    after = traffic[mark:]
    probes = sum(1 for kind, _, url in after if kind == "request" and url.endswith("/healthz"))
    print(f"\nafter the gateway restart ({down_for:g} s down): the client was connected"
          f" {connected_at - up:.2f} s after the gateway answered again ({up - stopped_at:.2f} s"
          f" after SIGTERM; {probes} readiness probes); states: "
          + " -> ".join(f"{s}@{t / 1000.0 - stopped_at:+.2f}s" for s, t in log))

    # The client reconnected because the gateway said it was ready: its first connect after
    # the restart follows a /healthz answer.
    connects = [i for i, (kind, method, url) in enumerate(after)
                if kind == "request" and method == "POST" and url.endswith("/connect")]
    ready = [i for i, (kind, url, status) in enumerate(after)
             if kind == "response" and url.endswith("/healthz") and status == 200]
    assert connects and ready and ready[0] < connects[0], after

    # A new session on the desktop, whose pixels show.
    second = page.evaluate("() => document.getElementById('deskgate-client').dataset.sessionId")
    assert second and second != first
    wait_for_xterm(page, failed_shot="failed-restart-xterm-after.png")
    page.screenshot(path=str(artifacts / "restart-reconnected.png"))
    assert _script_errors(w) == []
