"""Fixtures for the web tests; the helpers they share are in websupport.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from websupport import VNC_PASSWORD

from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay, start_display


@pytest.fixture
async def desktop() -> AsyncIterator[XvncDisplay]:
    """A real Xvnc, 640x480, without window manager or xterm, for relaying to."""
    d = await start_display(rfbport=free_tcp_port(), password=VNC_PASSWORD, name="relay-test",
                            geometry="640x480", window_manager=False, xterm=False)
    try:
        yield d
    finally:
        await d.stop()
