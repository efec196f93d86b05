"""The admin REST API through the real app: who may call it, and each use case end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from rdp_servers import make_test_ca
from websupport import Client, app_client, password_step, sign_in

from gateway.app import create_app
from gateway.audit import AuditKind
from gateway.cases.actor import Actor
from gateway.config import Settings, load_settings
from gateway.crypto import new_token, token_hash
from gateway.keys import ACCOUNTS, AUDIT_TRAIL, STORE
from gateway.model import User

VNC_PASSWORD = "vnc-secret-42"
API = "/api/v1"
PUBLIC = {f"{API}/openapi.json"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"root": True, "alice": False, "bob": False}) as c:
        yield c


async def user_named(client: Client, name: str) -> User:
    user = await client.server.app[STORE].get_user_by_name(name)
    assert user is not None
    return user


async def new_token_for(client: Client, name: str = "root", *, read_only: bool = False) -> str:
    owner = await user_named(client, name)
    _, secret = await client.server.app[ACCOUNTS].create_token(Actor.of(owner), owner, "test",
                                                               read_only=read_only)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def api_routes(client: Client) -> list[tuple[str, str]]:
    """Every (method, path) under /api/v1 that the app's router has, with ids filled in."""
    found = []
    for resource in client.server.app.router.resources():
        info = resource.get_info()
        if info.get("prefix") != API:
            continue
        for route in info["app"].router.routes():  # the API's sub-application
            path = route.resource.canonical if route.resource else ""  # prefixed when mounted
            if path not in PUBLIC and route.method != "HEAD":
                found.append((route.method, re.sub(r"\{\w+\}", "1", path)))
    assert len(found) >= 19
    return found


def writes(routes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(m, p) for m, p in routes if m != "GET"]


# who may call it ----------------------------------------------------------------------------------
async def test_no_credentials_is_401_everywhere(client: Client) -> None:
    for method, path in api_routes(client):
        resp = await client.request(method, path, json={})
        assert resp.status == 401, (method, path)
        assert (await resp.json())["error"] and resp.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer", "Basic dXNlcjpwdw==", "Bearer not-a-deskgate-token"):
        resp = await client.get(f"{API}/desktops", headers={"Authorization": header})
        assert resp.status == 401


async def test_non_admin_session_is_403_and_audited(client: Client) -> None:
    csrf = await sign_in(client, "alice")
    routes = api_routes(client)
    for method, path in routes:
        resp = await client.request(method, path, json={}, headers={"X-CSRF-Token": csrf})
        assert resp.status == 403, (method, path)
    denied = await client.server.app[AUDIT_TRAIL].events(kind=AuditKind.ADMIN_DENIED,
                                                         user="alice", limit=1000)
    assert len(denied) == len(routes)


async def test_a_non_admins_token_is_401(client: Client) -> None:
    """Tokens act as their admin; once that account is no admin, the token stops working."""
    secret = await new_token_for(client)
    await client.server.app[STORE].set_admin((await user_named(client, "root")).id, False)
    assert (await client.get(f"{API}/desktops", headers=bearer(secret))).status == 401


async def test_expired_and_revoked_tokens_are_401(client: Client) -> None:
    app = client.server.app
    root = await user_named(client, "root")
    expired = "dg_" + new_token(32)
    now = time.time()
    await app[STORE].create_api_token("old", token_hash(expired), root.id, False, now - 100,
                                      now - 1)
    revoked = await new_token_for(client)
    token_id = (await app[ACCOUNTS].tokens())[-1].id
    assert (await client.get(f"{API}/desktops", headers=bearer(revoked))).status == 200
    await app[ACCOUNTS].revoke_token(Actor.of(root), token_id)
    for method, path in api_routes(client):
        for secret in (expired, revoked):
            resp = await client.request(method, path, json={}, headers=bearer(secret))
            assert resp.status == 401, (method, path)


async def test_read_only_token_may_only_read(client: Client) -> None:
    secret = await new_token_for(client, read_only=True)
    routes = api_routes(client)
    for method, path in writes(routes):
        resp = await client.request(method, path, json={}, headers=bearer(secret))
        assert resp.status == 403, (method, path)
        assert (await resp.json())["error"] == "this token is read-only"
    for method, path in routes:
        if method == "GET" and "{" not in path and not path.endswith("/1"):
            assert (await client.get(path, headers=bearer(secret))).status == 200, path
    denied = await client.server.app[AUDIT_TRAIL].events(kind=AuditKind.ADMIN_DENIED, limit=1000)
    assert len(denied) == len(writes(routes)) and "read-only token" in denied[0].detail


