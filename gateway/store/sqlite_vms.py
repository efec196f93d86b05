"""The SQLite store's desktop VM tables: bundles, the VM of a desktop, its runs and start times.

A mixin of :class:`gateway.store.sqlite.SQLiteStore`, on the same connections and helpers
(``_one``/``_all``/``_exec`` on the shared connection, one statement at a time; ``_write()`` for
a check and its write in one transaction). Also the VM part of a desktop row, which every query
returning a :class:`Desktop` joins (``VM_JOIN``, ``VM_COLUMNS``, :func:`desktop_vm`).

Races are settled by the database, also between gateway processes: a VM's state moves by
compare-and-set (one UPDATE whose WHERE names the states it may move from), and a desktop has at
most one open run (a unique partial index), so of concurrent movers or openers exactly one wins.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from ..errors import Conflict, NotFound
from ..model import Bundle, Desktop, DesktopVm, VmRun

_BUNDLE_FIELDS = ("id", "name", "vcpus", "memory_mib", "root_mib", "user_mib", "base_image",
                  "protocol", "hourly_rate", "monthly_rate", "self_service", "kernel", "initrd",
                  "cmdline", "ready_text")
_BUNDLE_COLUMNS = ", ".join(f"b.{c}" for c in _BUNDLE_FIELDS)
_VM_FIELDS = ("desktop_id", "hypervisor", "state", "reason", "since", "mode",
              "auto_stop_seconds", "self_service")
# The VM part of a desktop row (all NULL for a desktop that is no VM), after its own columns.
VM_COLUMNS = ", ".join(f"v.{c}" for c in _VM_FIELDS) + ", " + _BUNDLE_COLUMNS
# Joined to "desktops d".
VM_JOIN = ("LEFT JOIN desktop_vms v ON v.desktop_id = d.id"
           " LEFT JOIN bundles b ON b.id = v.bundle_id")
_RUN_COLUMNS = ("desktop_id, desktop_name, started_at, ended_at, mode, hourly_rate,"
                " monthly_rate")
# Sessions that reached their desktop (a failed attempt never did; a starting one not yet).
_CONNECTED = "('active', 'closed')"


def _policy_text(policy: Iterable[str]) -> str:
    """A self-service policy as stored: sorted, comma-separated, '' for nothing."""
    items = sorted(set(policy))
    if any(not item or "," in item for item in items):
        raise ValueError(f"not a self-service action list: {items!r}")
    return ",".join(items)


def _policy(text: str) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


def _bundle(row: Sequence[Any]) -> Bundle:
    (bid, name, vcpus, memory, root, user, image, protocol, hourly, monthly, policy, kernel,
     initrd, cmdline, ready_text) = row
    return Bundle(int(bid), str(name), int(vcpus), int(memory), int(root), int(user), str(image),
                  str(protocol), float(hourly), float(monthly), _policy(str(policy)),
                  str(kernel), str(initrd), str(cmdline), str(ready_text))


def desktop_vm(row: Sequence[Any]) -> DesktopVm | None:
    """The VM from a desktop row's ``VM_COLUMNS``; None for a desktop that is no VM."""
    did, hypervisor, state, reason, since, mode, auto_stop, policy = row[:len(_VM_FIELDS)]
    if did is None:
        return None
    return DesktopVm(int(did), _bundle(row[len(_VM_FIELDS):]), str(hypervisor), str(state),
                     str(reason), float(since), str(mode), int(auto_stop),
                     None if policy is None else _policy(str(policy)))


def _run(row: Sequence[Any]) -> VmRun:
    did, name, started, ended, mode, hourly, monthly = row
    return VmRun(int(did), str(name), float(started), None if ended is None else float(ended),
                 str(mode), float(hourly), float(monthly))


def _bundle_values(bundle: Bundle) -> tuple[Any, ...]:
    """The bundle's values in the order of ``_BUNDLE_FIELDS[1:]`` (all but its id)."""
    return (bundle.name, bundle.vcpus, bundle.memory_mib, bundle.root_mib, bundle.user_mib,
            bundle.base_image, bundle.protocol, bundle.hourly_rate, bundle.monthly_rate,
            _policy_text(bundle.self_service), bundle.kernel, bundle.initrd, bundle.cmdline,
            bundle.ready_text)


