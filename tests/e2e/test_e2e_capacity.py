"""A full gateway, as the person who clicks Connect sees it, in Chromium.

A gateway process with room for one session (``[relay] max_sessions = 1``) and a real Xvnc:
alice works in the desktop; bob's client page says "the gateway is full; try again later" and
keeps trying; when alice leaves, bob's page connects by itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    REPO,
    STATIC_VNC_PASSWORD,
    Account,
    Desktop,
    Gateway,
    Watched,
    deskgate_exe,
    desktop_url,
    free_port,
    healthy,
    run_cli,
    shot_to,
    signed_in_state,
    stop_pid,
    wait_state,
    wait_until,
)

FULL = "the gateway is full; try again later"


@pytest.fixture
def one_seat_gateway(tmp_path: Path, static_xvnc: Desktop) -> Iterator[Gateway]:
    data = tmp_path / "gateway"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
                  "--public-url", base, "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, out
    config = data / "deskgate.toml"
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([deskgate_exe(), "--config", str(config), "serve"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True,
                                env={**os.environ, "DESKGATE_RELAY_MAX_SESSIONS": "1"})
    gw = Gateway(base_url=base, data_dir=data, config=config, log_path=log_path,
                 admin=Account("admin", m.group(1)), accounts={}, desktop_ids={}, pid=proc.pid)
    try:
        wait_until(lambda: healthy(base) or (proc.poll() is not None and "exited"), 30,
                   "GET /healthz")
        assert proc.poll() is None, gw.log_tail()
        out = gw.cli("desktop", "add", "Shared", "--provider", "static", "--vnc",
                     f"127.0.0.1:{static_xvnc.rfbport}", "--password-stdin",
                     stdin=STATIC_VNC_PASSWORD + "\n")
        gw.desktop_ids["Shared"] = out.split()[1]
        for name in ("alice", "bob"):
            password = f"{name}-Pw-{os.urandom(4).hex()}"
            gw.cli("user", "add", name, "--password-stdin", stdin=password + "\n")
            gw.accounts[name] = Account(name, password)
            gw.cli("assign", "Shared", name)
        yield gw
    finally:
        stop_pid(proc)


def test_a_full_gateway_says_so_and_lets_the_next_person_in(
        one_seat_gateway: Gateway, browser: Any, new_page: Callable[..., Watched]) -> None:
    gw = one_seat_gateway
    alice = new_page(signed_in_state(browser, gw, "alice")).page
    bob = new_page(signed_in_state(browser, gw, "bob")).page
    alice.goto(desktop_url(gw, "Shared"))
    wait_state(alice, "connected")

    bob.goto(desktop_url(gw, "Shared"))
    bob.get_by_text(FULL).wait_for(timeout=15_000)
    assert bob.locator("#status").is_visible()
    shot_to(bob, "capacity-full.png")

    alice.close()  # alice leaves: her seat comes free, bob's next try gets it
    wait_state(bob, "connected", timeout_ms=60_000)
    assert not bob.locator("#status").is_visible()
    assert "Traceback" not in Path(gw.log_path).read_text(errors="replace")
