"""A real libvirt + QEMU for the desktop VM tests, and a tiny bootable guest made from Debian
packages on this machine (no image is downloaded from anywhere else).

- ``guest_image``: the cloud kernel of Debian's ``linux-image-cloud-amd64``, an initramfs made of
  ``busybox-static`` whose /init loads the virtio disk drivers, mounts the root disk at
  /mnt/root and the user volume at /home (formatting a blank one), prints ``BANNER`` on the VGA
  console and serial port and runs a shell there; and a base root disk (qcow2, ext2) holding
  ``BASE_MARKER``. Built once and kept under ``CACHE`` (keyed by the kernel's version).
- ``Hypervisor``: ``virtlogd`` and ``libvirtd`` started in the foreground as children of the
  test process and stopped by PID (an instance already running is used and left alone), after
  what the qemu driver needs on a machine without ``libvirt-daemon-system``: the
  ``libvirt-qemu`` user and group and libvirt's folders.

Guests run under TCG (domain type ``qemu``): a KVM guest hung on these machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import gzip
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("DESKGATE_TEST_VM_CACHE", "/var/tmp/deskgate-test-vm"))
URI = "qemu:///system"
SOCKET = Path("/var/run/libvirt/libvirt-sock")
BANNER = "DESKGATE TEST VM ready"
BASE_MARKER = "BASE_MARKER"
USER_FILE = "USER_FILE"  # written on the user volume when the guest formats it
ROOT_FILE = "ROOT_FILE"  # written on the root disk at every boot
# Load order: each module needs the symbols of the ones before it.
VIRTIO_MODULES = ("virtio/virtio_ring", "virtio/virtio", "virtio/virtio_pci_legacy_dev",
                  "virtio/virtio_pci_modern_dev", "virtio/virtio_pci", "block/virtio_blk")

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Said on the serial console (/dev/console: the last console= of the command line) and on the
# VGA screen (tty1), where the shell runs: what a person sees in the browser.
say() {{ echo "$@"; echo "$@" > /dev/tty1; }}
for m in {' '.join(m.split('/')[-1] for m in VIRTIO_MODULES)}; do
  insmod /lib/modules/$m.ko || say "insmod $m failed"
done
mkdir -p /mnt/root /home
for i in $(seq 1 50); do [ -b /dev/vdb ] && break; sleep 0.1; done
[ -b /dev/vda ] && mount /dev/vda /mnt/root
if [ -b /dev/vdb ]; then
  mount /dev/vdb /home 2>/dev/null || {{ mke2fs -q /dev/vdb && mount /dev/vdb /home &&
    say "user volume formatted" && echo kept > /home/{USER_FILE} && sync; }}
fi
say "{BANNER}"
say "root disk: $(ls /mnt/root | tr '\\n' ' ')"
say "user volume: $(ls /home | tr '\\n' ' ')"
grep -q " /mnt/root " /proc/mounts && echo written > /mnt/root/{ROOT_FILE} && sync &&
  say "root disk: {ROOT_FILE} written"
exec setsid -c sh </dev/tty1 >/dev/tty1 2>&1
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    base: Path  # the bundle's base root disk (qcow2)


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def _kernel_package() -> str:
    for line in _run("apt-cache", "depends", "linux-image-cloud-amd64").splitlines():
        name = line.strip().removeprefix("Depends: ")
        if name.startswith("linux-image-") and name != line.strip():
            return name
    raise RuntimeError("no kernel package behind linux-image-cloud-amd64")


def guest_image() -> GuestImage:
    """The guest, built on first use (about 30 s: one kernel package download)."""
    package = _kernel_package()
    # Keyed by the kernel and by what the initramfs does: a changed /init makes a new image.
    folder = CACHE / f"{package}-{hashlib.sha256(INIT.encode()).hexdigest()[:12]}"
    image = GuestImage(folder / "vmlinuz", folder / "initrd.gz", folder / "base.qcow2")
    if all(p.exists() for p in (image.kernel, image.initrd, image.base)):
        return image
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        _run("apt-get", "download", package, cwd=work)
        deb = next(work.glob(f"{package}_*.deb"))
        _run("dpkg-deb", "-x", deb, work / "x")
        kernel = next((work / "x" / "boot").glob("vmlinuz-*"))
        modules = next((work / "x" / "lib" / "modules").iterdir()) / "kernel" / "drivers"
        root = work / "initrd"
        for d in ("bin", "proc", "sys", "dev", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        for m in VIRTIO_MODULES:
            shutil.copy2(modules / f"{m}.ko", root / "lib" / "modules")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                                 capture_output=True, check=True).stdout
        (work / "initrd.gz").write_bytes(gzip.compress(archive))
        disk = work / "rootfs"
        disk.mkdir()
        (disk / BASE_MARKER).write_text("on the base image\n")
        _run("qemu-img", "create", "-q", "-f", "raw", work / "base.raw", "16M")
        _run("mke2fs", "-q", "-d", disk, work / "base.raw")
        _run("qemu-img", "convert", "-O", "qcow2", work / "base.raw", work / "base.qcow2")
        shutil.move(work / "base.qcow2", image.base)
        shutil.move(work / "initrd.gz", image.initrd)
        shutil.copy2(kernel, image.kernel)
    for path in (image.kernel, image.initrd, image.base):
        path.chmod(0o644)  # read by the qemu user
    folder.chmod(0o755)
    CACHE.chmod(0o755)
    return image


def _qemu_user() -> None:
    """What libvirt's qemu driver needs where ``libvirt-daemon-system`` is not installed."""
    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        _run("groupadd", "--system", "libvirt-qemu")
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        _run("useradd", "--system", "--no-create-home", "--gid", "kvm", "--shell",
             "/usr/sbin/nologin", "libvirt-qemu")
    for folder in ("/var/log/libvirt", "/var/lib/libvirt", "/var/run/libvirt"):
        Path(folder).mkdir(parents=True, exist_ok=True)


async def _answers() -> bool:
    proc = await asyncio.create_subprocess_exec(
        "virsh", "-c", URI, "version", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


@contextlib.asynccontextmanager
async def hypervisor() -> AsyncIterator[str]:
    """libvirtd (and virtlogd) answering at ``URI`` for the block's duration."""
    if await _answers():
        yield URI  # someone else's: used, never stopped
        return
    _qemu_user()
    started: list[asyncio.subprocess.Process] = []
    try:
        for daemon in ("virtlogd", "libvirtd"):
            started.append(await asyncio.create_subprocess_exec(
                daemon, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))
        for _ in range(100):
            if await _answers():
                break
            if started[-1].returncode is not None:
                raise RuntimeError("libvirtd exited at start-up")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("libvirtd did not answer within 10 s")
        yield URI
    finally:
        for proc in reversed(started):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
