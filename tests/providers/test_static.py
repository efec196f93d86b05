from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import needs_xvnc

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


async def test_unreachable_port(tmp_path: Path) -> None:
    p = make_provider("static", ProviderContext(data_dir=tmp_path))
    s = static(free_tcp_port())
    with pytest.raises(DesktopUnavailable, match="desktop fixed is not answering"):
        await p.ensure_running(s)
    assert await p.state(s) == "stopped"


async def test_silent_server_times_out(tmp_path: Path) -> None:
    """Accepts but never sends a banner: bounded by the probe timeout."""

    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = StaticProvider(ProviderContext(data_dir=tmp_path), probe_timeout=0.5)
    loop = asyncio.get_running_loop()
    t = loop.time()
    try:
        with pytest.raises(DesktopUnavailable):
            await p.ensure_running(static(port))
        assert loop.time() - t < 3
    finally:
        done.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # let the handler close its socket


@needs_xvnc
async def test_real_xvnc_is_running(vnc_tcp: XvncDisplay, tmp_path: Path) -> None:
    p = make_provider("static", ProviderContext(data_dir=tmp_path))
    assert vnc_tcp.rfbport is not None
    s = static(vnc_tcp.rfbport, password=Secret("secret12"))
    await p.ensure_running(s)
    assert await p.state(s) == "running"
    ep = await p.endpoint(s)
    assert (ep.host, ep.port, ep.unix_path, ep.protocol) == (
        "127.0.0.1",
        vnc_tcp.rfbport,
        None,
        "vnc",
    )
    assert ep.password == Secret("secret12")
    await p.stop(s)  # a static desktop is not ours: still running
    assert await vnc_tcp.answers()
    await p.close()
