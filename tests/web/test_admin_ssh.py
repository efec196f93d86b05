"""The SSH hosts page through the real app (no sshd needed): for admins only, forms with CSRF, a
host added with its private key (never shown again, not even on a refused form), its host key
pinned anew, removal with its name typed and refused while a desktop or host goes through it,
bad input answered with the reason, health live on the page and in the desktops page's box."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sshkeys import Keys, fingerprint, make_keys
from websupport import CLI, Client, app_client, sign_in

from gateway.audit import AuditKind
from gateway.config import Settings
from gateway.keys import CATALOG, SSH_HOSTS, STORE
from gateway.ssh.connections import Health


class Recording:
    """Every body the admin's browser was sent, to look for the private key in."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def get(self, path: str, status: int = 200) -> str:
        resp = await self.client.get(path)
        text = await resp.text()
        self.bodies.append(text)
        assert resp.status == status, text
        return text

    async def post(self, path: str, csrf: str, **fields: str) -> tuple[int, str, str]:
        """(status, body, Location)."""
        resp = await self.client.post(path, data={"_csrf": csrf, **fields},
                                      allow_redirects=False)
        text = await resp.text()
        self.bodies.append(text)
        return resp.status, text, resp.headers.get("Location", "")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": True, "bob": False}) as c:
        yield c


@pytest.fixture
async def csrf(client: Client) -> str:
    """alice, an admin, signed in with both factors."""
    return await sign_in(client, "alice")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


@pytest.fixture
def browser(client: Client) -> Recording:
    return Recording(client)