async def test_admin_session_writes_need_the_csrf_header(client: Client) -> None:
    csrf = await sign_in(client, "root")
    routes = api_routes(client)
    for method, path in writes(routes):
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            resp = await client.request(method, path, json={}, headers=headers)
            assert resp.status == 403, (method, path, headers)
    for method, path in routes:  # reads need no CSRF token
        if method == "GET" and not path.endswith("/1"):
            assert (await client.get(path)).status == 200, path
    resp = await client.post(f"{API}/desktops", headers={"X-CSRF-Token": csrf},
                             json={"name": "Lab", "provider": "local"})
    assert resp.status == 201


async def test_half_signed_in_admin_is_401(client: Client) -> None:
    assert (await password_step(client, "root")).status == 303
    assert (await client.get(f"{API}/desktops")).status == 401


# desktops -------------------------------------------------------------------------------------------
async def test_desktop_round_trip(client: Client) -> None:
    headers = bearer(await new_token_for(client))
    bodies: list[str] = []

    async def call(method: str, path: str, status: int, **kwargs: Any) -> Any:
        resp = await client.request(method, f"{API}{path}", headers=headers, **kwargs)
        text = await resp.text()
        bodies.append(text)
        assert resp.status == status, (method, path, text)
        return await resp.json() if text else None

    created = await call("POST", "/desktops", 201, json={
        "name": "Lab", "provider": "static", "host": "127.0.0.1", "port": 9,
        "password": VNC_PASSWORD})
    did = created["id"]
    assert created["has_password"] and created["state"] == "stopped"  # nothing listens there
    assert "password" not in created
    got = await call("GET", f"/desktops/{did}", 200)
    assert got == created
    assert [d["name"] for d in (await call("GET", "/desktops", 200))["desktops"]] == ["Lab"]

    changed = await call("PATCH", f"/desktops/{did}", 200,
                         json={"name": "Lab 2", "port": 5902, "maintenance": True})
    assert (changed["name"], changed["port"], changed["maintenance"]) == ("Lab 2", 5902, True)
    assert changed["host"] == "127.0.0.1" and changed["has_password"]
    await call("PATCH", f"/desktops/{did}", 400, json={"port": 70000})
    await call("PATCH", f"/desktops/{did}", 400, json={"port": "5903"})
    await call("PATCH", f"/desktops/{did}", 400, json={"colour": "blue"})
    await call("POST", f"/desktops/{did}/power", 400, json={"action": "start"})  # static

    alice = await user_named(client, "alice")
    await call("POST", f"/desktops/{did}/assignments", 200, json={"user_id": alice.id})
    view = await call("POST", f"/desktops/{did}/assignments", 200, json={"group": "ops"})
    assert view["users"] == ["alice"] and view["groups"] == ["ops"]
    await call("POST", f"/desktops/{did}/assignments", 400, json={})
    await call("POST", f"/desktops/{did}/assignments", 404, json={"user_id": 999})
    detail = await call("GET", f"/users/{alice.id}", 200)
    assert detail["desktops"] == [{"id": did, "name": "Lab 2"}]

    view = await call("DELETE", f"/desktops/{did}/assignments", 200, json={"user_id": alice.id})
    assert view["users"] == [] and view["groups"] == ["ops"]
    view = await call("DELETE", f"/desktops/{did}/assignments?group=ops", 200)
    assert view["groups"] == []

    cleared = await call("PATCH", f"/desktops/{did}", 200, json={"clear_password": True})
    assert not cleared["has_password"]
    await call("DELETE", f"/desktops/{did}", 204)
    await call("GET", f"/desktops/{did}", 404)
    await call("DELETE", f"/desktops/{did}", 404)
    await call("PATCH", "/desktops/abc", 400, json={})

    assert all(VNC_PASSWORD not in body for body in bodies)
    assert all(b"password_enc" not in body.encode() for body in bodies)
    trail = await call("GET", "/audit?kind=admin&desktop=Lab 2", 200)
    details = [e["detail"] for e in trail["events"]]
    assert any("password cleared (by root)" in d for d in details)
    assert "desktop deleted (by root)" in details
    created_by = await call("GET", "/audit?desktop=Lab", 200)
    # One row for the creation, naming who made it (the API and the admin pages alike).
    assert [e["detail"] for e in created_by["events"]
            if "created" in e["detail"]] == ["desktop created (static, vnc) (by root)"]
    assert all(VNC_PASSWORD not in body for body in bodies)


