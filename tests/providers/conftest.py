"""Fixtures for the provider tests: real Xvnc displays, stopped by PID in teardown.

Marks and helpers the tests import live in provider_support.py (a module name of its own:
every test folder has a conftest, so importing "conftest" by name is ambiguous)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay, start_display


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
