"""The kiosk fleet page through the real app: for admins only, forms with CSRF, a kiosk made
(its pairing code shown once), re-paired, changed, revoked and deleted with its name typed, bad
input answered with the reason, and the live state stream."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kioskkeys import DeviceKey
from websupport import CLI, Client, app_client, sign_in

from gateway.config import Settings
from gateway.keys import CATALOG, KIOSKS, STORE
from gateway.model import DEDICATED

CODE = re.compile(r'<output id="pairing-code"[^>]*>([A-Z0-9]{4}-[A-Z0-9]{4})</output>')


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": True, "bob": False, "carol": True}) as c:
        yield c


@pytest.fixture
async def csrf(client: Client) -> str:
    """alice, an admin, signed in with both factors."""
    return await sign_in(client, "alice")


async def lobby(client: Client) -> int:
    desktop = await client.server.app[CATALOG].add_desktop(CLI, "Lobby", "static",
                                                           host="10.9.8.7", port=5901)
    return desktop.id


async def post(client: Client, path: str, csrf: str, **fields: str) -> aiohttp.ClientResponse:
    return await client.post(path, data={"_csrf": csrf, **fields}, allow_redirects=False)


async def page(client: Client, path: str = "/admin/kiosks", status: int = 200) -> str:
    resp = await client.get(path)
    text = await resp.text()
    assert resp.status == status, text
    return text


def error_of(text: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', text, re.S)
    assert match, text
    return html.unescape(match.group(1))


def row_of(text: str, kiosk_id: int) -> str:
    match = re.search(rf'<tr id="kiosk-{kiosk_id}" data-kiosk-id="{kiosk_id}".*?</tr>', text, re.S)
    assert match, text
    return match.group(0)


async def make_kiosk(client: Client, csrf: str, name: str = "Front desk",
                     **fields: str) -> tuple[int, str]:
    """Create through the form; (its id, the pairing code the next page shows)."""
    resp = await post(client, "/admin/kiosks", csrf, name=name, location="Hall",
                      mode="shared", input="yes", **fields)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/admin/kiosks?info=kiosk-created#pairing"
    text = await page(client, resp.headers["Location"])
    match = CODE.search(text)
    assert match, text
    found = [k for k, _ in await client.server.app[KIOSKS].fleet() if k.name == name]
    assert len(found) == 1
    return found[0].id, match.group(1)


async def test_the_page_and_its_forms_are_for_admins_only(client: Client, csrf: str) -> None:
    kiosk_id, _ = await make_kiosk(client, csrf)
    text = await page(client)
    assert '<a href="/admin/kiosks">Kiosks</a>' in text
    assert 'id="kiosks-table"' in text and 'src="/static/kiosk_fleet.js"' in text
    gets = ["/admin/kiosks", "/admin/kiosks/events", "/admin/kiosks.json"]
    posts = ["/admin/kiosks", f"/admin/kiosks/{kiosk_id}", f"/admin/kiosks/{kiosk_id}/code",
             f"/admin/kiosks/{kiosk_id}/revoke", f"/admin/kiosks/{kiosk_id}/delete"]
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
        bob_csrf = await sign_in(bob, "bob")
        for path in gets:
            assert (await bob.get(path, allow_redirects=False)).status == 403, path
        for path in posts:
            resp = await bob.post(path, data={"_csrf": bob_csrf, "name": "x",
                                              "confirm": "Front desk"}, allow_redirects=False)
            assert resp.status == 403, path
    async with aiohttp.ClientSession(base_url=client.make_url("/")) as nobody:
        resp = await nobody.get("/admin/kiosks", allow_redirects=False)
        assert resp.status in (302, 303, 401)
    kiosk = await client.server.app[KIOSKS].get(kiosk_id)
    assert kiosk.name == "Front desk" and kiosk.revoked_at is None  # nothing bob did happened


async def test_forms_without_the_csrf_token_are_refused(client: Client, csrf: str) -> None:
    kiosk_id, _ = await make_kiosk(client, csrf)
    for path, fields in (("/admin/kiosks", {"name": "Other"}),
                         (f"/admin/kiosks/{kiosk_id}", {"name": "Renamed"}),
                         (f"/admin/kiosks/{kiosk_id}/code", {}),
                         (f"/admin/kiosks/{kiosk_id}/revoke", {"confirm": "Front desk"}),
                         (f"/admin/kiosks/{kiosk_id}/delete", {"confirm": "Front desk"})):
        for token in (None, "wrong"):
            data = fields if token is None else {"_csrf": token, **fields}
            resp = await client.post(path, data=data, allow_redirects=False)
            assert resp.status == 403, (path, token)
    kiosks = [k for k, _ in await client.server.app[KIOSKS].fleet()]
    assert [(k.name, k.revoked_at) for k in kiosks] == [("Front desk", None)]


async def test_creating_shows_the_pairing_code_once(client: Client, csrf: str) -> None:
    kiosk_id, code = await make_kiosk(client, csrf)
    kiosks = client.server.app[KIOSKS]
    # The code shown is the kiosk's: it pairs (once).
    kiosk, _ = await kiosks.pair(code.lower().replace("-", " "), device_key(), "192.0.2.50", "ua")
    assert kiosk.id == kiosk_id
    # Shown once: the next GET, and any later one, does not show it.
    text = await page(client)
    assert CODE.search(text) is None and code not in text
    assert 'id="pairing"' not in text
    row = row_of(text, kiosk_id)
    assert 'data-state="online"' in row and "192.0.2.50" in row


async def test_the_code_is_for_the_admin_who_made_it(client: Client, csrf: str) -> None:
    resp = await post(client, "/admin/kiosks", csrf, name="Front desk", mode="shared")
    assert resp.status == 303
    sealed = resp.cookies["deskgate_kiosk_code"].value
    assert "-" not in sealed or len(sealed) > 40  # encrypted, not the code itself
    # Another admin's session given the same cookie sees no code.
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await sign_in(other, "carol")
        other.cookie_jar.update_cookies({"deskgate_kiosk_code": sealed})
        text = await (await other.get("/admin/kiosks")).text()
        assert CODE.search(text) is None


async def test_a_new_pairing_code_replaces_the_old_one(client: Client, csrf: str) -> None:
    kiosk_id, first = await make_kiosk(client, csrf)
    resp = await post(client, f"/admin/kiosks/{kiosk_id}/code", csrf)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/kiosks?info=kiosk-code#pairing"
    text = await page(client, resp.headers["Location"])
    match = CODE.search(text)
    assert match and match.group(1) != first
    assert f'data-kiosk-pairing="{kiosk_id}"' in text
    assert re.search(r'id="pairing-expires">\d\d:\d\d UTC<', text)
    assert "/kiosk" in text
    row = row_of(text, kiosk_id)
    assert 'data-state="pairing"' in row and "waiting for pairing until" in row
    kiosks = client.server.app[KIOSKS]
    with pytest.raises(Exception, match="wrong, used or expired"):
        await kiosks.pair(first, device_key(), "192.0.2.51", "ua")
    kiosk, _ = await kiosks.pair(match.group(1), device_key(), "192.0.2.51", "ua")
    assert kiosk.id == kiosk_id


async def test_edit_revoke_and_delete(client: Client, csrf: str) -> None:
    desktop_id = await lobby(client)
    kiosk_id, code = await make_kiosk(client, csrf)
    kiosks = client.server.app[KIOSKS]
    await kiosks.pair(code, device_key(), "192.0.2.52", "ua")
    resp = await post(client, f"/admin/kiosks/{kiosk_id}", csrf, name="Lobby screen",
                      location="Entrance", mode=DEDICATED, desktop=str(desktop_id))
    assert resp.status == 303, await resp.text()
    kiosk = await kiosks.get(kiosk_id)
    assert (kiosk.name, kiosk.location, kiosk.mode, kiosk.desktop_id, kiosk.input_allowed) == (
        "Lobby screen", "Entrance", DEDICATED, desktop_id, False)
    row = row_of(await page(client), kiosk_id)
    assert "Lobby" in row and "view-only" in row and 'data-state="online"' in row

    # Revoke: without the name typed, the page asks for it (409) and nothing happens.
    resp = await post(client, f"/admin/kiosks/{kiosk_id}/revoke", csrf, confirm="nope")
    text = await resp.text()
    assert resp.status == 409 and "type its name" in error_of(text)
    assert f'id="kiosk-confirm-{kiosk_id}" open' in text
    assert (await kiosks.get(kiosk_id)).revoked_at is None
    resp = await post(client, f"/admin/kiosks/{kiosk_id}/revoke", csrf, confirm="Lobby screen")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/kiosks?info=kiosk-revoked"
    assert 'data-state="revoked"' in row_of(await page(client), kiosk_id)
    assert not (await kiosks.get(kiosk_id)).enrolled

    resp = await post(client, f"/admin/kiosks/{kiosk_id}/delete", csrf, confirm="")
    assert resp.status == 409
    resp = await post(client, f"/admin/kiosks/{kiosk_id}/delete", csrf, confirm="Lobby screen")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/kiosks?info=kiosk-deleted"
    text = await page(client)
    assert f'data-kiosk-id="{kiosk_id}"' not in text and "No kiosks yet" in text
    for path in (f"/admin/kiosks/{kiosk_id}", f"/admin/kiosks/{kiosk_id}/code",
                 f"/admin/kiosks/{kiosk_id}/revoke", f"/admin/kiosks/{kiosk_id}/delete"):
        assert (await post(client, path, csrf, name="x", confirm="x")).status == 404, path
    audit = [e.detail for e in await client.server.app[STORE].list_audit(kind="kiosk",
                                                                         limit=20)]
    assert any("revoked" in d and "(by alice)" in d for d in audit), audit
    assert any("deleted (by alice)" in d for d in audit)


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"name": ""}, 400, "1 to 64 printable characters"),
    ({"name": "x" * 65}, 400, "1 to 64 printable characters"),
    ({"name": "Tab\there"}, 400, "printable"),
    ({"name": "Ok", "location": "l" * 201}, 400, "location"),
    ({"name": "Ok", "mode": "public"}, 400, "mode is one of"),
    ({"name": "Ok", "mode": DEDICATED}, 400, "needs its desktop"),
    ({"name": "Ok", "mode": DEDICATED, "desktop": "abc"}, 400, "whole number"),
    ({"name": "Ok", "mode": DEDICATED, "desktop": "999"}, 404, "no such desktop"),
    ({"name": "Front desk"}, 409, "already exists"),
])
async def test_bad_create_forms_answer_with_the_reason(client: Client, csrf: str,
                                                       fields: dict[str, str], status: int,
                                                       words: str) -> None:
    await make_kiosk(client, csrf)
    resp = await post(client, "/admin/kiosks", csrf, **fields)
    text = await resp.text()
    assert resp.status == status, text
    assert words in error_of(text)
    if fields.get("location"):  # what was typed is kept
        assert 'value="Ok"' in text
    assert len(await client.server.app[KIOSKS].fleet()) == 1


async def test_bad_edits_answer_with_the_reason(client: Client, csrf: str) -> None:
    first, _ = await make_kiosk(client, csrf)
    second, _ = await make_kiosk(client, csrf, name="Second")
    resp = await post(client, f"/admin/kiosks/{second}", csrf, name="Front desk", mode="shared")
    text = await resp.text()
    assert resp.status == 409 and "already exists" in error_of(text)
    assert f'id="kiosk-edit-{second}" open' in text
    resp = await post(client, f"/admin/kiosks/{second}", csrf, name="Second", mode=DEDICATED)
    assert resp.status == 400 and "needs its desktop" in error_of(await resp.text())
    assert (await client.server.app[KIOSKS].get(second)).name == "Second"
    assert (await post(client, "/admin/kiosks/99999", csrf, name="x")).status == 404
    assert first != second


async def first_event(client: Client) -> dict[str, Any]:
    async with client.get("/admin/kiosks/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = ""
        while True:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            if line.startswith("data: "):
                assert event == "kiosks"
                data: dict[str, Any] = json.loads(line[6:])
                return data


async def test_states_are_live(client: Client, csrf: str) -> None:
    kiosk_id, code = await make_kiosk(client, csrf)
    data = await first_event(client)
    assert [(k["id"], k["state"]) for k in data["kiosks"]] == [(kiosk_id, "pairing")]
    kiosks = client.server.app[KIOSKS]
    await kiosks.pair(code, device_key(), "192.0.2.60", "ua")
    # One stream sees the kiosk go online, then (its heartbeats stopped) offline.
    seen: list[str] = []
    async with client.get("/admin/kiosks/events") as stream:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if not line.startswith("data: "):
                continue
            kiosk = json.loads(line[6:])["kiosks"][0]
            assert "secret" not in json.dumps(kiosk) and code not in json.dumps(kiosk)
            seen.append(kiosk["state"])
            if kiosk["state"] == "online":
                assert kiosk["last_ip"] == "192.0.2.60"
                await client.server.app[STORE].kiosk_seen(
                    kiosk_id, now=time.time() - 3600, ip="192.0.2.60", user_agent="ua",
                    person="carol", desktop="Lab")
            if kiosk["state"] == "offline":
                # Who was on it is known only while it reports: an offline kiosk shows nobody.
                assert kiosk["current_user"] == "" and kiosk["current_desktop"] == ""
                break
    assert seen[:1] == ["online"] and seen[-1] == "offline"
    resp = await client.get("/admin/kiosks.json")
    assert [k["state"] for k in (await resp.json())["kiosks"]] == ["offline"]


def device_key() -> str:
    return DeviceKey().public