async def test_create_desktop_input_is_checked(client: Client) -> None:
    headers = bearer(await new_token_for(client))
    for body, status in (({"name": "X", "provider": "static"}, 400),
                         ({"name": "X", "provider": "cloud"}, 400),
                         ({"provider": "local"}, 400),
                         ({"name": "X", "provider": "local", "extra": 1}, 400),
                         ({"name": "X", "provider": "local", "port": True}, 400),
                         (["not", "an", "object"], 400)):
        resp = await client.post(f"{API}/desktops", json=body, headers=headers)
        assert resp.status == status, body
    resp = await client.post(f"{API}/desktops", data=b"{not json", headers=headers)
    assert resp.status == 400 and "JSON" in (await resp.json())["error"]


# users ------------------------------------------------------------------------------------------
async def test_users_list_search_disable_enable_reset(client: Client) -> None:
    csrf = await sign_in(client, "alice")  # enrols alice's second factor
    headers = bearer(await new_token_for(client))
    users = (await (await client.get(f"{API}/users", headers=headers)).json())["users"]
    assert [u["name"] for u in users] == ["alice", "bob", "root"]
    found = await (await client.get(f"{API}/users?search=LIC", headers=headers)).json()
    assert [u["name"] for u in found["users"]] == ["alice"]
    assert all(set(u) == {"id", "name", "is_admin", "disabled", "totp_enrolled", "source",
                          "locked_until"} for u in users)
    alice_id = found["users"][0]["id"]

    resp = await client.post(f"{API}/users/{alice_id}/disable", headers=headers)
    assert resp.status == 200 and (await resp.json())["disabled"]
    # her web session ended, and she cannot sign in again
    resp = await client.post(f"{API}/users/{alice_id}/enable", headers={"X-CSRF-Token": csrf})
    assert resp.status == 401
    assert (await password_step(client, "alice")).status == 401
    resp = await client.post(f"{API}/users/{alice_id}/enable", headers=headers)
    assert resp.status == 200 and not (await resp.json())["disabled"]
    assert (await password_step(client, "alice")).status == 303

    detail = await (await client.get(f"{API}/users/{alice_id}", headers=headers)).json()
    assert detail["totp_enrolled"] and detail["groups"] == [] and detail["sessions"] == []
    resp = await client.post(f"{API}/users/{alice_id}/reset-totp", headers=headers)
    assert resp.status == 200 and not (await resp.json())["totp_enrolled"]
    for body in (detail, users):
        assert "secret" not in str(body) and "hash" not in str(body)

    root = await user_named(client, "root")
    resp = await client.post(f"{API}/users/{root.id}/disable", headers=headers)
    assert resp.status == 400 and "your own account" in (await resp.json())["error"]
    assert (await client.get(f"{API}/users/999", headers=headers)).status == 404


