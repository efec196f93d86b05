"""Kiosks from the command line, as an admin would: the CLI as real processes over a real data
folder; the pairing code printed once works on the use case, and failures exit non-zero with
the reason."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kioskkeys import DeviceKey

from gateway.app import build_cases
from gateway.cases.actor import Actor
from gateway.config import load_settings
from gateway.model import Kiosk
from gateway.store.sqlite import SQLiteStore

CODE = re.compile(r"Pairing code for kiosk (.+): ([A-Z0-9]{4}-[A-Z0-9]{4})\n"
                  r"Type it at /kiosk on the thin client; it works once until \d\d:\d\d UTC\.")


def deskgate(*args: str, config: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode == 0) is ok, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--data", str(data),
                    "--no-demo"], check=True, capture_output=True, timeout=60)
    return data / "deskgate.toml"


async def _on_cases(config: Path, what: str, *args: str) -> object:
    settings = load_settings(config, env={})
    store = SQLiteStore(settings.database_path)
    await store.open()
    try:
        kiosks = build_cases(settings, store).kiosks
        if what == "pair":
            kiosk, _ = await kiosks.pair(args[0], DeviceKey().public, "192.0.2.80", "Thin")
            return kiosk
        if what == "desktop":
            catalog = build_cases(settings, store).catalog
            return (await catalog.add_desktop(Actor.cli(), args[0], "static", host="10.9.8.7",
                                              port=5901)).id
        if what == "account":
            user = await store.get_user_by_name(args[0])
            assert user is not None
            return [d.name for d in await store.desktops_for_user(user.id)]
        return [k for k, _ in await kiosks.fleet()]
    finally:
        await store.close()


def on_cases(config: Path, what: str, *args: str) -> object:
    return asyncio.run(_on_cases(config, what, *args))


def test_add_list_pair_set_code_revoke_remove(config: Path) -> None:
    on_cases(config, "desktop", "Lobby")
    out = deskgate("kiosk", "add", "Front desk", "--location", "Hall", config=config).stdout
    match = CODE.search(out)
    assert match and match.group(1) == "Front desk", out
    listed = deskgate("kiosk", "list", config=config).stdout
    assert "Front desk" in listed and "waiting for pairing until" in listed and "@ Hall" in listed
    assert match.group(2) not in listed

    kiosk = on_cases(config, "pair", match.group(2))
    assert isinstance(kiosk, Kiosk) and kiosk.name == "Front desk"
    listed = deskgate("kiosk", "list", config=config).stdout
    assert " online " in listed and "from 192.0.2.80" in listed

    out = deskgate("kiosk", "set", "Front desk", "--name", "Lobby screen", "--mode", "dedicated",
                   "--desktop", "Lobby", "--view-only", config=config).stdout
    assert "Lobby screen" in out and "dedicated" in out and "Lobby view-only" in out
    assert on_cases(config, "account", f"kiosk:{kiosk.id}") == ["Lobby"]
    out = deskgate("kiosk", "set", "Lobby screen", "--input", config=config).stdout
    assert "view-only" not in out

    out = deskgate("kiosk", "code", "Lobby screen", config=config).stdout
    again = CODE.search(out)
    assert again and again.group(2) != match.group(2)
    out = deskgate("kiosk", "revoke", "Lobby screen", config=config).stdout
    assert "revoked" in out
    assert " revoked" in deskgate("kiosk", "list", config=config).stdout
    deskgate("kiosk", "remove", "Lobby screen", config=config)
    assert deskgate("kiosk", "list", config=config).stdout == ""
    assert on_cases(config, "fleet") == []


def test_failures_exit_non_zero_with_the_reason(config: Path) -> None:
    deskgate("kiosk", "add", "Front desk", config=config)
    for args, words in (
            (("kiosk", "add", "Front desk"), "already exists"),
            (("kiosk", "add", "Screen", "--mode", "dedicated"), "needs its desktop"),
            (("kiosk", "add", "Screen", "--mode", "dedicated", "--desktop", "Nope"),
             "no desktop named 'Nope'"),
            (("kiosk", "add", ""), "1 to 64 printable characters"),
            (("kiosk", "set", "Nope", "--location", "x"), "no kiosk named 'Nope'"),
            (("kiosk", "code", "Nope"), "no kiosk named"),
            (("kiosk", "revoke", "Nope"), "no kiosk named"),
            (("kiosk", "remove", "Nope"), "no kiosk named"),
            (("kiosk", "set", "Front desk", "--mode", "dedicated"), "needs its desktop")):
        proc = deskgate(*args, config=config, ok=False)
        assert proc.returncode == 1 and words in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("deskgate: ")
    proc = deskgate("kiosk", "add", "X", "--mode", "public", config=config, ok=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr  # argparse
    kiosks = on_cases(config, "fleet")
    assert isinstance(kiosks, list) and [k.name for k in kiosks] == ["Front desk"]
