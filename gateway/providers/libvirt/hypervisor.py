"""One libvirt connection per hypervisor, and the few domain operations Deskgate needs, by
desktop id.

libvirt-python's calls block (each is an RPC to libvirtd), so every call runs on the
connection's own worker thread and the event loop only awaits it, within ``call_timeout``: a
libvirtd that hangs makes calls fail with ``HypervisorUnreachable`` instead of holding up the
gateway. A worker that hung is abandoned together with its connection; the next call gets a new
worker and a new connection.

The connection is opened on first use and again when it died (libvirtd restarted): a call that
fails because its connection is dead is made once more on a new one.

Only Deskgate's domains are touched (``domain.owned_desktop_id``): an operation on a desktop
whose domain name is held by a domain someone else defined fails and leaves that domain alone;
``owned`` never lists it.

libvirt-python is imported on first use, so the gateway runs without it as long as no libvirt
desktop is used.
"""

from __future__ import annotations

import asyncio
import threading
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import ConfigError
from gateway.providers.libvirt.domain import PREFIX, domain_name, owned_desktop_id
from gateway.providers.libvirt.lifecycle import Seen

CALL_TIMEOUT = 30.0  # seconds one libvirt call may take before libvirtd counts as unreachable
MISSING_LIBVIRT = ("the libvirt provider needs libvirt-python: pip install 'deskgate[vm]' "
                   "(it builds against Debian's libvirt-dev and pkg-config)")

T = TypeVar("T")


class HypervisorError(Exception):
    """A hypervisor operation failed. ``reason`` is libvirt's (or qemu-img's) own message: it
    tells an admin what went wrong, e.g. a disk qemu could not open."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HypervisorUnreachable(HypervisorError):
    """libvirtd could not be reached: not running, a wrong URI, or it does not answer."""


@dataclass(frozen=True)
class Observation:
    """What the hypervisor says of one domain: the lifecycle's view, and libvirt's own words
    for an admin ("shut off (destroyed)", "running (booted)")."""

    seen: Seen
    detail: str


MISSING = Observation(Seen.MISSING, "no such domain")

# libvirt's domain states and their reasons (virDomainState and the vir*Reason enums; their
# numbers are part of libvirt's ABI), in words. Shut off and crashed domains are stopped; every
# other state has a live QEMU process.
_STATES: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("no state", ("unknown",)),
    1: ("running", ("unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
                    "migration canceled", "save canceled", "woken up", "crashed", "post-copy",
                    "post-copy failed")),
    2: ("blocked", ("unknown",)),
    3: ("paused", ("unknown", "user", "migration", "save", "dump", "I/O error", "watchdog",
                   "from snapshot", "shutting down", "snapshot", "crashed", "starting up",
                   "post-copy", "post-copy failed", "API error")),
    4: ("shutting down", ("unknown", "user")),
    5: ("shut off", ("unknown", "shut down", "destroyed", "crashed", "migrated", "saved",
                     "failed", "from snapshot", "daemon")),
    6: ("crashed", ("unknown", "panicked")),
    7: ("suspended", ("unknown",)),
}
_STOPPED_STATES = frozenset({5, 6})


def describe(state: int, reason: int) -> Observation:
    """A domain's ``virDomain.state()`` answer as an ``Observation``."""
    words, reasons = _STATES.get(state, (f"state {state}", ()))
    why = reasons[reason] if 0 <= reason < len(reasons) else f"reason {reason}"
    seen = Seen.STOPPED if state in _STOPPED_STATES else Seen.RUNNING
    return Observation(seen, f"{words} ({why})")


_quiet_lock = threading.Lock()
_quieted = False


def _libvirt() -> Any:
    """The libvirt module, with its default error printer (to stderr) silenced once: every
    error reaches us as an exception and is reported from there."""
    global _quieted
    try:
        import libvirt
    except ImportError:
        raise ConfigError(MISSING_LIBVIRT) from None
    with _quiet_lock:
        if not _quieted:
            libvirt.registerErrorHandler(_ignore_error, None)
            _quieted = True
    return libvirt


def _ignore_error(_ctx: object, _error: object) -> None:
    """libvirt's error callback: nothing printed (the error is raised as an exception)."""


def _message(exc: Exception) -> str:
    getter = getattr(exc, "get_error_message", None)
    text = getter() if callable(getter) else None
    return str(text) if text else str(exc)


