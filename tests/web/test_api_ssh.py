"""The REST API's SSH hosts through the real app (no sshd needed): every operation end to end,
read-only tokens refused for writes, non-admins refused, bad input answered 400/404/409 with the
reason, the private key in no answer (``has_key`` only), and the OpenAPI document listing every
path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sshkeys import Keys, fingerprint, make_keys
from websupport import CLI, Client, app_client, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import ACCOUNTS, CATALOG, SSH_HOSTS, STORE
from gateway.ssh.connections import Health

API = "/api/v1"
PATHS = {f"{API}/ssh-hosts": {"get", "post"},
         f"{API}/ssh-hosts/{{id}}": {"get", "patch", "delete"},
         f"{API}/ssh-hosts/{{id}}/pin": {"post"}}
FIELDS = {"id", "name", "address", "port", "user", "where", "jump_id", "jump", "policy",
          "host_key", "host_key_type", "host_key_fingerprint", "has_key", "state", "state_text",
          "reason", "since", "connects", "created_at"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"root": True, "alice": False}) as c:
        yield c


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


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


def body_for(keys: Keys, name: str = "bastion", **changes: Any) -> dict[str, Any]:
    return {"name": name, "address": "10.0.0.5", "port": 2222, "user": "deskgate",
            "private_key": keys.private_key, "host_key": keys.host_key, **changes}


async def test_ssh_host_round_trip(client: Client, call: Caller, keys: Keys) -> None:
    made = await call("POST", "/ssh-hosts", 201, json=body_for(keys))
    assert set(made) == FIELDS
    assert (made["name"], made["where"], made["policy"], made["has_key"], made["jump"]) == (
        "bastion", "deskgate@10.0.0.5:2222", "pinned", True, None)
    assert made["host_key"] == keys.host_key and made["host_key_type"] == "ssh-ed25519"
    assert made["host_key_fingerprint"] == fingerprint(keys.host_key)
    assert (made["state"], made["since"], made["connects"]) == ("idle", None, 0)
    hid = made["id"]
    inner = await call("POST", "/ssh-hosts", 201, json={
        "name": "inner", "address": "192.168.7.2", "user": "deskgate",
        "private_key": keys.private_key, "policy": "tofu", "jump": "bastion"})
    assert (inner["port"], inner["jump"], inner["jump_id"], inner["host_key"],
            inner["host_key_fingerprint"]) == (22, "bastion", hid, "", "")

    client.server.app[SSH_HOSTS].connections.health["bastion"] = Health(
        "down", "Connection refused", connects=1)
    got = await call("GET", f"/ssh-hosts/{hid}", 200)
    assert (got["state"], got["reason"], got["connects"]) == ("down", "Connection refused", 1)
    assert got["since"] is not None
    listed = await call("GET", "/ssh-hosts", 200)
    assert [h["name"] for h in listed["ssh_hosts"]] == ["bastion", "inner"]

    changed = await call("PATCH", f"/ssh-hosts/{hid}", 200,
                         json={"address": "bastion.example", "port": 22, "user": "gw"})
    assert changed["where"] == "gw@bastion.example:22"
    assert changed["state"] == "idle"  # its connection is made again, with the new settings
    changed = await call("PATCH", f"/ssh-hosts/{inner['id']}", 200, json={"jump": None})
    assert changed["jump"] is None
    changed = await call("PATCH", f"/ssh-hosts/{inner['id']}", 200, json={"jump": "bastion"})
    assert changed["jump"] == "bastion"
    pinned = await call("POST", f"/ssh-hosts/{inner['id']}/pin", 200,
                        json={"host_key": keys.other_host_key})
    assert (pinned["policy"], pinned["host_key_fingerprint"]) == (
        "pinned", fingerprint(keys.other_host_key))
    rekeyed = await call("PATCH", f"/ssh-hosts/{hid}", 200,
                         json={"private_key": keys.private_key})
    assert rekeyed["has_key"] is True

    await call("DELETE", f"/ssh-hosts/{inner['id']}", 204)
    await call("DELETE", f"/ssh-hosts/{hid}", 204)
    await call("GET", f"/ssh-hosts/{hid}", 404)
    assert (await call("GET", "/ssh-hosts", 200)) == {"ssh_hosts": []}
    assert all(not keys.leaked(body) for body in call.bodies)
    audit = await client.server.app[STORE].list_audit(limit=50, kind="ssh")
    assert len(audit) == 9 and not any(keys.leaked(e.detail) for e in audit)


async def test_bad_input_is_400_404_409(client: Client, call: Caller, keys: Keys) -> None:
    made = await call("POST", "/ssh-hosts", 201, json=body_for(keys))
    hid = made["id"]
    for body, status, words in (
            ({"name": "Bad Name"}, 400, "an SSH host's name is 1-32"),
            ({"port": 0}, 400, "the port is 1-65535"),
            ({"port": "22"}, 400, "port must be an integer"),
            ({"private_key": "nope"}, 400, "the private key cannot be read"),
            ({"private_key": None}, 400, "private_key is required"),
            ({"host_key": ""}, 400, "a pinned host needs its host key"),
            ({"host_key": "ssh-rsa %%%"}, 400, "the host key is not a known_hosts line"),
            ({"policy": "trust"}, 400, "policy is one of pinned, tofu"),
            ({"jump": "nowhere"}, 400, "there is no SSH host named 'nowhere'"),
            ({"secret": "x"}, 400, "unknown field(s): secret"),
            ({"name": "bastion"}, 409, "an SSH host named 'bastion' already exists")):
        answer = await call("POST", "/ssh-hosts", status, json={**body_for(keys, "second"),
                                                                 **body})
        assert words in answer["error"], (body, answer)
    for body, status, words in (
            ({"port": 0}, 400, "the port is 1-65535"),
            ({"address": ""}, 400, "the address is a host name"),
            ({"user": ""}, 400, "the account is a POSIX user name"),
            ({"host_key": ""}, 400, "a pinned host needs its host key"),
            ({"policy": "tofu", "host_key": "x y"}, 400, "the host key is not"),
            ({"private_key": "nope"}, 400, "the private key cannot be read"),
            ({"jump": "bastion"}, 409, "a loop"),
            ({"name": "renamed"}, 400, "unknown field(s): name")):
        answer = await call("PATCH", f"/ssh-hosts/{hid}", status, json=body)
        assert words in answer["error"], (body, answer)
    for body, words in (({}, "host_key is required"), ({"host_key": ""}, "needs its host key"),
                        ({"host_key": 5}, "host_key must be a string")):
        answer = await call("POST", f"/ssh-hosts/{hid}/pin", 400, json=body)
        assert words in answer["error"], (body, answer)
    await call("PATCH", "/ssh-hosts/99999", 404, json={"port": 22})
    await call("POST", "/ssh-hosts/99999/pin", 404, json={"host_key": keys.host_key})
    await call("DELETE", "/ssh-hosts/99999", 404)
    await call("GET", "/ssh-hosts/99999", 404)
    await call("POST", "/ssh-hosts", 400, data="not json",
               headers={"Content-Type": "application/json"})
    record = await client.server.app[SSH_HOSTS].get(hid)  # nothing changed
    assert (record.address, record.port, record.user, record.host_key, record.policy) == (
        "10.0.0.5", 2222, "deskgate", keys.host_key, "pinned")
    assert all(not keys.leaked(body) for body in call.bodies)


async def test_removal_is_refused_while_something_goes_through(client: Client, call: Caller,
                                                               keys: Keys) -> None:
    bastion = (await call("POST", "/ssh-hosts", 201, json=body_for(keys)))["id"]
    inner = (await call("POST", "/ssh-hosts", 201, json=body_for(keys, "inner",
                                                                 jump="bastion")))["id"]
    desktop = await client.server.app[CATALOG].add_desktop(CLI, "D", "static", host="127.0.0.1",
                                                           port=5901, via="inner")
    answer = await call("DELETE", f"/ssh-hosts/{inner}", 409)
    assert answer["error"] == "D go through inner; change them first"
    answer = await call("DELETE", f"/ssh-hosts/{bastion}", 409)
    assert answer["error"] == "inner go through bastion; change them first"
    await client.server.app[CATALOG].delete_desktop(CLI, desktop.id)
    await call("DELETE", f"/ssh-hosts/{inner}", 204)
    await call("DELETE", f"/ssh-hosts/{bastion}", 204)


async def test_concurrent_adds_of_one_name(client: Client, call: Caller, keys: Keys) -> None:
    answers = await asyncio.gather(*(
        client.post(f"{API}/ssh-hosts", json=body_for(keys, "twin"), headers=call.headers)
        for _ in range(6)))
    assert sorted(r.status for r in answers) == [201, 409, 409, 409, 409, 409]
    for resp in answers:
        assert not keys.leaked(await resp.text())
    assert [h.name for h, _ in await client.server.app[SSH_HOSTS].hosts()] == ["twin"]


async def test_read_only_tokens_read_and_non_admins_are_refused(client: Client, call: Caller,
                                                                keys: Keys) -> None:
    hid = (await call("POST", "/ssh-hosts", 201, json=body_for(keys)))["id"]
    reader = Caller(client, await token(client, read_only=True))
    listed = await reader("GET", "/ssh-hosts", 200)
    assert [h["name"] for h in listed["ssh_hosts"]] == ["bastion"]
    assert (await reader("GET", f"/ssh-hosts/{hid}", 200))["has_key"] is True
    for method, path, body in (("POST", "/ssh-hosts", body_for(keys, "other")),
                               ("PATCH", f"/ssh-hosts/{hid}", {"port": 22}),
                               ("POST", f"/ssh-hosts/{hid}/pin",
                                {"host_key": keys.other_host_key}),
                               ("DELETE", f"/ssh-hosts/{hid}", None)):
        answer = await reader(method, path, 403, json=body)
        assert answer["error"] == "this token is read-only"
    # alice is no admin: her signed-in session gets nothing, not even a read.
    csrf = await sign_in(client, "alice")
    alice = Caller(client, {"X-CSRF-Token": csrf})
    await alice("GET", "/ssh-hosts", 403)
    await alice("GET", f"/ssh-hosts/{hid}", 403)
    await alice("POST", "/ssh-hosts", 403, json=body_for(keys, "other"))
    await alice("DELETE", f"/ssh-hosts/{hid}", 403)
    async with aiohttp.ClientSession(base_url=client.make_url("/")) as nobody:
        resp = await nobody.get(f"{API}/ssh-hosts")
        assert resp.status == 401 and not keys.leaked(await resp.text())
    record = await client.server.app[SSH_HOSTS].get(hid)
    assert (record.port, record.host_key) == (2222, keys.host_key)
    assert [h.name for h, _ in await client.server.app[SSH_HOSTS].hosts()] == ["bastion"]
    for caller in (call, reader, alice):
        assert all(not keys.leaked(body) for body in caller.bodies)


async def test_the_openapi_document_lists_them(client: Client) -> None:
    document = await (await client.get(f"{API}/openapi.json")).json()
    for path, methods in PATHS.items():
        assert set(document["paths"][path]) == methods, path
    schema = document["components"]["schemas"]["SshHost"]
    assert set(schema["properties"]) == FIELDS and "private_key" not in schema["properties"]
    add = document["paths"][f"{API}/ssh-hosts"]["post"]["requestBody"]["content"]
    key = add["application/json"]["schema"]["properties"]["private_key"]
    assert key["writeOnly"] is True
