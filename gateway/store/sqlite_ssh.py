"""The SQLite store's SSH hosts (a mixin of :class:`gateway.store.sqlite.SQLiteStore`; see
``sqlite_vms.py`` for the helpers). The private key is stored encrypted (the caller encrypts).
A host that a desktop or another host goes through is not deleted: desktops name their host
in their options (no foreign key), so the check and the deletion are one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from ..errors import Conflict, NotFound
from ..model import SshHostRecord

_COLUMNS = "id, name, address, port, user_name, host_key, policy, jump_id, created_at"
_EDITABLE = ("name", "address", "port", "user_name", "key_enc", "host_key", "policy", "jump_id")


def _host(row: Sequence[Any]) -> SshHostRecord:
    hid, name, address, port, user, host_key, policy, jump, created = row
    return SshHostRecord(int(hid), str(name), str(address), int(port), str(user), str(host_key),
                         str(policy), None if jump is None else int(jump), float(created))


class SshTables:
    if TYPE_CHECKING:  # provided by SQLiteStore
        async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any: ...
        async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
        async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int: ...
        def _write(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]: ...

    async def create_ssh_host(self, *, name: str, address: str, port: int, user: str,
                              key_enc: str, host_key: str, policy: str, jump_id: int | None,
                              created_at: float) -> SshHostRecord:
        try:
            row = await self._one(
                "INSERT INTO ssh_hosts (name, address, port, user_name, key_enc, host_key,"
                " policy, jump_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (name, address, port, user, key_enc, host_key, policy, jump_id, created_at))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"an SSH host named {name!r} already exists") from exc
        host = await self.get_ssh_host(int(row[0]))
        assert host is not None
        return host

    async def get_ssh_host(self, host_id: int) -> SshHostRecord | None:
        row = await self._one(f"SELECT {_COLUMNS} FROM ssh_hosts WHERE id = ?", (host_id,))
        return _host(row) if row else None

    async def get_ssh_host_by_name(self, name: str) -> SshHostRecord | None:
        row = await self._one(f"SELECT {_COLUMNS} FROM ssh_hosts WHERE name = ?", (name,))
        return _host(row) if row else None

    async def list_ssh_hosts(self) -> list[SshHostRecord]:
        return [_host(r) for r in await self._all(f"SELECT {_COLUMNS} FROM ssh_hosts ORDER BY name")]

    async def get_ssh_host_key_enc(self, host_id: int) -> str | None:
        row = await self._one("SELECT key_enc FROM ssh_hosts WHERE id = ?", (host_id,))
        return str(row[0]) if row else None

    async def update_ssh_host(self, host_id: int, **fields: Any) -> SshHostRecord:
        unknown = set(fields) - set(_EDITABLE)
        if unknown:
            raise ValueError(f"not SSH host fields: {sorted(unknown)}")
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            try:
                await self._exec(f"UPDATE ssh_hosts SET {sets} WHERE id = ?",  # noqa: S608 - names from _EDITABLE
                                 (*fields.values(), host_id))
            except aiosqlite.IntegrityError as exc:
                raise Conflict(f"an SSH host named {fields.get('name')!r} already exists") from exc
        host = await self.get_ssh_host(host_id)
        if host is None:
            raise NotFound("no such SSH host")
        return host

    async def record_ssh_host_key(self, host_id: int, line: str) -> bool:
        """Pin a first-use key: only while none is pinned (of two first connections, one)."""
        return await self._exec("UPDATE ssh_hosts SET host_key = ? WHERE id = ? AND host_key = ''",
                                (line, host_id)) == 1

    async def delete_ssh_host(self, host_id: int) -> list[str] | None:
        """Delete the host unless something goes through it, in one transaction: a desktop
        whose option ``via`` names it (a static desktop behind it, or one started on it) or a
        host that jumps through it. A desktop added through it at the same moment is either
        in before (and refuses this) or refused (``create_desktop``): none is left naming a
        host that is gone. Returns what goes through it, desktops first, by name ([] when it
        was deleted); None when there is no such host."""
        async with self._write() as db:
            async with db.execute("SELECT name FROM ssh_hosts WHERE id = ?", (host_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            async with db.execute(
                "SELECT name FROM desktops WHERE CASE WHEN json_valid(options)"
                " THEN json_extract(options, '$.via') END = ? ORDER BY name", (row[0],)) as cur:
                users = [str(r[0]) for r in await cur.fetchall()]
            async with db.execute("SELECT name FROM ssh_hosts WHERE jump_id = ? ORDER BY name",
                                  (host_id,)) as cur:
                users += [str(r[0]) for r in await cur.fetchall()]
            if not users:
                await db.execute("DELETE FROM ssh_hosts WHERE id = ?", (host_id,))
            return users
