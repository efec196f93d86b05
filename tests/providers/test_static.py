from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from provider_support import needs_xvnc

from gateway.errors import ConfigError, DesktopUnavailable, UpstreamAuthFailed
from gateway.model import Secret
from gateway.probe import probe_rfb
from gateway.providers import PROVIDERS, DesktopSpec, ProviderContext, make_provider
from gateway.providers.registry import Providers
from gateway.providers.static import StaticProvider
from gateway.proxy.rfb import DesktopHandshake
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

pytestmark = pytest.mark.timeout(60)


def static(port: int, password: Secret | None = None) -> DesktopSpec:
    return DesktopSpec(id=1, name="fixed", provider="static", host="127.0.0.1", port=port, password=password)


def test_registry(tmp_path: Path) -> None:
    assert set(PROVIDERS) == {"static", "local", "libvirt", "ssh"}
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


async def test_rdp_state_is_a_cached_tcp_check(tmp_path: Path) -> None:
    """Other protocols get a TCP connect check, shared and cached like the VNC probe."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = StaticProvider(ProviderContext(data_dir=tmp_path))
    try:
        states = await asyncio.gather(*(p.state(static_rdp(port)) for _ in range(100)))
        assert states == ["running"] * 100
        for _ in range(10):
            assert await p.state(static_rdp(port)) == "running"
        await asyncio.sleep(0.05)
        assert connections == 1
        await p.ensure_running(static_rdp(port))  # connecting checks for real
        await asyncio.sleep(0.05)
        assert connections == 2
    finally:
        server.close()
        await server.wait_closed()
        await p.close()


# -- VNC: a probe that logs in (TigerVNC blacklists peers that close before a login) ---------------


def accepted(d: XvncDisplay) -> int:
    """Connections the Xvnc accepted so far (its log)."""
    return (d.state_dir / "xvnc.log").read_text(errors="replace").count("Connections: accepted")


def blacklisted(d: XvncDisplay) -> int:
    return (d.state_dir / "xvnc.log").read_text(errors="replace").count("blacklisted")


async def login(port: int, password: str) -> bool:
    """A real VncAuth login, as a session does: True when the desktop accepts it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        shake = DesktopHandshake(Secret(password))
        while not shake.authenticated:
            data = await asyncio.wait_for(reader.read(4096), 5)
            if not data:
                raise shake.eof_error()
            writer.write(shake.feed(data))
        return True
    except UpstreamAuthFailed:
        return False
    finally:
        writer.close()


def knows(password: str) -> ProviderContext:
    async def lookup(desktop_id: int) -> Secret | None:
        return Secret(password)
    return ProviderContext(data_dir=Path("/nonexistent"), credentials=lookup)


@needs_xvnc
async def test_banner_probes_would_blacklist_the_gateway(vnc_tcp: XvncDisplay) -> None:
    """Why the probe logs in: TigerVNC counts a connection closed after its banner as a failed
    login; after five, the gateway's real login is refused."""
    assert vnc_tcp.rfbport is not None
    for _ in range(6):
        assert await probe_rfb(port=vnc_tcp.rfbport)
    assert not await login(vnc_tcp.rfbport, "secret12")
    assert blacklisted(vnc_tcp) > 0


@needs_xvnc
async def test_login_probes_never_blacklist_the_gateway(vnc_tcp: XvncDisplay) -> None:
    """50 real probes in a row (no cache) against TigerVNC with VncAuth: each says running, and
    the gateway still logs in afterwards."""
    assert vnc_tcp.rfbport is not None
    p = StaticProvider(knows("secret12"), ttl=0)
    s = static(vnc_tcp.rfbport)
    before = accepted(vnc_tcp)
    for _ in range(50):
        assert await p.state(s) == "running"
    assert accepted(vnc_tcp) - before == 50  # each one a real connection
    assert blacklisted(vnc_tcp) == 0
    assert await login(vnc_tcp.rfbport, "secret12")
    await p.close()


@needs_xvnc
async def test_vnc_state_is_probed_once_for_many_asks(vnc_tcp: XvncDisplay) -> None:
    """Portal views and admin pages at once share one probe, and its answer is reused."""
    assert vnc_tcp.rfbport is not None
    p = StaticProvider(knows("secret12"))
    s = static(vnc_tcp.rfbport)
    before = accepted(vnc_tcp)
    states = await asyncio.gather(*(p.state(s) for _ in range(200)))
    assert states == ["running"] * 200
    for _ in range(50):
        assert await p.state(s) == "running"
    assert accepted(vnc_tcp) - before == 1
    p.forget(s.id)  # a session failed to reach it: the next ask probes again
    assert await p.state(s) == "running"
    assert accepted(vnc_tcp) - before == 2
    await p.close()


@needs_xvnc
async def test_refused_probe_is_not_repeated(vnc_tcp: XvncDisplay) -> None:
    """A wrong stored password: the desktop runs (it answered), and the probe does not try
    again for a long while, so it never pushes the gateway into the blacklist."""
    assert vnc_tcp.rfbport is not None
    p = StaticProvider(knows("wrongpw1"), ttl=0)
    s = static(vnc_tcp.rfbport)
    before = accepted(vnc_tcp)
    for _ in range(20):
        assert await p.state(s) == "running"
    assert accepted(vnc_tcp) - before == 1
    assert await login(vnc_tcp.rfbport, "secret12")
    await p.close()


async def test_stopped_and_unknown(tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens
    p = StaticProvider(knows("secret12"))
    assert await p.state(static(port)) == "stopped"
    await p.close()
    # Without the stored password a VNC desktop cannot be probed safely: not probed at all.
    blind = StaticProvider(ProviderContext(data_dir=tmp_path))
    assert await blind.state(static(port)) == "unknown"


async def test_a_live_session_means_running(tmp_path: Path) -> None:
    """Pages, API and metrics ask Providers.state: while a session relays, the desktop runs."""
    providers = Providers(ProviderContext(data_dir=tmp_path))  # cannot probe VNC desktops
    s = static(free_tcp_port())
    assert await providers.state(s) == "unknown"
    providers.connected(s.id, "session-a")
    providers.connected(s.id, "session-b")
    assert await providers.state(s) == "running"
    providers.disconnected(s.id, "session-a")
    assert await providers.state(s) == "running"
    providers.disconnected(s.id, "session-b")
    assert await providers.state(s) == "unknown"
    await providers.close()


@needs_xvnc
async def test_real_xvnc_endpoint(vnc_tcp: XvncDisplay, tmp_path: Path) -> None:
    p = make_provider("static", ProviderContext(data_dir=tmp_path))
    assert vnc_tcp.rfbport is not None
    s = static(vnc_tcp.rfbport, password=Secret("secret12"))
    await p.ensure_running(s)
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