# tokens -----------------------------------------------------------------------------------------
async def test_token_lifecycle(client: Client) -> None:
    csrf = await sign_in(client, "root")
    resp = await client.post(f"{API}/tokens", headers={"X-CSRF-Token": csrf},
                             json={"name": "ci", "days": 7, "read_only": True})
    assert resp.status == 201
    created = await resp.json()
    secret = created["secret"]
    assert secret.startswith("dg_") and created["read_only"] and created["user"] == "root"
    assert 6.9 * 86400 < created["expires_at"] - created["created_at"] <= 7 * 86400

    listing = await client.get(f"{API}/tokens")
    text = await listing.text()
    assert secret not in text and "secret" not in text and "hash" not in text
    tokens = (await listing.json())["tokens"]
    assert [(t["name"], t["last_used"]) for t in tokens] == [("ci", None)]
    for body in ({"name": ""}, {"name": "x", "days": 0}, {"name": "x", "days": 400},
                 {"name": "x", "read_only": "yes"}, {"name": "x", "secret": "mine"}):
        resp = await client.post(f"{API}/tokens", json=body, headers={"X-CSRF-Token": csrf})
        assert resp.status == 400, body

    client.session.cookie_jar.clear()
    assert (await client.get(f"{API}/desktops", headers=bearer(secret))).status == 200
    listed = await (await client.get(f"{API}/tokens", headers=bearer(secret))).json()
    assert listed["tokens"][0]["last_used"] is not None

    full = await new_token_for(client)
    resp = await client.post(f"{API}/tokens", json={"name": "more"}, headers=bearer(full))
    assert resp.status == 403 and "session" in (await resp.json())["error"]

    resp = await client.delete(f"{API}/tokens/{created['id']}", headers=bearer(full))
    assert resp.status == 204
    assert (await client.get(f"{API}/desktops", headers=bearer(secret))).status == 401
    assert (await client.delete(f"{API}/tokens/{created['id']}", headers=bearer(full))).status == 404


# audit ------------------------------------------------------------------------------------------
async def test_audit_filters_and_pages(client: Client) -> None:
    headers = bearer(await new_token_for(client))
    bob = await user_named(client, "bob")
    before = time.time()
    for _ in range(3):
        await client.post(f"{API}/users/{bob.id}/disable", headers=headers)
        await client.post(f"{API}/users/{bob.id}/enable", headers=headers)

    async def query(qs: str) -> dict[str, Any]:
        resp = await client.get(f"{API}/audit?{qs}", headers=headers)
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    bobs = (await query("user=bob&kind=admin"))["events"]
    assert [e["detail"] for e in bobs[:2]] == ["user enabled (by root)", "user disabled (by root)"]
    assert len(bobs) == 7  # created, then three times disabled and enabled
    assert all(e["user"] == "bob" and e["kind"] == "admin" for e in bobs)
    assert (await query("user=nobody"))["events"] == []
    assert (await query("kind=admin.denied"))["events"] == []

    iso = datetime.fromtimestamp(before - 0.001, UTC).isoformat()
    since = (await query(f"user=bob&since={iso.replace('+00:00', 'Z')}"))["events"]
    assert len(since) == 6
    assert len((await query(f"user=bob&since={before - 0.001}"))["events"]) == 6
    assert len((await query(f"user=bob&until={before - 0.001}"))["events"]) == 1

    page = await query("user=bob&limit=4")
    assert len(page["events"]) == 4 and page["next_before_id"] == page["events"][-1]["id"]
    rest = await query(f"user=bob&limit=4&before_id={page['next_before_id']}")
    assert len(rest["events"]) == 3 and rest["next_before_id"] is None
    assert {e["id"] for e in page["events"]}.isdisjoint(e["id"] for e in rest["events"])

    for bad in ("since=yesterday", "limit=0", "limit=5000", "before_id=x"):
        resp = await client.get(f"{API}/audit?{bad}", headers=headers)
        assert resp.status == 400, bad


# sessions ---------------------------------------------------------------------------------------
async def test_sessions_and_unknown_live_sessions(client: Client) -> None:
    headers = bearer(await new_token_for(client))
    listing = await (await client.get(f"{API}/sessions", headers=headers)).json()
    assert listing == {"live": [], "recent": []}
    for action, body in (("disconnect", {"reason": "maintenance"}), ("message", {"text": "hi"})):
        resp = await client.post(f"{API}/sessions/nope/{action}", json=body, headers=headers)
        assert resp.status == 404, action
        assert (await resp.json())["error"] == "no such live session on this gateway"
    resp = await client.post(f"{API}/sessions/nope/message", json={"text": ""}, headers=headers)
    assert resp.status == 400


