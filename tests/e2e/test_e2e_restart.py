"""A local desktop outlives the gateway process: a real `deskgate serve`, stopped with SIGTERM
and with kill -9 and started again, while a person's work is open in the desktop (Chromium).
And what a fresh gateway says of a static VNC desktop nobody has connected to yet."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    REPO,
    STATIC_VNC_PASSWORD,
    Account,
    Desktop,
    Gateway,
    deskgate_exe,
    free_port,
    healthy,
    open_desktop,
    private_runtime_dir,
    run_cli,
    shot_to,
    sign_in,
    stop_pid,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
    wait_until,
)
from pngpixels import is_ansi_blue

from gateway.xdisplay.numbers import xvnc_serving
from gateway.xdisplay.procs import identify

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DESKTOP = "Restart desktop"
MARKER = "dg-restart-marker"


@dataclass
class Restartable:
    """A gateway whose process the test stops and starts again (same data, same runtime)."""

    gw: Gateway
    runtime: Path
    desktop_id: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def desktop_dir(self) -> Path:
        return self.runtime / "desktops" / self.desktop_id

    def start(self, *flags: str) -> None:
        with open(self.gw.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [deskgate_exe(), "--config", str(self.gw.config), "serve", *flags],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True,
                env={**os.environ, "DESKGATE_DESKTOPS_RUNTIME_DIR": str(self.runtime)})
        proc = self.proc
        wait_until(lambda: healthy(self.gw.base_url) or proc.poll() is not None, 30,
                   "GET /healthz")
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{self.gw.log_tail()}"

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        self.proc.wait(30)
        self.proc = None

    def xvnc_pids(self) -> list[int]:
        return [p.pid for p in xvnc_serving(self.desktop_dir / "vnc.sock")]

    def recorded_pids(self) -> list[int]:
        record = json.loads((self.desktop_dir / "desktop.json").read_text())
        return [p["pid"] for p in record["processes"]]

    def marker_windows(self) -> list[str]:
        """Windows titled MARKER on the desktop's display (xdotool with its Xauthority)."""
        record = json.loads((self.desktop_dir / "desktop.json").read_text())
        out = subprocess.run(
            ["xdotool", "search", "--name", MARKER], capture_output=True, text=True, timeout=10,
            env={**os.environ, "DISPLAY": f":{record['display']}",
                 "XAUTHORITY": str(self.desktop_dir / "Xauthority")}, check=False)
        return out.stdout.split()


@pytest.fixture
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    data = tmp_path_factory.mktemp("restart")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--port", str(port), "--public-url", base,
                  "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, out
    config = data / "deskgate.toml"
    gw = Gateway(base_url=base, data_dir=data, config=config, log_path=data / "serve.log",
                 admin=Account("admin", m.group(1)), accounts={}, desktop_ids={}, pid=0)
    gw.cli("user", "add", "erin", "--password-stdin", stdin="erin-Pw-restart-1\n")
    gw.accounts["erin"] = Account("erin", "erin-Pw-restart-1")
    added = gw.cli("desktop", "add", DESKTOP, "--provider", "local")
    desktop_id = re.search(r"^Desktop\s+(\S+)\s", added, re.M)
    assert desktop_id, added
    gw.desktop_ids[DESKTOP] = desktop_id.group(1)
    gw.cli("assign", DESKTOP, "erin")
    r = Restartable(gw, private_runtime_dir(), desktop_id.group(1))
    try:
        yield r
    finally:
        if r.proc is not None:
            stop_pid(r.proc)
        # Whatever a failed test left running: only processes verified to serve this socket.
        for pid in r.xvnc_pids():
            os.killpg(pid, signal.SIGKILL)
        print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
        shutil.rmtree(r.runtime, ignore_errors=True)


def connect_and_work(page: Any, r: Restartable) -> None:
    """Open the desktop and leave work in its xterm: a blue screen and a titled window."""
    open_desktop(page, r.gw, DESKTOP, 45_000)
    _, box = wait_for_xterm(page, timeout=30)
    type_into_xterm(page, box, rf"printf '\033]2;{MARKER}\007\033[44m'; clear")
    wait_for_colour(page, is_ansi_blue, 100_000, "the xterm to turn blue")


