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

libvirt = pytest.importorskip("libvirt")

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <metadata><dg:desktop xmlns:dg="https://deskgate.dev/libvirt/1">{id}</dg:desktop></metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image.kernel}</kernel><initrd>{image.initrd}</initrd>
    <cmdline>console=tty0 console=ttyS0 quiet</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{root}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{user}'/><target dev='vdb' bus='virtio'/></disk>
    <graphics type='vnc' socket='{socket}'/>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <video><model type='vga'/></video>
  </devices>
</domain>"""


@pytest.fixture
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    async with hypervisor() as uri:
        yield uri


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


async def boot(conn: libvirt.virConnect, image: GuestImage, folder: Path, name: str) -> str:
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
    dom = conn.createXML(DOMAIN.format(name=name, id=1, image=image, root=root, user=user,
                                       socket=screen / "vnc.sock", serial=serial))
    try:
        for _ in range(300):  # boots in a few seconds under TCG; bounded at 30 s
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if "user volume:" in text.split(BANNER, 1)[-1]:
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
        booted = await boot(conn, image, folder, "deskgate-test-boot")
        assert "user volume formatted" in booted  # a blank volume, formatted at first boot
        first = booted.split(BANNER, 1)[1]
        assert f"root disk: {BASE_MARKER} lost+found \n" in first
        assert f"user volume: {USER_FILE} lost+found" in first
        assert f"root disk: {ROOT_FILE} written" in first
        # A fresh root overlay on the same base, the same user volume: what a rebuild does.
        # The file the guest wrote on its root disk is gone; the user volume's file is kept.
        second = await boot(conn, image, folder, "deskgate-test-boot")
        assert "user volume formatted" not in second
        assert f"root disk: {BASE_MARKER} lost+found \n" in second.split(BANNER, 1)[1]
        assert f"root disk: {BASE_MARKER} lost+found \n" in second  # no {ROOT_FILE} any more
        assert f"user volume: {USER_FILE} lost+found" in second.split(BANNER, 1)[1]
    conn.close()
