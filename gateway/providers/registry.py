"""The desktop providers of this node by name, made on first use and closed on shutdown, and
which desktops have a live session now; what a provider is told about a desktop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.crypto import SecretBox
from gateway.model import Desktop, Secret
from gateway.providers import PROVIDERS, DesktopProvider, DesktopSpec, ProviderContext, make_provider
from gateway.providers.base import CachingState, Recovering
from gateway.store import Store

log = logging.getLogger("deskgate.providers")
# Pages, the API and metrics wait at most this long for a desktop to say whether it runs.
_STATE_TIMEOUT = 2.0


def stored_passwords(store: Store, box: SecretBox) -> Callable[[int], Awaitable[Secret | None]]:
    """A desktop's stored password by id (decrypted), for providers that must log in to probe."""
    async def lookup(desktop_id: int) -> Secret | None:
        enc = await store.get_desktop_password(desktop_id)
        return box.decrypt(enc) if enc else None
    return lookup


class Providers:
    """Provider instances by name, made on first use and closed on shutdown; and which desktops
    have a live session now (told by the broker)."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._providers: dict[str, DesktopProvider] = {}
        self._live: dict[int, set[str]] = {}
        # Told when a desktop's last live session on this node ends (AutoStop counts from it).
        self.idle_listeners: list[Callable[[int], None]] = []

    def connected(self, desktop_id: int, session_id: str) -> None:
        self._live.setdefault(desktop_id, set()).add(session_id)

    def disconnected(self, desktop_id: int, session_id: str) -> None:
        sessions = self._live.get(desktop_id)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self._live[desktop_id]
                for listener in self.idle_listeners:
                    listener(desktop_id)

    def unreachable(self, desktop_id: int) -> None:
        """A session could not reach the desktop: providers that cache its state ask again."""
        for provider in self._providers.values():
            if isinstance(provider, CachingState):
                provider.forget(desktop_id)

    async def state(self, spec: DesktopSpec) -> str:
        """"running" while a session to the desktop is live; else the provider's answer within
        a couple of seconds, else "unknown".

        Pages, the API and metrics all ask through here: a slow or broken provider must not
        hold any of them up.
        """
        if self._live.get(spec.id):
            return "running"
        try:
            async with asyncio.timeout(_STATE_TIMEOUT):
                return await self.get(spec.provider).state(spec)
        except TimeoutError:
            return "unknown"
        except Exception:  # a broken provider must not break the page asking
            log.exception("[desktop=%s] state query failed", spec.name)
            return "unknown"

    def get(self, name: str) -> DesktopProvider:
        if name not in self._providers:
            self._providers[name] = make_provider(name, self._ctx)
        return self._providers[name]

    async def recover(self) -> None:
        """Start-up: every provider that can takes over what an earlier run left running."""
        for name in PROVIDERS:
            provider = self.get(name)
            if isinstance(provider, Recovering):
                await provider.recover()

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()


def desktop_spec(desktop: Desktop, geometry: str, password: Secret | None = None) -> DesktopSpec:
    """A desktop as its provider sees it; ``password`` only where the provider connects."""
    return DesktopSpec(id=desktop.id, name=desktop.name, provider=desktop.provider,
                       host=desktop.host, port=desktop.port, password=password,
                       geometry=geometry, protocol=desktop.protocol, vm=desktop.vm,
                       via=desktop.option("via"))
