"""A static VNC desktop's state on the portal, the admin API and pages, through the real app and a
real TigerVNC (VncAuth, blacklist on): truthful before anyone connected, and probed once for many
views."""

from __future__ import annotations

import asyncio

from websupport import app_client, base_url, connect, rfb_handshake, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import ACCOUNTS, STORE
from gateway.xdisplay.xvnc import XvncDisplay


def accepted(d: XvncDisplay) -> int:
    return (d.state_dir / "xvnc.log").read_text(errors="replace").count("Connections: accepted")


async def test_static_vnc_desktop_shows_running_before_its_first_session(
        settings: Settings, desktop: XvncDisplay) -> None:
    async with await app_client(settings, {"root": True, "alice": False},
                                desktop=desktop) as client:
        base = base_url(client)
        before = accepted(desktop)
        csrf = await sign_in(client.session, "alice", base=base)
        pages = await asyncio.gather(*(client.session.get(base + "/") for _ in range(50)))
        for resp in pages:
            html = await resp.text()
            assert resp.status == 200
            assert 'class="state state-running">running<' in html, html
        # 50 portal views at once, one probe (a login the blacklist does not count).
        assert accepted(desktop) - before == 1

        root = await client.server.app[STORE].get_user_by_name("root")
        assert root is not None
        _, secret = await client.server.app[ACCOUNTS].create_token(Actor.of(root), root, "state")
        headers = {"Authorization": f"Bearer {secret}"}
        listing = await (await client.get("/api/v1/desktops", headers=headers)).json()
        assert [d["state"] for d in listing["desktops"]] == ["running"]

        # The gateway's own session still logs in, and while it relays the desktop runs.
        conn = await connect(client.session, csrf, base=base)
        async with client.ws_connect(conn["ws_url"], origin=base) as ws:
            await rfb_handshake(ws)
            got = await (await client.get("/api/v1/desktops/1", headers=headers)).json()
            assert got["state"] == "running"
        assert "blacklisted" not in (desktop.state_dir / "xvnc.log").read_text(errors="replace")
