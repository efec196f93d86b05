"""The SQLite store's kiosk tables: enrolled thin clients, their challenges and sign-in grants.

A mixin of :class:`gateway.store.sqlite.SQLiteStore` (see ``sqlite_vms.py`` for the helpers).
Secrets are stored as SHA-256 only. Every single-use secret (a pairing code, a challenge, a
sign-in grant) is spent by one statement that deletes or clears it and says whether it did, so
of concurrent uses, also from several gateway processes, exactly one succeeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from ..errors import Conflict, NotFound
from ..model import Kiosk

_KIOSK_COLUMNS = ("k.id, k.name, k.location, k.mode, k.desktop_id, k.input_allowed, k.user_id,"
                  " k.created_at, k.enrolled_at, k.revoked_at, k.pair_expires, k.last_seen,"
                  " k.last_ip, k.user_agent, k.person, k.shown_desktop, d.name")
_KIOSKS = "kiosks k LEFT JOIN desktops d ON d.id = k.desktop_id"
# What an admin may change with update_kiosk.
_EDITABLE = ("name", "location", "mode", "desktop_id", "input_allowed", "user_id")


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _kiosk(row: Sequence[Any]) -> Kiosk:
    (kid, name, location, mode, desktop_id, input_allowed, user_id, created, enrolled, revoked,
     pair_expires, seen, ip, agent, person, shown, desktop_name) = row
    return Kiosk(int(kid), str(name), str(location), str(mode),
                 None if desktop_id is None else int(desktop_id), bool(input_allowed),
                 None if user_id is None else int(user_id), float(created), _opt(enrolled),
                 _opt(revoked), _opt(pair_expires), _opt(seen), str(ip), str(agent), str(person),
                 str(shown), str(desktop_name or ""))


class KioskTables:
    """Kiosks, their challenges and sign-in grants (see the module's docstring)."""

    if TYPE_CHECKING:  # provided by SQLiteStore
        async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any: ...
        async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
        async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int: ...
        def _write(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]: ...

    async def create_kiosk(self, *, name: str, location: str, mode: str,
                           desktop_id: int | None, input_allowed: bool, created_at: float,
                           pair_code_hash: str, pair_expires: float) -> Kiosk:
        """A new kiosk waiting for its pairing code; Conflict when the name is taken."""
        try:
            row = await self._one(
                "INSERT INTO kiosks (name, location, mode, desktop_id, input_allowed, created_at,"
                " pair_code_hash, pair_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (name, location, mode, desktop_id, input_allowed, created_at, pair_code_hash,
                 pair_expires))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"a kiosk named {name!r} already exists") from exc
        kiosk = await self.get_kiosk(int(row[0]))
        assert kiosk is not None
        return kiosk

    async def get_kiosk(self, kiosk_id: int) -> Kiosk | None:
        row = await self._one(f"SELECT {_KIOSK_COLUMNS} FROM {_KIOSKS} WHERE k.id = ?",
                              (kiosk_id,))
        return _kiosk(row) if row else None

    async def list_kiosks(self) -> list[Kiosk]:
        rows = await self._all(f"SELECT {_KIOSK_COLUMNS} FROM {_KIOSKS} ORDER BY k.name")
        return [_kiosk(r) for r in rows]

    async def update_kiosk(self, kiosk_id: int, **fields: Any) -> Kiosk:
        """Change the named fields (``_EDITABLE``); NotFound, or Conflict on a taken name."""
        unknown = set(fields) - set(_EDITABLE)
        if unknown:
            raise ValueError(f"not kiosk fields: {sorted(unknown)}")
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            try:
                await self._exec(f"UPDATE kiosks SET {sets} WHERE id = ?",  # noqa: S608 - names from _EDITABLE
                                 (*fields.values(), kiosk_id))
            except aiosqlite.IntegrityError as exc:
                raise Conflict(f"a kiosk named {fields.get('name')!r} already exists") from exc
        kiosk = await self.get_kiosk(kiosk_id)
        if kiosk is None:
            raise NotFound("no such kiosk")
        return kiosk

    async def set_kiosk_pairing(self, kiosk_id: int, code_hash: str, expires: float) -> bool:
        """A new pairing code for the kiosk (replacing any unused one); False: no such kiosk."""
        return await self._exec(
            "UPDATE kiosks SET pair_code_hash = ?, pair_expires = ? WHERE id = ?",
            (code_hash, expires, kiosk_id)) == 1

    async def pair_kiosk(self, code_hash: str, now: float, public_key: str,
                         cred_hash: str) -> tuple[int, list[str]] | None:
        """Spend a pairing code that has not expired: the kiosk now holds ``public_key`` and the
        credential, and is enrolled again if it was revoked. Every web session of a device
        enrolled before ends. (Its id, the ids of those web sessions), or None (no such code)."""
        async with self._write() as db:
            async with db.execute(
                    "UPDATE kiosks SET pair_code_hash = NULL, pair_expires = NULL, public_key = ?,"
                    " cred_hash = ?, prev_cred_hash = NULL, cred_rotated_at = ?, enrolled_at = ?,"
                    " revoked_at = NULL WHERE pair_code_hash = ? AND pair_expires > ?"
                    " RETURNING id", (public_key, cred_hash, now, now, code_hash, now)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            # A device enrolled before (this one or another) leaves nothing open behind it.
            return int(row[0]), await self._end_kiosk_sessions(db, int(row[0]))

    async def kiosk_by_credential(self, cred_hash: str, now: float,
                                  grace: float) -> tuple[Kiosk, str, bool] | None:
        """The enrolled kiosk holding this credential: (kiosk, public key, whether this is the
        current credential). The one it replaced is still taken for ``grace`` seconds after the
        rotation (requests already on their way)."""
        row = await self._one(
            f"SELECT {_KIOSK_COLUMNS}, k.public_key, k.cred_hash = ? FROM {_KIOSKS}"
            " WHERE k.revoked_at IS NULL AND k.public_key IS NOT NULL AND (k.cred_hash = ?"
            " OR (k.prev_cred_hash = ? AND k.cred_rotated_at > ?))",
            (cred_hash, cred_hash, cred_hash, now - grace))
        if not row:
            return None
        return _kiosk(row[:-2]), str(row[-2]), bool(row[-1])

    async def kiosk_credential_rotated_at(self, kiosk_id: int) -> float | None:
        row = await self._one("SELECT cred_rotated_at FROM kiosks WHERE id = ?", (kiosk_id,))
        return _opt(row[0]) if row else None

    async def rotate_kiosk_credential(self, kiosk_id: int, old_hash: str, new_hash: str,
                                      now: float) -> bool:
        """Replace the current credential if it still is ``old_hash`` (one rotation wins)."""
        return await self._exec(
            "UPDATE kiosks SET prev_cred_hash = cred_hash, cred_hash = ?, cred_rotated_at = ?"
            " WHERE id = ? AND cred_hash = ? AND revoked_at IS NULL",
            (new_hash, now, kiosk_id, old_hash)) == 1

    async def add_kiosk_challenge(self, kiosk_id: int, nonce_hash: str, now: float,
                                  expires: float, keep: int) -> None:
        """A challenge for the kiosk; its expired ones go, and at most ``keep`` stay open."""
        async with self._write() as db:
            await db.execute("DELETE FROM kiosk_challenges WHERE kiosk_id = ? AND (expires <= ?"
                             " OR nonce_hash NOT IN (SELECT nonce_hash FROM kiosk_challenges"
                             " WHERE kiosk_id = ? ORDER BY expires DESC LIMIT ?))",
                             (kiosk_id, now, kiosk_id, keep - 1))
            await db.execute("INSERT INTO kiosk_challenges (kiosk_id, nonce_hash, expires)"
                             " VALUES (?, ?, ?)", (kiosk_id, nonce_hash, expires))

    async def take_kiosk_challenge(self, kiosk_id: int, nonce_hash: str, now: float) -> bool:
        """Spend the kiosk's challenge: True once, if it exists and has not expired."""
        row = await self._one(
            "DELETE FROM kiosk_challenges WHERE kiosk_id = ? AND nonce_hash = ? RETURNING expires",
            (kiosk_id, nonce_hash))
        return bool(row) and float(row[0]) > now

    async def add_kiosk_grant(self, grant_hash: str, kiosk_id: int, now: float,
                              expires: float) -> None:
        async with self._write() as db:
            await db.execute("DELETE FROM kiosk_grants WHERE expires <= ?", (now,))
            await db.execute("INSERT INTO kiosk_grants (grant_hash, kiosk_id, expires)"
                             " VALUES (?, ?, ?)", (grant_hash, kiosk_id, expires))

    async def take_kiosk_grant(self, grant_hash: str, now: float) -> int | None:
        """Spend a sign-in grant: its kiosk's id once, if it has not expired and the kiosk is
        still enrolled; else None."""
        row = await self._one("DELETE FROM kiosk_grants WHERE grant_hash = ?"
                              " RETURNING kiosk_id, expires", (grant_hash,))
        if not row or float(row[1]) <= now:
            return None
        kiosk = await self.get_kiosk(int(row[0]))
        return kiosk.id if kiosk is not None and kiosk.enrolled else None

    async def kiosk_seen(self, kiosk_id: int, *, now: float, ip: str, user_agent: str,
                         person: str, desktop: str) -> None:
        await self._exec(
            "UPDATE kiosks SET last_seen = ?, last_ip = ?, user_agent = ?, person = ?,"
            " shown_desktop = ? WHERE id = ?", (now, ip, user_agent, person, desktop, kiosk_id))

    async def kiosk_person_left(self, kiosk_id: int) -> None:
        await self._exec("UPDATE kiosks SET person = '', shown_desktop = '' WHERE id = ?",
                         (kiosk_id,))

    async def kiosk_web_sessions(self, kiosk_id: int) -> list[str]:
        rows = await self._all("SELECT id FROM web_sessions WHERE kiosk_id = ?", (kiosk_id,))
        return [str(r[0]) for r in rows]

    async def revoke_kiosk(self, kiosk_id: int, now: float) -> list[str] | None:
        """The kiosk's credential, key, codes, challenges and grants are gone and every web
        session on it ends, in one transaction: the ids of those web sessions (their relays
        are to be ended). None: no such kiosk."""
        async with self._write() as db:
            async with db.execute(
                    "UPDATE kiosks SET revoked_at = COALESCE(revoked_at, ?), public_key = NULL,"
                    " cred_hash = NULL, prev_cred_hash = NULL, pair_code_hash = NULL,"
                    " pair_expires = NULL, person = '', shown_desktop = '' WHERE id = ?"
                    " RETURNING id", (now, kiosk_id)) as cur:
                if await cur.fetchone() is None:
                    return None
            return await self._end_kiosk_sessions(db, kiosk_id)

    async def delete_kiosk(self, kiosk_id: int) -> list[str] | None:
        """Delete the kiosk: the ids of the web sessions on it that ended; None: no such kiosk."""
        async with self._write() as db:
            ended = await self._end_kiosk_sessions(db, kiosk_id)
            async with db.execute("DELETE FROM kiosks WHERE id = ? RETURNING user_id",
                                  (kiosk_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            return ended

    @staticmethod
    async def _end_kiosk_sessions(db: aiosqlite.Connection, kiosk_id: int) -> list[str]:
        await db.execute("DELETE FROM kiosk_challenges WHERE kiosk_id = ?", (kiosk_id,))
        await db.execute("DELETE FROM kiosk_grants WHERE kiosk_id = ?", (kiosk_id,))
        async with db.execute("DELETE FROM web_sessions WHERE kiosk_id = ? RETURNING id",
                              (kiosk_id,)) as cur:
            return [str(r[0]) for r in await cur.fetchall()]
