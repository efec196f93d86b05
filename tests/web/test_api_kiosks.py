"""The REST API's kiosks through the real app: every operation end to end, read-only tokens
refused for writes, bad input answered 400/404/409 with the reason, no secret in any answer but
the pairing code where it is made, and the OpenAPI document listing every path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kioskkeys import DeviceKey
from websupport import CLI, Client, app_client, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import ACCOUNTS, CATALOG, KIOSKS, STORE

API = "/api/v1"
PATHS = {f"{API}/kiosks": {"get", "post"},
         f"{API}/kiosks/{{id}}": {"get", "patch", "delete"},
         f"{API}/kiosks/{{id}}/pairing-code": {"post"},
         f"{API}/kiosks/{{id}}/revoke": {"post"}}
FIELDS = {"id", "name", "location", "mode", "desktop_id", "desktop", "input_allowed", "state",
          "state_text", "online", "enrolled", "revoked", "created_at", "enrolled_at",
          "revoked_at", "pairing_until", "last_seen", "last_ip", "user_agent", "current_user",
          "current_desktop"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"root": True, "alice": False}) as c:
        yield c


async def token(client: Client, *, read_only: bool = False) -> dict[str, str]:
    owner = await client.server.app[STORE].get_user_by_name("root")
    assert owner is not None
    _, secret = await client.server.app[ACCOUNTS].create_token(Actor.of(owner), owner, "test",
                                                               read_only=read_only)
    return {"Authorization": f"Bearer {secret}"}


class Caller:
    def __init__(self, client: Client, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers
        self.bodies: list[str] = []

    async def __call__(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        resp = await self.client.request(method, f"{API}{path}", headers=headers, **kwargs)
        text = await resp.text()
        self.bodies.append(text)
        assert resp.status == status, (method, path, text)
        return json.loads(text) if text else None


@pytest.fixture
async def call(client: Client) -> Caller:
    return Caller(client, await token(client))


async def desktop(client: Client, name: str = "Lobby") -> int:
    made = await client.server.app[CATALOG].add_desktop(CLI, name, "static", host="10.9.8.7",
                                                        port=5901)
    return made.id


async def test_kiosk_round_trip(client: Client, call: Caller) -> None:
    lobby = await desktop(client)
    made = await call("POST", "/kiosks", 201, json={"name": "Front desk", "location": "Hall"})
    code = made.pop("pairing_code")
    assert set(made) == FIELDS | {"pairing_expires"}
    assert made["pairing_expires"] == made["pairing_until"] and made["state"] == "pairing"
    assert (made["mode"], made["input_allowed"], made["enrolled"], made["online"]) == (
        "shared", True, False, False)
    kid = made["id"]

    got = await call("GET", f"/kiosks/{kid}", 200)
    assert set(got) == FIELDS and "pairing_code" not in got
    listed = (await call("GET", "/kiosks", 200))["kiosks"]
    assert [k["id"] for k in listed] == [kid] and set(listed[0]) == FIELDS

    # Paired and seen: online, from its address.
    key = DeviceKey()
    await client.server.app[KIOSKS].pair(code, key.public, "192.0.2.70", "Thin/1.0")
    got = await call("GET", f"/kiosks/{kid}", 200)
    assert (got["state"], got["online"], got["enrolled"], got["last_ip"]) == (
        "online", True, True, "192.0.2.70")
    assert got["user_agent"] == "Thin/1.0" and got["pairing_until"] is None

    changed = await call("PATCH", f"/kiosks/{kid}", 200,
                         json={"name": "Lobby screen", "mode": "dedicated",
                               "desktop_id": lobby, "input_allowed": False})
    assert (changed["name"], changed["location"], changed["mode"], changed["desktop_id"],
            changed["desktop"], changed["input_allowed"]) == (
        "Lobby screen", "Hall", "dedicated", lobby, "Lobby", False)
    changed = await call("PATCH", f"/kiosks/{kid}", 200, json={"location": "Entrance"})
    assert (changed["location"], changed["mode"], changed["desktop_id"]) == (
        "Entrance", "dedicated", lobby)

    fresh = await call("POST", f"/kiosks/{kid}/pairing-code", 200)
    assert fresh["pairing_code"] != code and fresh["pairing_expires"] > 0
    assert fresh["state"] == "online"  # still enrolled until the new code is used

    revoked = await call("POST", f"/kiosks/{kid}/revoke", 200)
    assert (revoked["state"], revoked["revoked"], revoked["enrolled"], revoked["online"]) == (
        "revoked", True, False, False)
    assert revoked["pairing_until"] is None  # a waiting code is void too
    await call("DELETE", f"/kiosks/{kid}", 204)
    await call("GET", f"/kiosks/{kid}", 404)
    assert (await call("GET", "/kiosks", 200))["kiosks"] == []

    # No answer but the two that made one holds a pairing code; none holds the key.
    with_code = [b for b in call.bodies if "pairing_code" in b]
    assert len(with_code) == 2
    assert all(key.public not in b for b in call.bodies)
    assert all(fresh["pairing_code"] not in b for b in call.bodies if b not in with_code)


async def test_bad_input_is_a_clear_400(client: Client, call: Caller) -> None:
    lobby = await desktop(client)
    kid = (await call("POST", "/kiosks", 201, json={"name": "Front desk"}))["id"]
    for body, words in (
            ({}, "name is required"),
            ({"name": 7}, "name must be a string"),
            ({"name": "X", "location": ["a"]}, "location must be a string"),
            ({"name": "X", "mode": "public"}, "mode is one of"),
            ({"name": "X", "mode": 1}, "mode must be a string"),
            ({"name": "X", "mode": "dedicated"}, "needs its desktop"),
            ({"name": "X", "mode": "dedicated", "desktop_id": "1"}, "desktop_id must be an"),
            ({"name": "X", "mode": "dedicated", "desktop_id": True}, "desktop_id must be an"),
            ({"name": "X", "input_allowed": "yes"}, "input_allowed must be a boolean"),
            ({"name": "X", "colour": "blue"}, "unknown field(s): colour"),
            ({"name": ""}, "1 to 64 printable characters"),
            ({"name": "X", "pairing_code": "ABCD-EFGH"}, "unknown field(s): pairing_code")):
        answer = await call("POST", "/kiosks", 400, json=body)
        assert words in answer["error"], (body, answer)
    for body in ([1], "text", 3):
        await call("POST", "/kiosks", 400, json=body)
    await call("POST", "/kiosks", 400, data=b"{not json",
               headers={"Content-Type": "application/json"})
    for body, words in (({"mode": "dedicated"}, "needs its desktop"),
                        ({"input_allowed": 1}, "must be a boolean"),
                        ({"name": None, "location": 5}, "location must be a string"),
                        ({"mode": "kiosk"}, "mode is one of")):
        answer = await call("PATCH", f"/kiosks/{kid}", 400, json=body)
        assert words in answer["error"], (body, answer)
    await call("POST", f"/kiosks/{kid}/revoke", 400, json={"confirm": "x"})
    await call("POST", f"/kiosks/{kid}/pairing-code", 400, json={"x": 1})
    # An unknown desktop is 404, a taken name 409, an unknown kiosk 404.
    await call("POST", "/kiosks", 404, json={"name": "X", "mode": "dedicated",
                                             "desktop_id": lobby + 100})
    assert "already exists" in (await call("POST", "/kiosks", 409,
                                           json={"name": "Front desk"}))["error"]
    await call("POST", "/kiosks", 201, json={"name": "Second"})
    await call("PATCH", f"/kiosks/{kid}", 409, json={"name": "Second"})
    for method, path in (("GET", "/kiosks/999"), ("PATCH", "/kiosks/999"),
                         ("DELETE", "/kiosks/999"), ("POST", "/kiosks/999/pairing-code"),
                         ("POST", "/kiosks/999/revoke")):
        await call(method, path, 404, json={})
    assert [k["name"] for k in (await call("GET", "/kiosks", 200))["kiosks"]] == [
        "Front desk", "Second"]


async def test_read_only_tokens_may_only_read(client: Client, call: Caller) -> None:
    kid = (await call("POST", "/kiosks", 201, json={"name": "Front desk"}))["id"]
    read = Caller(client, await token(client, read_only=True))
    assert len((await read("GET", "/kiosks", 200))["kiosks"]) == 1
    assert (await read("GET", f"/kiosks/{kid}", 200))["name"] == "Front desk"
    for method, path, body in (("POST", "/kiosks", {"name": "X"}),
                               ("PATCH", f"/kiosks/{kid}", {"name": "Y"}),
                               ("DELETE", f"/kiosks/{kid}", {}),
                               ("POST", f"/kiosks/{kid}/pairing-code", {}),
                               ("POST", f"/kiosks/{kid}/revoke", {})):
        answer = await read(method, path, 403, json=body)
        assert answer["error"] == "this token is read-only"
    kiosk = await client.server.app[KIOSKS].get(kid)
    assert (kiosk.name, kiosk.revoked_at) == ("Front desk", None)
    assert len(await client.server.app[KIOSKS].fleet()) == 1


async def test_sessions_need_an_admin_and_the_csrf_header(client: Client) -> None:
    csrf = await sign_in(client, "alice")  # no admin
    assert (await client.get(f"{API}/kiosks")).status == 403
    resp = await client.post(f"{API}/kiosks", json={"name": "X"},
                             headers={"X-CSRF-Token": csrf})
    assert resp.status == 403
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as root:
        root_csrf = await sign_in(root, "root")
        assert (await root.post(f"{API}/kiosks", json={"name": "X"})).status == 403
        resp = await root.post(f"{API}/kiosks", json={"name": "X"},
                               headers={"X-CSRF-Token": root_csrf})
        assert resp.status == 201, await resp.text()
    assert [k.name for k, _ in await client.server.app[KIOSKS].fleet()] == ["X"]


async def test_the_openapi_document_lists_the_kiosk_paths(client: Client) -> None:
    spec = await (await client.get(f"{API}/openapi.json")).json()
    for path, methods in PATHS.items():
        assert set(spec["paths"][path]) == methods, path
    assert spec["paths"][f"{API}/kiosks"]["post"]["responses"]["201"]
    kiosk = spec["components"]["schemas"]["Kiosk"]
    assert set(kiosk["properties"]) == FIELDS
    assert "pairing_code" not in kiosk["properties"]
    body = spec["paths"][f"{API}/kiosks"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert set(body["properties"]) == {"name", "location", "mode", "desktop_id",
                                       "input_allowed"}
    assert body["required"] == ["name"]
