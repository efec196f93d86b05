"""Desktops behind SSH in Chromium: a real `deskgate serve`, hosts in network namespaces with
their own sshd (the desktops' VNC is never on the network), desktops started over SSH by the
`ssh` provider. A person types in one; sshd dies mid-session and the person is told while a
session on another host carries on; sshd back, the desktop is back."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    REPO,
    VIEWPORT,
    Account,
    Gateway,
    deskgate_exe,
    free_port,
    healthy,
    private_runtime_dir,
    run_cli,
    shot_to,
    sign_in,
    stop_pid,
    type_into_xterm,
    wait_for_colour,
    wait_for_xterm,
    wait_state,
    wait_until,
)
from pngpixels import is_ansi_blue
from sshhosts import SshHost, needs_desktops, needs_ssh_hosts, ssh_hosts

__all__ = ["ssh_hosts"]  # a fixture, used by name

pytestmark = [pytest.mark.e2e, needs_ssh_hosts, needs_desktops, pytest.mark.timeout(300)]

FIRST, SECOND = "Desktop on host1", "Desktop on host2"


def sshd_sessions(host: SshHost) -> list[int]:
    """The sshd processes in the host's network namespace (only this host's)."""
    done = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True,
                          timeout=10, check=True)
    found = []
    for pid in done.stdout.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, ssh_hosts) -> Iterator[tuple[Gateway, list[SshHost]]]:  # type: ignore[no-untyped-def]
    hosts = [ssh_hosts(1), ssh_hosts(2)]
    data = tmp_path_factory.mktemp("ssh-gateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--port", str(port), "--public-url", base,
                  "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, out
    gateway = Gateway(base_url=base, data_dir=data, config=data / "deskgate.toml",
                      log_path=data / "serve.log", admin=Account("admin", m.group(1)),
                      accounts={}, desktop_ids={}, pid=0)
    gateway.cli("user", "add", "sam", "--password-stdin", stdin="sam-Pw-ssh-e2e-1\n")
    gateway.accounts["sam"] = Account("sam", "sam-Pw-ssh-e2e-1")
    for n, (host, desktop) in enumerate(zip(hosts, (FIRST, SECOND), strict=True), start=1):
        key = data / f"host{n}.key"
        key.write_text(host.client_key)
        key.chmod(0o600)
        gateway.cli("ssh", "add", f"host{n}", "--address", host.address, "--port",
                    str(host.port), "--user", host.user, "--key-file", str(key), "--host-key",
                    host.host_key_line)
        added = gateway.cli("desktop", "add", desktop, "--provider", "ssh", "--via", f"host{n}")
        found = re.search(r"^Desktop\s+(\S+)\s", added, re.M)
        assert found, added
        gateway.desktop_ids[desktop] = found.group(1)
        gateway.cli("assign", desktop, "sam")
    runtime = private_runtime_dir()
    with open(gateway.log_path, "ab") as log:
        proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(gateway.config), "serve", "--stop-desktops-on-exit"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            start_new_session=True,
            env={**os.environ, "DESKGATE_DESKTOPS_RUNTIME_DIR": str(runtime)})
    try:
        wait_until(lambda: healthy(base) or proc.poll() is not None, 30, "GET /healthz")
        assert proc.poll() is None, gateway.log_tail()
        yield gateway, hosts
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gateway.log_tail()}")
        shutil.rmtree(runtime, ignore_errors=True)


def host_state(admin: Any, host_id: int) -> str:
    """What the admin's /admin/ssh page shows of a host's state now (kept live by its script)."""
    return str(admin.evaluate(
        "(id) => document.querySelector(`[data-ssh-host-id=\"${id}\"]"
        "[data-ssh-host-part=\"state\"]`).dataset.state", host_id))


def test_desktops_over_ssh_typing_and_sshd_gone_and_back(gw, browser: Any) -> None:  # type: ignore[no-untyped-def]
    gateway, (host1, host2) = gw
    ctx = browser.new_context(viewport=VIEWPORT)
    admin_ctx = browser.new_context(viewport=VIEWPORT)
    try:
        admin = admin_ctx.new_page()
        sign_in(admin, gateway, gateway.admin)
        admin.goto(f"{gateway.base_url}/admin/ssh")
        admin.wait_for_function(
            "() => document.getElementById('ssh-stream-state').textContent === 'live'",
            timeout=10_000)
        page = ctx.new_page()
        sign_in(page, gateway, gateway.accounts["sam"])
        other = ctx.new_page()
        page.goto(f"{gateway.base_url}/desktops/{gateway.desktop_ids[FIRST]}")
        wait_state(page, "connected", 60_000)
        _, box = wait_for_xterm(page, timeout=30)
        type_into_xterm(page, box, r"printf '\033]2;dg-over-ssh\007\033[44m'; clear")
        wait_for_colour(page, is_ansi_blue, 100_000, "the xterm over SSH to turn blue")
        shot_to(page, "ssh-desktop-typed.png")
        # The desktop runs on host1 as its account, with no TCP listener at all.
        listening = host1.exec("ss", "-Hltnp").stdout
        assert "Xvnc" not in listening, listening
        other.goto(f"{gateway.base_url}/desktops/{gateway.desktop_ids[SECOND]}")
        wait_state(other, "connected", 60_000)
        wait_for_xterm(other, timeout=30)
        # sshd on host1 dies, its sessions too: the person is told; host2 carries on.
        host1.stop_sshd()
        for pid in sshd_sessions(host1):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: page.evaluate(
            "() => document.getElementById('deskgate-client').dataset.state") != "connected",
            20, "the page to notice the desktop went")
        page.wait_for_function(
            "() => /SSH host of this desktop, was lost/.test("
            "document.getElementById('status').textContent)", timeout=30_000)
        shot_to(page, "ssh-desktop-sshd-gone.png")
        assert other.evaluate(
            "() => document.getElementById('deskgate-client').dataset.state") == "connected"
        # The admin's page, without a reload: host1 down, host2 still connected.
        wait_until(lambda: host_state(admin, 1) == "down", 20, "/admin/ssh to show host1 down")
        assert host_state(admin, 2) == "connected"
        shot_to(admin, "ssh-admin-host-down.png")
        # sshd back: the same desktop (its X session kept running on the host) is back.
        host1.start_sshd()
        if page.evaluate("() => document.getElementById('deskgate-client').dataset.state"
                         ) == "disconnected":
            page.click("#reconnect")
        wait_state(page, "connected", 60_000)
        wait_for_colour(page, is_ansi_blue, 100_000, "the same blue xterm after sshd is back")
        shot_to(page, "ssh-desktop-back.png")
        wait_until(lambda: host_state(admin, 1) == "connected", 20,
                   "/admin/ssh to show host1 connected again")
    finally:
        ctx.close()
        admin_ctx.close()