def _code(exc: Exception) -> int | None:
    getter = getattr(exc, "get_error_code", None)
    code = getter() if callable(getter) else None
    return code if isinstance(code, int) else None


class _Worker:
    """One thread and the connection only it uses (libvirt objects never cross threads)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt")
        self._conn: Any = None

    # -- on the worker thread ------------------------------------------------------------------

    def run(self, op: Callable[[Any], T]) -> T:
        """``op(connection)``; once more on a new connection when the first one turns out dead."""
        lv = _libvirt()
        for attempt in (1, 2):
            conn = self._connection(lv)
            try:
                return op(conn)
            except lv.libvirtError as exc:
                alive = self._alive(conn)
                if not alive:
                    self.drop()
                if alive or attempt == 2:
                    cls = HypervisorError if alive else HypervisorUnreachable
                    raise cls(_message(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, lv: Any) -> Any:
        if self._conn is not None and not self._alive(self._conn):
            self.drop()
        if self._conn is None:
            try:
                self._conn = lv.open(self.uri)
            except lv.libvirtError as exc:
                raise HypervisorUnreachable(_message(exc)) from None
        return self._conn

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except Exception:  # a connection that cannot even say so is dead
            return False

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing a dead connection may fail; it is gone
                pass

    # -- from the event loop -------------------------------------------------------------------

    def abandon(self) -> None:
        """Stop using this worker (its call hangs): the connection is closed, and the thread
        ends, once that call returns."""
        self.executor.submit(self.drop)
        self.executor.shutdown(wait=False)


class Hypervisor:
    """One hypervisor (libvirt URI): its connection and the operations on Deskgate's domains.

    ``route``, for a hypervisor reached through an SSH host, gives before each call the URI
    that reaches it from here (libvirt's socket forwarded through that host's connection); a
    new route (the SSH connection was made again) means a new libvirt connection. ``uri`` is
    then only the name in messages.
    """

    def __init__(self, uri: str, *, call_timeout: float = CALL_TIMEOUT,
                 route: Callable[[], Awaitable[str]] | None = None) -> None:
        self.uri = uri
        self._call_timeout = call_timeout
        self._route = route
        self._worker: _Worker | None = None
        self._closed = False

    async def _call(self, op: Callable[[Any], T]) -> T:
        """``op(connection)`` on the worker thread, within the time bound. Through an SSH host,
        a call that found libvirt unreachable is made once more when the route changed
        meanwhile (the SSH connection was made again)."""
        if self._closed:
            raise HypervisorError("the connection to the hypervisor is closed")
        uri = await self._uri()
        try:
            return await self._call_at(uri, op)
        except HypervisorUnreachable:
            if self._route is None or await self._uri() == uri:
                raise
        return await self._call_at(await self._uri(), op)

    async def _uri(self) -> str:
        return self.uri if self._route is None else await self._route()

    async def _call_at(self, uri: str, op: Callable[[Any], T]) -> T:
        if self._worker is not None and self._worker.uri != uri:
            old, self._worker = self._worker, None
            old.abandon()
        if self._worker is None:
            self._worker = _Worker(uri)
        worker = self._worker
        future = asyncio.get_running_loop().run_in_executor(worker.executor, worker.run, op)
        try:
            return await asyncio.wait_for(future, self._call_timeout)
        except TimeoutError:
            if self._worker is worker:
                self._worker = None
                worker.abandon()
            raise HypervisorUnreachable(
                f"libvirtd at {self.uri} did not answer within {self._call_timeout:g} s") from None

    async def define(self, xml: str) -> None:
        """Define (or redefine) a Deskgate domain from its XML; its changes apply at its next
        start. A domain of that name someone else defined is not replaced."""
        try:
            root = ET.fromstring(xml)  # noqa: S314 (our own XML)
        except ET.ParseError as exc:
            raise HypervisorError(f"not a domain description: {exc}") from None
        name = root.findtext("name") or ""
        desktop_id = owned_desktop_id(name, xml)
        if desktop_id is None:
            raise HypervisorError(f"{name or 'the domain'} is not described as Deskgate's")

        def op(conn: Any) -> None:
            dom = _find(conn, desktop_id)  # refuses a domain that is not ours
            conn.defineXML(xml if dom is None else _with_uuid(root, dom.UUIDString()))
        await self._call(op)

    async def start(self, desktop_id: int) -> None:
        """Start the defined domain (libvirt's error when it is missing or already running)."""
        await self._call(lambda conn: _find(conn, desktop_id, required=True).create())

    async def shutdown(self, desktop_id: int) -> None:
        """Ask the guest to shut down (ACPI power button); returns at once. Nothing happens for
        a domain that is not running."""
        def op(conn: Any) -> None:
            lv = _libvirt()
            dom = _find(conn, desktop_id)
            if dom is not None and dom.isActive():
                _unless_off(lambda: dom.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN))
        await self._call(op)

    async def destroy(self, desktop_id: int) -> bool:
        """Stop the domain at once (power off); True when it was running."""
        def op(conn: Any) -> bool:
            dom = _find(conn, desktop_id)
            if dom is None or not dom.isActive():
                return False
            return _unless_off(dom.destroy)
        return await self._call(op)

    async def undefine(self, desktop_id: int) -> None:
        """Forget the domain's definition (with its saved state and snapshot records); no error
        when there is none. A running domain goes on running, transient, until it stops."""
        def op(conn: Any) -> None:
            lv = _libvirt()
            dom = _find(conn, desktop_id)
            if dom is not None:
                dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                  | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                                  | lv.VIR_DOMAIN_UNDEFINE_NVRAM)
        await self._call(op)

    async def observation(self, desktop_id: int) -> Observation:
        """What the hypervisor says of this desktop's domain (``MISSING`` when there is none)."""
        def op(conn: Any) -> Observation:
            lv = _libvirt()
            dom = _find(conn, desktop_id)
            if dom is None:
                return MISSING
            try:
                return describe(*dom.state())
            except lv.libvirtError as exc:
                if _code(exc) == lv.VIR_ERR_NO_DOMAIN:
                    return MISSING  # undefined while we looked
                raise
        return await self._call(op)

    async def is_running(self, desktop_id: int) -> bool:
        return (await self.observation(desktop_id)).seen is Seen.RUNNING

    async def owned(self) -> dict[int, Observation]:
        """Deskgate's domains on this hypervisor by desktop id; others are not listed."""
        def op(conn: Any) -> dict[int, Observation]:
            lv = _libvirt()
            found: dict[int, Observation] = {}
            for dom in conn.listAllDomains(0):
                name = dom.name()
                if not name.startswith(PREFIX):
                    continue
                try:
                    desktop_id = owned_desktop_id(name, dom.XMLDesc(0))
                    if desktop_id is not None:
                        found[desktop_id] = describe(*dom.state())
                except lv.libvirtError as exc:
                    if _code(exc) != lv.VIR_ERR_NO_DOMAIN:
                        raise
                    # undefined while we looked: not there
            return found
        return await self._call(op)

    async def close(self) -> None:
        """Close the connection; later calls fail. Running domains are not affected."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is None:
            return
        future = asyncio.get_running_loop().run_in_executor(worker.executor, worker.drop)
        try:
            await asyncio.wait_for(future, self._call_timeout)
        except TimeoutError:
            pass
        worker.executor.shutdown(wait=False)


def _find(conn: Any, desktop_id: int, *, required: bool = False) -> Any:
    """The desktop's domain, None when there is none (libvirt's error if ``required``);
    ``HypervisorError`` for a domain of that name that is not Deskgate's."""
    lv = _libvirt()
    name = domain_name(desktop_id)
    try:
        dom = conn.lookupByName(name)
        xml = dom.XMLDesc(0)
    except lv.libvirtError as exc:
        if _code(exc) == lv.VIR_ERR_NO_DOMAIN and not required:
            return None
        raise
    if owned_desktop_id(name, xml) != desktop_id:
        raise HypervisorError(f"the domain {name} was not defined by Deskgate: it is left alone")
    return dom


def _with_uuid(root: ET.Element, uuid: str) -> str:
    """The description with the defined domain's UUID: libvirt redefines a domain only under
    its own UUID, and one without a UUID would be taken as a new domain of the same name."""
    found = root.find("uuid")
    if found is None:
        found = ET.Element("uuid")
        root.insert(1, found)
    found.text = uuid
    return ET.tostring(root, encoding="unicode")


def _unless_off(action: Callable[[], object]) -> bool:
    """``action()`` on a running domain; False when it stopped meanwhile (libvirt then says
    the operation is invalid for a domain that is not running)."""
    lv = _libvirt()
    try:
        action()
    except lv.libvirtError as exc:
        if _code(exc) == lv.VIR_ERR_OPERATION_INVALID:
            return False
        raise
    return True

