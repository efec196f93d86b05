"""The test guest boots under the real libvirt: root overlay on the base image, user volume,
console on a VNC unix socket that answers RFB; the user volume outlives a fresh overlay."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest
from hypervisor import (
    BANNER,
    BASE_MARKER,
    ROOT_FILE,
    USER_FILE,
    GuestImage,
    guest_image,
    hypervisor,
)

from gateway.probe import probe_rfb
from gateway.providers.libvirt.domain import (
    DomainSpec,
    domain_xml,
    owned_desktop_id,
    screen_socket,
)


@pytest.fixture
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    async with hypervisor() as uri:
        yield uri


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


async def boot(conn: libvirt.virConnect, image: GuestImage, folder: Path,
               desktop_id: int) -> str:
    """Define and start a guest with a fresh root overlay; its serial output once booted."""
    root, user, serial = folder / "root.qcow2", folder / "user.qcow2", folder / "serial.log"
    root.unlink(missing_ok=True)
    serial.unlink(missing_ok=True)
    qemu_img("create", "-q", "-f", "qcow2", "-b", image.base, "-F", "qcow2", root)
    if not user.exists():
        qemu_img("create", "-q", "-f", "qcow2", user, "16M")
    screen = folder / "screen"
    screen.mkdir(exist_ok=True)
    qemu = pwd.getpwnam("libvirt-qemu")  # the socket's folder: the qemu user's alone
    os.chown(screen, qemu.pw_uid, qemu.pw_gid)
    screen.chmod(0o700)
    spec = DomainSpec(desktop_id=desktop_id, vcpus=1, memory_mib=128, root_disk=root,
                      user_volume=user, screen_socket=screen / "vnc.sock", kernel=image.kernel,
                      initrd=image.initrd, cmdline="console=tty0 console=ttyS0 quiet",
                      serial_log=serial)
    dom = conn.createXML(domain_xml(spec))
    # libvirt's own description of it says it is Deskgate's, for this desktop, on that socket.
    assert owned_desktop_id(dom.name(), dom.XMLDesc()) == desktop_id
    assert screen_socket(dom.XMLDesc()) == screen / "vnc.sock"
    try:
        for _ in range(300):  # boots in a few seconds under TCG; bounded at 30 s
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if f"root disk: {ROOT_FILE} written" in text.split(BANNER, 1)[-1]:
                assert await probe_rfb(unix_path=screen / "vnc.sock", timeout=5)
                return text
            await asyncio.sleep(0.1)
        raise AssertionError(f"the guest did not boot: {text[-500:]}")
    finally:
        dom.destroy()


async def test_a_guest_boots_with_its_disks_and_a_private_screen(uri: str) -> None:
    image = await asyncio.to_thread(guest_image)
    conn = libvirt.open(uri)
    with tempfile.TemporaryDirectory(prefix="deskgate-vm-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o711)
        booted = await boot(conn, image, folder, 9001)
        assert "user volume formatted" in booted  # a blank volume, formatted at first boot
        first = booted.split(BANNER, 1)[1]
        assert f"root disk: {BASE_MARKER} lost+found \n" in first
        assert f"user volume: {USER_FILE} lost+found" in first
        assert f"root disk: {ROOT_FILE} written" in first
        # A fresh root overlay on the same base, the same user volume: what a rebuild does.
        # The file the guest wrote on its root disk is gone; the user volume's file is kept.
        second = await boot(conn, image, folder, 9001)
        assert "user volume formatted" not in second
        assert f"root disk: {BASE_MARKER} lost+found \n" in second.split(BANNER, 1)[1]
        assert f"root disk: {BASE_MARKER} lost+found \n" in second  # no {ROOT_FILE} any more
        assert f"user volume: {USER_FILE} lost+found" in second.split(BANNER, 1)[1]
    conn.close()


def test_only_deskgates_own_domains_are_taken_as_its_own() -> None:
    spec = DomainSpec(desktop_id=7, vcpus=2, memory_mib=512, root_disk=Path("/v/7/root.qcow2"),
                      user_volume=Path("/v/7/user.qcow2"), screen_socket=Path("/s/7/vnc.sock"))
    xml = domain_xml(spec)
    assert owned_desktop_id("deskgate-7", xml) == 7
    assert owned_desktop_id("deskgate-8", xml) is None  # name and metadata disagree
    assert owned_desktop_id("someones-vm", xml) is None
    assert owned_desktop_id("deskgate-7", "<domain><name>deskgate-7</name></domain>") is None
    assert owned_desktop_id("deskgate-7", "not xml <") is None
    assert screen_socket(xml) == Path("/s/7/vnc.sock")
    assert "<boot dev=\"hd\"" in xml and "<kernel>" not in xml
    # Values cannot break out of the XML: a path with quotes and angle brackets stays a value.
    odd = DomainSpec(desktop_id=7, vcpus=1, memory_mib=64, root_disk=Path("/v/'a\"<b>.qcow2"),
                     user_volume=Path("/v/u.qcow2"), screen_socket=Path("/s/vnc.sock"))
    assert owned_desktop_id("deskgate-7", domain_xml(odd)) == 7
    for bad in ({"desktop_id": 0}, {"vcpus": 0}, {"memory_mib": 1}, {"virt_type": "xen"},
                {"root_disk": Path("relative.qcow2")}, {"kernel": Path("/k")}):
        with pytest.raises(ValueError):
            DomainSpec(**{"desktop_id": 7, "vcpus": 1, "memory_mib": 64,
                          "root_disk": Path("/r"), "user_volume": Path("/u"),
                          "screen_socket": Path("/s"), **bad})  # type: ignore[arg-type]


def test_a_guest_whose_screen_is_a_server_inside_it_gets_a_network_card_and_a_console_one_none(
        ) -> None:
    import xml.etree.ElementTree as ET

    base = {"desktop_id": 7, "vcpus": 1, "memory_mib": 64, "root_disk": Path("/r"),
            "user_volume": Path("/u"), "screen_socket": Path("/s")}
    console = ET.fromstring(domain_xml(DomainSpec(**base)))  # type: ignore[arg-type]  # noqa: S314
    assert console.find("devices/interface") is None  # reached only through its socket
    guest = ET.fromstring(domain_xml(  # noqa: S314 (our own XML)
        DomainSpec(**base, network="desktops")))  # type: ignore[arg-type]
    interface = guest.find("devices/interface[@type='network']")
    assert interface is not None
    assert interface.find("source").get("network") == "desktops"  # type: ignore[union-attr]
    assert interface.find("model").get("type") == "virtio"  # type: ignore[union-attr]
