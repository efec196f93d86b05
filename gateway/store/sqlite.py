"""SQLite store (aiosqlite): the embedded default.

One module on purpose: it is the Store Protocol's SQLite implementation, every SQL statement of
the embedded store in one place, beside the connections and transactions they run on; except the
desktop VM tables' statements (bundles, VMs, their runs and start times), which live in
``sqlite_vms.py``, a mixin of :class:`SQLiteStore` on the same connections and helpers.

Concurrency: one connection serves every read and write of this process, one statement at a
time (``_lock``), each statement in its own autocommit transaction whose cursor is closed before
the next begins. So a read never holds a snapshot while another connection (the audit writer,
another process) commits, and a write never has to upgrade a stale read transaction, which
SQLite refuses at once with "database is locked" instead of waiting. A write waits up to
``BUSY_TIMEOUT_MS`` for another connection's write to finish; past that the request fails with
``StoreBusy`` (HTTP 503, "try again") and a logged warning, and nothing is half written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Conflict, NotFound, StoreBusy
from ..model import (
    AUDIT_GENESIS,
    ApiToken,
    AuditEvent,
    Desktop,
    OidcLogin,
    PendingCaps,
    Session,
    SessionState,
    User,
    WebSession,
    WebSessionState,
)
from ..names import name_key
from .migrations import MIGRATIONS
from .sqlite_kiosks import KioskTables
from .sqlite_ssh import SshTables
from .sqlite_vms import VM_COLUMNS, VM_JOIN, VmTables, desktop_vm

log = logging.getLogger("deskgate.store")

# How long a write waits for another connection's write transaction to end.
BUSY_TIMEOUT_MS = 5000

_USER_COLUMNS = ("id, name, is_admin, disabled, totp_enrolled, failed_attempts, locked_until,"
                 " source, name_key")
# A user reaches a desktop assigned to them, or to one of their groups.
_ASSIGNED_TO_USER = ("SELECT desktop_id FROM assignments WHERE user_id = ? UNION"
                     " SELECT g.desktop_id FROM group_assignments g JOIN user_groups u"
                     " ON u.group_name = g.group_name WHERE u.user_id = ?")
# A desktop with its VM, if it is one: "SELECT {_DESKTOP_COLUMNS} FROM {_DESKTOPS}".
_DESKTOP_COLUMNS = ("d.id, d.name, d.provider, d.host, d.port, d.protocol,"
                    " d.password_enc IS NOT NULL, d.maintenance, d.options, " + VM_COLUMNS)
_DESKTOPS = "desktops d " + VM_JOIN
_TOKEN_COLUMNS = "id, name, user_id, read_only, created_at, expires_at, last_used"  # noqa: S105
_WEB_SESSION_COLUMNS = ("id, user_id, state, csrf_token, created_at, last_seen, client_ip,"
                        " user_agent, idp, id_token_enc, kiosk_id, device")


def _web_session(row: Sequence[Any]) -> WebSession:
    return WebSession(row[0], int(row[1]), WebSessionState(row[2]), row[3], float(row[4]),
                      float(row[5]), row[6], row[7], row[8], row[9],
                      None if row[10] is None else int(row[10]), bool(row[11]))


_SESSION_COLUMNS = ("id, user_id, desktop_id, web_session_id, state, started_at, ended_at,"
                    " close_reason, close_final, bytes_up, bytes_down, client_ip, user_agent, tries")
# A session row in one of these states is over: nothing changes it any more, except a retry
# of a failed attempt (``retry_session``).
_ENDED = "('closed', 'failed')"


def _user(row: Iterable[Any]) -> User:
    uid, name, admin, disabled, enrolled, failed, locked, source, key = row
    return User(int(uid), str(name), bool(admin), bool(disabled), bool(enrolled), int(failed),
                float(locked), str(source), None if key is None else str(key))


_AUDIT_COLUMNS = ("id, at, kind, user_name, desktop_name, client_ip, detail, prev_hash,"
                  " row_hash")


def _audit(r: Sequence[Any]) -> AuditEvent:
    return AuditEvent(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])


def _desktop(row: Sequence[Any]) -> Desktop:
    did, name, provider, host, port, protocol, has_pw, maintenance, options = row[:9]
    parsed = json.loads(options or "{}")
    return Desktop(int(did), str(name), str(provider), str(host), int(port), str(protocol),
                   bool(has_pw), bool(maintenance),
                   tuple(sorted((str(k), str(v)) for k, v in parsed.items())),
                   desktop_vm(row[9:]))


def _token(r: Sequence[Any]) -> ApiToken:
    return ApiToken(int(r[0]), r[1], int(r[2]), bool(r[3]), float(r[4]), float(r[5]),
                    None if r[6] is None else float(r[6]))


def _session(row: Sequence[Any]) -> Session:
    return Session(row[0], int(row[1]), int(row[2]), row[3], SessionState(row[4]), float(row[5]),
                   None if row[6] is None else float(row[6]), row[7], bool(row[8]), int(row[9]),
                   int(row[10]), row[11], row[12], int(row[13]))


@contextlib.contextmanager
def _busy(sql: str) -> Iterator[None]:
    """Another connection held the write lock for longer than the busy timeout: say so in the
    log (the statement's kind, never its values) and fail the request with a clear 503."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        log.warning("database busy for over %d ms; refused: %s", BUSY_TIMEOUT_MS,
                    " ".join(sql.split()[:3]))
        raise StoreBusy() from None


