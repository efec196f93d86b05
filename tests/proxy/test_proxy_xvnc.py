"""relay_vnc against a real TigerVNC Xvnc, with VncAuth and with security None."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from gateway.errors import DesktopUnavailable, ProtocolError, UpstreamAuthFailed, UpstreamClosed
from gateway.model import Endpoint, RelayCounters, RelayPolicy, Secret
from gateway.proxy import relay_vnc

if TYPE_CHECKING:
    from conftest import Desktop, MemoryChannel

SET_ENCODINGS = b"\x02\x00" + struct.pack(">H2i", 2, 0, -223)  # Raw, DesktopSize
UPDATE_REQUEST = b"\x03\x00" + struct.pack(">4H", 0, 0, 800, 600)


def endpoint(desktop: Desktop, password: str | None) -> Endpoint:
    return Endpoint(port=desktop.port, password=Secret(password) if password is not None else None)


async def first_update(channel: MemoryChannel) -> bytes:
    """Ask for the whole screen and return the FramebufferUpdate header that answers."""
    channel.push(SET_ENCODINGS + UPDATE_REQUEST)
    while True:
        kind = await channel.read(1)
        if kind == b"\x00":
            return kind + await channel.read(3)
        assert kind in (b"\x02",), f"unexpected server message {kind!r} before the update"


async def test_vncauth_session(vncauth_desktop: Desktop, channel: MemoryChannel) -> None:
    counters = RelayCounters()
    names: list[str] = []
    relay = asyncio.create_task(
        relay_vnc(
            channel,
            endpoint(vncauth_desktop, vncauth_desktop.password),
            RelayPolicy(),
            counters,
            on_ready=names.append,
        )
    )
    width, height, name = await channel.handshake()
    assert (width, height) == (800, 600)
    assert name == vncauth_desktop.name == names[0]
    header = await first_update(channel)
    assert header[0] == 0 and struct.unpack(">H", header[2:])[0] >= 1
    channel.close()
    await asyncio.wait_for(relay, 10)
    assert counters.bytes_up == len(SET_ENCODINGS + UPDATE_REQUEST)
    assert counters.bytes_down > 24
    assert vncauth_desktop.password is not None
    sent = b"".join(channel.sent)
    assert vncauth_desktop.password.encode() not in sent


async def test_security_none_session(none_desktop: Desktop, channel: MemoryChannel) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, endpoint(none_desktop, None), RelayPolicy(), RelayCounters())
    )
    assert await channel.handshake() == (800, 600, "open desk")
    assert (await first_update(channel))[0] == 0
    channel.close()
    await asyncio.wait_for(relay, 10)


async def test_a_password_for_a_desktop_without_one_is_not_used(
    none_desktop: Desktop, channel: MemoryChannel
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, endpoint(none_desktop, "unused"), RelayPolicy(), RelayCounters())
    )
    assert await channel.handshake() == (800, 600, "open desk")
    channel.close()
    await asyncio.wait_for(relay, 10)


async def test_wrong_password(start_desktop: Callable[..., Desktop], channel: MemoryChannel) -> None:
    # A desktop of its own: TigerVNC blacklists a client address after a few failures.
    desktop = start_desktop(password="right-pw")
    with pytest.raises(UpstreamAuthFailed) as caught:
        await relay_vnc(channel, endpoint(desktop, "wrong-pw"), RelayPolicy(), RelayCounters())
    assert caught.value.reason == (
        "the desktop refused the gateway's credentials: Authentication failure"  # Xvnc's words
    )
    assert "wrong-pw" not in caught.value.reason and "right-pw" not in caught.value.reason
    assert channel.sent == []  # the browser side had not started


async def test_missing_password(vncauth_desktop: Desktop, channel: MemoryChannel) -> None:
    with pytest.raises(UpstreamAuthFailed, match="needs a password"):
        await relay_vnc(channel, endpoint(vncauth_desktop, None), RelayPolicy(), RelayCounters())


async def test_nothing_listening(free_port: int, channel: MemoryChannel) -> None:
    with pytest.raises(DesktopUnavailable, match="cannot be reached"):
        await relay_vnc(channel, Endpoint(port=free_port), RelayPolicy(), RelayCounters())


async def test_unknown_message_ends_the_relay_not_the_desktop(
    vncauth_desktop: Desktop, channel: MemoryChannel, new_channel: Callable[[], MemoryChannel]
) -> None:
    relay = asyncio.create_task(
        relay_vnc(channel, endpoint(vncauth_desktop, "s3cr3tpw"), RelayPolicy(), RelayCounters())
    )
    await channel.handshake()
    channel.push(b"\x4d\x00\x00\x00")
    with pytest.raises(ProtocolError, match="unknown RFB client message type 77"):
        await asyncio.wait_for(relay, 10)
    assert vncauth_desktop.process.poll() is None
    # and the desktop still serves the next session
    again = new_channel()
    relay = asyncio.create_task(
        relay_vnc(again, endpoint(vncauth_desktop, "s3cr3tpw"), RelayPolicy(), RelayCounters())
    )
    assert (await again.handshake())[:2] == (800, 600)
    again.close()
    await asyncio.wait_for(relay, 10)


async def test_desktop_killed_mid_session(
    start_desktop: Callable[..., Desktop], channel: MemoryChannel
) -> None:
    desktop = start_desktop(password=None, name="doomed")
    relay = asyncio.create_task(relay_vnc(channel, endpoint(desktop, None), RelayPolicy(), RelayCounters()))
    await channel.handshake()
    assert (await first_update(channel))[0] == 0
    desktop.process.kill()
    with pytest.raises(UpstreamClosed):
        await asyncio.wait_for(relay, 10)