def the_work_is_still_there(page: Any, r: Restartable, xvnc: int, what: str) -> None:
    open_desktop(page, r.gw, DESKTOP, 45_000)
    wait_for_colour(page, is_ansi_blue, 100_000, f"the blue xterm after {what}")
    shot_to(page, f"restart-{what.replace(' ', '-')}.png")
    assert r.xvnc_pids() == [xvnc], f"after {what}: one Xvnc, the same one"
    assert r.recorded_pids()[0] == xvnc
    assert r.marker_windows(), f"the xterm's title was lost after {what}"


def test_local_desktop_outlives_sigterm_and_kill_9(
    restartable: Restartable, new_page: Callable[..., Any]
) -> None:
    r = restartable
    r.start()
    page = new_page().page
    sign_in(page, r.gw, r.gw.accounts["erin"])
    connect_and_work(page, r)
    [xvnc] = r.xvnc_pids()
    desktop_pids = r.recorded_pids()
    assert len(desktop_pids) == 3  # Xvnc, openbox, xterm

    r.stop(signal.SIGTERM)
    assert all(identify(pid) is not None for pid in desktop_pids), "SIGTERM ended the desktop"
    r.start()
    assert "took over display" in r.gw.log_tail(200)
    the_work_is_still_there(page, r, xvnc, "sigterm")

    r.stop(signal.SIGKILL)
    assert all(identify(pid) is not None for pid in desktop_pids), "kill -9 ended the desktop"
    r.start()
    the_work_is_still_there(page, r, xvnc, "kill 9")
    assert r.recorded_pids() == desktop_pids


def test_stop_desktops_on_exit_stops_them(
    restartable: Restartable, new_page: Callable[..., Any]
) -> None:
    r = restartable
    r.start("--stop-desktops-on-exit")
    page = new_page().page
    sign_in(page, r.gw, r.gw.accounts["erin"])
    connect_and_work(page, r)
    desktop_pids = r.recorded_pids()
    page.goto(r.gw.base_url + "/")
    r.stop(signal.SIGTERM)
    assert all(identify(pid) is None for pid in desktop_pids)
    assert r.xvnc_pids() == []
    assert not (r.desktop_dir / "vnc.sock").exists()
    assert not (r.desktop_dir / "desktop.json").exists()

    # The next start finds nothing to take over and starts a fresh desktop on demand (the
    # same browser: its web session outlives the gateway process).
    r.start()
    open_desktop(page, r.gw, DESKTOP, 45_000)
    wait_for_xterm(page, timeout=30)
    [xvnc] = r.xvnc_pids()
    assert xvnc not in desktop_pids
    r.stop(signal.SIGTERM)
    assert r.xvnc_pids() == [xvnc]  # this time the default: it keeps running


def test_portal_shows_a_static_vnc_desktop_running_before_its_first_session(
    restartable: Restartable, static_xvnc: Desktop, new_page: Callable[..., Any]
) -> None:
    """A fresh gateway, a static VNC desktop (TigerVNC with VncAuth) nobody has connected to:
    the portal says running (not unknown), and the desktop still lets the gateway in."""
    r = restartable
    out = r.gw.cli("desktop", "add", "Static lab", "--provider", "static", "--vnc",
                   f"127.0.0.1:{static_xvnc.rfbport}", "--password-stdin",
                   stdin=STATIC_VNC_PASSWORD + "\n")
    m = re.search(r"^Desktop\s+(\S+)\s", out, re.M)
    assert m, out
    r.gw.desktop_ids["Static lab"] = m.group(1)
    r.gw.cli("assign", "Static lab", "erin")
    r.start()
    page = new_page().page
    sign_in(page, r.gw, r.gw.accounts["erin"])
    card = page.locator(f'li.desktop-card[data-desktop-id="{m.group(1)}"]')
    for _ in range(3):  # several views: the answer is the same (and cached)
        page.reload()
        assert card.locator(".state").inner_text().strip().lower() == "running"
    shot_to(page, "portal-static-running.png")
    open_desktop(page, r.gw, "Static lab")  # the probes did not lock the gateway out
