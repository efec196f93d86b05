from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from provider_support import needs_xvnc

from gateway.errors import ConfigError, DesktopUnavailable
from gateway.model import Secret
from gateway.providers import PROVIDERS, DesktopSpec, ProviderContext, make_provider
from gateway.providers.static import StaticProvider
from gateway.providers.xvnc import XvncDisplay, free_tcp_port

pytestmark = pytest.mark.timeout(60)


def static(port: int, password: Secret | None = None) -> DesktopSpec:
    return DesktopSpec(id=1, name="fixed", provider="static", host="127.0.0.1", port=port, password=password)


def test_registry(tmp_path: Path) -> None:
    assert set(PROVIDERS) == {"static", "local"}
    with pytest.raises(ConfigError, match="unknown desktop provider"):
        make_provider("nope", ProviderContext(data_dir=tmp_path))


def static_rdp(port: int) -> DesktopSpec:
    return DesktopSpec(id=2, name="win", provider="static", host="127.0.0.1", port=port,
                       protocol="rdp")


async def test_unreachable_non_vnc_port(tmp_path: Path) -> None:
    p = make_provider("static", ProviderContext(data_dir=tmp_path))
    s = static_rdp(free_tcp_port())
    with pytest.raises(DesktopUnavailable, match="desktop win is not answering"):
        await p.ensure_running(s)
    assert await p.state(s) == "stopped"


async def test_vnc_desktops_are_never_probed(tmp_path: Path) -> None:
    """VNC servers blacklist peers whose connections end before a login: never open one."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = StaticProvider(ProviderContext(data_dir=tmp_path))
    try:
        for _ in range(10):
            await p.ensure_running(static(port))
            assert await p.state(static(port)) == "unknown"
        assert connections == 0
        await p.ensure_running(static_rdp(port))  # other protocols get a TCP check
        await asyncio.sleep(0.05)
        assert connections == 1
    finally:
        server.close()
        await server.wait_closed()


@needs_xvnc
async def test_real_xvnc_is_running(vnc_tcp: XvncDisplay, tmp_path: Path) -> None:
    p = make_provider("static", ProviderContext(data_dir=tmp_path))
    assert vnc_tcp.rfbport is not None
    s = static(vnc_tcp.rfbport, password=Secret("secret12"))
    for _ in range(8):  # more than TigerVNC's blacklist threshold of 5
        await p.ensure_running(s)
        assert await p.state(s) == "unknown"
    ep = await p.endpoint(s)
    assert (ep.host, ep.port, ep.unix_path, ep.protocol) == (
        "127.0.0.1",
        vnc_tcp.rfbport,
        None,
        "vnc",
    )
    assert ep.password == Secret("secret12")
    await p.stop(s)  # a static desktop is not ours: still running
    assert vnc_tcp.alive()
    await p.close()