class VmTables:
    """Bundles, desktop VMs, their runs and start times (see the module's docstring)."""

    if TYPE_CHECKING:  # provided by SQLiteStore
        async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any: ...
        async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
        async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int: ...
        def _write(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]: ...
        async def _desktops(self, where: str, args: Sequence[Any] = ()) -> list[Desktop]: ...
        async def get_desktop(self, desktop_id: int) -> Desktop | None: ...

    # bundles ---------------------------------------------------------------------------------
    async def create_bundle(self, bundle: Bundle) -> Bundle:
        """A new bundle (``bundle.id`` is ignored); Conflict when its name is taken."""
        names = ", ".join(_BUNDLE_FIELDS[1:])
        marks = ", ".join("?" for _ in _BUNDLE_FIELDS)  # and created_at
        try:
            row = await self._one(
                f"INSERT INTO bundles ({names}, created_at) VALUES ({marks}) RETURNING id",
                (*_bundle_values(bundle), time.time()))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"bundle {bundle.name!r} already exists") from exc
        created = await self.get_bundle(int(row[0]))
        assert created is not None
        return created

    async def get_bundle(self, bundle_id: int) -> Bundle | None:
        row = await self._one(f"SELECT {_BUNDLE_COLUMNS} FROM bundles b WHERE b.id = ?",
                              (bundle_id,))
        return _bundle(row) if row else None

    async def get_bundle_by_name(self, name: str) -> Bundle | None:
        row = await self._one(f"SELECT {_BUNDLE_COLUMNS} FROM bundles b WHERE b.name = ?",
                              (name,))
        return _bundle(row) if row else None

    async def list_bundles(self) -> list[Bundle]:
        return [_bundle(r) for r in
                await self._all(f"SELECT {_BUNDLE_COLUMNS} FROM bundles b ORDER BY b.name")]

    async def update_bundle(self, bundle: Bundle) -> None:
        """Every field of the bundle with ``bundle.id``; Conflict when its new name is taken."""
        columns = ", ".join(f"{n} = ?" for n in _BUNDLE_FIELDS[1:])
        try:
            await self._exec(f"UPDATE bundles SET {columns} WHERE id = ?",
                             (*_bundle_values(bundle), bundle.id))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"bundle {bundle.name!r} already exists") from exc

    async def bundle_use_count(self, bundle_id: int) -> int:
        """How many desktop VMs are of this bundle."""
        row = await self._one("SELECT COUNT(*) FROM desktop_vms WHERE bundle_id = ?",
                              (bundle_id,))
        return int(row[0])

    async def delete_bundle(self, bundle_id: int) -> bool:
        """Delete a bundle no desktop uses (Conflict when one does); False when there is none."""
        async with self._write() as db:
            async with db.execute(
                    "SELECT name, (SELECT COUNT(*) FROM desktop_vms WHERE bundle_id = b.id)"
                    " FROM bundles b WHERE b.id = ?", (bundle_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            name, used = str(row[0]), int(row[1])
            if used:
                raise Conflict(f"bundle {name!r} is used by {used} desktop{'s' if used > 1 else ''}")
            async with db.execute("DELETE FROM bundles WHERE id = ?", (bundle_id,)) as cur:
                return int(cur.rowcount) == 1

    # desktop VMs -----------------------------------------------------------------------------
    async def create_desktop_vm(self, name: str, vm: DesktopVm, *, protocol: str = "vnc",
                                host: str = "", port: int = 0, password_enc: str | None = None,
                                options: Mapping[str, str] | None = None) -> Desktop:
        """A desktop (provider "libvirt") and its VM, in one transaction (``vm.desktop_id`` is
        ignored). Conflict when the name is taken, NotFound when the bundle is gone; either way
        nothing is written."""
        own = None if vm.own_self_service is None else _policy_text(vm.own_self_service)
        async with self._write() as db:
            try:
                async with db.execute(
                        "INSERT INTO desktops (name, provider, host, port, password_enc,"
                        " created_at, protocol, options) VALUES (?, 'libvirt', ?, ?, ?, ?, ?, ?)"
                        " RETURNING id",
                        (name, host, port, password_enc, time.time(), protocol,
                         json.dumps(dict(options or {}), sort_keys=True))) as cur:
                    row = await cur.fetchone()
            except aiosqlite.IntegrityError as exc:
                raise Conflict(f"desktop {name!r} already exists") from exc
            assert row is not None
            desktop_id = int(row[0])
            try:
                await db.execute(
                    "INSERT INTO desktop_vms (desktop_id, bundle_id, hypervisor, state, reason,"
                    " since, mode, auto_stop_seconds, self_service)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (desktop_id, vm.bundle.id, vm.hypervisor, vm.state, vm.reason, vm.since,
                     vm.mode, vm.auto_stop_seconds, own))
            except aiosqlite.IntegrityError as exc:
                raise NotFound(f"bundle {vm.bundle.name!r} (#{vm.bundle.id}) does not exist"
                               ) from exc
        desktop = await self.get_desktop(desktop_id)
        assert desktop is not None
        return desktop

    async def move_vm_state(self, desktop_id: int, expected: Collection[str], state: str,
                            reason: str, at: float) -> bool:
        """Compare-and-set: the VM enters ``state`` (with ``reason``, since ``at``) only from
        one of the ``expected`` states; True when it did. Of concurrent movers from one state,
        in this process or another, exactly one wins."""
        if not expected:
            return False
        marks = ", ".join("?" for _ in expected)
        return await self._exec(
            f"UPDATE desktop_vms SET state = ?, reason = ?, since = ?"
            f" WHERE desktop_id = ? AND state IN ({marks})",
            (state, reason, at, desktop_id, *expected)) == 1

    async def set_vm_mode(self, desktop_id: int, mode: str, auto_stop_seconds: int) -> None:
        await self._exec(
            "UPDATE desktop_vms SET mode = ?, auto_stop_seconds = ? WHERE desktop_id = ?",
            (mode, auto_stop_seconds, desktop_id))

    async def set_vm_self_service(self, desktop_id: int, policy: tuple[str, ...] | None) -> None:
        """The desktop's own self-service policy; None: its bundle's."""
        await self._exec("UPDATE desktop_vms SET self_service = ? WHERE desktop_id = ?",
                         (None if policy is None else _policy_text(policy), desktop_id))

    async def list_desktop_vms(self) -> list[Desktop]:
        """The desktops that are VMs, by name."""
        return await self._desktops("WHERE v.desktop_id IS NOT NULL")

    # usage -----------------------------------------------------------------------------------
    async def open_vm_run(self, desktop_id: int, desktop_name: str, at: float, mode: str,
                          hourly_rate: float, monthly_rate: float) -> bool:
        """A run of the desktop's VM begins at ``at``; False (nothing written) when one is open
        already. Atomic: of concurrent openers, one opens it."""
        return await self._exec(
            f"INSERT INTO vm_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, NULL, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (desktop_id, desktop_name, at, mode, hourly_rate, monthly_rate)) == 1

    async def close_vm_run(self, desktop_id: int, at: float) -> bool:
        """The desktop's open run ends at ``at``; False when none was open."""
        return await self._exec(
            "UPDATE vm_runs SET ended_at = ? WHERE desktop_id = ? AND ended_at IS NULL",
            (at, desktop_id)) == 1

    async def vm_runs(self, since: float, until: float,
                      desktop_id: int | None = None) -> list[VmRun]:
        """Runs that overlap [since, until), open ones included, by start time."""
        where = "started_at < ? AND (ended_at IS NULL OR ended_at > ?)"
        args: list[Any] = [until, since]
        if desktop_id is not None:
            where += " AND desktop_id = ?"
            args.append(desktop_id)
        rows = await self._all(
            f"SELECT {_RUN_COLUMNS} FROM vm_runs WHERE {where} ORDER BY started_at, id", args)
        return [_run(r) for r in rows]

    async def record_vm_start(self, desktop_id: int, at: float, seconds: float) -> None:
        """A start of the desktop's VM at ``at`` took ``seconds``."""
        await self._exec("INSERT INTO vm_starts (desktop_id, at, seconds) VALUES (?, ?, ?)",
                         (desktop_id, at, seconds))

    async def vm_start_seconds(self, desktop_id: int, limit: int = 10) -> list[float]:
        """How long the desktop's last ``limit`` starts took, newest first."""
        rows = await self._all(
            "SELECT seconds FROM vm_starts WHERE desktop_id = ? ORDER BY at DESC, id DESC"
            " LIMIT ?", (desktop_id, limit))
        return [float(r[0]) for r in rows]

    async def desktop_last_use(self, desktop_id: int) -> tuple[int, float | None]:
        """(its sessions starting or active now, the latest end of its closed sessions): is it
        in use, and since when not. A failed attempt never used it."""
        row = await self._one(
            "SELECT (SELECT COUNT(*) FROM sessions WHERE desktop_id = ?"
            " AND state IN ('starting', 'active')),"
            " (SELECT MAX(ended_at) FROM sessions WHERE desktop_id = ? AND state = 'closed')",
            (desktop_id, desktop_id))
        return int(row[0]), None if row[1] is None else float(row[1])

    async def connected_intervals(self, since: float, until: float, *,
                                  desktop_id: int | None = None, user_id: int | None = None,
                                  ) -> list[tuple[int, int, float, float | None]]:
        """(desktop id, user id, started at, ended at or None) of the sessions that reached
        their desktop (active or closed; never a failed or starting attempt) and overlap
        [since, until), by start time."""
        where = (f"state IN {_CONNECTED} AND started_at < ?"
                 " AND (ended_at IS NULL OR ended_at > ?)")
        args: list[Any] = [until, since]
        for column, value in (("desktop_id", desktop_id), ("user_id", user_id)):
            if value is not None:
                where += f" AND {column} = ?"
                args.append(value)
        rows = await self._all(
            f"SELECT desktop_id, user_id, started_at, ended_at FROM sessions WHERE {where}"
            " ORDER BY started_at, id", args)
        return [(int(d), int(u), float(s), None if e is None else float(e)) for d, u, s, e in rows]
