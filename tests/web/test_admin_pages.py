"""The admin pages through the real app: access control, forms with CSRF, and what they change."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from rdp_servers import make_test_ca
from websupport import Client, app_client, password_step, secret_of, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import CATALOG, STORE
from gateway.model import Session, SessionState

VNC_PASSWORD = "vnc-Secret-4711"  # must never appear in any page once given


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": True, "bob": False, "carol": False}) as c:
        yield c


@pytest.fixture
async def other(client: Client) -> AsyncIterator[aiohttp.ClientSession]:
    """A second browser (its own cookies) on the same gateway."""
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


@pytest.fixture
def secrets() -> dict[str, str]:
    return {}


async def admin_in(client: Client, secrets: dict[str, str]) -> str:
    return await sign_in(client, "alice", secrets)


async def ids(client: Client) -> dict[str, int]:
    return {u.name: u.id for u in await client.server.app[STORE].list_users()}


async def create_desktop(client: Client, csrf: str, **fields: str) -> int:
    data = {"_csrf": csrf, "name": "Lab 1", "provider": "static", "host": "127.0.0.1",
            "port": "5999", "password": VNC_PASSWORD, **fields}
    resp = await client.post("/admin/desktops", data=data, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    match = re.fullmatch(r"/admin/desktops/(\d+)\?info=created", resp.headers["Location"])
    assert match
    return int(match.group(1))


async def post(client: Client, path: str, csrf: str, **fields: str) -> aiohttp.ClientResponse:
    return await client.post(path, data={"_csrf": csrf, **fields}, allow_redirects=False)


GET_PATHS = ("/admin/desktops", "/admin/desktops/{d}", "/admin/users", "/admin/users/{u}",
             "/admin/audit", "/admin/audit.csv")
POST_PATHS = ("/admin/desktops", "/admin/desktops/{d}", "/admin/desktops/{d}/assign",
              "/admin/desktops/{d}/power", "/admin/desktops/{d}/delete",
              "/admin/users/{u}/disable", "/admin/users/{u}/enable", "/admin/users/{u}/reset-totp")


async def test_every_admin_route_is_for_admins_only(client: Client, other: aiohttp.ClientSession,
                                                    secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    d = await create_desktop(client, csrf)
    u = (await ids(client))["carol"]
    gets = [p.format(d=d, u=u) for p in GET_PATHS]
    posts = [p.format(d=d, u=u) for p in POST_PATHS]

    for path in gets + posts:  # anonymous
        method = other.post if path in posts else other.get
        resp = await method(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login", path

    bob_csrf = await sign_in(other, "bob", secrets)
    store = client.server.app[STORE]
    for path in gets:
        resp = await other.get(path, allow_redirects=False)
        assert resp.status == 403, path
    for path in posts:
        resp = await other.post(path, data={"_csrf": bob_csrf, "confirm": "yes"},
                                allow_redirects=False)
        assert resp.status == 403, path
    denied = await store.list_audit(kind="admin.denied", limit=100)
    assert {e.detail for e in denied} == {f"GET {p}" for p in gets} | {f"POST {p}" for p in posts}
    assert all(e.user == "bob" for e in denied)
    assert (await client.get(f"/admin/desktops/{d}")).status == 200  # nothing was deleted

    for path in gets:
        resp = await client.get(path)
        assert resp.status == 200, path
        if not path.endswith(".csv"):
            assert 'class="admin-nav"' in await resp.text()
    assert (await client.get("/admin/desktops/999")).status == 404
    assert (await client.get("/admin/users/999")).status == 404


async def test_posts_need_the_csrf_token(client: Client, secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    d = await create_desktop(client, csrf)
    for path in [p.format(d=d, u=1) for p in POST_PATHS]:
        resp = await client.post(path, data={"name": "x", "confirm": "yes"}, allow_redirects=False)
        assert resp.status == 403, path
        resp = await client.post(path, data={"_csrf": "forged", "confirm": "yes"},
                                 allow_redirects=False)
        assert resp.status == 403, path
    assert (await client.get(f"/admin/desktops/{d}")).status == 200


async def test_desktop_round_trip(client: Client, other: aiohttp.ClientSession,
                                  secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    pages: list[str] = []

    async def page(path: str) -> str:
        resp = await client.get(path)
        assert resp.status == 200
        pages.append(await resp.text())
        return pages[-1]

    d = await create_desktop(client, csrf)
    html = await page(f"/admin/desktops/{d}?info=created")
    assert "Desktop created" in html and 'value="Lab 1"' in html and "a password is set" in html
    listing = await page("/admin/desktops")
    row = re.search(rf'<tr data-desktop-id="{d}">(.*?)</tr>', listing, re.S)
    assert row and "127.0.0.1:5999" in row.group(1) and "static" in row.group(1)
    assert ">set<" in row.group(1) and ">off<" in row.group(1)

    # Edit: name, address, maintenance; an empty password field keeps the password.
    resp = await post(client, f"/admin/desktops/{d}", csrf, name="Lab One", host="127.0.0.2",
                      port="5998", password="", maintenance="yes")
    assert resp.status == 303 and resp.headers["Location"] == f"/admin/desktops/{d}?info=saved"
    html = await page(f"/admin/desktops/{d}")
    assert 'value="Lab One"' in html and 'value="127.0.0.2"' in html and 'value="5998"' in html
    assert 'id="maintenance-flag"' in html and "a password is set" in html
    # Bad input is refused with the reason; nothing changes.
    resp = await post(client, f"/admin/desktops/{d}", csrf, name="", host="h", port="80")
    assert resp.status == 400 and "1-64 printable characters" in await resp.text()
    resp = await post(client, f"/admin/desktops/{d}", csrf, name="x", host="h", port="99999")
    assert resp.status == 400 and "between 1 and 65535" in await resp.text()
    resp = await post(client, "/admin/desktops", csrf, name="Bad", provider="static", host="h",
                      port="no", password=VNC_PASSWORD)
    text = await resp.text()
    assert resp.status == 400 and "whole number" in text and 'value="Bad"' in text
    assert VNC_PASSWORD not in text

    # Assign bob and a group; bob sees it but cannot connect while it is in maintenance.
    users = await ids(client)
    resp = await post(client, f"/admin/desktops/{d}/assign", csrf, op="add",
                      user_id=str(users["bob"]))
    assert resp.headers["Location"] == f"/admin/desktops/{d}?info=assigned"
    resp = await post(client, f"/admin/desktops/{d}/assign", csrf, op="add", group="ops team")
    html = await page(f"/admin/desktops/{d}")
    assert re.search(r'id="assigned-users".*>bob<', html, re.S)
    assert re.search(r'id="assigned-groups".*ops team', html, re.S)
    listing = await page("/admin/desktops")
    assert ">bob<" in listing and ">ops team<" in listing and ">on<" in listing

    bob_csrf = await sign_in(other, "bob", secrets)
    assert "Lab One" in await (await other.get("/")).text()
    resp = await other.post(f"/desktops/{d}/connect", headers={
        "Accept": "application/json", "X-CSRF-Token": bob_csrf})
    assert resp.status == 503 and "under maintenance" in (await resp.json())["error"]

    # Unassign both; bob's portal no longer lists it.
    await post(client, f"/admin/desktops/{d}/assign", csrf, op="remove", user_id=str(users["bob"]))
    resp = await post(client, f"/admin/desktops/{d}/assign", csrf, op="remove", group="ops team")
    assert resp.headers["Location"] == f"/admin/desktops/{d}?info=unassigned"
    html = await page(f"/admin/desktops/{d}")
    assert 'id="assigned-users"' not in html and 'id="assigned-groups"' not in html
    assert "Lab One" not in await (await other.get("/")).text()

    # Static desktops have no power buttons, and the action is refused.
    assert 'id="power"' not in html
    resp = await post(client, f"/admin/desktops/{d}/power", csrf, power="start")
    assert resp.status == 400 and "no power actions" in await resp.text()

    # Clear the password.
    await post(client, f"/admin/desktops/{d}", csrf, name="Lab One", host="127.0.0.2",
               port="5998", clear_password="yes")
    assert "no password is set" in await page(f"/admin/desktops/{d}")
    assert ">none<" in await page("/admin/desktops")

    # The password never appeared, nor in the audit trail or its export.
    await page("/admin/audit")
    await page(f"/admin/users/{users['bob']}")
    pages.append(await (await client.get("/admin/audit.csv")).text())
    assert all(VNC_PASSWORD not in p for p in pages)

    # Delete: without the confirmation the page asks; with it, the desktop is gone.
    resp = await post(client, f"/admin/desktops/{d}/delete", csrf)
    html = await resp.text()
    assert resp.status == 200 and 'id="confirm-delete"' in html and "Delete for good" in html
    assert (await client.get(f"/admin/desktops/{d}")).status == 200
    resp = await post(client, f"/admin/desktops/{d}/delete", csrf, confirm="yes")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/desktops?info=deleted"
    assert "Desktop deleted" in await page("/admin/desktops?info=deleted")
    assert (await client.get(f"/admin/desktops/{d}")).status == 404
    details = [e.detail for e in await client.server.app[STORE].list_audit(kind="admin")]
    assert "desktop deleted (by alice)" in details
    assert "desktop changed: name, host, port, maintenance (by alice)" in details


async def test_local_desktop_has_power_actions_and_no_address(client: Client,
                                                              secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    d = await create_desktop(client, csrf, name="Managed", provider="local", host="", port="",
                             password="")
    html = await (await client.get(f"/admin/desktops/{d}")).text()
    assert 'id="power"' in html and 'name="host"' not in html and "no password is set" in html
    resp = await post(client, f"/admin/desktops/{d}/power", csrf, power="reboot")
    assert resp.status == 400 and "start, stop and restart" in await resp.text()
    resp = await post(client, f"/admin/desktops/{d}/power", csrf, power="stop")
    assert resp.status == 303 and resp.headers["Location"] == f"/admin/desktops/{d}?info=stop"


async def test_info_codes_show_fixed_messages_only(client: Client, secrets: dict[str, str]) -> None:
    await admin_in(client, secrets)
    html = await (await client.get("/admin/desktops?info=Call+0800+now")).text()
    assert "0800" not in html and 'class="info"' not in html


async def test_users_search_disable_enable(client: Client, other: aiohttp.ClientSession,
                                           secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    html = await (await client.get("/admin/users")).text()
    assert all(f'data-user="{n}"' in html for n in ("alice", "bob", "carol"))
    html = await (await client.get("/admin/users?q=BO")).text()
    assert 'data-user="bob"' in html and 'data-user="carol"' not in html
    assert 'value="BO"' in html
    assert "No user name contains" in await (await client.get("/admin/users?q=zz")).text()

    await sign_in(other, "bob", secrets)
    bob = (await ids(client))["bob"]
    resp = await post(client, f"/admin/users/{bob}/disable", csrf, back="list")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/users?info=disabled"
    html = await (await client.get(f"/admin/users/{bob}")).text()
    assert 'id="user-disabled"' in html and "Enable account" in html
    # bob's open session is gone and he cannot sign in again.
    assert (await other.get("/", allow_redirects=False)).headers["Location"] == "/login"
    resp = await password_step(other, "bob")
    assert resp.status == 401 and "wrong user name or password" in await resp.text()

    resp = await post(client, f"/admin/users/{bob}/enable", csrf)
    assert resp.headers["Location"] == f"/admin/users/{bob}?info=enabled"
    await sign_in(other, "bob", secrets)

    # An admin cannot lock themselves out.
    me = (await ids(client))["alice"]
    resp = await post(client, f"/admin/users/{me}/disable", csrf)
    assert resp.status == 400 and "cannot disable your own account" in await resp.text()


async def test_reset_totp_makes_the_user_enrol_again(client: Client, other: aiohttp.ClientSession,
                                                     secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    await sign_in(other, "bob", secrets)
    bob = (await ids(client))["bob"]
    assert "TOTP enrolled" in await (await client.get(f"/admin/users/{bob}")).text()
    resp = await post(client, f"/admin/users/{bob}/reset-totp", csrf)
    assert resp.headers["Location"] == f"/admin/users/{bob}?info=totp-reset"
    html = await (await client.get(resp.headers["Location"])).text()
    assert "Second factor reset" in html and "not enrolled" in html
    assert (await other.get("/", allow_redirects=False)).headers["Location"] == "/login"
    assert (await password_step(other, "bob")).status == 303
    page = await (await other.get("/login/totp")).text()
    assert 'id="totp-secret"' in page and secret_of(page) != secrets["bob"]


async def test_user_page_lists_groups_desktops_and_sessions(client: Client,
                                                            secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    store = client.server.app[STORE]
    bob = (await ids(client))["bob"]
    await store.set_user_groups(bob, ["ops team"])
    direct = await create_desktop(client, csrf, name="Direct")
    via = await create_desktop(client, csrf, name="Through group")
    await post(client, f"/admin/desktops/{direct}/assign", csrf, op="add", user_id=str(bob))
    await post(client, f"/admin/desktops/{via}/assign", csrf, op="add", group="ops team")
    html = await (await client.get(f"/admin/users/{bob}")).text()
    groups = re.search(r'id="user-groups">(.*?)</dd>', html, re.S)
    assert groups and "ops team" in groups.group(1)
    desktops = re.search(r'id="user-desktops">(.*?)</ul>', html, re.S)
    assert desktops
    assert re.search(r">Direct</a>\s*<span[^>]*>assigned directly", desktops.group(1))
    assert re.search(r">Through group</a>\s*<span[^>]*>via ops team", desktops.group(1))
    assert "No sessions yet" in html

    ws_id = "w" * 20
    for sid, desktop_id in (("s-open", direct), ("s-gone", via)):
        await store.create_session(Session(id=sid, user_id=bob, desktop_id=desktop_id,
                                           web_session_id=ws_id, state=SessionState.ACTIVE,
                                           started_at=T0, client_ip="192.0.2.9"))
    await store.close_session("s-gone", T0 + 90, "closed by the user", False, 2048, 3 * 1024 ** 2)
    await store.create_session(Session(id="s-failed", user_id=bob, desktop_id=direct,
                                       web_session_id=ws_id, state=SessionState.STARTING,
                                       started_at=T0, client_ip="192.0.2.9"))
    await store.fail_session("s-failed", T0 + 5, "the desktop cannot be reached", False)
    await post(client, f"/admin/desktops/{via}/delete", csrf, confirm="yes")
    html = await (await client.get(f"/admin/users/{bob}")).text()
    sessions = re.search(r'id="user-sessions">(.*?)</table>', html, re.S)
    assert sessions
    rows = re.findall(r"<tr>(.*?)</tr>", sessions.group(1), re.S)[1:]
    text = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r)).strip() for r in rows]
    assert "2025-03-01 12:00:00 active Direct 0 B 0 B 192.0.2.9" in text
    assert (f"2025-03-01 12:00:00 2025-03-01 12:01:30 deleted desktop #{via} 2.0 KB 3.0 MB"
            " 192.0.2.9 closed by the user") in text
    assert ("2025-03-01 12:00:00 2025-03-01 12:00:05 Direct 0 B 0 B 192.0.2.9 failed attempt"
            " the desktop cannot be reached") in text


# audit -----------------------------------------------------------------------------------------
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()


async def seed_audit(client: Client) -> None:
    store = client.server.app[STORE]
    rows: list[tuple[float, str, str | None, str | None, str]] = [
        (T0, "session.connect", "bob", "Lab 1", "session s1"),
        (T0 + 60, "session.disconnect", "bob", "Lab 1", 'closed: "idle", after 10 min'),
        (T0 + 3600, "signin.failed", "=HYPERLINK(\"x\")", None, "unknown user"),
        (T0 + 7200, "session.connect", "carol", "Lab 2", "session s2"),
    ]
    for at, kind, user, desktop, detail in rows:
        await store.append_audit(at, kind, user, desktop, "192.0.2.7", detail)


def audit_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-audit-id="(\d+)"', html)]


async def test_audit_filters(client: Client, secrets: dict[str, str]) -> None:
    await admin_in(client, secrets)
    await seed_audit(client)
    everything = audit_ids(await (await client.get("/admin/audit")).text())
    assert everything == sorted(everything, reverse=True) and len(everything) > 4

    async def rows(**query: str) -> list[str]:
        resp = await client.get("/admin/audit", params=query)
        assert resp.status == 200
        html = await resp.text()
        return re.findall(r'<td class="detail">(.*?)</td>', html)

    assert await rows(user="bob", desktop="Lab 1") == ["closed: &#34;idle&#34;, after 10 min", "session s1"]
    assert await rows(kind="session.") == ["session s2", "closed: &#34;idle&#34;, after 10 min",
                                           "session s1"]
    assert await rows(kind="session.connect", desktop="Lab 2") == ["session s2"]
    assert await rows(kind="session.", **{"from": "2025-03-01T12:01", "to": "2025-03-01T14:00"}) \
        == ["closed: &#34;idle&#34;, after 10 min"]
    resp = await client.get("/admin/audit", params={"from": "yesterday"})
    assert resp.status == 400 and "must look like" in await resp.text()
    html = await (await client.get("/admin/audit", params={"user": "bob", "desktop": "Lab 1"})).text()
    assert 'href="/admin/audit.csv?user=bob&amp;desktop=Lab+1"' in html


async def test_audit_paging(client: Client, secrets: dict[str, str]) -> None:
    await admin_in(client, secrets)
    store = client.server.app[STORE]
    for i in range(130):
        await store.append_audit(T0 + i, "admin", "alice", None, None, f"change {i}")
    html = await (await client.get("/admin/audit", params={"kind": "admin"})).text()
    first = audit_ids(html)
    assert len(first) == 100
    older = re.search(r'id="older" href="([^"]+)"', html)
    assert older
    html = await (await client.get(older.group(1).replace("&amp;", "&"))).text()
    second = audit_ids(html)
    assert 30 <= len(second) < 100 and max(second) < min(first)
    assert 'id="older"' not in html and ">Newest<" in html


async def test_audit_csv_export(client: Client, secrets: dict[str, str]) -> None:
    await admin_in(client, secrets)
    await seed_audit(client)
    resp = await client.get("/admin/audit.csv", params={"user": "bob", "desktop": "Lab 1"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert re.fullmatch(r'attachment; filename="deskgate-audit-\d{8}T\d{6}Z\.csv"',
                        resp.headers["Content-Disposition"])
    body = await resp.text()
    assert '"closed: ""idle"", after 10 min"' in body  # csv quoting of commas and quotes
    table = list(csv.reader(io.StringIO(body)))
    assert table[0] == ["id", "time", "kind", "user", "desktop", "client_ip", "detail", "row_hash"]
    assert [r[6] for r in table[1:]] == ['closed: "idle", after 10 min', "session s1"]
    assert table[1][1] == "2025-03-01T12:01:00.000Z" and table[1][2] == "session.disconnect"
    assert table[1][3:6] == ["bob", "Lab 1", "192.0.2.7"] and re.fullmatch(r"[0-9a-f]{64}",
                                                                             table[1][7])
    # A user name typed into the sign-in form cannot become a spreadsheet formula.
    table = list(csv.reader(io.StringIO(await (await client.get(
        "/admin/audit.csv", params={"kind": "signin.failed"})).text())))
    assert [r[3] for r in table[1:]] == ["'=HYPERLINK(\"x\")"]


async def test_audit_csv_streams_every_batch(client: Client, secrets: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.web import admin_pages

    monkeypatch.setattr(admin_pages, "EXPORT_BATCH", 7)
    monkeypatch.setattr(admin_pages, "EXPORT_CAP", 30)
    await admin_in(client, secrets)
    store = client.server.app[STORE]
    for i in range(40):
        await store.append_audit(T0 + i, "admin", "alice", None, None, f"change {i}")
    table = list(csv.reader(io.StringIO(await (await client.get(
        "/admin/audit.csv", params={"kind": "admin"})).text())))
    details = [r[6] for r in table[1:]]
    assert details == [f"change {i}" for i in range(39, 9, -1)]  # newest 30, no gaps or repeats
    table = list(csv.reader(io.StringIO(await (await client.get(
        "/admin/audit.csv", params={"kind": "nothing"})).text())))
    assert len(table) == 1


async def test_rdp_desktop_shows_its_certificate_policy(client: Client,
                                                        secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    resp = await client.post("/admin/desktops", data={
        "_csrf": csrf, "name": "Windows VM", "provider": "static", "host": "10.9.8.7",
        "port": "3389", "protocol": "rdp", "rdp_username": "alice", "rdp_domain": "CORP",
        "rdp_security": "nla", "password": "rdp-secret-1"}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    page = await (await client.get(resp.headers["Location"])).text()
    assert "server certificate not verified" in page and "CORP\\alice" in page
    listing = await (await client.get("/admin/desktops")).text()
    assert "certificates: ignore" in listing and "rdp-secret-1" not in page + listing
    # Switching to per-user accounts drops the shared password nobody uses any more.
    edit = await client.post(resp.headers["Location"].split("?")[0], data={
        "_csrf": csrf, "name": "Windows VM", "host": "10.9.8.7", "port": "3389",
        "rdp_credentials": "per_user"}, allow_redirects=False)
    assert edit.status == 303, await edit.text()
    page = await (await client.get(edit.headers["Location"])).text()
    assert "credentials: per user" in page and "no password is set" in page
    details = [e.detail for e in await client.server.app[STORE].list_audit(limit=5)]
    assert any("RDP credentials=per_user" in d and "password cleared" in d for d in details)


async def test_rdp_keyboard_layout_is_chosen_in_the_forms(client: Client,
                                                          secrets: dict[str, str]) -> None:
    csrf = await admin_in(client, secrets)
    form = await (await client.get("/admin/desktops")).text()
    assert '<option value="0x00000409" selected>English (United States)</option>' in form
    resp = await client.post("/admin/desktops", data={
        "_csrf": csrf, "name": "Berlin VM", "provider": "static", "host": "10.9.8.6",
        "port": "3389", "protocol": "rdp", "rdp_username": "anna",
        "rdp_keyboard_layout": "0x00000407", "password": "rdp-secret-2"}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    url = resp.headers["Location"].split("?")[0]
    page = await (await client.get(url)).text()
    assert "keyboard German (0x00000407)" in page
    assert '<option value="0x00000407" selected>German</option>' in page
    # Saving the form unchanged changes nothing; choosing US English stores the default.
    same = {"_csrf": csrf, "name": "Berlin VM", "host": "10.9.8.6", "port": "3389",
            "rdp_credentials": "shared", "rdp_keyboard_layout": "0x00000407"}
    assert (await client.post(url, data=same, allow_redirects=False)).status == 303
    details = [e.detail for e in await client.server.app[STORE].list_audit(limit=1)]
    assert "RDP" not in details[0]
    us = await client.post(url, data={**same, "rdp_keyboard_layout": "0x00000409"},
                           allow_redirects=False)
    assert us.status == 303
    assert "keyboard English (United States) (0x00000409)" in await (await client.get(url)).text()
    details = [e.detail for e in await client.server.app[STORE].list_audit(limit=1)]
    assert "RDP keyboard_layout=" in details[0]
    bad = await client.post(url, data={**same, "rdp_keyboard_layout": "qwertz!"})
    assert bad.status == 400 and "is not a known name" in await bad.text()


async def test_rdp_desktop_verified_against_a_ca_says_so(client: Client, secrets: dict[str, str],
                                                         tmp_path: Path) -> None:
    csrf = await admin_in(client, secrets)
    ca, _cert, _key = make_test_ca(tmp_path / "tls", "10.9.8.5")
    form = {"_csrf": csrf, "name": "Verified VM", "provider": "static", "host": "10.9.8.5",
            "port": "3389", "protocol": "rdp", "rdp_username": "anna", "password": "rdp-secret-3"}
    bad = await client.post("/admin/desktops", data={**form, "rdp_cert_ca": "-----BEGIN nonsense"})
    page = await bad.text()
    assert bad.status == 400 and "not a PEM certificate" in page and "BEGIN nonsense" in page
    resp = await client.post("/admin/desktops", data={**form, "rdp_cert_ca": ca.read_text()},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    page = await (await client.get(resp.headers["Location"])).text()
    assert "certificate verified: issued by Deskgate test CA for 10.9.8.5" in page
    assert "certificates: ca" in await (await client.get("/admin/desktops")).text()


async def test_rdp_desktop_trusting_on_first_use_says_so(client: Client,
                                                         secrets: dict[str, str]) -> None:
    await admin_in(client, secrets)
    desktop = await client.server.app[CATALOG].add_desktop(
        Actor.cli(), "Tofu VM", "static", host="10.9.8.4", port=3389, protocol="rdp",
        options={"username": "anna", "cert_policy": "tofu"})
    page = await (await client.get(f"/admin/desktops/{desktop.id}")).text()
    assert "certificate trusted on first use, a changed one refused" in page
    assert "certificate pinned" not in page and "server certificate not verified" not in page
