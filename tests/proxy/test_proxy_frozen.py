"""A desktop that stops answering, against a real TigerVNC Xvnc stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.model import Endpoint, RelayCounters, RelayPolicy
from gateway.proxy import relay_vnc

if TYPE_CHECKING:
    from conftest import Desktop, MemoryChannel

FULL_REQUEST = b"\x03\x00" + struct.pack(">4H", 0, 0, 800, 600)
INCREMENTAL_REQUEST = b"\x03\x01" + struct.pack(">4H", 0, 0, 800, 600)


async def until(check: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.1)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()


async def test_an_idle_desktop_answers_a_stopped_one_is_reported_then_recovers(
        start_desktop: Callable[..., Desktop], new_channel: Callable[[], MemoryChannel]) -> None:
    desktop = start_desktop(None)
    channel = new_channel()
    events: list[bool] = []
    counters = RelayCounters()
    relay = asyncio.create_task(relay_vnc(
        channel, Endpoint(port=desktop.port), RelayPolicy(), counters,
        on_responding=events.append, unresponsive_after=3.0))
    try:
        await channel.handshake()
        channel.push(FULL_REQUEST)
        await channel.read(4)  # the update's header: the desktop drew its screen
        for _ in range(20):  # until the whole update has arrived: 1 s without a byte
            sent = len(channel.sent)
            await asyncio.sleep(1)
            if len(channel.sent) == sent:
                break
        # Why the gateway probes: an idle Xvnc leaves an incremental request unanswered (the
        # first one after the full update may still be answered with what changed meanwhile,
        # e.g. a 20-byte update: asked again until one goes unanswered).
        for _ in range(3):
            sent_before = len(channel.sent)
            channel.push(INCREMENTAL_REQUEST)
            await asyncio.sleep(1)
            if len(channel.sent) == sent_before:
                break
        assert len(channel.sent) == sent_before, "an idle desktop answered an incremental request"
        # Idle for over twice the time: the one-pixel probe is answered, nothing is reported.
        await asyncio.sleep(7)
        assert events == []
        assert len(channel.sent) > sent_before, "the probe was not answered"

        os.kill(desktop.process.pid, signal.SIGSTOP)
        try:
            assert await until(lambda: events == [False], 15), events
        finally:
            os.kill(desktop.process.pid, signal.SIGCONT)
        assert await until(lambda: events == [False, True], 10), events
        assert not relay.done()
    finally:
        channel.close()
        await asyncio.wait_for(relay, 10)


KEY_SHIFT = 0xFFE1


async def test_an_unattended_session_is_probed_less_often_than_one_in_use(
        start_desktop: Callable[..., Desktop], new_channel: Callable[[], MemoryChannel]) -> None:
    """Silence before a probe: 30 s while nobody gives input, 1 s once someone does."""
    desktop = start_desktop(None)
    channel = new_channel()
    counters = RelayCounters()
    relay = asyncio.create_task(relay_vnc(
        channel, Endpoint(port=desktop.port), RelayPolicy(), counters,
        unresponsive_after=1.0, idle_probe_after=30.0))
    try:
        await channel.handshake()
        channel.push(FULL_REQUEST)
        await channel.read(4)
        for _ in range(20):  # until the whole update has arrived: 1 s without a byte
            sent = len(channel.sent)
            await asyncio.sleep(1)
            if len(channel.sent) == sent:
                break
        # Unattended: several times the in-use silence passes without a probe (nothing comes).
        sent_before = len(channel.sent)
        await asyncio.sleep(4)
        assert len(channel.sent) == sent_before, "an unattended session was probed"
        # A key (Shift, down and up: nothing changes on the screen) makes it a session in use.
        for down in (1, 0):
            channel.push(struct.pack(">BBxxI", 4, down, KEY_SHIFT))
        assert await until(lambda: len(channel.sent) > sent_before, 5), "no probe once in use"
    finally:
        channel.close()
        await asyncio.wait_for(relay, 10)