class SQLiteStore(VmTables, KioskTables, SshTables):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._audit_db: aiosqlite.Connection | None = None
        self._audit_lock = asyncio.Lock()
        self._lock = asyncio.Lock()  # one statement at a time on the main connection
        self._write_db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.path.chmod(0o600)
        await self._migrate()
        await self._fill_name_keys()

    async def close(self) -> None:
        if self._write_db is not None:
            await self._write_db.close()
            self._write_db = None
        if self._audit_db is not None:
            await self._audit_db.close()
            self._audit_db = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = await self.schema_version()
        for number, steps in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql in steps:
                    await self.db.execute(sql)
                await self.db.execute("DELETE FROM schema_version")
                await self.db.execute("INSERT INTO schema_version VALUES (?)", (number,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def _fill_name_keys(self) -> None:
        """Give each account without one its look-alike key, oldest first. An account whose key
        an older one holds keeps an empty key (both accounts stay as they are) and is reported."""
        rows = await self._all("SELECT id, name FROM users WHERE name_key IS NULL ORDER BY id")
        for uid, name in rows:
            key = name_key(str(name))
            try:
                await self._exec("UPDATE users SET name_key = ? WHERE id = ?", (key, uid))
            except aiosqlite.IntegrityError:
                older = await self._one("SELECT id, name FROM users WHERE name_key = ?", (key,))
                log.warning("user #%s %r looks like user #%s %r: both accounts are kept; give"
                            " desktops by id (deskgate assign DESKTOP --user-id N), and disable"
                            " the one that should not be used", uid, name,
                            older[0] if older else "?", older[1] if older else "?")

    async def schema_version(self) -> int:
        row = await self._one("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self._lock:
            with _busy(sql):
                async with self.db.execute(sql, args) as cur:
                    return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            with _busy(sql):
                async with self.db.execute(sql, args) as cur:
                    return list(await cur.fetchall())

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._lock:
            with _busy(sql):
                async with self.db.execute(sql, args) as cur:
                    return int(cur.rowcount)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction on the store's own writer connection.

        BEGIN IMMEDIATE takes the database's write lock up front and waits for it (busy timeout),
        where a statement on the shared connection could fail at once with "database is locked"
        (a read snapshot that turns into a write); and no other coroutine's statement runs
        inside it. Used where a check and its write must be one step, also across processes.
        """
        async with self._write_lock:
            if self._write_db is None:
                self._write_db = await aiosqlite.connect(self.path, isolation_level=None)
                await self._write_db.execute("PRAGMA busy_timeout=10000")
                await self._write_db.execute("PRAGMA foreign_keys=ON")
            db = self._write_db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _write_one(self, sql: str, args: Mapping[str, Any] | Sequence[Any]) -> Any:
        """One statement in its own write transaction; its first row (RETURNING), or None."""
        async with self._write() as db, db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _write_exec(self, sql: str, args: Mapping[str, Any] | Sequence[Any]) -> int:
        async with self._write() as db, db.execute(sql, args) as cur:
            return int(cur.rowcount)

    # users ---------------------------------------------------------------------------------
    async def create_user(self, name: str, password_hash: str | None, is_admin: bool,
                          source: str = "local") -> User:
        """A new account. Conflict when the name, or a name that looks like it (same
        :func:`name_key`), is taken."""
        key = name_key(name)
        try:
            await self._exec(
                "INSERT INTO users (name, password_hash, is_admin, created_at, source, name_key)"
                " VALUES (?, ?, ?, ?, ?, ?)", (name, password_hash, is_admin, time.time(), source,
                                               key))
        except aiosqlite.IntegrityError as exc:
            row = await self._one("SELECT id, name FROM users WHERE name = ? OR name_key = ?"
                                  " ORDER BY name = ? DESC LIMIT 1", (name, key, name))
            if row is None or row[1] == name:
                raise Conflict(f"user {name!r} already exists") from exc
            raise Conflict(f"user name {name!r} is taken: it looks like the existing user"
                           f" {row[1]!r} (#{row[0]})") from exc
        user = await self.get_user_by_name(name)
        assert user is not None
        return user

    async def get_user(self, user_id: int) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(row) if row else None

    async def get_user_by_name(self, name: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        return [_user(r) for r in await self._all(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")]

    async def get_password_hash(self, user_id: int) -> str | None:
        row = await self._one("SELECT password_hash FROM users WHERE id = ?", (user_id,))
        return row[0] if row else None

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._exec("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    async def set_admin(self, user_id: int, is_admin: bool) -> None:
        await self._exec("UPDATE users SET is_admin = ? WHERE id = ?", (is_admin, user_id))

    async def link_identity(self, provider: str, subject: str, user_id: int) -> None:
        try:
            await self._exec("INSERT INTO identities (provider, subject, user_id) VALUES (?, ?, ?)",
                             (provider, subject, user_id))
        except aiosqlite.IntegrityError as exc:
            raise Conflict("this identity is already linked to an account") from exc

    async def list_identities(self) -> list[tuple[str, str, int]]:
        """(provider, subject, user id) of every single sign-on identity."""
        return [(str(p), str(s), int(u)) for p, s, u in await self._all(
            "SELECT provider, subject, user_id FROM identities ORDER BY provider, subject")]

    async def identity_user(self, provider: str, subject: str) -> int | None:
        row = await self._one("SELECT user_id FROM identities WHERE provider = ? AND subject = ?",
                              (provider, subject))
        return int(row[0]) if row else None

    async def set_user_groups(self, user_id: int, groups: Sequence[str]) -> None:
        await self._exec("DELETE FROM user_groups WHERE user_id = ?", (user_id,))
        for group in sorted(set(groups)):
            await self._exec("INSERT INTO user_groups (user_id, group_name) VALUES (?, ?)",
                             (user_id, group))

    async def user_groups(self, user_id: int) -> list[str]:
        rows = await self._all(
            "SELECT group_name FROM user_groups WHERE user_id = ? ORDER BY group_name", (user_id,))
        return [r[0] for r in rows]

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        await self._exec("UPDATE users SET disabled = ? WHERE id = ?", (disabled, user_id))

    async def reserve_attempt(self, user_id: int, threshold: int, now: float,
                              lock_until: float) -> int | None:
        """Count one sign-in attempt on an account BEFORE it is checked, in one atomic step.

        Refused (None, nothing counted) while the account is locked. Otherwise the attempt counts
        as a failure until :meth:`release_attempt` gives it back, and the attempt that reaches
        ``threshold`` locks the account at once, so concurrent attempts are refused while it is
        checked. After a lock has run out, one more attempt may be checked (its failure locks
        again). Returns the count including this attempt.
        """
        base = ("CASE WHEN locked_until > 0 AND failed_attempts >= :t THEN :t - 1"
                " ELSE failed_attempts END")
        row = await self._write_one(
            f"UPDATE users SET failed_attempts = {base} + 1,"
            f" locked_until = CASE WHEN {base} + 1 >= :t THEN :until ELSE 0 END"
            " WHERE id = :id AND locked_until <= :now RETURNING failed_attempts",
            {"t": threshold, "until": lock_until, "id": user_id, "now": now})
        return None if row is None else int(row[0])

    async def release_attempt(self, user_id: int, threshold: int) -> None:
        """Give back one reserved attempt that passed; lift the lock it may have set."""
        await self._write_exec(
            "UPDATE users SET failed_attempts = CASE WHEN failed_attempts > 0"
            " THEN failed_attempts - 1 ELSE 0 END,"
            " locked_until = CASE WHEN failed_attempts - 1 < :t THEN 0 ELSE locked_until END"
            " WHERE id = :id", {"t": threshold, "id": user_id})

    async def clear_failures(self, user_id: int) -> None:
        await self._write_exec(
            "UPDATE users SET failed_attempts = 0, locked_until = 0 WHERE id = ?", (user_id,))

    async def take_rate_slot(self, bucket: str, now: float, window_start: float,
                             limit: int) -> int | None:
        """One event in ``bucket`` at ``now`` unless ``limit`` of them are after
        ``window_start``: the slot's id, or None (nothing written). Atomic."""
        row = await self._write_one(
            "INSERT INTO rate_slots (bucket, at) SELECT :b, :now WHERE (SELECT COUNT(*) FROM"
            " rate_slots WHERE bucket = :b AND at > :start) < :limit RETURNING id",
            {"b": bucket, "now": now, "start": window_start, "limit": limit})
        return None if row is None else int(row[0])

    async def give_back_rate_slot(self, slot_id: int) -> None:
        await self._write_exec("DELETE FROM rate_slots WHERE id = ?", (slot_id,))

    async def purge_rate_slots(self, before: float) -> int:
        return await self._write_exec("DELETE FROM rate_slots WHERE at <= ?", (before,))

    # second factor ---------------------------------------------------------------------------
    async def get_totp(self, user_id: int) -> tuple[str | None, bool, int]:
        row = await self._one(
            "SELECT totp_secret_enc, totp_enrolled, totp_last_step FROM users WHERE id = ?",
            (user_id,))
        if not row:
            return None, False, -1
        return row[0], bool(row[1]), int(row[2])

    async def set_totp_secret(self, user_id: int, secret_enc: str) -> None:
        await self._exec(
            "UPDATE users SET totp_secret_enc = ?, totp_enrolled = FALSE, totp_last_step = -1"
            " WHERE id = ?", (secret_enc, user_id))

    async def mark_totp_enrolled(self, user_id: int, step: int) -> None:
        await self._exec("UPDATE users SET totp_enrolled = TRUE, totp_last_step = ? WHERE id = ?",
                         (step, user_id))

    async def advance_totp_step(self, user_id: int, step: int) -> bool:
        """Accept ``step`` only if it is newer than the last accepted one (replay guard)."""
        changed = await self._exec(
            "UPDATE users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
            (step, user_id, step))
        return changed == 1

    async def reset_totp(self, user_id: int) -> None:
        await self._exec(
            "UPDATE users SET totp_secret_enc = NULL, totp_enrolled = FALSE, totp_last_step = -1"
            " WHERE id = ?", (user_id,))
        await self._exec("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))

    async def replace_recovery_codes(self, user_id: int, code_hashes: Sequence[str]) -> None:
        await self._exec("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
        for code_hash in code_hashes:
            await self._exec("INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                             (user_id, code_hash))

    async def use_recovery_code(self, user_id: int, code_hash: str) -> bool:
        changed = await self._exec(
            "DELETE FROM recovery_codes WHERE user_id = ? AND code_hash = ?", (user_id, code_hash))
        return changed == 1

    async def count_recovery_codes(self, user_id: int) -> int:
        row = await self._one("SELECT COUNT(*) FROM recovery_codes WHERE user_id = ?", (user_id,))
        return int(row[0])

    # web sessions ------------------------------------------------------------------------------
    async def create_web_session(self, ws: WebSession) -> None:
        await self._exec(
            "INSERT INTO web_sessions (id, user_id, state, csrf_token, created_at, last_seen,"
            " client_ip, user_agent, idp, id_token_enc, kiosk_id, device)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ws.id, ws.user_id, ws.state.value, ws.csrf_token, ws.created_at, ws.last_seen,
             ws.client_ip, ws.user_agent, ws.idp, ws.id_token_enc, ws.kiosk_id, ws.device))

    async def get_web_session(self, ws_id: str) -> WebSession | None:
        row = await self._one(
            f"SELECT {_WEB_SESSION_COLUMNS} FROM web_sessions WHERE id = ?", (ws_id,))
        return _web_session(row) if row else None

    async def set_web_session_state(self, ws_id: str, state: WebSessionState) -> None:
        await self._exec("UPDATE web_sessions SET state = ? WHERE id = ?", (state.value, ws_id))

    async def touch_web_session(self, ws_id: str, now: float) -> None:
        await self._exec("UPDATE web_sessions SET last_seen = ? WHERE id = ?", (now, ws_id))

    async def get_web_sessions(self, ws_ids: Collection[str]) -> dict[str, WebSession]:
        """The web sessions among ``ws_ids`` that still exist, by id: one query however many."""
        if not ws_ids:
            return {}
        rows = await self._all(
            f"SELECT {_WEB_SESSION_COLUMNS} FROM web_sessions"
            " WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(ws_ids)),))
        return {row[0]: _web_session(row) for row in rows}

    async def touch_web_sessions(self, seen: Mapping[str, float]) -> None:
        """``last_seen`` moved forward (never back) for each web session id: one statement."""
        if not seen:
            return
        await self._exec(
            "UPDATE web_sessions AS w SET last_seen = MAX(w.last_seen, t.seen) FROM"
            " (SELECT key AS id, value AS seen FROM json_each(?)) AS t WHERE w.id = t.id",
            (json.dumps(dict(seen)),))

    async def disabled_or_gone_users(self, user_ids: Collection[int]) -> set[int]:
        """The ids among ``user_ids`` whose account is disabled or deleted: one query."""
        if not user_ids:
            return set()
        wanted = {int(u) for u in user_ids}
        rows = await self._all(
            "SELECT id FROM users WHERE disabled = 0 AND id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(wanted)),))
        return wanted - {int(r[0]) for r in rows}

    async def delete_web_session(self, ws_id: str) -> None:
        await self._exec("DELETE FROM web_sessions WHERE id = ?", (ws_id,))

    async def delete_user_web_sessions(self, user_id: int) -> None:
        await self._exec("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))

    async def set_web_session_recovery_codes(self, ws_id: str, codes_enc: str | None) -> None:
        await self._exec("UPDATE web_sessions SET recovery_codes_enc = ? WHERE id = ?",
                         (codes_enc, ws_id))

    async def get_web_session_recovery_codes(self, ws_id: str) -> str | None:
        row = await self._one("SELECT recovery_codes_enc FROM web_sessions WHERE id = ?",
                              (ws_id,))
        return None if row is None or row[0] is None else str(row[0])

    # desktops -----------------------------------------------------------------------------------
    async def create_desktop(self, name: str, provider: str, host: str, port: int,
                             password_enc: str | None, protocol: str = "vnc",
                             options: Mapping[str, str] | None = None) -> Desktop:
        """A new desktop. One that goes through an SSH host (the option ``via``) is made only
        while that host exists, in the same statement: a removal of the host cannot slip in
        between (see ``delete_ssh_host``). NotFound when it does not exist."""
        options = dict(options or {})
        via = options.get("via") or None
        try:
            row = await self._write_one(
                "INSERT INTO desktops (name, provider, host, port, password_enc, created_at,"
                " protocol, options) SELECT ?, ?, ?, ?, ?, ?, ?, ?"
                " WHERE ? IS NULL OR EXISTS (SELECT 1 FROM ssh_hosts WHERE name = ?)"
                " RETURNING id",
                (name, provider, host, port, password_enc, time.time(), protocol,
                 json.dumps(options, sort_keys=True), via, via))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"desktop {name!r} already exists") from exc
        if row is None:
            raise NotFound(f"no SSH host named {via!r}")
        desktop = await self.get_desktop(int(row[0]))
        assert desktop is not None
        return desktop

    async def _desktops(self, where: str, args: Sequence[Any] = ()) -> list[Desktop]:
        """The desktops (each with its VM, if it is one) ``where`` selects, by name."""
        rows = await self._all(
            f"SELECT {_DESKTOP_COLUMNS} FROM {_DESKTOPS} {where} ORDER BY d.name", args)
        return [_desktop(r) for r in rows]

    async def get_desktop(self, desktop_id: int) -> Desktop | None:
        found = await self._desktops("WHERE d.id = ?", (desktop_id,))
        return found[0] if found else None

    async def get_desktop_by_name(self, name: str) -> Desktop | None:
        found = await self._desktops("WHERE d.name = ?", (name,))
        return found[0] if found else None

    async def get_desktop_password(self, desktop_id: int) -> str | None:
        row = await self._one("SELECT password_enc FROM desktops WHERE id = ?", (desktop_id,))
        return row[0] if row else None

    async def list_desktops(self) -> list[Desktop]:
        return await self._desktops("")

    async def assign_group(self, desktop_id: int, group: str) -> None:
        await self._exec(
            "INSERT INTO group_assignments (desktop_id, group_name) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING", (desktop_id, group))

    async def update_desktop(self, desktop_id: int, *, name: str, host: str, port: int,
                             maintenance: bool) -> None:
        try:
            await self._exec(
                "UPDATE desktops SET name = ?, host = ?, port = ?, maintenance = ? WHERE id = ?",
                (name, host, port, maintenance, desktop_id))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"desktop {name!r} already exists") from exc

    async def set_desktop_options(self, desktop_id: int, options: Mapping[str, str]) -> None:
        await self._exec("UPDATE desktops SET options = ? WHERE id = ?",
                         (json.dumps(dict(options), sort_keys=True), desktop_id))

    async def set_desktop_password(self, desktop_id: int, password_enc: str | None) -> None:
        await self._exec("UPDATE desktops SET password_enc = ? WHERE id = ?",
                         (password_enc, desktop_id))

    async def delete_desktop(self, desktop_id: int) -> bool:
        """Delete a desktop with its assignments and its VM record, in one transaction; its past
        sessions, VM runs and start times keep their rows."""
        async with self._write() as db:
            for table in ("assignments", "group_assignments", "user_credentials", "desktop_vms"):
                await db.execute(f"DELETE FROM {table} WHERE desktop_id = ?", (desktop_id,))
            async with db.execute("DELETE FROM desktops WHERE id = ?", (desktop_id,)) as cur:
                return int(cur.rowcount) == 1

    async def desktop_assignments(self, desktop_id: int) -> tuple[list[str], list[str]]:
        """(user names, group names) the desktop is assigned to."""
        users = await self._all(
            "SELECT u.name FROM assignments a JOIN users u ON u.id = a.user_id"
            " WHERE a.desktop_id = ? ORDER BY u.name", (desktop_id,))
        groups = await self._all(
            "SELECT group_name FROM group_assignments WHERE desktop_id = ? ORDER BY group_name",
            (desktop_id,))
        return [r[0] for r in users], [r[0] for r in groups]

    async def unassign(self, desktop_id: int, user_id: int) -> None:
        await self._exec("DELETE FROM assignments WHERE desktop_id = ? AND user_id = ?",
                         (desktop_id, user_id))

    async def unassign_group(self, desktop_id: int, group: str) -> None:
        await self._exec("DELETE FROM group_assignments WHERE desktop_id = ? AND group_name = ?",
                         (desktop_id, group))

    async def assign(self, desktop_id: int, user_id: int) -> None:
        await self._exec(
            "INSERT INTO assignments (desktop_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (desktop_id, user_id))

    async def is_assigned(self, desktop_id: int, user_id: int) -> bool:
        row = await self._one(f"SELECT 1 FROM ({_ASSIGNED_TO_USER}) a WHERE a.desktop_id = ?",
                              (user_id, user_id, desktop_id))
        return row is not None

    async def desktops_for_user(self, user_id: int) -> list[Desktop]:
        return await self._desktops(f"WHERE d.id IN ({_ASSIGNED_TO_USER})", (user_id, user_id))

    # sign-ins waiting for an identity provider's callback ----------------------------------
    # per-user RDP credentials -------------------------------------------------------------------
    async def get_user_credentials(self, user_id: int,
                                   desktop_id: int) -> tuple[str, str, str] | None:
        row = await self._one(
            "SELECT username, domain, password_enc FROM user_credentials"
            " WHERE user_id = ? AND desktop_id = ?", (user_id, desktop_id))
        return (row[0], row[1], row[2]) if row else None

    async def set_user_credentials(self, user_id: int, desktop_id: int, username: str,
                                   domain: str, password_enc: str) -> None:
        await self._exec(
            "INSERT INTO user_credentials (user_id, desktop_id, username, domain, password_enc,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, desktop_id) DO UPDATE"
            " SET username = excluded.username, domain = excluded.domain,"
            " password_enc = excluded.password_enc, updated_at = excluded.updated_at",
            (user_id, desktop_id, username, domain, password_enc, time.time()))

    async def delete_user_credentials(self, user_id: int, desktop_id: int) -> bool:
        return await self._exec(
            "DELETE FROM user_credentials WHERE user_id = ? AND desktop_id = ?",
            (user_id, desktop_id)) == 1

    async def save_oidc_login(self, state_hash: str, login: OidcLogin, *, client_ip: str = "",
                              caps: PendingCaps | None = None) -> str | None:
        """Store a pre-login; None when stored. With ``caps``, in one transaction: purge the
        expired ones, then store it only while every cap allows one more; else nothing is
        written and the answer names the cap that is full: "per_minute", "per_address" or
        "total"."""
        counts = {
            "total": "SELECT COUNT(*) FROM oidc_logins",
            "per_address": "SELECT COUNT(*) FROM oidc_logins WHERE client_ip = :ip",
            "per_minute": "SELECT COUNT(*) FROM oidc_logins WHERE client_ip = :ip"
                          " AND created_at > :minute"}
        full = ""
        args: dict[str, Any] = {
            "state": state_hash, "provider": login.provider, "browser": login.browser_hash,
            "nonce": login.nonce_enc, "verifier": login.verifier_enc, "at": login.created_at,
            "ip": client_ip}
        if caps is not None:
            full = " WHERE " + " AND ".join(f"({sql}) < :{cap}" for cap, sql in counts.items())
            args.update(total=caps.total, per_address=caps.per_address,
                        per_minute=caps.per_minute, minute=caps.minute_start)
        async with self._write() as db:
            if caps is not None:
                await db.execute("DELETE FROM oidc_logins WHERE created_at < ?",
                                 (caps.expired_before,))
            async with db.execute(
                    "INSERT INTO oidc_logins (state_hash, provider, browser_hash, nonce_enc,"
                    " verifier_enc, created_at, client_ip) SELECT :state, :provider, :browser,"
                    " :nonce, :verifier, :at, :ip" + full, args) as cur:
                if cur.rowcount == 1:
                    return None
            for cap in ("per_minute", "per_address", "total"):
                async with db.execute(counts[cap], args) as cur:
                    row = await cur.fetchone()
                if row is not None and int(row[0]) >= args[cap]:
                    return cap
            return "total"

    async def count_oidc_logins(self, client_ip: str, since: float) -> int:
        """Pre-logins from ``client_ip`` created after ``since`` (a read; nothing written)."""
        row = await self._one("SELECT COUNT(*) FROM oidc_logins WHERE client_ip = ?"
                              " AND created_at > ?", (client_ip, since))
        return int(row[0])

    async def take_oidc_login(self, state_hash: str) -> OidcLogin | None:
        """Return and delete the record: a state is good for one callback only."""
        row = await self._one(
            "SELECT provider, browser_hash, nonce_enc, verifier_enc, created_at FROM oidc_logins"
            " WHERE state_hash = ?", (state_hash,))
        if row is None:
            return None
        if await self._exec("DELETE FROM oidc_logins WHERE state_hash = ?", (state_hash,)) != 1:
            return None  # another request took it first
        return OidcLogin(row[0], row[1], row[2], row[3], float(row[4]))

    async def purge_oidc_logins(self, before: float) -> int:
        return await self._write_exec("DELETE FROM oidc_logins WHERE created_at < ?", (before,))

    # connection sessions -----------------------------------------------------------------------
    async def create_session(self, session: Session) -> None:
        await self._exec(
            f"INSERT INTO sessions ({_SESSION_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session.id, session.user_id, session.desktop_id, session.web_session_id,
             session.state.value, session.started_at, session.ended_at, session.close_reason,
             session.close_final, session.bytes_up, session.bytes_down, session.client_ip,
             session.user_agent, session.tries))

    async def get_session(self, session_id: str) -> Session | None:
        row = await self._one(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?",
                              (session_id,))
        return _session(row) if row else None

    async def set_session_state(self, session_id: str, state: SessionState) -> None:
        await self._exec(f"UPDATE sessions SET state = ? WHERE id = ? AND state NOT IN {_ENDED}",
                         (state.value, session_id))

    async def close_session(self, session_id: str, ended_at: float, reason: str, final: bool,
                            bytes_up: int, bytes_down: int) -> bool:
        """An active session (one that reached its desktop) ends; False when it was not active
        (still starting: see ``fail_session``; or ended already)."""
        return await self._exec(
            "UPDATE sessions SET state = 'closed', ended_at = ?, close_reason = ?, close_final = ?,"
            " bytes_up = ?, bytes_down = ? WHERE id = ? AND state = 'active'",
            (ended_at, reason, final, bytes_up, bytes_down, session_id)) == 1

    async def fail_session(self, session_id: str, ended_at: float, reason: str,
                           final: bool) -> int | None:
        """A starting session that never reached its desktop becomes "failed"; returns its
        tries, or None when it was not starting (it reached the desktop, or has ended)."""
        row = await self._one(
            "UPDATE sessions SET state = 'failed', ended_at = ?, close_reason = ?, close_final = ?"
            " WHERE id = ? AND state = 'starting' RETURNING tries",
            (ended_at, reason, final, session_id))
        return None if row is None else int(row[0])

    async def retry_session(self, session_id: str, *, user_id: int, desktop_id: int,
                            web_session_id: str, started_at: float, client_ip: str,
                            user_agent: str) -> Session | None:
        """Start a failed attempt of this user, desktop and web session again (one more try),
        atomically: of concurrent retries of one attempt, one gets it; None for the others and
        for anything else (not failed, someone else's)."""
        row = await self._one(
            "UPDATE sessions SET state = 'starting', tries = tries + 1, started_at = ?,"
            " ended_at = NULL, close_reason = NULL, close_final = FALSE, client_ip = ?,"
            " user_agent = ? WHERE id = ? AND user_id = ? AND desktop_id = ?"
            f" AND web_session_id = ? AND state = 'failed' RETURNING {_SESSION_COLUMNS}",
            (started_at, client_ip, user_agent, session_id, user_id, desktop_id, web_session_id))
        return _session(row) if row else None

    async def close_open_sessions(self, ended_at: float, reason: str) -> int:
        """At start-up: sessions a previous run left open end, with ``reason``; those that never
        reached their desktop as failed attempts."""
        failed = await self._exec(
            "UPDATE sessions SET state = 'failed', ended_at = ?, close_reason = ?"
            " WHERE state = 'starting'", (ended_at, reason))
        return failed + await self._exec(
            "UPDATE sessions SET state = 'closed', ended_at = ?, close_reason = ?"
            f" WHERE state NOT IN {_ENDED}", (ended_at, reason))

    async def list_sessions(self, *, active_only: bool = False, limit: int = 100,
                            user_id: int | None = None,
                            desktop_id: int | None = None, state: str | None = None,
                            search: str = "", offset: int = 0) -> list[Session]:
        """Newest first. ``search`` matches (case-insensitively, as a substring) the session id,
        client address, user agent, user name, desktop name or desktop host."""
        conditions: list[str] = []
        args: list[Any] = []
        if active_only:
            conditions.append(f"state NOT IN {_ENDED}")
        if state is not None:
            conditions.append("state = ?")
            args.append(state)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = "%" + escaped + "%"
            conditions.append("(id LIKE ? ESCAPE '\\' OR client_ip LIKE ? ESCAPE '\\'"
                              " OR user_agent LIKE ? ESCAPE '\\'"
                              " OR user_id IN (SELECT id FROM users WHERE name LIKE ? ESCAPE '\\')"
                              " OR desktop_id IN (SELECT id FROM desktops"
                              " WHERE name LIKE ? ESCAPE '\\' OR host LIKE ? ESCAPE '\\'))")
            args += [like] * 6  # one per LIKE above
        if user_id is not None:
            conditions.append("user_id = ?")
            args.append(user_id)
        if desktop_id is not None:
            conditions.append("desktop_id = ?")
            args.append(desktop_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._all(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY started_at DESC"
            " LIMIT ? OFFSET ?", (*args, limit, offset))
        return [_session(r) for r in rows]

    # API tokens -----------------------------------------------------------------------------
    async def create_api_token(self, name: str, token_hash_: str, user_id: int, read_only: bool,
                               created_at: float, expires_at: float) -> ApiToken:
        await self._exec(
            "INSERT INTO api_tokens (name, token_hash, user_id, read_only, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, token_hash_, user_id, read_only, created_at, expires_at))
        row = await self._one(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?",
                              (token_hash_,))
        return _token(row)

    async def api_token_by_hash(self, token_hash_: str) -> ApiToken | None:
        row = await self._one(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?",
                              (token_hash_,))
        return _token(row) if row else None

    async def list_api_tokens(self) -> list[ApiToken]:
        rows = await self._all(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY id")
        return [_token(r) for r in rows]

    async def touch_api_token(self, token_id: int, now: float) -> None:
        await self._exec("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, token_id))

    async def delete_api_token(self, token_id: int) -> bool:
        return await self._exec("DELETE FROM api_tokens WHERE id = ?", (token_id,)) == 1

    # audit --------------------------------------------------------------------------------------
    async def append_audit(self, at: float, kind: str, user: str | None, desktop: str | None,
                           client_ip: str | None, detail: str) -> None:
        """Append one row to the hash chain.

        Its own connection and an IMMEDIATE transaction make "read the last hash, insert the next"
        atomic, also against other processes (the CLI) writing to the same database.
        """
        async with self._audit_lock:
            if self._audit_db is None:
                self._audit_db = await aiosqlite.connect(self.path, isolation_level=None)
                await self._audit_db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db = self._audit_db
            with _busy("BEGIN IMMEDIATE audit"):
                await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute(
                        "SELECT row_hash FROM audit WHERE row_hash IS NOT NULL"
                        " ORDER BY id DESC LIMIT 1") as cur:
                    last = await cur.fetchone()
                prev = last[0] if last else AUDIT_GENESIS
                row = AuditEvent(0, at, kind, user, desktop, client_ip, detail)
                await db.execute(
                    "INSERT INTO audit (at, kind, user_name, desktop_name, client_ip, detail,"
                    " prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (at, kind, user, desktop, client_ip, detail, prev, row.expected_hash(prev)))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def list_audit(self, *, limit: int = 100, kind: str | None = None,
                         user: str | None = None, desktop: str | None = None,
                         since: float | None = None, until: float | None = None,
                         before_id: int | None = None) -> list[AuditEvent]:
        """Newest first, filtered; ``kind`` ending in "." matches a prefix (e.g. "session.")."""
        conditions: list[str] = []
        args: list[Any] = []
        if kind:
            if kind.endswith("."):
                conditions.append("substr(kind, 1, length(?)) = ?")
                args += [kind, kind]
            else:
                conditions.append("kind = ?")
                args.append(kind)
        for column, value in (("user_name", user), ("desktop_name", desktop)):
            if value:
                conditions.append(f"{column} = ?")
                args.append(value)
        for op, bound in ((">=", since), ("<", until)):
            if bound is not None:
                conditions.append(f"at {op} ?")
                args.append(bound)
        if before_id is not None:
            conditions.append("id < ?")
            args.append(before_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_audit(r) for r in rows]

    async def audit_chain(self, after_id: int = 0, limit: int = 10_000) -> list[AuditEvent]:
        """Rows in chain order (oldest first), for verification in batches."""
        rows = await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit))
        return [_audit(r) for r in rows]


STORES = {"sqlite": SQLiteStore}