def error_of(text: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', text, re.S)
    assert match, text
    return html.unescape(match.group(1))


def row_of(text: str, host_id: int) -> str:
    match = re.search(rf'<tr id="ssh-{host_id}" data-ssh-host-id="{host_id}".*?</tr>', text, re.S)
    assert match, text
    return match.group(0)


def form_for(keys: Keys, name: str = "bastion", **changes: str) -> dict[str, str]:
    return {"name": name, "address": "10.0.0.5", "port": "2222", "user": "deskgate",
            "private_key": keys.private_key, "policy": "pinned", "host_key": keys.host_key,
            "jump": "", **changes}


async def add(browser: Recording, csrf: str, keys: Keys, name: str = "bastion",
              **changes: str) -> int:
    status, text, location = await browser.post("/admin/ssh", csrf, **form_for(keys, name,
                                                                              **changes))
    assert status == 303, text
    host = await browser.client.server.app[SSH_HOSTS].get(name)
    assert location == f"/admin/ssh?info=ssh-added#ssh-{host.id}"
    return host.id


async def test_the_page_and_its_forms_are_for_admins_only(client: Client, csrf: str,
                                                         browser: Recording,
                                                         keys: Keys) -> None:
    host_id = await add(browser, csrf, keys)
    text = await browser.get("/admin/ssh")
    assert '<a href="/admin/ssh">SSH hosts</a>' in text  # in the admin navigation
    assert 'id="ssh-hosts-table"' in text and 'src="/static/ssh_hosts.js"' in text
    gets = ["/admin/ssh", "/admin/ssh/events", "/admin/ssh.json"]
    posts = ["/admin/ssh", f"/admin/ssh/{host_id}/pin", f"/admin/ssh/{host_id}/remove"]
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
        bob_csrf = await sign_in(bob, "bob")
        for path in gets:
            assert (await bob.get(path, allow_redirects=False)).status == 403, path
        for path in posts:
            resp = await bob.post(path, data={"_csrf": bob_csrf, **form_for(keys, "other"),
                                              "host_key": keys.other_host_key,
                                              "confirm": "bastion"}, allow_redirects=False)
            assert resp.status == 403, path
            assert not keys.leaked(await resp.text())
    async with aiohttp.ClientSession(base_url=client.make_url("/")) as nobody:
        resp = await nobody.get("/admin/ssh", allow_redirects=False)
        assert resp.status in (302, 303, 401)
    hosts = [h for h, _ in await client.server.app[SSH_HOSTS].hosts()]
    assert [(h.name, h.host_key) for h in hosts] == [("bastion", keys.host_key)]


async def test_forms_without_the_csrf_token_are_refused(client: Client, csrf: str,
                                                        browser: Recording, keys: Keys) -> None:
    host_id = await add(browser, csrf, keys)
    for path, fields in (("/admin/ssh", form_for(keys, "other")),
                         (f"/admin/ssh/{host_id}/pin", {"host_key": keys.other_host_key}),
                         (f"/admin/ssh/{host_id}/remove", {"confirm": "bastion"})):
        for token in (None, "wrong"):
            data = fields if token is None else {"_csrf": token, **fields}
            resp = await client.post(path, data=data, allow_redirects=False)
            assert resp.status == 403, (path, token)
            assert not keys.leaked(await resp.text())
    hosts = [h for h, _ in await client.server.app[SSH_HOSTS].hosts()]
    assert [(h.name, h.host_key) for h in hosts] == [("bastion", keys.host_key)]


async def test_adding_a_host_never_shows_its_private_key(client: Client, csrf: str,
                                                         browser: Recording, keys: Keys) -> None:
    jump_id = await add(browser, csrf, keys, "bastion")
    inner_id = await add(browser, csrf, keys, "inner", policy="tofu", host_key="",
                         jump="bastion", address="192.168.7.2", port="")
    text = await browser.get(f"/admin/ssh?info=ssh-added#ssh-{inner_id}")
    assert "SSH host added." in text
    row = row_of(text, jump_id)
    assert "bastion" in row and "deskgate@10.0.0.5:2222" in row and "pinned" in row
    assert "ssh-ed25519 " + fingerprint(keys.host_key)[:19] in row  # type and a short print
    assert 'data-state="idle"' in row and "not connected yet" in row
    row = row_of(text, inner_id)
    assert "deskgate@192.168.7.2:22" in row and f'href="#ssh-{jump_id}">bastion<' in row
    assert "trust on first use" in row and "not seen yet" in row
    # The add form is empty again: no key travels back, and the jump host is now a choice.
    assert '<option value="bastion"' in text and '<option value="inner"' in text
    for path in ("/admin/ssh", "/admin/ssh.json", "/admin/desktops", "/admin/audit"):
        await browser.get(path)
    assert all(not keys.leaked(body) for body in browser.bodies)
    # Stored encrypted, and audited without it.
    store = client.server.app[STORE]
    enc = await store.get_ssh_host_key_enc(jump_id)
    assert enc is not None and not keys.leaked(enc)
    audit = [e.detail for e in await store.list_audit(limit=50, kind=AuditKind.SSH.value)]
    assert any("SSH host bastion added (deskgate@10.0.0.5:2222" in d for d in audit), audit
    assert not any(keys.leaked(d) for d in audit)


async def test_bad_input_is_answered_with_the_reason_and_no_key(client: Client, csrf: str,
                                                                browser: Recording,
                                                                keys: Keys) -> None:
    await add(browser, csrf, keys)
    for changes, status, words in (
            ({"name": "Bad Name!"}, 400, "an SSH host's name is 1-32"),
            ({"address": "not an address"}, 400, "the address is a host name"),
            ({"port": "70000"}, 400, "the port must be a whole number from 1 to 65535"),
            ({"port": "x"}, 400, "the port must be a whole number"),
            ({"user": "Root Account"}, 400, "the account is a POSIX user name"),
            ({"private_key": "not a key"}, 400, "the private key cannot be read"),
            ({"private_key": keys.host_key}, 400, "the private key cannot be read"),
            ({"host_key": ""}, 400, "a pinned host needs its host key"),
            ({"host_key": "ssh-ed25519 notbase64"}, 400, "the host key is not a known_hosts"),
            ({"policy": "whatever"}, 400, "the host key policy is one of"),
            ({"jump": "nowhere"}, 400, "there is no SSH host named 'nowhere'"),
            ({"name": "bastion"}, 409, "an SSH host named 'bastion' already exists")):
        fields = {**form_for(keys, "second"), **changes}
        status_got, text, _ = await browser.post("/admin/ssh", csrf, **fields)
        assert status_got == status, (changes, text)
        assert words in error_of(text), (changes, error_of(text))
        # The form comes back as typed, but for the private key, which is never sent back.
        assert f'value="{html.escape(fields["address"])}"' in text
        assert 'name="private_key" rows="5"' in text
        assert re.search(r'name="private_key"[^>]*>\s*</textarea>', text), text
    assert all(not keys.leaked(body) for body in browser.bodies)
    names = [h.name for h, _ in await client.server.app[SSH_HOSTS].hosts()]
    assert names == ["bastion"]


async def test_concurrent_adds_of_one_name_make_one_host(client: Client, csrf: str,
                                                         browser: Recording, keys: Keys) -> None:
    answers = await asyncio.gather(*(browser.post("/admin/ssh", csrf, **form_for(keys, "twin"))
                                     for _ in range(5)))
    assert sorted(status for status, _, _ in answers) == [303, 409, 409, 409, 409]
    assert all("already exists" in error_of(text) for status, text, _ in answers
               if status == 409)
    assert [h.name for h, _ in await client.server.app[SSH_HOSTS].hosts()] == ["twin"]
    assert all(not keys.leaked(body) for body in browser.bodies)


async def test_pinning_a_new_host_key(client: Client, csrf: str, browser: Recording,
                                      keys: Keys) -> None:
    host_id = await add(browser, csrf, keys)
    hosts = client.server.app[SSH_HOSTS]
    hosts.connections.health["bastion"] = Health("key_changed", "the host offered a key that"
                                                 " is not the pinned one")
    for key, words in (("", "a pinned host needs its host key"),
                       ("garbage", "the host key is not a known_hosts line")):
        status, text, _ = await browser.post(f"/admin/ssh/{host_id}/pin", csrf, host_key=key)
        assert status == 400 and words in error_of(text), text
        assert f'<details class="bundle-edit" id="ssh-pin-{host_id}" open>' in text
    assert (await hosts.get(host_id)).host_key == keys.host_key
    status, _, location = await browser.post(f"/admin/ssh/{host_id}/pin", csrf,
                                             host_key=keys.other_host_key)
    assert (status, location) == (303, f"/admin/ssh?info=ssh-pinned#ssh-{host_id}")
    record = await hosts.get(host_id)
    assert (record.host_key, record.policy) == (keys.other_host_key, "pinned")
    text = await browser.get(location)
    assert "Host key pinned" in text
    assert fingerprint(keys.other_host_key)[:19] in row_of(text, host_id)
    # Pinning makes the connection again: the refusal is forgotten.
    assert 'data-state="idle"' in row_of(text, host_id)
    status, _, _ = await browser.post("/admin/ssh/99999/pin", csrf, host_key=keys.host_key)
    assert status == 404
    assert all(not keys.leaked(body) for body in browser.bodies)


async def test_removing_needs_the_name_and_nothing_going_through(client: Client, csrf: str,
                                                                 browser: Recording,
                                                                 keys: Keys) -> None:
    bastion = await add(browser, csrf, keys, "bastion")
    inner = await add(browser, csrf, keys, "inner", jump="bastion")
    app = client.server.app
    desktop = await app[CATALOG].add_desktop(CLI, "D", "static", host="127.0.0.1", port=5901,
                                             via="inner")
    status, text, _ = await browser.post(f"/admin/ssh/{inner}/remove", csrf, confirm="wrong")
    assert status == 409 and "type its name, inner, to confirm" in error_of(text)
    assert f'<details class="vm-confirmed" id="ssh-confirm-{inner}" open>' in text
    status, text, _ = await browser.post(f"/admin/ssh/{inner}/remove", csrf, confirm="inner")
    assert status == 409 and error_of(text) == "D go through inner; change them first"
    status, text, _ = await browser.post(f"/admin/ssh/{bastion}/remove", csrf,
                                         confirm="bastion")
    assert status == 409 and error_of(text) == "inner go through bastion; change them first"
    await app[CATALOG].delete_desktop(CLI, desktop.id)
    for host_id, name in ((inner, "inner"), (bastion, "bastion")):
        status, _, location = await browser.post(f"/admin/ssh/{host_id}/remove", csrf,
                                                 confirm=name)
        assert (status, location) == (303, "/admin/ssh?info=ssh-removed")
    text = await browser.get("/admin/ssh?info=ssh-removed")
    assert "SSH host removed." in text and "No SSH hosts yet" in text
    status, _, _ = await browser.post(f"/admin/ssh/{bastion}/remove", csrf, confirm="bastion")
    assert status == 404


async def first_event(client: Client) -> dict[str, Any]:
    async with client.get("/admin/ssh/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = ""
        while True:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            if line.startswith("data: "):
                assert event == "ssh_hosts"
                data: dict[str, Any] = json.loads(line[6:])
                return data


async def test_health_is_live_here_and_on_the_desktops_page(client: Client, csrf: str,
                                                            browser: Recording,
                                                            keys: Keys) -> None:
    text = await browser.get("/admin/desktops")
    assert 'id="ssh-health"' not in text and "ssh_hosts.js" not in text  # no hosts: no box
    host_id = await add(browser, csrf, keys)
    data = await first_event(client)
    assert [(h["id"], h["state"], h["since"]) for h in data["ssh_hosts"]] == [
        (host_id, "idle", None)]
    health = client.server.app[SSH_HOSTS].connections.health
    health["bastion"] = Health("down", "Connection refused", since=time.time() - 60,
                               connects=2)
    text = await browser.get("/admin/desktops")
    box = re.search(r'<section class="card admin-card" id="ssh-health".*?</section>', text, re.S)
    assert box, text
    assert 'href="/admin/ssh"' in box.group(0) and "bastion" in box.group(0)
    assert 'data-state="down"' in box.group(0) and "Connection refused" in box.group(0)
    assert 'src="/static/ssh_hosts.js"' in text
    # One stream sees the host go from down to connected.
    seen: list[str] = []
    async with client.get("/admin/ssh/events") as stream:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if not line.startswith("data: "):
                continue
            host = json.loads(line[6:])["ssh_hosts"][0]
            assert not keys.leaked(line) and host["has_key"] is True
            seen.append(host["state"])
            if host["state"] == "down":
                assert (host["reason"], host["connects"]) == ("Connection refused", 2)
                health["bastion"].connects = 3
                health["bastion"].move("connected")
            if host["state"] == "connected":
                assert (host["reason"], host["connects"]) == ("", 3)
                break
    assert seen == ["down", "connected"]
    text = await browser.get("/admin/ssh")
    row = row_of(text, host_id)
    assert 'data-state="connected"' in row and ">3<" in row
    listed = json.loads(await browser.get("/admin/ssh.json"))["ssh_hosts"]
    assert [(h["name"], h["state"], h["connects"]) for h in listed] == [("bastion", "connected", 3)]
    assert all(not keys.leaked(body) for body in browser.bodies)
