"""Hosts the gateway reaches over SSH: desktop hosts, jump hosts, remote hypervisors.

An admin adds a host with its address, account, the gateway's private key for it (stored
encrypted) and its host key: pinned (a known_hosts line) or trusted on first use (recorded at
the first connection, then pinned). A key that changes is refused and audited; the admin confirms
the new one with ``pin``. A host may be reached through another (its jump host), never in a loop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import replace

from ..audit import Audit, AuditKind
from ..crypto import SecretBox
from ..errors import BadRequest, Conflict, GatewayError, NotFound
from ..model import Desktop, Endpoint, Secret, SshHostRecord
from ..ssh.connections import (
    HOST_KEY_POLICIES,
    PINNED,
    TOFU,
    Health,
    SshConnections,
    SshError,
    SshHost,
    known_hosts_text,
)
from ..ssh.sshlib import asyncssh
from ..store import Store
from .actor import Actor

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")  # also a file name (its forwards' sockets)
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")  # a host name, IPv4 or IPv6 address


def _check_key(private_key: str) -> None:
    try:
        asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise BadRequest("the private key cannot be read (an OpenSSH or PEM private key,"
                         " without a passphrase)") from None


def _check_host_key(record_like: SshHost) -> None:
    """Each line: hosts, key type, key (a known_hosts line; no markers, no hashed names needed)
    whose key is a public key asyncssh reads."""
    text = known_hosts_text(record_like)
    if not text:
        raise BadRequest("a pinned host needs its host key (a known_hosts line, or the key"
                         " itself: ssh-ed25519 AAAA...)")
    for line in text.splitlines():
        parts = line.split()
        try:
            if len(parts) < 3 or line.startswith("@"):
                raise ValueError(line)
            asyncssh.import_public_key(f"{parts[1]} {parts[2]}")
            asyncssh.import_known_hosts(line + "\n")
        except (ValueError, asyncssh.KeyImportError):
            raise BadRequest("the host key is not a known_hosts line or a public key"
                             " (ssh-ed25519 AAAA...)") from None


def _host_keys(address: str, port: int, host_key: str) -> set[tuple[str, ...]]:
    """The keys a connection is checked against: (hosts, type, key) of each known_hosts line,
    without comments (a bare key stands for the host's address and port)."""
    text = known_hosts_text(SshHost("", address, port, host_key=host_key))
    return {tuple(line.split()[:3]) for line in text.splitlines()}


def _key_text(host_key: str) -> str:
    """A pinned key for the audit: its type and fingerprint (``SHA256:…``, as ``ssh-keygen -l``
    prints it), from its first line."""
    for line in host_key.splitlines():
        parts = line.split()
        for kind, blob in zip(parts, parts[1:], strict=False):
            if kind.startswith(("ssh-", "ecdsa-", "sk-")):
                try:
                    key = asyncssh.import_public_key(f"{kind} {blob}")
                except (asyncssh.KeyImportError, ValueError):
                    return kind
                return f"{kind} {key.get_fingerprint('sha256')}"
    return "?"


class SshHosts:
    def __init__(self, store: Store, box: SecretBox, audit: Audit,
                 connections: SshConnections | None = None, *,
                 hypervisors: Mapping[str, str] | None = None) -> None:
        self._store = store
        self._box = box
        self._audit = audit
        self.connections = connections
        # The configured hypervisors reached through an SSH host: name -> the host's name.
        self._hypervisors = dict(hypervisors or {})

    async def hosts(self) -> list[tuple[SshHostRecord, Health]]:
        health = self.connections.health if self.connections is not None else {}
        return [(h, health.get(h.name, Health())) for h in await self._store.list_ssh_hosts()]

    async def get(self, ref: int | str) -> SshHostRecord:
        host = (await self._store.get_ssh_host(ref) if isinstance(ref, int)
                else await self._store.get_ssh_host_by_name(ref))
        if host is None:
            raise NotFound("no such SSH host")
        return host

    async def add(self, actor: Actor, *, name: str, address: str, user: str, private_key: str,
                  port: int = 22, host_key: str = "", policy: str = PINNED,
                  jump: str | None = None) -> SshHostRecord:
        actor.require_admin()
        jump_id = (await self.get(jump)).id if jump else None
        self._check(name, address, port, user, policy)
        _check_key(private_key)
        if host_key or policy == PINNED:
            _check_host_key(SshHost(name, address, port, user, host_key=host_key))
        record = await self._store.create_ssh_host(
            name=name, address=address, port=port, user=user,
            key_enc=self._box.encrypt(private_key), host_key=host_key.strip(), policy=policy,
            jump_id=jump_id, created_at=time.time())
        await self._audit.record(AuditKind.SSH, client_ip=actor.client_ip, detail=actor.by(
            f"SSH host {name} added ({user}@{address}:{port}, host key {policy}"
            f"{', through ' + jump if jump else ''})"))
        return record

    async def update(self, actor: Actor, host_id: int, *, address: str | None = None,
                     port: int | None = None, user: str | None = None,
                     private_key: str | None = None, host_key: str | None = None,
                     policy: str | None = None, jump: str | None = None,
                     no_jump: bool = False) -> SshHostRecord:
        """Change what is given (None keeps a field). The host's connection, and those of the
        hosts reached through it, are made again only when how it is reached changed: its
        address, port, account, private key (another key, not the same one again), jump host
        or the keys it is checked against; a change of policy alone keeps them.

        Switching a pinned host to trust on first use forgets its pinned key (unless a key
        is given with it): the next connection records the key the host shows, which is what
        an admin means by it (a host that was reinstalled and shows a new key)."""
        actor.require_admin()
        old = await self.get(host_id)
        fields: dict[str, object] = {}
        # None keeps a field; anything given is checked (an empty address or port 0 is refused).
        new = {"address": old.address if address is None else address,
               "port": old.port if port is None else port,
               "user": old.user if user is None else user,
               "policy": old.policy if policy is None else policy}
        self._check(old.name, str(new["address"]), int(str(new["port"])), str(new["user"]),
                    str(new["policy"]))
        for key, column in (("address", "address"), ("port", "port"), ("user", "user_name"),
                            ("policy", "policy")):
            if new[key] != getattr(old, key):
                fields[column] = new[key]
        if private_key is not None:
            _check_key(private_key)
            if not await self._same_key(old.id, private_key):
                fields["key_enc"] = self._box.encrypt(private_key)
        if host_key is None and new["policy"] == TOFU and old.policy != TOFU:
            host_key = ""  # trusted on first use from now on: learnt afresh
        forgotten = old.host_key if host_key is not None and not host_key.strip() else ""
        if host_key is not None:
            if host_key.strip():
                _check_host_key(SshHost(old.name, str(new["address"]), int(str(new["port"])),
                                        host_key=host_key))
            if _host_keys(old.address, old.port, host_key) != _host_keys(
                    old.address, old.port, old.host_key):
                fields["host_key"] = host_key.strip()
        if new["policy"] == PINNED and not (old.host_key if host_key is None else host_key.strip()):
            raise BadRequest("a pinned host needs its host key (a known_hosts line, or the key"
                             " itself: ssh-ed25519 AAAA...)")
        if jump:
            target = await self.get(jump)
            await self._no_loop(old.id, target)
            if target.id != old.jump_id:
                fields["jump_id"] = target.id
        elif no_jump and old.jump_id is not None:
            fields["jump_id"] = None
        record = await self._store.update_ssh_host(old.id, **fields)
        if set(fields) - {"policy"} and self.connections is not None:
            # Made again with the new settings (their sessions end); else kept.
            for name in [old.name, *await self._through(old.id)]:
                await self.connections.drop(name)
        detail = f"SSH host {old.name} changed: {', '.join(sorted(fields)) or 'nothing'}"
        if forgotten:
            detail += (f"; its pinned key ({_key_text(forgotten)}) is forgotten: the next"
                       " connection records the key the host shows")
        await self._audit.record(AuditKind.SSH, client_ip=actor.client_ip,
                                 detail=actor.by(detail))
        return record

    async def _same_key(self, host_id: int, private_key: str) -> bool:
        """Whether ``private_key`` is the key already stored for the host (its public half)."""
        enc = await self._store.get_ssh_host_key_enc(host_id)
        if enc is None:
            return False
        try:
            stored = asyncssh.import_private_key(self._box.decrypt(enc).reveal())
        except (asyncssh.KeyImportError, ValueError, TypeError):
            return False
        given = asyncssh.import_private_key(private_key)
        return bool(stored.public_data == given.public_data)

    async def _through(self, host_id: int) -> list[str]:
        """The hosts reached through this one, at any depth (their connections ride on its)."""
        hosts = await self._store.list_ssh_hosts()
        out, todo = [], [host_id]
        while todo:
            at = todo.pop()
            for h in hosts:
                if h.jump_id == at and h.name not in out:
                    out.append(h.name)
                    todo.append(h.id)
        return out

    async def pin(self, actor: Actor, host_id: int, host_key: str) -> SshHostRecord:
        """An admin confirms a host's (new) key: it is pinned from now on."""
        return await self.update(actor, host_id, host_key=host_key, policy=PINNED)

    async def remove(self, actor: Actor, host_id: int) -> None:
        actor.require_admin()
        host = await self.get(host_id)
        configured = sorted(hv for hv, via in self._hypervisors.items() if via == host.name)
        if configured:
            raise Conflict(f"hypervisor {', '.join(configured)} (in the configuration) goes"
                           f" through {host.name}; change the configuration first")
        # The check and the deletion are one step in the store: a desktop added through the
        # host meanwhile either stops this or is refused.
        users = await self._store.delete_ssh_host(host.id)
        if users is None:
            raise NotFound("no such SSH host")  # removed by someone else meanwhile
        if users:
            raise Conflict(f"{', '.join(users)} go through {host.name}; change them first")
        if self.connections is not None:
            await self.connections.drop(host.name)
        await self._audit.record(AuditKind.SSH, client_ip=actor.client_ip,
                                 detail=actor.by(f"SSH host {host.name} removed"))

    async def spec(self, ref: int | str, _seen: frozenset[int] = frozenset()) -> SshHost:
        """How to reach the host (its key decrypted, its jump hosts' too)."""
        record = await self.get(ref)
        if record.id in _seen:
            raise Conflict(f"the SSH host {record.name} is reached through itself")
        enc = await self._store.get_ssh_host_key_enc(record.id)
        assert enc is not None
        jump = (await self.spec(record.jump_id, _seen | {record.id})
                if record.jump_id is not None else None)
        return SshHost(record.name, record.address, record.port, record.user,
                       Secret(self._box.decrypt(enc).reveal()), record.host_key, record.policy,
                       jump)

    async def reach(self, desktop: Desktop, endpoint: Endpoint, *,
                    owner: int | None = None) -> Endpoint:
        """The endpoint as this node reaches it: a desktop behind an SSH host (its ``via``
        option) through a private unix socket forwarding over that host's connection, for this
        process or for the processes of account ``owner`` (an RDP bridge's)."""
        via = desktop.option("via")
        if not via or desktop.provider == "ssh":  # that provider forwards its own socket
            return endpoint
        if self.connections is None:
            raise SshError("this gateway process does not reach desktops over SSH")
        try:
            host = await self.spec(via)
        except NotFound:
            raise SshError(f"the SSH host {via} of this desktop is gone") from None
        if endpoint.unix_path:
            path = await self.connections.local_path(host, dest_path=endpoint.unix_path,
                                                     owner=owner)
        else:
            path = await self.connections.local_path(host, endpoint.host, endpoint.port,
                                                     owner=owner)
        return replace(endpoint, host="", port=0, unix_path=str(path))

    def lost(self, desktop: Desktop, exc: GatewayError) -> GatewayError:
        """A desktop's connection ended: when its SSH host's connection is gone too, that is
        what the person is told (and they may retry); otherwise the desktop closed it."""
        via = desktop.option("via")
        if via and self.connections is not None and not self.connections.connected(via):
            return SshError(f"the connection to {via}, the SSH host of this desktop, was lost")
        return exc

    async def used_by(self, name: str) -> list[str]:
        """The desktops and hosts that go through SSH host ``name``."""
        record = await self.get(name)
        hosts = [h.name for h in await self._store.list_ssh_hosts() if h.jump_id == record.id]
        desktops = [d.name for d in await self._store.list_desktops() if d.option("via") == name]
        return desktops + hosts

    # ---- what the connections report --------------------------------------------------------
    async def first_key(self, host: SshHost, line: str) -> None:
        """A host trusted on first use showed its key: it is pinned (once)."""
        record = await self._store.get_ssh_host_by_name(host.name)
        if record is not None and await self._store.record_ssh_host_key(record.id, line):
            await self._audit.record(AuditKind.SSH_HOST_KEY,
                                     detail=f"SSH host {host.name}: key trusted on first use"
                                            f" and pinned: {line.split()[-2]} {line.split()[-1][:24]}…")

    async def key_changed(self, host: SshHost, offered: str) -> None:
        await self._audit.record(AuditKind.SSH_HOST_KEY,
                                 detail=f"SSH host {host.name}: host key changed, connection"
                                        f" refused (offered {offered[:40] or 'unknown'}…)")

    # ---- checks -------------------------------------------------------------------------------
    @staticmethod
    def _check(name: str, address: str, port: int, user: str, policy: str) -> None:
        if not NAME_RE.match(name):
            raise BadRequest("an SSH host's name is 1-32 of a-z, 0-9, '.', '_', '-'")
        if not ADDRESS_RE.match(address):
            raise BadRequest("the address is a host name or an IP address")
        if not 0 < port < 65536:
            raise BadRequest("the port is 1-65535")
        if not USER_RE.match(user):
            raise BadRequest("the account is a POSIX user name")
        if policy not in HOST_KEY_POLICIES:
            raise BadRequest(f"the host key policy is one of {', '.join(HOST_KEY_POLICIES)}")

    async def _no_loop(self, host_id: int, jump: SshHostRecord) -> None:
        seen, at = {host_id}, jump
        while True:
            if at.id in seen:
                raise Conflict("that jump host is reached through this host: a loop")
            seen.add(at.id)
            if at.jump_id is None:
                return
            at = await self.get(at.jump_id)
