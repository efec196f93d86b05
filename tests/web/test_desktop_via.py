"""A static desktop's jump host (its ``via``) set, changed and taken away: through the use case,
the admin desktop form and the API, each checked the same way (the SSH host must exist; only a
static desktop goes through one) and audited as "through SSH host X" / "no jump host".

No SSH connection is made here (tests/web/test_ssh_rdp.py and test_ssh_jump.py go through real
ones): the hosts are records with keys made by ssh-keygen."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sshkeys import make_keys
from websupport import CLI, Client, app_client, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.errors import BadRequest, NotFound
from gateway.keys import ACCOUNTS, CATALOG, SSH_HOSTS, STORE
from gateway.model import Desktop

API = "/api/v1"
RDP = {"username": "svc", "cert_fingerprint": "ab" * 32}


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[Client]:
    keys = make_keys(tmp_path)
    async with await app_client(settings, {"root": True, "alice": False}) as c:
        hosts = c.server.app[SSH_HOSTS]
        for name, address in (("bastion", "10.0.0.5"), ("other", "10.0.0.6")):
            await hosts.add(CLI, name=name, address=address, user="deskgate",
                            private_key=keys.private_key, host_key=keys.host_key)
        yield c


async def details(client: Client, desktop: str) -> list[str]:
    """The audit rows of admin changes to ``desktop``, oldest first."""
    rows = await client.server.app[STORE].list_audit(limit=200, desktop=desktop)
    return [r.detail for r in reversed(rows) if r.kind == "admin"]


async def rdp_desktop(client: Client, name: str = "Win", via: str | None = None) -> Desktop:
    desktop: Desktop = await client.server.app[CATALOG].add_desktop(
        CLI, name, "static", host="10.1.0.9", port=3389, password="Pw-1", protocol="rdp",
        options=RDP, via=via)
    return desktop


# the use case -----------------------------------------------------------------------------------
async def test_set_change_and_clear_the_jump_host_of_an_rdp_desktop(client: Client) -> None:
    catalog = client.server.app[CATALOG]
    d = await rdp_desktop(client)
    changed = await catalog.update_desktop(CLI, d.id, via="bastion")
    assert changed.option("via") == "bastion"
    # Its RDP options are kept, and changing them keeps the jump host.
    assert changed.option("cert_fingerprint") == "ab" * 32 and changed.option("username") == "svc"
    changed = await catalog.update_desktop(CLI, d.id, rdp={"security": "tls"})
    assert (changed.option("via"), changed.option("security")) == ("bastion", "tls")
    changed = await catalog.update_desktop(CLI, d.id, via=" other ")
    assert changed.option("via") == "other"
    changed = await catalog.update_desktop(CLI, d.id, via="other", name="Win 2")  # same host
    changed = await catalog.update_desktop(CLI, d.id, via="")
    assert changed.option("via") == "" and "via" not in dict(changed.options)
    assert changed.option("cert_fingerprint") == "ab" * 32
    assert await details(client, "Win") == [
        "desktop created (static, rdp, certificates: fingerprint, credentials: shared)"
        " (by the command line)",
        "desktop changed: through SSH host bastion (by the command line)",
        "desktop changed: RDP security=tls (by the command line)",
        "desktop changed: through SSH host other (by the command line)"]
    assert await details(client, "Win 2") == [
        "desktop changed: name (by the command line)",
        "desktop changed: no jump host (by the command line)"]
    # An RDP desktop is added behind a jump host too, and a host in use cannot be removed.
    behind = await rdp_desktop(client, "Behind", via="bastion")
    assert behind.option("via") == "bastion"
    assert await details(client, "Behind") == [
        "desktop created (static, rdp, certificates: fingerprint, credentials: shared, through"
        " SSH host bastion) (by the command line)"]
    assert await client.server.app[SSH_HOSTS].used_by("bastion") == ["Behind"]


async def test_bad_jump_hosts_are_refused_and_nothing_changes(client: Client) -> None:
    catalog = client.server.app[CATALOG]
    d = await rdp_desktop(client, via="bastion")
    local = await catalog.add_desktop(CLI, "Here", "local")
    vnc = await catalog.add_desktop(CLI, "Vnc", "static", host="10.1.0.8", port=5901)
    with pytest.raises(NotFound, match="no SSH host named 'nowhere'"):
        await catalog.update_desktop(CLI, d.id, via="nowhere", name="Renamed")
    with pytest.raises(BadRequest, match="only a static desktop"):
        await catalog.update_desktop(CLI, local.id, via="bastion")
    with pytest.raises(BadRequest, match="only a static desktop"):
        await catalog.update_desktop(CLI, local.id, via="")
    with pytest.raises(BadRequest, match="only a static desktop"):
        await catalog.add_desktop(CLI, "Here 2", "local", via="bastion")
    with pytest.raises(NotFound, match="no SSH host named 'gone'"):
        await catalog.add_desktop(CLI, "Win 3", "static", host="h", port=3389, protocol="rdp",
                                  options=RDP, via="gone")
    # "via" is no RDP option: it cannot slip in unchecked through the RDP options.
    with pytest.raises(BadRequest, match="unknown RDP option 'via'"):
        await catalog.update_desktop(CLI, d.id, rdp={"via": "nowhere"})
    with pytest.raises(BadRequest, match="only RDP desktops have RDP options"):
        await catalog.update_desktop(CLI, vnc.id, rdp={"via": "bastion"})
    with pytest.raises(BadRequest, match="unknown RDP option 'via'"):
        await catalog.add_desktop(CLI, "Win 4", "static", host="h", port=3389, protocol="rdp",
                                  options={**RDP, "via": "nowhere"})
    assert await catalog.desktop(d.id) == d
    assert (await catalog.desktop(local.id)).option("via") == ""
    assert sorted(x.name for x in await catalog.desktops()) == ["Here", "Vnc", "Win"]
    # Not an admin: refused before anything is read.
    alice = await client.server.app[STORE].get_user_by_name("alice")
    assert alice is not None
    with pytest.raises(Exception, match="admin"):
        await catalog.update_desktop(Actor.of(alice), d.id, via="")


async def test_concurrent_changes_of_one_desktop_all_land(client: Client) -> None:
    """Changes of different fields at the same moment each keep the others' (a change reads
    the desktop and writes it whole); jump host changes at once end on one of them, each
    audited."""
    catalog = client.server.app[CATALOG]
    d = await rdp_desktop(client)
    await asyncio.gather(
        catalog.update_desktop(CLI, d.id, via="bastion"),
        catalog.update_desktop(CLI, d.id, rdp={"security": "nla"}),
        catalog.update_desktop(CLI, d.id, maintenance=True),
        catalog.update_desktop(CLI, d.id, rdp={"keyboard_layout": "de"}),
        catalog.update_desktop(CLI, d.id, port=3390),
        catalog.update_desktop(CLI, d.id, password="Pw-2"))
    now = await catalog.desktop(d.id)
    assert (now.option("via"), now.option("security"), now.option("keyboard_layout"),
            now.maintenance, now.port, now.has_password) == (
        "bastion", "nla", "0x00000407", True, 3390, True)
    vias = ["bastion", "other", "", "other", "bastion", "", "other", "bastion"] * 3
    done = await asyncio.gather(*(catalog.update_desktop(CLI, d.id, via=v) for v in vias),
                                return_exceptions=True)
    assert not [x for x in done if isinstance(x, BaseException)]
    final = (await catalog.desktop(d.id)).option("via")
    assert final == vias[-1]  # one at a time, in the order asked
    rows = (await details(client, "Win"))[-len(vias):]
    assert all(r.startswith("desktop changed: ") for r in rows)
    assert rows[-1] == "desktop changed: through SSH host bastion (by the command line)"


# the admin desktop form ---------------------------------------------------------------------------
async def post(client: Client, path: str, csrf: str, **fields: str) -> Any:
    return await client.post(path, data={"_csrf": csrf, **fields}, allow_redirects=False)


async def test_admin_form_sets_changes_and_clears_the_jump_host(client: Client) -> None:
    csrf = await sign_in(client, "root")
    catalog = client.server.app[CATALOG]
    # Added behind a jump host from "Add a desktop" (an RDP desktop).
    listing = await (await client.get("/admin/desktops")).text()
    assert 'id="new-via"' in listing and '<option value="bastion"' in listing
    resp = await post(client, "/admin/desktops", csrf, name="Win", provider="static",
                      host="10.1.0.9", port="3389", protocol="rdp", password="Pw-1",
                      rdp_username="svc", via="bastion")
    assert resp.status == 303, await resp.text()
    d = int(re.findall(r"\d+", resp.headers["Location"])[0])
    assert (await catalog.desktop(d)).option("via") == "bastion"
    html = await (await client.get(f"/admin/desktops/{d}")).text()
    assert re.search(r'<option value="bastion"\s+selected>', html)
    assert 'id="desktop-via"' in html and "through SSH host" in html
    listing = await (await client.get("/admin/desktops")).text()
    assert "through bastion" in listing

    form = {"name": "Win", "host": "10.1.0.9", "port": "3389"}
    resp = await post(client, f"/admin/desktops/{d}", csrf, **form, via="other")
    assert resp.status == 303 and resp.headers["Location"].endswith("?info=saved")
    assert (await catalog.desktop(d)).option("via") == "other"
    # Unknown host: the page again with the reason (400), nothing changed.
    resp = await post(client, f"/admin/desktops/{d}", csrf, **form, via="nowhere")
    text = await resp.text()
    assert resp.status == 400 and "there is no SSH host named &#39;nowhere&#39;" in text
    assert (await catalog.desktop(d)).option("via") == "other"
    # Without the field (another form, an older page) the jump host stays.
    resp = await post(client, f"/admin/desktops/{d}", csrf, **form)
    assert resp.status == 303 and (await catalog.desktop(d)).option("via") == "other"
    resp = await post(client, f"/admin/desktops/{d}", csrf, **form, via="")
    assert resp.status == 303 and (await catalog.desktop(d)).option("via") == ""
    html = await (await client.get(f"/admin/desktops/{d}")).text()
    assert re.search(r'<option value=""\s+selected>', html) and 'id="desktop-via"' not in html
    rows = await details(client, "Win")
    assert [r for r in rows if "jump host" in r or "through SSH host" in r] == [
        "desktop created (static, rdp, certificates: ignore, credentials: shared, through SSH"
        " host bastion) (by root)",
        "desktop changed: name, host, port, maintenance, through SSH host other (by root)",
        "desktop changed: name, host, port, maintenance, no jump host (by root)"]

    # A local desktop has no jump host field, and one posted anyway is refused.
    local = await catalog.add_desktop(CLI, "Here", "local")
    html = await (await client.get(f"/admin/desktops/{local.id}")).text()
    assert 'name="via"' not in html
    resp = await post(client, f"/admin/desktops/{local.id}", csrf, name="Here", via="bastion")
    assert resp.status == 400 and "only a static desktop" in await resp.text()
    assert (await catalog.desktop(local.id)).option("via") == ""
    # An unknown host on "Add a desktop": the form again, its fields kept.
    resp = await post(client, "/admin/desktops", csrf, name="Lost", provider="static",
                      host="10.1.0.7", port="5901", protocol="vnc", via="nowhere")
    text = await resp.text()
    assert resp.status == 400 and "there is no SSH host named" in text and 'value="Lost"' in text
    assert sorted(x.name for x in await catalog.desktops()) == ["Here", "Win"]


# the API -----------------------------------------------------------------------------------------
async def test_api_sets_changes_and_clears_the_jump_host(client: Client) -> None:
    owner = await client.server.app[STORE].get_user_by_name("root")
    assert owner is not None
    _, secret = await client.server.app[ACCOUNTS].create_token(Actor.of(owner), owner, "t")
    headers = {"Authorization": f"Bearer {secret}"}

    async def call(method: str, path: str, status: int, **kwargs: Any) -> Any:
        resp = await client.request(method, f"{API}{path}", headers=headers, **kwargs)
        text = await resp.text()
        assert resp.status == status, (method, path, text)
        return await resp.json() if text else None

    made = await call("POST", "/desktops", 201, json={
        "name": "Win", "provider": "static", "host": "10.1.0.9", "port": 3389,
        "protocol": "rdp", "password": "Pw-1", "rdp": RDP, "via": "bastion"})
    did = made["id"]
    assert made["via"] == "bastion" and "via" not in made["rdp"]
    assert made["rdp"]["cert_fingerprint"] == "ab" * 32
    assert made["state"] == "unknown"  # behind a jump host: not this host's to probe
    assert (await call("PATCH", f"/desktops/{did}", 200, json={"via": "other"}))["via"] == "other"
    kept = await call("PATCH", f"/desktops/{did}", 200, json={"rdp": {"security": "tls"}})
    assert kept["via"] == "other" and kept["rdp"]["security"] == "tls"
    assert (await call("PATCH", f"/desktops/{did}", 200, json={"via": None}))["via"] is None
    await call("PATCH", f"/desktops/{did}", 200, json={"via": "bastion"})
    assert (await call("PATCH", f"/desktops/{did}", 200, json={"via": ""}))["via"] is None

    # Bad input: a clear error, nothing written.
    answer = await call("PATCH", f"/desktops/{did}", 400, json={"via": "nowhere"})
    assert answer["error"] == "there is no SSH host named 'nowhere' to go through"
    answer = await call("PATCH", f"/desktops/{did}", 400, json={"via": 5})
    assert answer["error"] == "via must be a string"
    answer = await call("PATCH", f"/desktops/{did}", 400, json={"rdp": {"via": "bastion"}})
    assert answer["error"] == "unknown RDP option 'via'"
    local = await call("POST", "/desktops", 201, json={"name": "Here", "provider": "local"})
    assert local["via"] is None
    answer = await call("PATCH", f"/desktops/{local['id']}", 400, json={"via": "bastion"})
    assert answer["error"].startswith("only a static desktop is reached through a jump host")
    await call("POST", "/desktops", 400, json={"name": "Lost", "provider": "static",
                                               "host": "h", "port": 1, "via": "nowhere"})
    await call("PATCH", "/desktops/9999", 404, json={"via": "bastion"})
    assert (await call("GET", f"/desktops/{did}", 200))["via"] is None
    assert (await call("GET", f"/desktops/{local['id']}", 200))["via"] is None

    # Several at once: each answered and audited once; the last word is one of them.
    before = len(await details(client, "Win"))
    answers = await asyncio.gather(*(
        client.patch(f"{API}/desktops/{did}", headers=headers, json={"via": v})
        for v in ("bastion", "other", "bastion", "other", "bastion", "other")))
    assert [r.status for r in answers] == [200] * 6
    assert (await call("GET", f"/desktops/{did}", 200))["via"] in ("bastion", "other")
    rows = (await details(client, "Win"))[before:]
    assert len(rows) == 6 and all(r.startswith("desktop changed: ") for r in rows)
    assert any("through SSH host" in r for r in rows)

    # The document describes the field.
    doc = await call("GET", "/openapi.json", 200)
    schemas = doc["components"]["schemas"]
    assert "via" in schemas["Desktop"]["properties"]
    patch = doc["paths"][f"{API}/desktops/{{id}}"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["via"]["type"] == ["string", "null"]
    post_body = doc["paths"][f"{API}/desktops"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert "via" in post_body["properties"]
