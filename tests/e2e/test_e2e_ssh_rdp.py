"""An RDP desktop behind a jump host in Chromium: xrdp runs inside an SSH host (a network
namespace with its own sshd, tests/sshhosts.py) on that namespace's loopback only; an admin adds
the desktop on "Add a desktop", choosing the SSH host; a person connects and sees the remote
xterm's colour. The bridge's xfreerdp opened the gateway's forwarded socket, and the pinned
certificate was checked."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_support import Watched, shot_to, sign_in, wait_for_colour, wait_state
from pngpixels import near
from rdp_e2e_support import RdpGateway, bridge_processes, ps_args, rdp_gateway
from rdp_servers import RdpServer, needs_rdp, start_xrdp
from sshhosts import SshHost, needs_ssh_hosts, ssh_hosts
from test_e2e_rdp import wait_no_bridges

__all__ = ["ssh_hosts"]  # a fixture, used by name

pytestmark = [pytest.mark.e2e, needs_rdp, needs_ssh_hosts, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def behind(ssh_hosts: Callable[..., SshHost]) -> Iterator[tuple[SshHost, RdpServer]]:
    host = ssh_hosts(1)
    server = start_xrdp(netns=host.netns)
    try:
        yield host, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rdpgw(tmp_path_factory: pytest.TempPathFactory,
          behind: tuple[SshHost, RdpServer]) -> Iterator[RdpGateway]:
    host, _server = behind
    data = tmp_path_factory.mktemp("ssh-rdp-gateway")
    with rdp_gateway(data, ("carol",)) as g:
        key = data / "bastion.key"
        key.write_text(host.client_key)
        key.chmod(0o600)
        g.gw.cli("ssh", "add", "bastion", "--address", host.address, "--port", str(host.port),
                 "--user", host.user, "--key-file", str(key), "--host-key", host.host_key_line)
        yield g


def test_rdp_desktop_behind_a_jump_host_in_the_browser(
        rdpgw: RdpGateway, behind: tuple[SshHost, RdpServer],
        new_page: Callable[..., Watched]) -> None:
    host, server = behind
    for address in (host.address, "127.0.0.1"):  # xrdp is not reachable from this machine
        with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
            pass
    gw = rdpgw.gw
    # The admin adds it on "Add a desktop": RDP, the address as the SSH host sees it.
    admin = new_page()
    page: Any = admin.page
    sign_in(page, gw, gw.admin)
    page.goto(gw.base_url + "/admin/desktops")
    page.fill("#new-name", "Behind bastion")
    page.select_option("#new-provider", "static")
    page.select_option("#new-protocol", "rdp")
    page.fill("#new-host", "127.0.0.1")
    page.fill("#new-port", str(server.port))
    page.fill("#new-password", server.password)
    page.fill("#new-rdp-user", server.username)
    page.fill("#new-rdp-fingerprint", server.certificate_sha256())
    assert page.is_visible("#new-via")
    page.select_option("#new-via", "bastion")
    page.get_by_role("button", name="Add desktop").click()
    page.wait_for_url(re.compile(r"/admin/desktops/\d+\?info=created$"))
    assert "through SSH host bastion" in page.locator("#desktop-via").inner_text()
    desktop_id = re.findall(r"/admin/desktops/(\d+)", page.url)[0]
    shot_to(page, "ssh-rdp-admin-desktop.png")
    gw.cli("assign", "Behind bastion", "carol")

    w = new_page()
    page = w.page
    sign_in(page, gw, gw.accounts["carol"])
    page.locator(f'a.desktop-connect[data-desktop-id="{desktop_id}"]').click()
    page.wait_for_url(re.compile(rf"/desktops/{desktop_id}$"))
    wait_state(page, "connected", 60_000)
    wait_for_colour(page, near(server.colour), 200_000, "the remote xterm colour", timeout=40)
    shot_to(page, "ssh-rdp-connected.png")
    [xfreerdp] = [c for c in bridge_processes(rdpgw.runtime_dir).values() if "xfreerdp" in c]
    assert re.search(rf"/v:{re.escape(str(rdpgw.runtime_dir))}/ssh-\d+/bastion-\S+\.sock ", xfreerdp)
    assert f"/port:{server.port}" in xfreerdp and ",name:127.0.0.1" in xfreerdp
    assert server.password not in ps_args()
    assert host.connections() == 1
    page.goto(gw.base_url + "/")
    wait_no_bridges(rdpgw)
