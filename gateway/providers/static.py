"""Static desktops: fixed hosts that run by themselves; the gateway only checks that they answer."""

from __future__ import annotations

import logging

from gateway.errors import DesktopUnavailable
from gateway.model import Endpoint
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log, probe_rfb

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0


class StaticProvider:
    """A desktop at ``spec.host:spec.port``. Nothing is started or stopped.

    VNC desktops are never probed: TigerVNC (and others) count every connection that does not
    finish a login towards blacklisting the peer, so probes from portal views would lock the
    gateway out of the desktop. Their state is ``"unknown"`` here (the broker remembers what the
    last session saw) and an unreachable desktop is reported by the relay's own handshake.
    Desktops of other protocols get a bounded TCP connect check.
    """

    def __init__(self, ctx: ProviderContext, *, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self._ctx = ctx
        self._probe_timeout = probe_timeout

    async def _answers(self, spec: DesktopSpec) -> bool:
        if not spec.host or not 0 < spec.port < 65536:
            return False
        return await probe_rfb(
            host=spec.host,
            port=spec.port,
            timeout=self._probe_timeout,
            banner_required=spec.protocol == "vnc",
        )

    async def ensure_running(self, spec: DesktopSpec) -> None:
        if spec.protocol == "vnc":
            return
        if not await self._answers(spec):
            desktop_log(log, spec.name).warning("not answering at %s:%d", spec.host or "?", spec.port)
            raise DesktopUnavailable(f"desktop {spec.name} is not answering")

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        return Endpoint(host=spec.host, port=spec.port, password=spec.password, protocol=spec.protocol)

    async def state(self, spec: DesktopSpec) -> str:
        if spec.protocol == "vnc":
            return "unknown"
        return "running" if await self._answers(spec) else "stopped"

    async def stop(self, spec: DesktopSpec) -> None:
        """A static desktop is not ours to stop: nothing happens."""

    async def close(self) -> None:
        """Nothing was started."""