# command line -----------------------------------------------------------------------------------
def deskgate(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


async def test_token_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--data", str(data),
                           "--no-demo"], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    config = data / "deskgate.toml"
    deskgate(config, "user", "add", "carol")

    out = deskgate(config, "token", "create", "ci", "--admin-user", "admin", "--days", "3",
                   "--read-only").stdout
    assert "for admin (read-only)" in out
    secret = out.split("Secret: ")[1].split()[0]
    refused = deskgate(config, "token", "create", "x", "--admin-user", "carol", check=False)
    assert refused.returncode == 1 and "not an enabled admin" in refused.stderr
    missing = deskgate(config, "token", "create", "x", check=False)
    assert missing.returncode == 2 and "--admin-user" in missing.stderr

    listing = deskgate(config, "token", "list").stdout
    assert "ci" in listing and "admin" in listing and "read-only" in listing
    assert secret not in listing

    async with TestClient(TestServer(create_app(load_settings(config, env={})))) as c:
        assert (await c.get(f"{API}/desktops", headers=bearer(secret))).status == 200
        assert (await c.post(f"{API}/desktops", headers=bearer(secret), json={})).status == 403

    token_id = listing.split()[0]
    assert deskgate(config, "token", "revoke", token_id).stdout.strip() == f"Token {token_id} revoked"
    again = deskgate(config, "token", "revoke", token_id, check=False)
    assert again.returncode == 1 and "no such token" in again.stderr
    assert "ci" not in deskgate(config, "token", "list").stdout
    audit = deskgate(config, "audit").stdout
    assert "API token 'ci' created (read-only), 3 days, for admin (by the command line)" in audit
    assert f"API token {token_id} revoked (by the command line)" in audit
    assert secret not in audit

    async with TestClient(TestServer(create_app(load_settings(config, env={})))) as c:
        assert (await c.get(f"{API}/desktops", headers=bearer(secret))).status == 401


async def test_rdp_desktop_through_the_api(client: Client, tmp_path: Path) -> None:
    headers = bearer(await new_token_for(client))
    resp = await client.post(f"{API}/desktops", headers=headers, json={
        "name": "Win API", "provider": "static", "host": "10.2.3.4", "port": 3389,
        "protocol": "rdp", "password": "rdp-api-secret",
        "rdp": {"username": "carol", "security": "nla", "keyboard_layout": "fr"}})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["protocol"] == "rdp" and body["rdp"]["username"] == "carol"
    assert body["rdp"]["cert_policy"] == "ignore" and "rdp-api-secret" not in await resp.text()
    assert body["rdp"]["keyboard_layout"] == "0x0000040C"
    url = f"{API}/desktops/{body['id']}"
    patched = await client.patch(url, headers=headers, json={"rdp": {"keyboard_layout": "ch-de"}})
    assert patched.status == 200, await patched.text()
    rdp = (await patched.json())["rdp"]
    assert rdp["keyboard_layout"] == "0x00000807" and rdp["username"] == "carol"
    assert rdp["security"] == "nla"
    unknown = await client.patch(url, headers=headers, json={"rdp": {"keyboard_layout": "xx"}})
    assert unknown.status == 400 and "keyboard layout" in (await unknown.json())["error"]
    us = await client.patch(url, headers=headers, json={"rdp": {"keyboard_layout": "us"}})
    assert (await us.json())["rdp"]["keyboard_layout"] == ""  # the default, stored empty

    # A CA given later chooses the ca policy; a pin given later replaces it.
    ca, _cert, _key = make_test_ca(tmp_path / "tls", "10.2.3.4")
    with_ca = await client.patch(url, headers=headers, json={"rdp": {"cert_ca": ca.read_text()}})
    rdp = (await with_ca.json())["rdp"]
    assert with_ca.status == 200 and rdp["cert_policy"] == "ca" and "BEGIN CERTIFICATE" in rdp["cert_ca"]
    pinned = await client.patch(url, headers=headers, json={"rdp": {"cert_fingerprint": "ab" * 32}})
    rdp = (await pinned.json())["rdp"]
    assert rdp["cert_policy"] == "fingerprint" and rdp["cert_ca"] == ""
    assert rdp["cert_fingerprint"] == "ab" * 32
    junk = await client.patch(url, headers=headers, json={"rdp": {"cert_policy": "ca", "cert_ca": "x"}})
    assert junk.status == 400 and "not a PEM certificate" in (await junk.json())["error"]
    bad = await client.post(f"{API}/desktops", headers=headers, json={
        "name": "Win 2", "provider": "static", "host": "10.2.3.4", "port": 3389,
        "protocol": "rdp", "rdp": {"username": "carol", "bogus": "x"}})
    assert bad.status == 400 and "unknown RDP option" in (await bad.json())["error"]
