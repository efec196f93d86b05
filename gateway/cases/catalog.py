"""The desktop catalog: desktops (add, change, delete), who they are assigned to, their state
and power. Provider names come from the provider map (``gateway.providers.PROVIDERS``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from ..audit import Audit, AuditKind
from ..crypto import SecretBox
from ..errors import BadRequest, DesktopUnavailable, GatewayError, NotFound
from ..live import LiveSessions
from ..model import Desktop, Secret, User
from ..protocols import BRIDGED, PROTOCOLS
from ..providers import PROVIDERS, DesktopSpec
from ..providers.registry import Providers, desktop_spec
from ..proxy.rfb import DesktopHandshake
from ..rdp.options import rdp_options
from ..store import Store
from .accounts import Accounts
from .actor import Actor

POWER_ACTIONS = ("start", "stop", "restart")


def provider_names() -> tuple[str, ...]:
    """The providers a desktop may name, as the provider map has them."""
    return tuple(PROVIDERS)


def addable_providers() -> tuple[str, ...]:
    """The providers of desktops added here; a desktop VM (libvirt) is made from a bundle
    instead (gateway/cases/vms.py)."""
    return tuple(name for name in PROVIDERS if name != "libvirt")


def desktop_name(name: str) -> str:
    """A desktop's name, checked: 1-64 printable characters once trimmed."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise BadRequest("desktop names are 1-64 printable characters")
    return name


@dataclass(frozen=True)
class DesktopView:
    desktop: Desktop
    users: list[str]
    groups: list[str]


@dataclass(frozen=True)
class Assignment:
    """One assignment given or taken: to an account (``user``, ``who`` describes it) or a
    group."""

    desktop: Desktop
    user: User | None
    group: str | None
    who: str


ADDRESS_PROBE_SECONDS = 3.0


async def address_problem(desktop: Desktop, password: Secret | None, *,
                          timeout: float = ADDRESS_PROBE_SECONDS) -> str | None:
    """What is wrong at a static desktop's address, or None when its server answers.

    RDP: a TCP connect. VNC: a whole login, as a viewer would (shared, so nobody is
    disconnected), closed after ServerInit. A shorter check is not kinder: TigerVNC puts a mark
    against the peer for every connection that ends unauthenticated, even one closed right
    after the banner (measured: four such connections and a fifth, correct login is refused
    for a while), and a successful login clears the marks. A refused password is reported too.
    """
    async def check() -> str | None:
        try:
            reader, writer = await asyncio.open_connection(desktop.host, desktop.port)
        except ConnectionRefusedError:
            return "nothing answers (connection refused)"
        except OSError as exc:
            return f"nothing answers ({exc.strerror or type(exc).__name__})"
        try:
            if desktop.protocol != "vnc":
                return None
            handshake = DesktopHandshake(password)
            while not handshake.authenticated:
                data = await reader.read(4096)
                if not data:
                    raise handshake.eof_error()
                writer.write(handshake.feed(data))
            writer.write(handshake.client_init())
            while not handshake.done:
                data = await reader.read(65536)
                if not data:
                    raise handshake.eof_error()
                handshake.feed(data)
            return None
        except GatewayError as exc:
            return exc.reason
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return f"the connection failed ({exc.strerror or exc})"


