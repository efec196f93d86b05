"""One SSH connection per host, shared by everything that goes through it.

Desktops on a private network are reached through SSH (asyncssh): the gateway keeps one
connection per host, with keepalives, and makes it again after a drop; a host that is down or
whose key changed is a clear per-host state, and other hosts carry on.

What rides on a connection:

- ``local_path(host, dest)``: a private unix socket on this node that forwards each connection
  made to it through the host's SSH connection to ``dest`` (a TCP address as the host sees it,
  direct-tcpip, or a unix socket on the host, direct-streamlocal). The byte path connects to that
  socket like to any local desktop, so it does not change; every session to the same place
  shares the listener and the SSH connection (one channel each). A socket for processes of
  another account (``owner``: the RDP bridges' xfreerdp) is that account's, in a folder of its
  own; the gateway's own are in a folder only it may enter.
- ``run(host, argv)``: a command on the host (start or probe a desktop).

Host keys are pinned: given as a known_hosts line, or trusted on first use and then recorded
(``on_first_key``); a key that differs from the pinned one is refused (``HostKeyChanged``), and
the connection is not made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DesktopUnavailable
from ..model import Secret
from .sshlib import asyncssh

log = logging.getLogger("deskgate.ssh")

KEEPALIVE_SECONDS = 15.0  # a keepalive request this often; three unanswered end the connection
KEEPALIVE_MISSES = 3
CONNECT_TIMEOUT = 10.0
# AES-GCM first: OpenSSL does it (through cryptography) at several GB/s with AES-NI; the others
# stay allowed for hosts that offer only them.
ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
              "aes128-ctr", "aes256-ctr")
PINNED, TOFU = "pinned", "tofu"
HOST_KEY_POLICIES = (PINNED, TOFU)
# A host's health, one word (admin pages, metrics).
CONNECTED, CONNECTING, DOWN, KEY_CHANGED, IDLE = (
    "connected", "connecting", "down", "key_changed", "idle")


@dataclass(frozen=True)
class SshHost:
    """How to reach one host over SSH. ``host_key``: its known_hosts line(s) (pinned), or ''
    with policy TOFU (trusted on first use, then pinned). ``jump``: the host to go through."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    private_key: Secret = field(default_factory=lambda: Secret(""))
    host_key: str = ""
    policy: str = PINNED
    jump: SshHost | None = None

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


class SshError(DesktopUnavailable):
    """The host cannot be reached over SSH (down, refused, authentication); retry may help."""


class HostKeyChanged(SshError):
    """The host's key is not the pinned one: refused, and it stays refused until an admin pins
    the new key."""

    final = True

    def __init__(self, host: SshHost, offered: str) -> None:
        super().__init__(f"the SSH host key of {host.name} changed; the gateway refused to"
                         " connect (an administrator must confirm the new key)")
        self.host = host
        self.offered = offered  # the key the host offered, as a known_hosts line


@dataclass
class Health:
    state: str = IDLE
    reason: str = ""
    since: float = field(default_factory=time.time)
    connects: int = 0  # connections made (reconnects count)

    def move(self, state: str, reason: str = "") -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason, self.since = state, reason, time.time()


class _Pinning(asyncssh.SSHClient):
    """Records the key the server offered, so that a refusal can say which key it was."""

    def __init__(self) -> None:
        self.offered: str = ""

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.offered = key.export_public_key("openssh").decode().strip()
        return False  # not trusted here: asyncssh checks it against known_hosts first


def _known_hosts_line(host: SshHost, key_line: str) -> str:
    """``key_line`` ("ssh-ed25519 AAAA...") as a known_hosts entry for ``host``."""
    where = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    return f"{where} {key_line}"


@dataclass
class _Link:
    conn: asyncssh.SSHClientConnection
    # by (dest_path, dest_host, dest_port, owner)
    listeners: dict[tuple[str, str, int, int | None], tuple[Path, asyncssh.SSHListener]] = field(
        default_factory=dict)


