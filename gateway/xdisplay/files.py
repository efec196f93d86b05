"""Files of an X display in a folder another user may control: created and read without
following symlinks, VNC password files (``vncpasswd -f``) and Xauthority cookies.

A root gateway writes these into a folder that belongs to the desktop user, who could plant a
symlink or a FIFO there: every file is created with O_EXCL|O_NOFOLLOW and read only as a plain
file with one link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import stat as stat_mod
import struct
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gateway.model import Secret
from gateway.xdisplay import XvncStartError


def random_vnc_password() -> str:
    """8 random characters: the most VncAuth uses."""
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def write_xauthority(path: Path, display: int, owner: tuple[int, int] | None = None) -> None:
    """An Xauthority file with one fresh MIT-MAGIC-COOKIE-1 for ``display`` (mode 0600): as an
    entry for this host's local connections (what ``xauth add`` writes; the one python-xlib
    looks for) and as a wildcard entry (any address), both with the same cookie."""

    def field_(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    family_local, family_wild = 256, 0xFFFF
    cookie = secrets.token_bytes(16)
    entries = b"".join(
        struct.pack(">H", family)
        + field_(address)
        + field_(str(display).encode())
        + field_(b"MIT-MAGIC-COOKIE-1")
        + field_(cookie)
        for family, address in ((family_local, socket.gethostname().encode()), (family_wild, b""))
    )
    with os.fdopen(create_private_file(path, owner), "wb") as f:
        f.write(entries)


def create_private_file(path: Path, owner: tuple[int, int] | None = None) -> int:
    """A new file (mode 0600) opened for writing; returns the descriptor.

    The folder may belong to the desktop user, who could plant a symlink there to make a root
    gateway write or chown another file: whatever is at ``path`` is unlinked, the file is
    created with O_EXCL|O_NOFOLLOW, and ownership is changed through the descriptor.
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def write_vnc_password_file(path: Path, password: str, owner: tuple[int, int] | None = None) -> None:
    """``vncpasswd -f`` from stdin into ``path`` (mode 0600); the password never hits argv."""
    if not 1 <= len(password) <= 8:
        raise ValueError("a VncAuth password has 1 to 8 characters")
    fd = create_private_file(path, owner)
    try:
        proc = await asyncio.create_subprocess_exec(
            "vncpasswd",
            "-f",
            stdin=asyncio.subprocess.PIPE,
            stdout=fd,
            stderr=asyncio.subprocess.DEVNULL,
        )
    finally:
        os.close(fd)
    await asyncio.wait_for(proc.communicate(f"{password}\n".encode()), 10)
    if proc.returncode != 0 or path.stat().st_size == 0:
        raise XvncStartError("vncpasswd failed")


# vncpasswd obfuscates with DES under this fixed key (bit-reversed per byte for standard DES,
# like the VncAuth key): the file hides the password from a glance, not from its reader.
_VNCPASSWD_KEY = bytes(int(f"{b:08b}"[::-1], 2) for b in (23, 82, 107, 6, 35, 78, 88, 7))


def read_private_file(path: Path, limit: int, owner: int | None = None) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file in a folder that another user may control:
    never through a symlink, never blocking on a FIFO, never a file with other hard links (a
    link to someone else's file), and only owned by ``owner`` when given. ``OSError`` or
    ``ValueError`` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise ValueError(f"{path} is not a plain file")
        if owner is not None and st.st_uid != owner:
            raise ValueError(f"{path} has an unexpected owner")
        return f.read(limit + 1)


def read_vnc_password_file(path: Path, owner: int | None = None) -> Secret:
    """The password in a ``vncpasswd -f`` file (to take over a display started by an earlier
    gateway run), read as ``read_private_file`` does; ``OSError``/``ValueError`` when
    unreadable or malformed."""
    return decode_vnc_password(read_private_file(path, 64, owner))


def decode_vnc_password(raw: bytes) -> Secret:
    """The password in the bytes of a ``vncpasswd -f`` file; ``ValueError`` when malformed."""
    if len(raw) < 8:
        raise ValueError("not a VNC password file")
    decryptor = Cipher(TripleDES(_VNCPASSWD_KEY * 3), modes.ECB()).decryptor()  # noqa: S305
    plain = (decryptor.update(raw[:8]) + decryptor.finalize()).rstrip(b"\0")
    if not plain:
        raise ValueError("empty VNC password")
    return Secret(plain.decode("latin-1"))
