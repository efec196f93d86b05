"""SQLite store (aiosqlite): the embedded default."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Conflict
from ..model import (
    AUDIT_GENESIS,
    ApiToken,
    AuditEvent,
    Desktop,
    OidcLogin,
    Session,
    SessionState,
    User,
    WebSession,
    WebSessionState,
)
from .migrations import MIGRATIONS

_USER_COLUMNS = ("id, name, is_admin, disabled, totp_enrolled, failed_attempts, locked_until,"
                 " source")
# A user reaches a desktop assigned to them, or to one of their groups.
_ASSIGNED_TO_USER = ("SELECT desktop_id FROM assignments WHERE user_id = ? UNION"
                     " SELECT g.desktop_id FROM group_assignments g JOIN user_groups u"
                     " ON u.group_name = g.group_name WHERE u.user_id = ?")
_DESKTOP_COLUMNS = ("id, name, provider, host, port, protocol, password_enc IS NOT NULL,"
                    " maintenance, options")
_TOKEN_COLUMNS = "id, name, user_id, read_only, created_at, expires_at, last_used"  # noqa: S105
_SESSION_COLUMNS = ("id, user_id, desktop_id, web_session_id, state, started_at, ended_at,"
                    " close_reason, close_final, bytes_up, bytes_down, client_ip, user_agent")


def _user(row: Iterable[Any]) -> User:
    uid, name, admin, disabled, enrolled, failed, locked, source = row
    return User(int(uid), str(name), bool(admin), bool(disabled), bool(enrolled), int(failed),
                float(locked), str(source))


_AUDIT_COLUMNS = ("id, at, kind, user_name, desktop_name, client_ip, detail, prev_hash,"
                  " row_hash")


def _audit(r: Sequence[Any]) -> AuditEvent:
    return AuditEvent(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])


def _desktop(row: Iterable[Any]) -> Desktop:
    did, name, provider, host, port, protocol, has_pw, maintenance, options = row
    parsed = json.loads(options or "{}")
    return Desktop(int(did), str(name), str(provider), str(host), int(port), str(protocol),
                   bool(has_pw), bool(maintenance),
                   tuple(sorted((str(k), str(v)) for k, v in parsed.items())))


def _token(r: Sequence[Any]) -> ApiToken:
    return ApiToken(int(r[0]), r[1], int(r[2]), bool(r[3]), float(r[4]), float(r[5]),
                    None if r[6] is None else float(r[6]))


def _session(row: Sequence[Any]) -> Session:
    return Session(row[0], int(row[1]), int(row[2]), row[3], SessionState(row[4]), float(row[5]),
                   None if row[6] is None else float(row[6]), row[7], bool(row[8]), int(row[9]),
                   int(row[10]), row[11], row[12])


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._audit_db: aiosqlite.Connection | None = None
        self._audit_lock = asyncio.Lock()

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
        await self.db.execute("PRAGMA busy_timeout=5000")
        self.path.chmod(0o600)
        await self._migrate()

    async def close(self) -> None:
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

    async def schema_version(self) -> int:
        row = await self._one("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        # Run to completion in one step: a statement left half-read keeps a read transaction
        # open on this connection, and its next write then fails at once ("database is
        # locked") when the audit connection committed in between.
        rows = list(await self.db.execute_fetchall(sql, args))
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        # One statement, its own transaction: safe to run again when SQLite answers "locked"
        # at once (a WAL snapshot gone stale under the audit connection's commit), which
        # busy_timeout does not wait out. Bounded: 5 tries within about a second.
        for attempt in range(5):
            try:
                async with self.db.execute(sql, args) as cur:
                    return int(cur.rowcount)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 4:
                    raise
                await asyncio.sleep(0.05 * 2 ** attempt)
        raise AssertionError("unreachable")

    # users ---------------------------------------------------------------------------------
    async def create_user(self, name: str, password_hash: str | None, is_admin: bool,
                          source: str = "local") -> User:
        try:
            await self._exec(
                "INSERT INTO users (name, password_hash, is_admin, created_at, source)"
                " VALUES (?, ?, ?, ?, ?)", (name, password_hash, is_admin, time.time(), source))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"user {name!r} already exists") from exc
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

    async def record_failure(self, user_id: int, lock_threshold: int, lock_until: float) -> int:
        """Count one failure; lock the account when the count reaches the threshold."""
        await self._exec(
            "UPDATE users SET failed_attempts = failed_attempts + 1,"
            " locked_until = CASE WHEN failed_attempts + 1 >= ? THEN ? ELSE locked_until END"
            " WHERE id = ?", (lock_threshold, lock_until, user_id))
        row = await self._one("SELECT failed_attempts FROM users WHERE id = ?", (user_id,))
        return int(row[0]) if row else 0

    async def clear_failures(self, user_id: int) -> None:
        await self._exec("UPDATE users SET failed_attempts = 0, locked_until = 0 WHERE id = ?",
                         (user_id,))

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
            " client_ip, user_agent, idp, id_token_enc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ws.id, ws.user_id, ws.state.value, ws.csrf_token, ws.created_at, ws.last_seen,
             ws.client_ip, ws.user_agent, ws.idp, ws.id_token_enc))

    async def get_web_session(self, ws_id: str) -> WebSession | None:
        row = await self._one(
            "SELECT id, user_id, state, csrf_token, created_at, last_seen, client_ip, user_agent,"
            " idp, id_token_enc FROM web_sessions WHERE id = ?", (ws_id,))
        if not row:
            return None
        return WebSession(row[0], int(row[1]), WebSessionState(row[2]), row[3], float(row[4]),
                          float(row[5]), row[6], row[7], row[8], row[9])

    async def set_web_session_state(self, ws_id: str, state: WebSessionState) -> None:
        await self._exec("UPDATE web_sessions SET state = ? WHERE id = ?", (state.value, ws_id))

    async def touch_web_session(self, ws_id: str, now: float) -> None:
        await self._exec("UPDATE web_sessions SET last_seen = ? WHERE id = ?", (now, ws_id))

    async def delete_web_session(self, ws_id: str) -> None:
        await self._exec("DELETE FROM web_sessions WHERE id = ?", (ws_id,))

    async def delete_user_web_sessions(self, user_id: int) -> None:
        await self._exec("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))

    # desktops -----------------------------------------------------------------------------------
    async def create_desktop(self, name: str, provider: str, host: str, port: int,
                             password_enc: str | None, protocol: str = "vnc",
                             options: Mapping[str, str] | None = None) -> Desktop:
        try:
            await self._exec(
                "INSERT INTO desktops (name, provider, host, port, password_enc, created_at,"
                " protocol, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, provider, host, port, password_enc, time.time(), protocol,
                 json.dumps(dict(options or {}), sort_keys=True)))
        except aiosqlite.IntegrityError as exc:
            raise Conflict(f"desktop {name!r} already exists") from exc
        desktop = await self.get_desktop_by_name(name)
        assert desktop is not None
        return desktop

    async def get_desktop(self, desktop_id: int) -> Desktop | None:
        row = await self._one(f"SELECT {_DESKTOP_COLUMNS} FROM desktops WHERE id = ?",
                              (desktop_id,))
        return _desktop(row) if row else None

    async def get_desktop_by_name(self, name: str) -> Desktop | None:
        row = await self._one(f"SELECT {_DESKTOP_COLUMNS} FROM desktops WHERE name = ?", (name,))
        return _desktop(row) if row else None

    async def get_desktop_password(self, desktop_id: int) -> str | None:
        row = await self._one("SELECT password_enc FROM desktops WHERE id = ?", (desktop_id,))
        return row[0] if row else None

    async def list_desktops(self) -> list[Desktop]:
        return [_desktop(r) for r in
                await self._all(f"SELECT {_DESKTOP_COLUMNS} FROM desktops ORDER BY name")]

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
        """Delete a desktop with its assignments; its past sessions keep their rows."""
        await self._exec("DELETE FROM assignments WHERE desktop_id = ?", (desktop_id,))
        await self._exec("DELETE FROM group_assignments WHERE desktop_id = ?", (desktop_id,))
        await self._exec("DELETE FROM user_credentials WHERE desktop_id = ?", (desktop_id,))
        return await self._exec("DELETE FROM desktops WHERE id = ?", (desktop_id,)) == 1

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
        rows = await self._all(
            f"SELECT {_DESKTOP_COLUMNS} FROM desktops WHERE id IN ({_ASSIGNED_TO_USER}) ORDER BY name",
            (user_id, user_id))
        return [_desktop(r) for r in rows]

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

    async def save_oidc_login(self, state_hash: str, login: OidcLogin) -> None:
        await self._exec(
            "INSERT INTO oidc_logins (state_hash, provider, browser_hash, nonce_enc, verifier_enc,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (state_hash, login.provider, login.browser_hash, login.nonce_enc, login.verifier_enc,
             login.created_at))

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
        return await self._exec("DELETE FROM oidc_logins WHERE created_at < ?", (before,))

    # connection sessions -----------------------------------------------------------------------
    async def create_session(self, session: Session) -> None:
        await self._exec(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session.id, session.user_id, session.desktop_id, session.web_session_id,
             session.state.value, session.started_at, session.ended_at, session.close_reason,
             session.close_final, session.bytes_up, session.bytes_down, session.client_ip,
             session.user_agent))

    async def get_session(self, session_id: str) -> Session | None:
        row = await self._one(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?",
                              (session_id,))
        return _session(row) if row else None

    async def set_session_state(self, session_id: str, state: SessionState) -> None:
        await self._exec("UPDATE sessions SET state = ? WHERE id = ? AND state != 'closed'",
                         (state.value, session_id))

    async def close_session(self, session_id: str, ended_at: float, reason: str, final: bool,
                            bytes_up: int, bytes_down: int) -> None:
        await self._exec(
            "UPDATE sessions SET state = 'closed', ended_at = ?, close_reason = ?, close_final = ?,"
            " bytes_up = ?, bytes_down = ? WHERE id = ? AND state != 'closed'",
            (ended_at, reason, final, bytes_up, bytes_down, session_id))

    async def close_open_sessions(self, ended_at: float, reason: str) -> int:
        return await self._exec(
            "UPDATE sessions SET state = 'closed', ended_at = ?, close_reason = ?"
            " WHERE state != 'closed'", (ended_at, reason))

    async def list_sessions(self, *, active_only: bool = False, limit: int = 100,
                            user_id: int | None = None,
                            desktop_id: int | None = None) -> list[Session]:
        conditions: list[str] = []
        args: list[Any] = []
        if active_only:
            conditions.append("state != 'closed'")
        if user_id is not None:
            conditions.append("user_id = ?")
            args.append(user_id)
        if desktop_id is not None:
            conditions.append("desktop_id = ?")
            args.append(desktop_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._all(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY started_at DESC LIMIT ?",
            (*args, limit))
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
                await self._audit_db.execute("PRAGMA busy_timeout=5000")
            db = self._audit_db
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