class SshConnections:
    """Every SSH connection of this node, one per host name (see the module's docstring)."""

    def __init__(self, runtime_dir: Path, *,
                 on_first_key: Callable[[SshHost, str], Awaitable[None]] | None = None,
                 on_key_changed: Callable[[SshHost, str], Awaitable[None]] | None = None,
                 keepalive: float = KEEPALIVE_SECONDS,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._dir = runtime_dir
        self.on_first_key = on_first_key
        self.on_key_changed = on_key_changed
        self._keepalive = keepalive
        self._timeout = connect_timeout
        self._links: dict[str, _Link] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._forward_locks: dict[str, asyncio.Lock] = {}
        self._serial = itertools.count(1)
        self.health: dict[str, Health] = {}
        self._closed = False

    # ---- connections ----------------------------------------------------------------------------
    async def connection(self, host: SshHost) -> asyncssh.SSHClientConnection:
        """The host's live connection, made (through its jump host) when there is none."""
        link = self._links.get(host.name)
        if link is not None and not _closing(link.conn):
            return link.conn
        async with self._locks.setdefault(host.name, asyncio.Lock()):
            link = self._links.get(host.name)
            if link is not None and not _closing(link.conn):
                return link.conn
            if link is not None:
                self._forget(host.name)
            conn = await self._connect(host)
            self._links[host.name] = _Link(conn)
            return conn

    async def _connect(self, host: SshHost) -> asyncssh.SSHClientConnection:
        if self._closed:
            raise SshError("the gateway is shutting down")
        health = self.health.setdefault(host.name, Health())
        health.move(CONNECTING)
        tunnel = await self.connection(host.jump) if host.jump is not None else None
        pinning = _Pinning()
        known = asyncssh.import_known_hosts(known_hosts_text(host))
        trust_first = host.policy == TOFU and not host.host_key
        try:
            key = asyncssh.import_private_key(host.private_key.reveal())
        except (asyncssh.KeyImportError, ValueError) as exc:
            health.move(DOWN, "its private key cannot be read")
            raise SshError(f"the SSH key for {host.name} cannot be read") from exc
        options: dict[str, Any] = {
            "port": host.port, "username": host.user, "client_keys": [key],
            "known_hosts": None if trust_first else known,
            "keepalive_interval": self._keepalive, "keepalive_count_max": KEEPALIVE_MISSES,
            "connect_timeout": self._timeout, "login_timeout": self._timeout,
            "agent_path": None, "config": (), "preferred_auth": "publickey",
            "encryption_algs": ENCRYPTION, "compression_algs": None,
        }
        if tunnel is not None:
            options["tunnel"] = tunnel
        try:
            conn, _ = await asyncssh.create_connection(lambda: pinning, host.address, **options)
        except asyncssh.HostKeyNotVerifiable:
            health.move(KEY_CHANGED, "the host offered a key that is not the pinned one")
            log.warning("[ssh=%s] host key changed: refused (offered %s)", host.name,
                        pinning.offered or "?")
            if self.on_key_changed is not None:
                await self.on_key_changed(host, pinning.offered)
            raise HostKeyChanged(host, pinning.offered) from None
        except asyncssh.PermissionDenied:
            health.move(DOWN, "the host refused the gateway's key")
            raise SshError(f"{host.name} refused the gateway's SSH key") from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            why = ("did not answer in time" if isinstance(exc, TimeoutError)
                   else str(exc) or type(exc).__name__)
            health.move(DOWN, why)
            log.warning("[ssh=%s] cannot connect to %s: %s", host.name, host.where, why)
            raise SshError(f"{host.name} cannot be reached over SSH") from None
        if trust_first:
            offered = conn.get_server_host_key()
            if offered is not None and self.on_first_key is not None:
                line = _known_hosts_line(host, offered.export_public_key("openssh").decode().strip())
                await self.on_first_key(host, line)
        health.connects += 1
        health.move(CONNECTED)
        log.info("[ssh=%s] connected to %s", host.name, host.where)
        asyncio.get_running_loop().create_task(self._watch(host.name, conn))
        return conn

    async def _watch(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        """Mark the host down when its connection ends (keepalives unanswered, sshd gone)."""
        with contextlib.suppress(Exception):
            await conn.wait_closed()
        link = self._links.get(name)
        if link is not None and link.conn is conn:
            self._forget(name)
            if not self._closed:
                self.health.setdefault(name, Health()).move(DOWN, "the SSH connection ended")
                log.warning("[ssh=%s] the connection ended", name)

    def _forget(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is None:
            return
        for path, listener in link.listeners.values():
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        link.conn.close()

    # ---- what rides on them -------------------------------------------------------------------
    async def local_path(self, host: SshHost, dest_host: str = "", dest_port: int = 0,
                         dest_path: str = "", *, owner: int | None = None) -> Path:
        """A private unix socket here that forwards to ``dest_host:dest_port`` (as the host
        sees it) or to the unix socket ``dest_path`` on the host, through its connection;
        ``owner``: the uid whose processes connect to it (None: this process)."""
        key = (dest_path, dest_host, dest_port, owner)
        # One listener per destination, also for callers that come at the same time.
        async with self._forward_locks.setdefault(host.name, asyncio.Lock()):
            conn = await self.connection(host)
            link = self._links[host.name]
            found = link.listeners.get(key)
            if found is not None:
                return found[0]
            folder = self._folder(owner)
            # Unique in this process (a closed listener's name is never given again) and
            # beside another process's listeners in the same folder.
            path = folder / f"{host.name}-{os.getpid()}-{next(self._serial)}.sock"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if dest_path:
                listener = await conn.forward_local_path(str(path), dest_path)
            else:
                listener = await conn.forward_local_path_to_port(str(path), dest_host, dest_port)
            path.chmod(0o600)
            if owner is not None:
                os.chown(path, owner, -1)
            link.listeners[key] = (path, listener)
            return path

    def _folder(self, owner: int | None) -> Path:
        """Where the sockets for ``owner`` are made: ``ssh`` (the gateway's), ``ssh-<uid>``
        (that account's), each 0700."""
        if owner is None:
            folder = self._dir / "ssh"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return folder
        folder = self._dir / f"ssh-{owner}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(folder, owner, pwd.getpwuid(owner).pw_gid)
        folder.chmod(0o700)
        return folder

    async def close_path(self, host: SshHost, dest_host: str = "", dest_port: int = 0,
                         dest_path: str = "", *, owner: int | None = None) -> None:
        """Remove the local socket ``local_path`` made for that destination (a desktop that
        stopped): connections to it are refused from now on, not forwarded to nothing."""
        link = self._links.get(host.name)
        found = (link.listeners.pop((dest_path, dest_host, dest_port, owner), None) if link
                 else None)
        if found is not None:
            path, listener = found
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def run(self, host: SshHost, argv: list[str], *, timeout: float = 30.0,
                  stdin: str | None = None) -> asyncssh.SSHCompletedProcess:
        """``argv`` on the host (quoted for its shell), its exit status and output."""
        conn = await self.connection(host)
        try:
            return await asyncio.wait_for(
                conn.run(shlex.join(argv), input=stdin, check=False), timeout)
        except TimeoutError:
            raise SshError(f"a command on {host.name} did not finish in {timeout:g} s") from None
        except (OSError, asyncssh.Error) as exc:
            raise SshError(f"{host.name}: {exc}") from None

    async def drop(self, name: str) -> None:
        """Close the host's connection (its settings changed): the next use makes it again."""
        link = self._links.get(name)
        self._forget(name)
        self.health.pop(name, None)
        if link is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.conn.wait_closed(), 5)

    def connected(self, name: str) -> bool:
        link = self._links.get(name)
        return link is not None and not _closing(link.conn)

    async def close(self) -> None:
        self._closed = True
        conns = [link.conn for link in self._links.values()]
        for name in list(self._links):
            self._forget(name)
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)


def _closing(conn: asyncssh.SSHClientConnection) -> bool:
    return bool(conn.is_closed())


def known_hosts_text(host: SshHost) -> str:
    """The host's pinned key(s) as known_hosts lines; a bare key ("ssh-ed25519 AAAA...") is
    given the host's address and port."""
    lines = []
    for line in host.host_key.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        bare = first.startswith(("ssh-", "ecdsa-", "sk-"))
        lines.append(_known_hosts_line(host, line) if bare else line)
    return "\n".join(lines) + "\n" if lines else ""
