"""Desktop VMs in the browser: a real gateway process on a real libvirtd + QEMU, bundles and
desktops made through the command line and through the REST API, Chromium connecting to each
(the guest's console banner on screen, keys typed reaching its shell), AutoStop stopping the VM
after its session and the next Connect starting it again with the stages in the page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_support import (
    REPO,
    Account,
    Gateway,
    LoopThread,
    deskgate_exe,
    free_port,
    healthy,
    run_cli,
    shot_to,
    sign_in,
    signed_in_state,
    stop_pid,
    wait_state,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vms"))

from hypervisor import BANNER, GuestImage, guest_image, hypervisor  # noqa: E402

CMDLINE = "console=tty0 console=ttyS0 quiet"
AUTO_STOP_SECONDS = 3


class Libvirtd:
    """The test libvirtd, which a test may stop and start again (only one started here: one
    that already answered belongs to someone else and is never stopped)."""

    def __init__(self, loop_thread: LoopThread) -> None:
        self.loop_thread = loop_thread
        self.manager: Any = None
        self.ours = not _answers()
        self.uri = ""

    def start(self) -> str:
        self.manager = hypervisor()
        self.uri = self.loop_thread.run(self.manager.__aenter__())
        return self.uri

    def stop(self) -> None:
        if self.manager is not None:
            manager, self.manager = self.manager, None
            self.loop_thread.run(manager.__aexit__(None, None, None))


def _answers() -> bool:
    done = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                          timeout=30, check=False)
    return done.returncode == 0


@pytest.fixture(scope="module")
def libvirtd(loop_thread: LoopThread) -> Iterator[Libvirtd]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    daemon = Libvirtd(loop_thread)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def libvirt_uri(libvirtd: Libvirtd) -> str:
    return libvirtd.uri


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return guest_image()


@pytest.fixture(scope="module")
def vmgw(tmp_path_factory: pytest.TempPathFactory, libvirt_uri: str) -> Iterator[Gateway]:
    """A gateway of its own whose desktops include VMs on the test libvirtd (TCG guests)."""
    data = tmp_path_factory.mktemp("vmgw")
    folder = Path(tempfile.mkdtemp(prefix="dg-vms-", dir="/tmp"))  # noqa: S108 - 0711
    folder.chmod(0o711)  # the qemu user passes through to the disks and screen sockets
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
                  "--public-url", base, "--no-demo")
    password = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert password, out
    config = data / "deskgate.toml"
    with config.open("a") as f:
        f.write(f'\n[hypervisors.default]\nuri = "{libvirt_uri}"\ndomain_type = "qemu"\n'
                f'storage_dir = "{folder / "disks"}"\nsocket_dir = "{folder / "screens"}"\n')
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(config), "serve", "--stop-desktops-on-exit"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            start_new_session=True,
            env={**os.environ, "DESKGATE_DESKTOPS_RUNTIME_DIR": str(folder / "rt"),
                 "DESKGATE_VMS_VM_STOP_TIMEOUT_SECONDS": "1",
                 "DESKGATE_VMS_VM_START_TIMEOUT_SECONDS": "60",
                 "DESKGATE_VMS_VM_RECONCILE_SECONDS": "2"})
    gw = Gateway(base_url=base, data_dir=data, config=config, log_path=log_path,
                 admin=Account("admin", password.group(1)), accounts={}, desktop_ids={},
                 pid=proc.pid)
    try:
        wait_until(lambda: healthy(base) or (proc.poll() is not None and "exited"), 30,
                   "GET /healthz")
        assert proc.poll() is None, gw.log_tail()
        pw = f"carol-Pw-{os.urandom(4).hex()}"
        gw.cli("user", "add", "carol", "--password-stdin", stdin=pw + "\n")
        gw.accounts["carol"] = Account("carol", pw)
        yield gw
    finally:
        for name in list(gw.desktop_ids):  # the VMs and their volumes go with the test
            try:
                gw.cli("vm", "delete", name, "--confirm", name)
            except AssertionError as exc:
                print(f"cleanup: {exc}")
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
        shutil.rmtree(folder, ignore_errors=True)


def ocr(page: Any, name: str) -> str:
    path = shot_to(page, name)
    done = subprocess.run(["tesseract", str(path), "-"], capture_output=True, text=True,
                          timeout=60, check=False)
    return done.stdout


# The banner as OCR reads the VGA font (it takes "VM" for "UM" now and then).
BANNER_SEEN = r"DESKGATE TEST .{1,3} ready"


def wait_for_text(page: Any, words: str, name: str, timeout: float = 40) -> str:
    """Screenshots read by OCR until ``words`` (a regular expression) show in the page."""
    found: list[str] = []

    def shows() -> bool:
        text = ocr(page, name)
        found[:] = [text]
        return re.search(words, text, re.I) is not None

    try:
        wait_until(shows, timeout, f"{words!r} on the screen", interval=0.5)
    except AssertionError:
        raise AssertionError(f"{words!r} not seen; OCR read: {found[0][-600:] if found else ''}"
                             ) from None
    return found[0]


def vm_state(gw: Gateway, token: str, desktop_id: str) -> str:
    resp = requests.get(f"{gw.base_url}/api/v1/vms/{desktop_id}", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    state: str = resp.json()["state"]
    return state


@pytest.fixture(scope="module")
def admin_state(vmgw: Gateway, browser: Any) -> dict[str, Any]:
    """The admin signed in once (a TOTP code is good once: a second sign-in in the same
    half-minute would be refused as a replay)."""
    vmgw.accounts["admin"] = vmgw.admin
    return signed_in_state(browser, vmgw, "admin")


@pytest.fixture(scope="module")
def token(vmgw: Gateway) -> str:
    out = vmgw.cli("token", "create", "vm-tests", "--admin-user", "admin")
    found = re.search(r"^Secret:\s*(\S+)\s*$", out, re.M)
    assert found, out
    return found.group(1)


def test_desktop_vms_made_by_cli_and_api_show_their_console_and_take_keys(
        vmgw: Gateway, image: GuestImage, token: str, browser: Any, libvirt_uri: str) -> None:
    # The command line: a bundle and an AutoStop desktop VM, given to carol.
    out = vmgw.cli("bundle", "add", "tiny", "--base-image", str(image.base), "--kernel",
                   str(image.kernel), "--initrd", str(image.initrd), "--cmdline", CMDLINE,
                   "--vcpus", "1", "--memory", "128", "--root-size", "32", "--user-size", "16",
                   "--hourly-rate", "0.5", "--monthly-rate", "30", "--self-service", "restart",
                   "--ready-text", BANNER)
    assert "Bundle" in out and "tiny" in out, out
    out = vmgw.cli("vm", "add", "cli-vm", "--bundle", "tiny", "--auto-stop",
                   str(AUTO_STOP_SECONDS))
    made = re.search(r"^\s*(\d+)\s+cli-vm\s+stopped\b", out, re.M)
    assert made, out
    vmgw.desktop_ids["cli-vm"] = made.group(1)
    vmgw.cli("assign", "cli-vm", "carol")
    virsh = subprocess.run(["virsh", "-c", libvirt_uri, "list", "--all", "--name"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"deskgate-{made.group(1)}" in virsh.split()  # a real libvirt domain

    # The REST API: another bundle and desktop VM, assigned to carol.
    auth = {"Authorization": f"Bearer {token}"}
    resp = requests.post(f"{vmgw.base_url}/api/v1/bundles", timeout=10, headers=auth, json={
        "name": "tiny-api", "base_image": str(image.base), "kernel": str(image.kernel),
        "initrd": str(image.initrd), "cmdline": CMDLINE, "vcpus": 1, "memory_mib": 128,
        "root_mib": 32, "user_mib": 16, "hourly_rate": 0.25, "self_service": ["restart"],
        "ready_text": BANNER})
    assert resp.status_code == 201, resp.text
    resp = requests.post(f"{vmgw.base_url}/api/v1/vms", timeout=30, headers=auth, json={
        "name": "api-vm", "bundle": "tiny-api", "auto_stop_seconds": 600})
    assert resp.status_code == 201, resp.text
    api_vm = resp.json()
    assert api_vm["state"] == "stopped", api_vm
    vmgw.desktop_ids["api-vm"] = str(api_vm["id"])
    resp = requests.post(f"{vmgw.base_url}/api/v1/desktops/{api_vm['id']}/assignments",
                         timeout=10, headers=auth, json={"user_id": _user_id(vmgw, "carol")})
    assert resp.status_code == 200, resp.text

    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        sign_in(page, vmgw, vmgw.accounts["carol"])
        portal = page.locator(f"[data-desktop-id='{made.group(1)}'][data-vm-state]")
        assert portal.get_attribute("data-vm-state") == "stopped"
        shot_to(page, "vm-portal.png")
        for name in ("cli-vm", "api-vm"):
            desktop_id = vmgw.desktop_ids[name]
            page.goto(f"{vmgw.base_url}/desktops/{desktop_id}")
            # Start on connect: the stages show in the page while the VM starts.
            page.locator("#vm-stages li.current").wait_for(timeout=20_000)
            shot_to(page, f"vm-progress-{name}.png")
            assert "Starting the VM" in page.locator("#vm-stages").inner_text()
            wait_state(page, "connected", 60_000)
            wait_for_text(page, BANNER_SEEN, f"vm-console-{name}.png")
            box = page.locator("#screen").bounding_box()
            assert box
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            # Unshifted keys only: a typed "$" arrives without its Shift (as a bare keysym),
            # which QEMU's console maps to the key's plain character.
            page.keyboard.type("echo dg-`expr 50 - 8`-typed", delay=40)
            page.keyboard.press("Enter")
            text = wait_for_text(page, "dg-42-typed", f"vm-typed-{name}.png", 30)
            assert "dg-42-typed" in text  # the shell ran what the browser typed
            assert vm_state(vmgw, token, desktop_id) == "running"
    finally:
        ctx.close()


def _user_id(gw: Gateway, name: str) -> int:
    for line in gw.cli("user", "list").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1] == name and parts[0].isdigit():
            return int(parts[0])
    raise AssertionError(f"no user {name}")


def test_auto_stop_stops_the_vm_after_the_session_and_connect_starts_it_again(
        vmgw: Gateway, token: str, browser: Any) -> None:
    desktop_id = vmgw.desktop_ids["cli-vm"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        sign_in(page, vmgw, vmgw.accounts["carol"])
        page.goto(f"{vmgw.base_url}/desktops/{desktop_id}")
        wait_state(page, "connected", 60_000)
        page.locator("#disconnect").click()
        wait_state(page, "disconnected")
        wait_until(lambda: vm_state(vmgw, token, desktop_id) == "stopped", 40,
                   "AutoStop to stop the VM", 0.5)
        page.goto(f"{vmgw.base_url}/")
        card = page.locator(f"[data-desktop-id='{desktop_id}'][data-vm-state]")
        assert card.get_attribute("data-vm-state") == "stopped"
        assert "starts when you connect" in card.inner_text()
        page.goto(f"{vmgw.base_url}/desktops/{desktop_id}")
        page.locator("#vm-stages li.current").wait_for(timeout=20_000)
        stages = page.locator("#vm-stages li").all_inner_texts()
        assert stages == ["Starting the VM", "Waiting for its screen", "Connecting"], stages
        timing = page.locator("#vm-timing").inner_text()
        assert "usually takes about" in timing, timing  # it started here before: an estimate
        shot_to(page, "vm-progress-restart.png")
        wait_state(page, "connected", 60_000)
        wait_for_text(page, BANNER_SEEN, "vm-console-again.png")

        # Self-service: her bundle lets her restart it (not rebuild it) from the portal.
        portal = ctx.new_page()
        portal.goto(f"{vmgw.base_url}/")
        card = portal.locator(f"[data-desktop-id='{desktop_id}'][data-vm-state]")
        card.locator("summary").click()
        assert card.locator("button", has_text="Rebuild").count() == 0
        shot_to(portal, "vm-portal-self-service.png")
        card.get_by_role("button", name="Restart").click()
        portal.wait_for_url(f"{vmgw.base_url}/")
        wait_until(lambda: vm_state(vmgw, token, desktop_id) == "running", 60,
                   "the restarted VM to run again", 0.5)
        refused = portal.request.post(f"{vmgw.base_url}/desktops/{desktop_id}/vm", form={
            "_csrf": portal.locator("input[name=_csrf]").first.get_attribute("value") or "",
            "action": "rebuild", "confirm": "cli-vm"})
        assert refused.status == 403, refused.status
        assert "ask an administrator" in refused.text()
    finally:
        ctx.close()
    trail = vmgw.cli("audit", "--limit", "200")
    assert "stopped by its running mode (AutoStop)" in trail, trail[-2000:]
    assert "desktop VM reboot asked (by carol)" in trail, trail[-2000:]
    assert "desktop VM rebuild refused: not allowed by its self-service policy (by carol)" \
        in trail, trail[-2000:]


def test_the_progress_of_a_start_is_only_for_those_the_desktop_is_assigned_to(
        vmgw: Gateway, browser: Any) -> None:
    pw = f"erin-Pw-{os.urandom(4).hex()}"
    vmgw.cli("user", "add", "erin", "--password-stdin", stdin=pw + "\n")
    vmgw.accounts["erin"] = Account("erin", pw)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        sign_in(page, vmgw, vmgw.accounts["erin"])
        resp = page.request.get(f"{vmgw.base_url}/desktops/{vmgw.desktop_ids['cli-vm']}"
                                "/progress")
        assert resp.status == 404
    finally:
        ctx.close()



def test_the_usage_page_shows_what_the_desktop_vms_ran_and_cost(
        vmgw: Gateway, token: str, browser: Any, admin_state: dict[str, Any]) -> None:
    desktop_id = vmgw.desktop_ids["cli-vm"]
    period = time.strftime("%Y-%m", time.gmtime())
    api = requests.get(f"{vmgw.base_url}/api/v1/usage", params={"period": period}, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200, api.text
    ctx = browser.new_context(viewport={"width": 1360, "height": 1100}, storage_state=admin_state)
    try:
        page = ctx.new_page()
        page.goto(f"{vmgw.base_url}/admin/usage?period={period}")
        row = page.locator(f"tr[data-desktop-id='{desktop_id}']")
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "cli-vm" and "carol" in cells[3], cells
        assert float(cells[4]) > 0 and float(cells[5]) > 0, cells  # running, connected hours
        page.locator("#usage-chart-card").wait_for()  # the chart drawn (Chart.js)
        shot_to(page, "vm-usage.png")
        page.goto(f"{vmgw.base_url}/admin/vms")
        shot_to(page, "vm-admin-vms.png")
        assert page.locator(f"[data-vm-id='{desktop_id}']").count() > 0
    finally:
        ctx.close()


def test_a_stopped_libvirtd_is_a_clear_error_and_the_gateway_keeps_serving(
        vmgw: Gateway, token: str, browser: Any, libvirtd: Libvirtd,
        admin_state: dict[str, Any]) -> None:
    if not libvirtd.ours:
        pytest.skip("the libvirtd here is someone else's: it is not stopped")
    desktop_id = vmgw.desktop_ids["cli-vm"]
    wait_until(lambda: vm_state(vmgw, token, desktop_id) == "stopped", 40,
               "AutoStop to stop the VM", 0.5)
    auth = {"Authorization": f"Bearer {token}"}

    def problem() -> str | None:
        vms = requests.get(f"{vmgw.base_url}/api/v1/vms", headers=auth, timeout=10).json()["vms"]
        found: str | None = vms[0]["hypervisor_problem"]
        return found

    libvirtd.stop()
    try:
        said = wait_until(problem, 20, "the gateway to see libvirtd gone", 0.5)
        assert "libvirt-sock" in said  # libvirt's own words, for the admin
        ctx = browser.new_context(viewport={"width": 1280, "height": 800},
                                  storage_state=admin_state)
        try:
            page = ctx.new_page()
            page.goto(f"{vmgw.base_url}/admin/vms")
            assert "cannot be reached" in page.inner_text("body")
            # The page follows the VMs' states live, libvirt's problem included.
            page.wait_for_function(
                "() => document.getElementById('vm-stream-state').textContent === 'live'",
                timeout=10_000)
            assert page.locator(f"[data-vm-id='{desktop_id}'][data-vm-part='problem']"
                                ).first.is_visible()
            shot_to(page, "vm-admin-libvirtd-gone.png")
            carol = ctx.browser.new_context(viewport={"width": 1280, "height": 800})
            page = carol.new_page()
            sign_in(page, vmgw, vmgw.accounts["carol"])
            page.goto(f"{vmgw.base_url}/desktops/{desktop_id}")
            wait_state(page, "disconnected", 30_000)  # a final answer: no retry loop
            assert "cannot be reached now" in page.locator("#status").inner_text()
            shot_to(page, "vm-client-libvirtd-gone.png")
            assert healthy(vmgw.base_url)
            assert page.goto(f"{vmgw.base_url}/").status == 200  # the portal still answers
            carol.close()
        finally:
            ctx.close()
    finally:
        libvirtd.start()
    wait_until(lambda: problem() is None, 20, "the gateway to reach libvirtd again", 0.5)
