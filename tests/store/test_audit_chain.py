"""The audit trail is a hash chain: `deskgate audit verify` finds an edited or deleted row."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.audit import Audit, AuditKind, verify_chain
from gateway.config import Settings
from gateway.store.sqlite import SQLiteStore


def verify_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), "audit",
                           "verify"], capture_output=True, text=True, timeout=60)


async def _fill(store: SQLiteStore, n: int) -> None:
    audit = Audit(store)
    for i in range(n):
        await audit.record(AuditKind.SIGNIN_OK, user=f"user{i}", client_ip="10.0.0.1",
                           detail=f"event {i}")


async def test_intact_chain_verifies(store: SQLiteStore) -> None:
    await _fill(store, 5)
    assert await verify_chain(store) == (None, 5)
    rows = await store.audit_chain()
    assert rows[1].prev_hash == rows[0].row_hash


async def test_editing_a_row_is_reported_by_the_cli(settings: Settings,
                                                    store: SQLiteStore) -> None:
    await _fill(store, 6)
    config = settings.data_dir / "deskgate.toml"
    ok = verify_cli(config)
    assert ok.returncode == 0 and "6 rows checked" in ok.stdout
    with sqlite3.connect(settings.database_path) as db:
        db.execute("UPDATE audit SET detail = 'nothing to see' WHERE id = 4")
    broken = verify_cli(config)
    assert broken.returncode == 2
    assert "row 4 was edited" in broken.stdout


async def test_deleting_a_row_is_reported(settings: Settings, store: SQLiteStore) -> None:
    await _fill(store, 6)
    with sqlite3.connect(settings.database_path) as db:
        db.execute("DELETE FROM audit WHERE id = 3")
    problem, _ = await verify_chain(store)
    assert problem is not None and problem.startswith("row 4 does not follow")


async def test_concurrent_writers_keep_one_chain(settings: Settings, store: SQLiteStore) -> None:
    other = SQLiteStore(settings.database_path)  # as the CLI would, beside the server
    await other.open()
    try:
        await asyncio.gather(_fill(store, 20), _fill(other, 20))
    finally:
        await other.close()
    assert await verify_chain(store) == (None, 40)
