"""A static VNC desktop behind a jump host, through the real app: the desktop's VNC port is on a
host's private loopback (a network namespace) that the gateway cannot reach; the gateway goes
through the host's sshd, and a person's relay reaches the desktop. Every session on the host
shares one SSH connection; a changed host key is refused, audited, and the person told."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sshhosts import needs_desktops, needs_ssh_hosts, ssh_host, start_xvnc_in
from websupport import CLI, app_client, base_url, connect, rfb_handshake, sign_in

from gateway.config import Settings
from gateway.keys import CATALOG, SSH_HOSTS, STORE
from gateway.model import Secret

__all__ = ["ssh_host"]  # a fixture, used by name

pytestmark = [needs_ssh_hosts, needs_desktops, pytest.mark.timeout(120)]


@pytest.fixture
async def client(settings: Settings, ssh_host) -> AsyncIterator[aiohttp.ClientSession]:  # type: ignore[no-untyped-def]
    desktop = start_xvnc_in(ssh_host, xterm=False, window_manager=False, unix=False)
    async with await app_client(settings, {"alice": False, "bob": False},
                                metrics_token=Secret("metrics-token-ssh")) as c:
        app = c.server.app
        await app[SSH_HOSTS].add(CLI, name="bastion", address=ssh_host.address,
                                 port=ssh_host.port, user=ssh_host.user,
                                 private_key=ssh_host.client_key,
                                 host_key=ssh_host.host_key_line)
        behind = await app[CATALOG].add_desktop(CLI, "Behind", "static", host="127.0.0.1",
                                                port=desktop.port or 0, via="bastion")
        for name in ("alice", "bob"):
            await app[CATALOG].assign(CLI, behind.id, user_ref=name)
        c.ssh_host, c.desktop_id = ssh_host, behind.id  # type: ignore[attr-defined]
        yield c


async def test_a_desktop_behind_a_jump_host_through_one_ssh_connection(client) -> None:  # type: ignore[no-untyped-def]
    host = client.ssh_host
    sessions = []
    for name in ("alice", "bob"):
        browser = aiohttp.ClientSession(base_url(client), cookie_jar=aiohttp.CookieJar(unsafe=True))
        csrf = await sign_in(browser, name, base=base_url(client))
        sessions.append((browser, await connect(browser, csrf, client.desktop_id)))
    sockets = []
    try:
        for browser, conn in sessions:
            ws = await browser.ws_connect(base_url(client) + conn["ws_url"],
                                          origin=base_url(client))
            sockets.append(ws)
            init = await rfb_handshake(ws)
            width, height = struct.unpack(">HH", init[:4])
            assert (width, height) == (1024, 768)
        assert host.connections() == 1  # both sessions on the one SSH connection
        health = dict((h.name, state) for h, state in await client.server.app[SSH_HOSTS].hosts())
        assert health["bastion"].state == "connected"
        metrics = await (await client.get("/metrics", headers={
            "Authorization": "Bearer metrics-token-ssh"})).text()
        assert 'deskgate_ssh_host_up{host="bastion"} 1.0' in metrics
        assert 'deskgate_ssh_host_state{host="bastion",state="connected"} 1.0' in metrics
        # Pinning the key it already has changes nothing: the connection and sessions stay.
        hosts = client.server.app[SSH_HOSTS]
        await hosts.pin(CLI, (await hosts.get("bastion")).id, host.host_key_line)
        assert hosts.connections.connected("bastion") and host.connections() == 1
    finally:
        for ws in sockets:
            await ws.close()
        for browser, _ in sessions:
            await browser.close()


async def test_a_changed_host_key_is_refused_and_audited(client) -> None:  # type: ignore[no-untyped-def]
    host = client.ssh_host
    host.rotate_host_key()
    host.restart_sshd()
    csrf = await sign_in(client, "alice")
    conn = await connect(client, csrf, client.desktop_id)
    async with client.ws_connect(conn["ws_url"], origin=base_url(client)) as ws:
        msg = await ws.receive(timeout=20)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4010, msg
        assert "host key" in (msg.extra or ""), msg.extra
    status = await (await client.get(f"/sessions/{conn['session_id']}")).json()
    assert status["reconnect"] is False and "host key" in status["close_reason"]
    hosts = dict((h.name, state) for h, state in await client.server.app[SSH_HOSTS].hosts())
    assert hosts["bastion"].state == "key_changed"
    audit = [e.detail for e in await client.server.app[STORE].list_audit(limit=20)]
    assert any("host key changed" in d for d in audit), audit


async def test_twenty_sessions_at_once_share_one_ssh_connection(settings: Settings,
                                                                ssh_host) -> None:  # type: ignore[no-untyped-def]
    """20 connections through the gateway at the same moment, to a desktop behind the jump
    host: every one reaches it, and the host sees one SSH connection."""
    desktop = start_xvnc_in(ssh_host, xterm=False, window_manager=False, unix=False)
    ssh_host.set_syncookies(False)  # Xvnc's backlog of 5 (see sshhosts.set_syncookies)
    async with await app_client(settings, {"alice": False}, max_sessions_per_user=25) as c:
        app = c.server.app
        await app[SSH_HOSTS].add(CLI, name="bastion", address=ssh_host.address,
                                 port=ssh_host.port, user=ssh_host.user,
                                 private_key=ssh_host.client_key,
                                 host_key=ssh_host.host_key_line)
        behind = await app[CATALOG].add_desktop(CLI, "Behind", "static", host="127.0.0.1",
                                                port=desktop.port or 0, via="bastion")
        await app[CATALOG].assign(CLI, behind.id, user_ref="alice")
        csrf = await sign_in(c, "alice")
        conns = await asyncio.gather(*(connect(c, csrf, behind.id) for _ in range(20)))
        sockets = await asyncio.gather(*(c.ws_connect(conn["ws_url"], origin=base_url(c))
                                         for conn in conns))
        try:
            inits = await asyncio.gather(*(rfb_handshake(ws) for ws in sockets))
            assert all(struct.unpack(">HH", init[:4]) == (1024, 768) for init in inits)
            assert ssh_host.connections() == 1
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
