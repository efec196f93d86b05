"""Bundles: the named sizes desktop VMs are made from (vCPUs, memory, disks, base image, the
protocol to their screen, what they cost, and what their users may do themselves)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from ..audit import Audit, AuditKind
from ..errors import BadRequest, NotFound
from ..model import SELF_SERVICE, VM_PROTOCOLS, Bundle
from ..store import Store
from .actor import Actor

# What a bundle may say, checked the same way from every edge (CLI flags, forms, the API).
LIMITS = {"vcpus": (1, 64), "memory_mib": (64, 1 << 20), "root_mib": (16, 1 << 24),
          "user_mib": (16, 1 << 24)}
MAX_RATE = 1_000_000.0


def bundle_name(name: str) -> str:
    """A bundle's name, checked: 1-64 printable characters once trimmed."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise BadRequest("bundle names are 1-64 printable characters")
    return name


def self_service_policy(items: Iterable[str]) -> tuple[str, ...]:
    """A self-service policy: a subset of ``SELF_SERVICE``, sorted, duplicates dropped."""
    chosen = {item.strip() for item in items if item.strip()}
    unknown = sorted(chosen - set(SELF_SERVICE))
    if unknown:
        raise BadRequest(f"unknown self-service action {unknown[0]!r}; use"
                         f" {', '.join(SELF_SERVICE)}")
    return tuple(sorted(chosen))


def checked_bundle(bundle: Bundle) -> Bundle:
    """``bundle`` with its name and policy normalised; BadRequest naming the first bad field."""
    for field, (low, high) in LIMITS.items():
        value = getattr(bundle, field)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(f"{field} must be a whole number from {low} to {high}")
    if bundle.protocol not in VM_PROTOCOLS:
        raise BadRequest(f"protocol is one of {', '.join(VM_PROTOCOLS)}")
    for field in ("hourly_rate", "monthly_rate"):
        value = getattr(bundle, field)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value <= MAX_RATE:
            raise BadRequest(f"{field} must be a number from 0 to {MAX_RATE:g}")
    for field in ("base_image", "kernel", "initrd"):
        value = getattr(bundle, field)
        if (value or field == "base_image") and not (
                value.isprintable() and len(value) <= 4096 and Path(value).is_absolute()):
            raise BadRequest(f"{field} must be an absolute path on the hypervisor's host")
    if bool(bundle.kernel) != bool(bundle.initrd):
        raise BadRequest("a direct kernel boot needs both the kernel and the initrd")
    if len(bundle.cmdline) > 1024 or not bundle.cmdline.isprintable():
        raise BadRequest("the kernel command line is at most 1024 printable characters")
    if len(bundle.ready_text) > 200 or not bundle.ready_text.isprintable():
        raise BadRequest("the ready text is at most 200 printable characters")
    return dataclasses.replace(bundle, name=bundle_name(bundle.name),
                               hourly_rate=float(bundle.hourly_rate),
                               monthly_rate=float(bundle.monthly_rate),
                               self_service=self_service_policy(bundle.self_service))


def describe(bundle: Bundle) -> str:
    """A bundle in one line, for the audit trail and the command line."""
    return (f"{bundle.vcpus} vCPU, {bundle.memory_mib} MiB, root {bundle.root_mib} MiB, user"
            f" {bundle.user_mib} MiB, {bundle.protocol}, {bundle.hourly_rate:g}/h,"
            f" {bundle.monthly_rate:g}/month, self-service:"
            f" {', '.join(bundle.self_service) or 'none'}")


class Bundles:
    def __init__(self, store: Store, audit: Audit) -> None:
        self._store = store
        self._audit = audit

    async def _record(self, actor: Actor, detail: str) -> None:
        await self._audit.record(AuditKind.ADMIN, client_ip=actor.client_ip,
                                 detail=actor.by(detail))

    async def bundles(self) -> list[Bundle]:
        return await self._store.list_bundles()

    async def bundle(self, bundle_id: int) -> Bundle:
        found = await self._store.get_bundle(bundle_id)
        if found is None:
            raise NotFound("no such bundle")
        return found

    async def bundle_named(self, name: str) -> Bundle:
        found = await self._store.get_bundle_by_name(name.strip())
        if found is None:
            raise NotFound(f"no bundle named {name.strip()!r}")
        return found

    async def uses(self, bundle_id: int) -> int:
        """How many desktops are made from the bundle."""
        return await self._store.bundle_use_count(bundle_id)

    async def create(self, actor: Actor, bundle: Bundle) -> Bundle:
        actor.require_admin()
        made = await self._store.create_bundle(checked_bundle(bundle))
        await self._record(actor, f"bundle {made.name} created: {describe(made)}")
        return made

    async def update(self, actor: Actor, bundle_id: int, **changes: object) -> Bundle:
        """Change the named fields. Desktops made from the bundle take its new size at their
        next start, and its rates from their next run; a new base image only at a rebuild."""
        actor.require_admin()
        old = await self.bundle(bundle_id)
        unknown = set(changes) - {f.name for f in dataclasses.fields(Bundle)} | (
            {"id"} & set(changes))
        if unknown:
            raise BadRequest(f"bundles have no field {sorted(unknown)[0]!r}")
        new = checked_bundle(dataclasses.replace(old, **changes))  # type: ignore[arg-type]
        await self._store.update_bundle(new)
        changed = [f.name for f in dataclasses.fields(Bundle)
                   if getattr(new, f.name) != getattr(old, f.name)]
        await self._record(actor, f"bundle {new.name} changed: {', '.join(changed) or 'nothing'}")
        return new

    async def delete(self, actor: Actor, bundle_id: int) -> None:
        """Conflict while a desktop is made from it."""
        actor.require_admin()
        old = await self.bundle(bundle_id)
        if not await self._store.delete_bundle(old.id):
            raise NotFound("no such bundle")
        await self._record(actor, f"bundle {old.name} deleted")
