"""Fixtures for the provider tests: real Xvnc displays, stopped by PID in teardown."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.providers.xvnc import XvncDisplay, free_tcp_port, start_display

needs_xvnc = pytest.mark.skipif(shutil.which("Xvnc") is None, reason="TigerVNC Xvnc missing")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data folder that an unprivileged desktop user can pass through.

    pytest's tmp_path lives under a 0700 folder, closed to the desktop user, and unix socket
    paths must stay under 108 bytes.
    """
    d = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    os.chmod(d, 0o711)  # noqa: S103 - others may pass through, not list
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def vnc_tcp() -> AsyncIterator[XvncDisplay]:
    """A VncAuth desktop on a loopback TCP port (password ``secret12``)."""
    d = await start_display(rfbport=free_tcp_port(), password="secret12", name="fixture")
    try:
        yield d
    finally:
        await d.stop()
