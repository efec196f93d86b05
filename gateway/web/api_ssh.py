"""The REST API's SSH hosts: declared in the one operation table (``api.API``), served by the
same gated sub-application, documented in the same OpenAPI document. A private key goes in
(write-only) and never comes out: an answer says ``has_key: true`` and nothing more."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..keys import SSH_HOSTS
from ..ssh.connections import HOST_KEY_POLICIES, PINNED
from .api import API, PREFIX, _admin, _body, _id, _typed
from .openapi import BOOLEAN, INTEGER, STRING, TIMESTAMP, array, nullable, obj, ref
from .ssh_views import SSH_STATES, hosts_json, jump_name, one_json

POLICY = {"type": "string", "enum": list(HOST_KEY_POLICIES),
          "description": "pinned: host_key is the host's key; tofu: trusted on first use (the"
                         " key it shows at the first connection is recorded and pinned)"}
SSH_HOST = obj(
    ("id", "name", "address", "port", "user", "where", "jump_id", "jump", "policy", "host_key",
     "host_key_type", "host_key_fingerprint", "has_key", "state", "state_text", "reason",
     "since", "connects", "created_at"),
    id=INTEGER, name=STRING, address=STRING, port=INTEGER, user=STRING,
    where={**STRING, "description": "user@address:port"},
    jump_id={**nullable(INTEGER), "description": "the SSH host it is reached through"},
    jump=nullable(STRING), policy=POLICY,
    host_key={**STRING, "description": "the pinned known_hosts line(s); '' while a first-use"
                                       " key is awaited"},
    host_key_type=STRING,
    host_key_fingerprint={**STRING, "description": "SHA256:… of the pinned key (ssh-keygen -l)"},
    has_key={**BOOLEAN, "description": "the gateway's private key for it is stored (encrypted;"
                                       " never in an answer)"},
    state={"type": "string", "enum": list(SSH_STATES),
           "description": "this node's connection: connected, connecting, down, key_changed"
                          " (refused until a new key is pinned) or idle (not tried yet)"},
    state_text=STRING, reason={**STRING, "description": "why it is down or refused"},
    since={**nullable(TIMESTAMP), "description": "in this state since; null if never tried"},
    connects={**INTEGER, "description": "connections made (reconnects count)"},
    created_at=TIMESTAMP)
PRIVATE_KEY = {**STRING, "writeOnly": True,
               "description": "the gateway's private key for the host (OpenSSH or PEM, no"
                              " passphrase); stored encrypted, never answered"}
ADD_BODY = {"name": STRING, "address": STRING, "port": {**INTEGER, "default": 22},
            "user": STRING, "private_key": PRIVATE_KEY,
            "host_key": {**STRING, "description": "a known_hosts line or 'ssh-ed25519 AAAA…';"
                                                  " required when pinned"},
            "policy": {**POLICY, "default": PINNED},
            "jump": {**STRING, "description": "the name of the SSH host to go through"}}
CHANGE_BODY = {"address": STRING, "port": INTEGER, "user": STRING, "private_key": PRIVATE_KEY,
               "host_key": STRING, "policy": POLICY,
               "jump": {**nullable(STRING), "description": "another SSH host's name; null or ''"
                                                           " to reach it directly"}}
API.schemas.update({"SshHost": SSH_HOST})


def _policy(body: dict[str, Any]) -> str | None:
    policy: str | None = _typed(body, "policy", str)
    if policy is not None and policy not in HOST_KEY_POLICIES:
        raise BadRequest(f"policy is one of {', '.join(HOST_KEY_POLICIES)}")
    return policy


@API.operation("GET", f"{PREFIX}/ssh-hosts", "SSH hosts with their health (never a private key)",
               tag="ssh", response=obj(("ssh_hosts",), ssh_hosts=array(ref("SshHost"))))
async def list_ssh_hosts(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ssh_hosts": await hosts_json(request.config_dict[SSH_HOSTS])})


@API.operation("POST", f"{PREFIX}/ssh-hosts",
               "Add an SSH host (a jump host); its private key is stored encrypted", tag="ssh",
               status=201, request=obj(("name", "address", "user", "private_key"), **ADD_BODY),
               response=ref("SshHost"))
async def create_ssh_host(request: web.Request) -> web.StreamResponse:
    body = await _body(request, set(ADD_BODY))
    hosts = request.config_dict[SSH_HOSTS]
    port = _typed(body, "port", int)
    record = await hosts.add(
        _admin(request), name=_typed(body, "name", str, required=True),
        address=_typed(body, "address", str, required=True),
        user=_typed(body, "user", str, required=True),
        private_key=_typed(body, "private_key", str, required=True),
        port=22 if port is None else port, host_key=_typed(body, "host_key", str) or "",
        policy=_policy(body) or PINNED, jump=await jump_name(hosts, _typed(body, "jump", str)))
    return web.json_response(await one_json(hosts, record.id), status=201)


@API.operation("GET", f"{PREFIX}/ssh-hosts/{{id}}", "One SSH host with its health", tag="ssh",
               response=ref("SshHost"))
async def get_ssh_host(request: web.Request) -> web.StreamResponse:
    return web.json_response(await one_json(request.config_dict[SSH_HOSTS], _id(request)))


@API.operation("PATCH", f"{PREFIX}/ssh-hosts/{{id}}",
               "Change an SSH host (only the fields given); its connection is made again when"
               " how it is reached changed; policy tofu forgets a pinned key given no other",
               tag="ssh", request=obj((), **CHANGE_BODY), response=ref("SshHost"))
async def update_ssh_host(request: web.Request) -> web.StreamResponse:
    body = await _body(request, set(CHANGE_BODY))
    hosts = request.config_dict[SSH_HOSTS]
    host_id = _id(request)
    await hosts.get(host_id)  # an unknown host is a 404, before its fields are looked at
    jump = _typed(body, "jump", str)
    await hosts.update(
        _admin(request), host_id, address=_typed(body, "address", str),
        port=_typed(body, "port", int), user=_typed(body, "user", str),
        private_key=_typed(body, "private_key", str), host_key=_typed(body, "host_key", str),
        policy=_policy(body), jump=await jump_name(hosts, jump),
        no_jump="jump" in body and not jump)
    return web.json_response(await one_json(hosts, host_id))


@API.operation("DELETE", f"{PREFIX}/ssh-hosts/{{id}}",
               "Remove an SSH host; refused (409) while a desktop or host goes through it",
               tag="ssh")
async def delete_ssh_host(request: web.Request) -> web.StreamResponse:
    await request.config_dict[SSH_HOSTS].remove(_admin(request), _id(request))
    return web.Response(status=204)


@API.operation("POST", f"{PREFIX}/ssh-hosts/{{id}}/pin",
               "Pin a host's (new) key after checking it: a changed key is refused until then",
               tag="ssh", request=obj(("host_key",), host_key=STRING), response=ref("SshHost"))
async def pin_ssh_host(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"host_key"})
    hosts = request.config_dict[SSH_HOSTS]
    host_id = _id(request)
    await hosts.pin(_admin(request), host_id, _typed(body, "host_key", str, required=True))
    return web.json_response(await one_json(hosts, host_id))
