"""Static desktops: fixed hosts that run by themselves; the gateway only checks that they answer.

How a VNC desktop is probed: TigerVNC (and other servers) blacklist a peer after a few
connections that end before a login completes, and reading the RFB banner and closing counts as
such a failure (measured with TigerVNC 1.12: five banner probes, and the gateway's next real login
was refused as "blacklisted"). So the probe logs in: it performs the same security handshake as
a session, with the desktop's stored password, and closes right after the server accepted it —
a successful login, which the blacklist never counts (50 such probes in a row, then a session
logs in normally). When the desktop refuses the login, the probe stops trying for a long while
(``REFUSED_TTL``) so that it never adds failures of its own. Without access to the stored
password (``ProviderContext.credentials``) a VNC desktop is not probed at all: "unknown".

Probes are bounded and cached: one probe per desktop at a time (concurrent asks share it),
``MAX_PROBES`` at once for the whole gateway, each answer reused for ``PROBE_TTL`` seconds —
the portal never opens a connection per page view. Other protocols (RDP) get a TCP connect check
under the same rules. A live session to a desktop means running without any probe (the broker
tells ``Providers``). A desktop behind a jump host (``spec.via``) is not this host's to probe: its
address is as that host sees it; its state is "unknown" and its session's own start tells.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass

from gateway.errors import DesktopUnavailable, ProtocolError, UpstreamAuthFailed
from gateway.model import Endpoint, Secret
from gateway.probe import probe_rfb
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log
from gateway.proxy.rfb import DesktopHandshake

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
PROBE_TTL = 20.0  # seconds an answer is reused
REFUSED_TTL = 600.0  # after the desktop refused our login: do not try again for this long
MAX_PROBES = 4  # probes in flight at once, over all static desktops


@dataclass(frozen=True)
class _Answer:
    key: tuple[str, int, str]  # host, port, protocol: a changed address is probed again
    state: str
    until: float


class StaticProvider:
    """A desktop at ``spec.host:spec.port``. Nothing is started or stopped; see the module
    docstring for how its state is found."""

    def __init__(self, ctx: ProviderContext, *, probe_timeout: float = PROBE_TIMEOUT,
                 ttl: float = PROBE_TTL, refused_ttl: float = REFUSED_TTL) -> None:
        self._ctx = ctx
        self._probe_timeout = probe_timeout
        self._ttl = ttl
        self._refused_ttl = refused_ttl
        self._answers: dict[int, _Answer] = {}
        self._inflight: dict[int, asyncio.Task[_Answer]] = {}
        self._slots = asyncio.Semaphore(MAX_PROBES)

    async def _answers_tcp(self, spec: DesktopSpec) -> bool:
        if not spec.host or not 0 < spec.port < 65536:
            return False
        return await probe_rfb(host=spec.host, port=spec.port, timeout=self._probe_timeout,
                               banner_required=spec.protocol == "vnc")

    async def ensure_running(self, spec: DesktopSpec) -> None:
        if spec.protocol == "vnc" or spec.via:
            return  # the session's own handshake (or bridge) tells, with the reason
        if not await self._answers_tcp(spec):
            desktop_log(log, spec.name).warning("not answering at %s:%d", spec.host or "?", spec.port)
            raise DesktopUnavailable(f"desktop {spec.name} is not answering")

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        return Endpoint(host=spec.host, port=spec.port, password=spec.password, protocol=spec.protocol)

    async def state(self, spec: DesktopSpec) -> str:
        """"running", "stopped" or "unknown", from a cached or shared probe (see above)."""
        if (spec.protocol == "vnc" and self._ctx.credentials is None) or spec.via:
            return "unknown"
        key = (spec.host, spec.port, spec.protocol)
        cached = self._answers.get(spec.id)
        if cached is not None and cached.key == key and cached.until > time.monotonic():
            return cached.state
        task = self._inflight.get(spec.id)
        if task is None:
            task = asyncio.create_task(self._probe(spec, key))
            self._inflight[spec.id] = task
            task.add_done_callback(functools.partial(self._probed, spec.id))
        return (await asyncio.shield(task)).state

    def _probed(self, desktop_id: int, _task: asyncio.Task[_Answer]) -> None:
        self._inflight.pop(desktop_id, None)

    def forget(self, desktop_id: int) -> None:
        """A session just failed to reach the desktop: the next ask probes again."""
        self._answers.pop(desktop_id, None)

    async def stop(self, spec: DesktopSpec) -> None:
        """A static desktop is not ours to stop: nothing happens."""

    async def close(self) -> None:
        """Nothing was started; probes in flight are cancelled."""
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self, spec: DesktopSpec, key: tuple[str, int, str]) -> _Answer:
        async with self._slots:
            if spec.protocol != "vnc":
                state = "running" if await self._answers_tcp(spec) else "stopped"
                ttl = self._ttl
            else:
                password = spec.password
                if password is None and self._ctx.credentials is not None:
                    password = await self._ctx.credentials(spec.id)
                state, refused = await self._login_probe(spec, password)
                ttl = self._refused_ttl if refused else self._ttl
        answer = _Answer(key, state, time.monotonic() + ttl)
        self._answers[spec.id] = answer
        return answer

    async def _login_probe(self, spec: DesktopSpec, password: Secret | None) -> tuple[str, bool]:
        """(state, refused): a login with the desktop's password, closed once accepted."""
        dlog = desktop_log(log, spec.name)
        if not spec.host or not 0 < spec.port < 65536:
            return "stopped", False
        try:
            async with asyncio.timeout(self._probe_timeout):
                try:
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                except OSError:
                    return "stopped", False
                try:
                    shake = DesktopHandshake(password)
                    while not shake.authenticated:
                        data = await reader.read(4096)
                        if not data:
                            raise shake.eof_error()
                        out = shake.feed(data)
                        if out:
                            writer.write(out)
                            await writer.drain()
                    return "running", False
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except UpstreamAuthFailed as exc:
            # It runs; it did not let us in. Not again for a while: each try is a failure that
            # counts towards its blacklist for every session from this gateway.
            dlog.warning("state probe: %s; not probing again for %d s", exc.reason,
                         int(self._refused_ttl))
            return "running", True
        except (ProtocolError, DesktopUnavailable) as exc:
            dlog.info("state probe: %s", exc.reason)
            return "unknown", True
        except (TimeoutError, OSError):
            return "unknown", False
