"""The ``rdp`` protocol adapter (see ``gateway.protocols``): what the broker does for an RDP
desktop at each step of a connection.

- before the ticket: resolve the server and account (a per-user desktop without the person's
  account answers CredentialsRequired before anything is recorded), then start the bridge at the
  browser's size, so that a wrong password, an unreachable server or a refused certificate is the
  answer to the click itself;
- at admission: acquire that bridge (resumed after a grace stop) and hand over its key;
- for an admin's watch: attach to the watched person's running bridge, never start one;
- at the end: release the bridge (it stops after its grace period unless reconnected).

A desktop behind a jump host (its ``via`` option) is reached through a socket that forwards over
that host's SSH connection, made for the bridges' account (``reach``); its target names that
socket, so a bridge started before the route changed is not reused after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from gateway.audit import Audit
from gateway.crypto import SecretBox
from gateway.errors import DesktopUnavailable
from gateway.model import Desktop, Endpoint, Reach, User
from gateway.rdp.accounts import (
    CheckAccess,
    OwnCredentialsRefused,
    RdpAccounts,
    bridge_key,
    per_user,
)
from gateway.rdp.bridges import RdpBridges
from gateway.rdp.errors import CredentialsRefused
from gateway.rdp.target import RdpTarget
from gateway.store import Store


class RdpProtocol:
    """RDP desktops through this node's bridges (``bridges`` None: this gateway bridges none)."""

    where = "rdp bridge: "  # prefixes a failed start in the audit

    def __init__(self, bridges: RdpBridges | None, store: Store, box: SecretBox, audit: Audit, *,
                 store_credentials: bool, check_access: CheckAccess,
                 reach: Reach | None = None) -> None:
        self.bridges = bridges
        self._reach = reach
        self.accounts = RdpAccounts(store, box, audit, store_credentials=store_credentials,
                                    check_access=check_access, running=self.running)

    def running(self, key: str) -> bool:
        return self.bridges is not None and self.bridges.running(key)

    def _bridges(self) -> RdpBridges:
        if self.bridges is None:
            raise DesktopUnavailable("this gateway does not bridge RDP")
        return self.bridges

    async def _routed(self, target: RdpTarget, desktop: Desktop,
                      bridges: RdpBridges) -> RdpTarget:
        """The target as the bridges reach it: behind a jump host, through its socket."""
        if not desktop.option("via"):
            return target
        if self._reach is None:
            raise DesktopUnavailable("this gateway does not reach desktops over SSH")
        endpoint = await self._reach(desktop, Endpoint(host=target.host, port=target.port),
                                     owner=await bridges.account())
        return replace(target, unix_path=endpoint.unix_path or "")

    async def prepare(self, user: User, desktop: Desktop
                      ) -> Callable[[int, int], Awaitable[None]] | None:
        target = await self.accounts.target(desktop, user.id)

        async def start(width: int, height: int) -> None:
            bridges = self._bridges()
            key = bridge_key(user.id, desktop.id)
            await bridges.acquire(key, await self._routed(target, desktop, bridges), width,
                                  height)
            self.accounts.signed_in(user.id, desktop.id)
            # The ticket's holder acquires it again at admission; until then (and if the
            # ticket is never used) the bridge waits for it (at least the ticket's lifetime).
            bridges.release(key, handover=True)

        return start

    async def refused(self, exc: DesktopUnavailable, user: User, desktop: Desktop,
                      client_ip: str, session_id: str) -> DesktopUnavailable:
        if isinstance(exc, CredentialsRefused) and per_user(desktop):
            await self.accounts.refused(user, desktop, client_ip)
            return OwnCredentialsRefused(session_id=session_id)
        return exc.of_attempt(session_id)  # a retry continues this attempt

    async def admit(self, user: User, desktop: Desktop) -> tuple[Endpoint, str | None]:
        # The bridge started at connect; this holds it (and resumes it after a grace stop).
        key = bridge_key(user.id, desktop.id)
        bridges = self._bridges()
        target = await self._routed(await self.accounts.target(desktop, user.id), desktop,
                                    bridges)
        return await bridges.acquire(key, target), key

    async def watch(self, owner_id: int, desktop: Desktop) -> tuple[Endpoint, str | None]:
        # The watched person's running bridge as it is (per-user desktop: their account); a
        # watch never starts or replaces a bridge, so it needs no account of its own.
        key = bridge_key(owner_id, desktop.id)
        return await self._bridges().attach(key), key

    def release(self, key: str | None) -> None:
        if key is not None and self.bridges is not None:
            self.bridges.release(key)
