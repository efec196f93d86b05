"""An SSH host as the admin sees it: where it is, its jump host, its pinned key in short, and
its health; the JSON that the REST API answers and the SSH hosts page's event stream sends
(``GET /admin/ssh/events``, static/ssh_hosts.js). Shared by admin_ssh.py, admin_pages.py (the
desktops page's box) and api_ssh.py.

Never a secret: the private key stays encrypted in the store; only ``has_key`` says it is there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from ..cases.ssh_hosts import SshHosts
from ..errors import BadRequest
from ..model import SshHostRecord
from ..ssh.connections import CONNECTED, CONNECTING, DOWN, IDLE, KEY_CHANGED, Health

SSH_STATES = (CONNECTED, CONNECTING, DOWN, KEY_CHANGED, IDLE)
STATE_WORDS = {CONNECTED: "connected", CONNECTING: "connecting…", DOWN: "down",
               KEY_CHANGED: "host key changed", IDLE: "not connected yet"}


def key_summary(host_key: str) -> tuple[str, str]:
    """The pinned key's type and its OpenSSH fingerprint (``SHA256:…``, as ``ssh-keygen -l``
    prints it), from its first known_hosts line; ('', '') while none is pinned."""
    for line in host_key.splitlines():
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        # "hosts type key [comment]" or a bare "type key [comment]"
        if not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
            parts = parts[1:]
        kind, blob = (parts + ["", ""])[:2]
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            return kind, ""
        digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
        return kind, f"SHA256:{digest}"
    return "", ""


def host_json(host: SshHostRecord, health: Health | None, jump: str | None) -> dict[str, Any]:
    """One host, field by field. ``health`` None: this node has not tried to reach it yet."""
    now = health or Health()
    kind, fingerprint = key_summary(host.host_key)
    return {"id": host.id, "name": host.name, "address": host.address, "port": host.port,
            "user": host.user, "where": f"{host.user}@{host.address}:{host.port}",
            "jump_id": host.jump_id, "jump": jump, "policy": host.policy,
            "host_key": host.host_key, "host_key_type": kind,
            "host_key_fingerprint": fingerprint, "has_key": True,
            "state": now.state, "state_text": STATE_WORDS.get(now.state, now.state),
            "reason": now.reason, "since": None if health is None else health.since,
            "connects": now.connects, "created_at": host.created_at}


async def hosts_json(hosts: SshHosts) -> list[dict[str, Any]]:
    """Every host with its health now, by name."""
    seen = hosts.connections.health if hosts.connections is not None else {}
    rows = await hosts.hosts()
    names = {h.id: h.name for h, _ in rows}
    return [host_json(h, seen.get(h.name), names.get(h.jump_id) if h.jump_id else None)
            for h, _ in rows]


async def one_json(hosts: SshHosts, ref: int | str) -> dict[str, Any]:
    record = await hosts.get(ref)
    seen = hosts.connections.health if hosts.connections is not None else {}
    jump = (await hosts.get(record.jump_id)).name if record.jump_id is not None else None
    return host_json(record, seen.get(record.name), jump)


async def jump_name(hosts: SshHosts, raw: str | None) -> str | None:
    """The jump host an admin chose, by name: none for '', a 400 for one that does not exist
    (the use case answers 404, which would name the wrong thing: the host asked about exists)."""
    if not raw:
        return None
    names = {h.name for h, _ in await hosts.hosts()}
    if raw not in names:
        raise BadRequest(f"there is no SSH host named {raw[:64]!r} to go through")
    return raw
