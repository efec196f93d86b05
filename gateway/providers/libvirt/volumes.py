"""A desktop VM's disks, made with qemu-img: the root disk, a qcow2 overlay on its bundle's base
image (only what the desktop changes is stored, so a rebuild is a fresh overlay), and the user
volume, a blank qcow2 that outlives rebuilds.

qemu-img runs as a subprocess without a shell and within a time bound; its own message is the
error's reason. A disk is made under a temporary name and then moved into place, so a failed or
interrupted qemu-img never leaves a half-made disk under the real name, and an existing user
volume is never replaced.

These make the files on the gateway's own machine (``hostfiles.LocalFiles``); on a hypervisor
reached through SSH the same steps run there (``hostfiles.SshFiles``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from gateway.providers.libvirt.hypervisor import HypervisorError

QEMU_IMG_TIMEOUT = 120.0
DISK_MODE = 0o600  # libvirt hands each disk to the qemu user while its VM runs


def check_base(base: Path) -> None:
    """``HypervisorError`` unless the base image is a readable file (said before qemu-img
    says it less clearly)."""
    if not base.is_absolute():
        raise HypervisorError(f"the base image {base} is not an absolute path")
    if not base.exists():
        raise HypervisorError(f"the base image {base} does not exist")
    if not base.is_file():
        raise HypervisorError(f"the base image {base} is not a file")
    if not os.access(base, os.R_OK):
        raise HypervisorError(f"the base image {base} cannot be read")


async def create_overlay(path: Path, base: Path, size_mib: int) -> None:
    """A fresh root disk at ``path`` (replacing the one there): a qcow2 overlay on ``base``."""
    check_base(base)
    temp = temp_name(path)
    try:
        try:
            await _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                            str(temp), f"{size_mib}M", made=(temp, path))
        except HypervisorError as exc:
            raise HypervisorError(f"no root disk on the base image {base}: {exc.reason}") from None
        temp.chmod(DISK_MODE)
        os.replace(temp, path)
    except OSError as exc:
        raise HypervisorError(f"cannot make {path}: {exc.strerror}") from None
    finally:
        temp.unlink(missing_ok=True)


async def create_blank(path: Path, size_mib: int) -> bool:
    """A blank qcow2 volume at ``path`` unless one is there; True when it was made. An
    existing volume is never replaced, even by a concurrent call."""
    if path.exists():
        return False
    temp = temp_name(path)
    try:
        await _qemu_img("create", "-q", "-f", "qcow2", str(temp), f"{size_mib}M",
                        made=(temp, path))
        temp.chmod(DISK_MODE)
        try:
            os.link(temp, path)  # unlike a rename, fails when the name is taken
        except FileExistsError:
            return False
        return True
    except OSError as exc:
        raise HypervisorError(f"cannot make {path}: {exc.strerror}") from None
    finally:
        temp.unlink(missing_ok=True)


def remove(*paths: Path) -> None:
    """Remove these files (and the temporary files of unfinished ones), if they are there."""
    for path in paths:
        path.unlink(missing_ok=True)
        temp_name(path).unlink(missing_ok=True)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.new")


async def _qemu_img(*args: str, made: tuple[Path, Path]) -> None:
    """qemu-img ``args``, which make the file ``made[0]`` that becomes ``made[1]`` (the name
    its messages give)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise HypervisorError("qemu-img is not installed (Debian package qemu-utils)") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(), QEMU_IMG_TIMEOUT)
    except TimeoutError:
        raise HypervisorError(f"qemu-img did not finish within {QEMU_IMG_TIMEOUT:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: it does not run on
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip().replace(str(made[0]), str(made[1]))
        text = " ".join(text.split())  # one line
        raise HypervisorError(text or f"qemu-img failed (exit status {proc.returncode})")