class Catalog:
    def __init__(self, store: Store, box: SecretBox, audit: Audit, providers: Providers,
                 live: LiveSessions, accounts: Accounts, geometry: str = "1280x800") -> None:
        self._store = store
        self._box = box
        self._audit = audit
        self._providers = providers
        self._live = live
        self._accounts = accounts
        self._geometry = geometry
        # One change at a time per desktop: a change reads the desktop and writes it whole.
        self._changing: dict[int, asyncio.Lock] = {}

    async def _record(self, actor: Actor, detail: str, *, desktop: str,
                      user: str | None = None) -> None:
        await self._audit.record(AuditKind.ADMIN, user=user, desktop=desktop,
                                 client_ip=actor.client_ip, detail=actor.by(detail))

    # reading -----------------------------------------------------------------------------------
    async def desktop(self, desktop_id: int) -> Desktop:
        desktop = await self._store.get_desktop(desktop_id)
        if desktop is None:
            raise NotFound("no such desktop")
        return desktop

    async def desktop_named(self, name: str) -> Desktop:
        desktop = await self._store.get_desktop_by_name(name)
        if desktop is None:
            raise NotFound(f"no desktop named {name!r}")
        return desktop

    async def desktops(self) -> list[Desktop]:
        return await self._store.list_desktops()

    async def assignments(self, desktop_id: int) -> tuple[list[str], list[str]]:
        """(user names, groups) the desktop is assigned to."""
        return await self._store.desktop_assignments(desktop_id)

    async def desktop_views(self) -> list[DesktopView]:
        return [DesktopView(d, *await self.assignments(d.id)) for d in await self.desktops()]

    async def desktop_view(self, desktop_id: int) -> DesktopView:
        d = await self.desktop(desktop_id)
        return DesktopView(d, *await self.assignments(d.id))

    def _spec(self, d: Desktop) -> DesktopSpec:
        return desktop_spec(d, self._geometry)

    async def state(self, d: Desktop) -> str:
        """A desktop VM's lifecycle state (kept in step with its hypervisor: gateway/cases/
        vms.py); else the provider's answer, or "unknown" (bounded: see ``Providers.state``)."""
        if d.vm is not None:
            return d.vm.state
        return await self._providers.state(self._spec(d))

    async def address_problem(self, desktop: Desktop) -> str | None:
        """What is wrong at a static desktop's address (see ``address_problem``); None for
        other desktops."""
        if desktop.provider != "static":
            return None
        enc = (await self._store.get_desktop_password(desktop.id) if desktop.has_password
               else None)
        return await address_problem(desktop, self._box.decrypt(enc) if enc else None)

    # changes ---------------------------------------------------------------------------------
    async def add_desktop(self, actor: Actor, name: str, provider: str, *, host: str = "",
                          port: int = 0, password: str | None = None, protocol: str = "vnc",
                          options: Mapping[str, str] | None = None,
                          via: str | None = None) -> Desktop:
        """``via``: the SSH host (a jump host) through which a static desktop's address is
        reached (the address is then as that host sees it), or, for provider "ssh", the host
        the desktop is started on."""
        actor.require_admin()
        name = desktop_name(name)
        names = provider_names()
        if provider not in names:
            raise BadRequest(f"unknown provider {provider!r}; use one of {', '.join(names)}")
        if provider == "libvirt":
            raise BadRequest("a desktop VM is made from a bundle: deskgate vm add NAME --bundle"
                             " BUNDLE (or the API's POST /api/v1/vms)")
        if protocol not in PROTOCOLS or provider not in BRIDGED.get(protocol, PROVIDERS):
            raise BadRequest("protocol is vnc, or rdp for a static desktop")
        if provider == "static" and not (host and 0 < port < 65536):
            raise BadRequest(f"a static desktop needs --{protocol} HOST:PORT")
        if provider == "ssh" and not via:
            raise BadRequest("a desktop started over SSH names its SSH host (--via HOST)")
        checked = rdp_options(options or {}) if protocol == "rdp" else {}
        if via:
            if provider not in ("static", "ssh"):
                raise BadRequest("only a static desktop is reached through a jump host")
            checked["via"] = await self._ssh_host(via)  # and the store makes it only while
            # that host exists
        if checked.get("credentials") == "per_user" and password:
            raise BadRequest("a per-user RDP desktop has no shared password: each person"
                             " enters their own account")
        enc = self._box.encrypt(password) if password else None
        desktop = await self._store.create_desktop(name, provider, host, port, enc, protocol,
                                                   checked)
        extra = (f", certificates: {checked['cert_policy']}, credentials:"
                 f" {checked['credentials']}" if protocol == "rdp" else "")
        extra += (f", on SSH host {via}" if provider == "ssh"
                  else f", through SSH host {via}" if via else "")
        await self._record(actor, f"desktop created ({provider}, {protocol}{extra})",
                           desktop=name)
        return desktop

    async def _ssh_host(self, via: str) -> str:
        """The name of an SSH host that exists (a desktop's ``via``), else NotFound."""
        via = via.strip()
        if await self._store.get_ssh_host_by_name(via) is None:
            raise NotFound(f"no SSH host named {via!r}")
        return via

    async def update_desktop(self, actor: Actor, desktop_id: int, *, name: str | None = None,
                             host: str | None = None, port: int | None = None,
                             password: str | None = None, clear_password: bool = False,
                             maintenance: bool | None = None,
                             rdp: Mapping[str, str] | None = None,
                             via: str | None = None) -> Desktop:
        """Change what is given; a password is write-only (set or cleared, never shown).

        ``rdp`` changes RDP options (merged with the current ones and checked again); switching
        to per-user credentials drops the shared account's password, which nobody uses then.
        ``via`` sets a static desktop's jump host (an SSH host's name), or "" takes it away:
        the sessions open now keep their way, new connections take the new one.
        """
        actor.require_admin()
        async with self._changing.setdefault(desktop_id, asyncio.Lock()):
            return await self._update(actor, await self.desktop(desktop_id), name=name,
                                      host=host, port=port, password=password,
                                      clear_password=clear_password, maintenance=maintenance,
                                      rdp=rdp, via=via)

    async def _update(self, actor: Actor, d: Desktop, *, name: str | None, host: str | None,
                      port: int | None, password: str | None, clear_password: bool,
                      maintenance: bool | None, rdp: Mapping[str, str] | None,
                      via: str | None) -> Desktop:
        # The RDP options, and the jump host kept beside them (checked here, not by rdp_options)
        current = {k: v for k, v in d.options if k != "via"}
        new_via = d.option("via") if via is None else via.strip()
        if via is not None:
            if d.provider != "static":
                raise BadRequest("only a static desktop is reached through a jump host"
                                 + (f"; this one is started on SSH host {d.option('via')}"
                                    if d.provider == "ssh" else ""))
            if new_via:
                new_via = await self._ssh_host(new_via)
        new_options = None
        if rdp:
            if d.protocol != "rdp":
                raise BadRequest("only RDP desktops have RDP options")
            base = dict(current)
            if ({"cert_fingerprint", "cert_ca"} & set(rdp)) and "cert_policy" not in rdp:
                base.pop("cert_policy", None)  # a new pin or CA chooses its own policy
            new_options = rdp_options({**base, **rdp})
        credentials = (new_options or current).get("credentials")
        if password and d.protocol == "rdp" and credentials == "per_user":
            raise BadRequest("a per-user RDP desktop has no shared password: each person"
                             " enters their own account")
        new_name = d.name if name is None else desktop_name(name)
        new_port = d.port if port is None else port
        if d.provider == "static" and not 0 < new_port < 65536:
            raise BadRequest("port must be between 1 and 65535")
        await self._store.update_desktop(
            d.id, name=new_name, host=d.host if host is None else host.strip(), port=new_port,
            maintenance=d.maintenance if maintenance is None else maintenance)
        changes = [k for k, v in (("name", name), ("host", host), ("port", port),
                                  ("maintenance", maintenance)) if v is not None]
        changed = {k: v for k, v in (new_options or {}).items() if v != d.option(k)}
        if changed or new_via != d.option("via"):
            await self._store.set_desktop_options(
                d.id, {**(new_options or current), **({"via": new_via} if new_via else {})})
        if new_options is not None and changed:
            changes.append("RDP " + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
            if new_options["credentials"] == "per_user" and d.has_password and not password:
                clear_password = True
        if new_via != d.option("via"):
            changes.append(f"through SSH host {new_via}" if new_via else "no jump host")
        if password:
            await self._store.set_desktop_password(d.id, self._box.encrypt(password))
            changes.append("password set")
        elif clear_password:
            await self._store.set_desktop_password(d.id, None)
            changes.append("password cleared")
        if maintenance and not d.maintenance:
            for live in self._live:
                if live.desktop_name == d.name:
                    live.notify({"type": "message", "from": actor.name,
                                 "text": "This desktop is going into maintenance: save your"
                                         " work; new connections are not accepted."})
        await self._record(actor, f"desktop changed: {', '.join(changes) or 'nothing'}",
                           desktop=new_name)
        return await self.desktop(d.id)

    async def delete_desktop(self, actor: Actor, desktop_id: int) -> None:
        actor.require_admin()
        d = await self.desktop(desktop_id)
        if d.vm is not None:
            raise BadRequest("a desktop VM is deleted with its volumes by its power action"
                             " delete, confirmed by typing its name")
        left = ""
        try:
            await self._providers.get(d.provider).stop(self._spec(d))
        except DesktopUnavailable as exc:
            if d.provider != "ssh":
                raise
            # A host that is gone for good must not keep its desktops in the catalog.
            left = f" (not stopped on its SSH host: {exc.reason})"
        if not await self._store.delete_desktop(d.id):
            raise NotFound("no such desktop")  # removed by someone else meanwhile: one record
        await self._record(actor, "desktop deleted" + left, desktop=d.name)

    async def assign(self, actor: Actor, desktop_id: int, *, user_id: int | None = None,
                     user_ref: str | None = None, group: str | None = None,
                     remove: bool = False) -> Assignment:
        """Give the desktop to (or with ``remove``, take it from) one account, named by id or by
        a reference ``Accounts.user`` accepts, or an identity provider's group."""
        actor.require_admin()
        d = await self.desktop(desktop_id)
        if [user_id, user_ref, group].count(None) != 2:
            raise BadRequest("give a user or a group")
        done = "unassigned from" if remove else "assigned to"
        if group is not None:
            group = group.strip()
            if not group or len(group) > 256:
                raise BadRequest("group names are 1-256 characters")
            if remove:
                await self._store.unassign_group(d.id, group)
            else:
                await self._store.assign_group(d.id, group)
            await self._record(actor, f"desktop {done} group {group}", desktop=d.name)
            return Assignment(d, None, group, f"group {group}")
        user = (await self._accounts.user_by_id(user_id) if user_id is not None
                else await self._accounts.user(user_ref or ""))
        if remove:
            await self._store.unassign(d.id, user.id)
        else:
            await self._store.assign(d.id, user.id)
        who = await self._accounts.describe(user)
        await self._record(actor, f"desktop {done} {who}", user=user.name, desktop=d.name)
        return Assignment(d, user, None, who)

    async def power(self, actor: Actor, desktop_id: int, action: str) -> str:
        """start, stop or restart, where the provider can; returns the new state."""
        actor.require_admin()
        d = await self.desktop(desktop_id)
        if d.vm is not None:
            raise BadRequest("a desktop VM's power actions go through its state machine:"
                             " deskgate vm start|stop|reboot NAME")
        if d.provider != "local":
            raise BadRequest(f"{d.provider} desktops have no power actions")
        provider = self._providers.get(d.provider)
        spec = self._spec(d)
        if action not in POWER_ACTIONS:
            raise BadRequest("power actions are start, stop and restart")
        if action in ("stop", "restart"):
            await provider.stop(spec)
        if action in ("start", "restart"):
            await provider.ensure_running(spec)
        await self._record(actor, f"desktop power: {action}", desktop=d.name)
        return await provider.state(spec)
