"""The gateway's SSH connections against real sshd hosts in network namespaces: one connection
per host shared by many forwarded sessions, host keys pinned or trusted on first use, a changed
key refused, sshd stopped and back, a host behind a jump host, and the VNC port never reachable
but through SSH."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sshhosts import SshHost as TestHost

from gateway.model import Secret
from gateway.ssh.connections import (
    CONNECTED,
    DOWN,
    KEY_CHANGED,
    TOFU,
    HostKeyChanged,
    SshConnections,
    SshError,
    SshHost,
)

RFB_BANNER = b"RFB 003.008\n"


def spec(host: TestHost, *, pinned: bool = True, jump: SshHost | None = None,
         address: str | None = None) -> SshHost:
    return SshHost(host.name, address or host.address, host.port, host.user,
                   Secret(host.client_key), host.host_key_line if pinned else "",
                   "pinned" if pinned else TOFU, jump)


@pytest.fixture
async def ssh(tmp_path: Path) -> AsyncIterator[SshConnections]:
    connections = SshConnections(tmp_path, keepalive=1.0, connect_timeout=5.0)
    yield connections
    await connections.close()


async def banner(path: Path) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        return await asyncio.wait_for(reader.readexactly(12), 10)
    finally:
        writer.close()


def direct_connect_fails(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:
        return True
