"""Changing, removing and unassigning desktops from the command line, as an admin would: the
CLI as real processes (many at once), the shared admin use cases under concurrent calls, and the
address check of ``desktop add`` against a real Xvnc."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import Cases
from gateway.cases.actor import Actor
from gateway.errors import NotFound
from gateway.model import Secret
from gateway.proxy.rfb import vnc_auth_response
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay, start_display

CLI = Actor.cli()  # who makes the changes that set the scene
ADMIN = Actor("tester", None, True)


def deskgate(*args: str, config: Path, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def run_many(commands: list[list[str]], config: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once, then wait for all (each bounded by 60 s)."""
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(config), *c],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    done = []
    for c, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return done


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--data", str(data),
                    "--no-demo"], check=True, capture_output=True, timeout=60)
    return data / "deskgate.toml"


@pytest.fixture
async def vnc() -> XvncDisplay:
    d = await start_display(rfbport=free_tcp_port(), password="secret12", name="cli",
                            window_manager=False, xterm=False)
    try:
        yield d  # type: ignore[misc]
    finally:
        await d.stop()


async def vnc_login(port: int, password: str) -> str:
    """A viewer's VncAuth login: "ok", or what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readexactly(12)
        writer.write(b"RFB 003.008\n")
        count = (await reader.readexactly(1))[0]
        if count == 0:
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            return "refused: " + (await reader.readexactly(length)).decode()
        await reader.readexactly(count)
        writer.write(b"\x02")
        writer.write(vnc_auth_response(Secret(password), await reader.readexactly(16)))
        (result,) = struct.unpack(">I", await reader.readexactly(4))
        return "ok" if result == 0 else f"result {result}"
    finally:
        writer.close()


def test_set_remove_and_unassign_from_the_command_line(config: Path) -> None:
    deskgate("user", "add", "alice", "--password-stdin", stdin="alice-password\n", config=config)
    port = free_tcp_port()  # nothing listens there
    added = deskgate("desktop", "add", "Lab", "--provider", "static", "--vnc",
                     f"127.0.0.1:{port}", config=config)
    assert added.stdout.startswith("Desktop ")
    assert "warning" in added.stderr and f"127.0.0.1:{port}" in added.stderr
    assert "nothing answers" in added.stderr and "saved anyway" in added.stderr
    deskgate("desktop", "add", "Local", "--provider", "local", config=config)
    deskgate("assign", "Lab", "alice", config=config)
    deskgate("assign", "Lab", "--group", "staff", config=config)

    deskgate("desktop", "set", "Lab", "--vnc", "127.0.0.1:5999", "--password-stdin",
             stdin="newpass12\n", config=config)
    listing = deskgate("desktop", "list", config=config).stdout
    assert "127.0.0.1:5999 (password set)" in listing and "newpass12" not in listing
    deskgate("desktop", "set", "Lab", "--clear-password", "--rename", "Lab 2", config=config)
    listing = deskgate("desktop", "list", config=config).stdout
    assert "Lab 2" in listing and "password set" not in listing

    for args, message in (
        (["desktop", "set", "Lab 2", "--rdp", "10.0.0.1:3389"], "is a VNC desktop: give --vnc"),
        (["desktop", "set", "Local", "--vnc", "127.0.0.1:5901"], "has no address"),
        (["desktop", "set", "Lab 2"], "nothing to change"),
        (["desktop", "set", "Nope", "--clear-password"], "no desktop named 'Nope'"),
        (["desktop", "remove", "Nope"], "no desktop named 'Nope'"),
        (["unassign", "Lab 2"], "name a user, or a group"),
        (["unassign", "Lab 2", "bob"], "no user named 'bob'"),
    ):
        bad = deskgate(*args, config=config, check=False)
        assert bad.returncode == 1 and message in bad.stderr, (args, bad.stderr)

    assert "no longer assigned to alice" in deskgate("unassign", "Lab 2", "alice",
                                                     config=config).stdout
    deskgate("unassign", "Lab 2", "--group", "staff", config=config)
    assert "Desktop Local removed" in deskgate("desktop", "remove", "Local", config=config).stdout
    listing = deskgate("desktop", "list", config=config).stdout
    assert "Local" not in listing and "Lab 2" in listing
    audit = deskgate("audit", config=config).stdout
    for fragment in ("desktop changed: host, port, password set (by the command line)",
                     "desktop changed: name, password cleared (by the command line)",
                     "desktop unassigned from #2 alice (local) (by the command line)",
                     "desktop unassigned from group staff (by the command line)",
                     "desktop deleted (by the command line)"):
        assert fragment in audit, fragment
    assert "newpass12" not in audit


def test_many_command_line_changes_at_once_keep_every_change_and_the_audit_chain(
        config: Path) -> None:
    names = [f"D{i:02d}" for i in range(24)]
    for name in names:
        deskgate("desktop", "add", name, "--provider", "local", config=config)
    deskgate("user", "add", "alice", "--password-stdin", stdin="alice-password\n", config=config)
    for name in names:
        deskgate("assign", name, "alice", config=config)
    # Three kinds of change at once, from separate processes, on one database.
    commands = ([["desktop", "remove", n] for n in names[:8]]
                + [["desktop", "set", n, "--rename", n + "x"] for n in names[8:16]]
                + [["unassign", n, "alice"] for n in names[16:]]
                + [["desktop", "remove", names[0]] for _ in range(8)])  # the same one, again
    results = run_many(commands, config)
    same = [results[0], *results[24:]]  # nine removals of one desktop: one wins
    assert [r.returncode for r in same].count(0) == 1, [r.stderr for r in same]
    assert all("no desktop named" in r.stderr or "no such desktop" in r.stderr
               for r in same if r.returncode), [r.stderr for r in same]
    assert all(r.returncode == 0 for r in results[1:24]), [r.stderr for r in results[1:24]]
    listing = deskgate("desktop", "list", config=config).stdout
    assert not any(f" {n} " in listing for n in names[:8])
    assert all(f"{n}x" in listing for n in names[8:16])
    audit = deskgate("audit", "--limit", "500", config=config).stdout
    assert audit.count("desktop deleted") == 8  # one record per desktop, however often asked
    assert audit.count("desktop changed: name") == 8
    assert audit.count("desktop unassigned") == 8
    assert "intact" in deskgate("audit", "verify", config=config).stdout


async def test_concurrent_removals_of_one_desktop_are_one_removal(settings: object,
                                                                  store: SQLiteStore,
                                                                  cases: Cases) -> None:
    admin = cases.catalog
    desktop = await admin.add_desktop(CLI, "Once", "static", host="127.0.0.1", port=5901)
    results = await asyncio.gather(*(admin.delete_desktop(ADMIN, desktop.id) for _ in range(100)),
                                   return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, NotFound) for r in results if r is not None)
    events = await store.list_audit(limit=500)
    assert sum(e.detail.startswith("desktop deleted") for e in events) == 1

    desktops = [await admin.add_desktop(CLI, f"P{i}", "static", host="127.0.0.1", port=5901)
                for i in range(50)]
    await asyncio.gather(*(admin.update_desktop(ADMIN, d.id, port=6000 + i, password=f"pw-{i:05d}")
                           for i, d in enumerate(desktops)))
    for i, d in enumerate(desktops):
        now = await admin.desktop(d.id)
        assert now.port == 6000 + i and now.has_password
        enc = await store.get_desktop_password(d.id)
        assert enc is not None and cases.box.decrypt(enc).reveal() == f"pw-{i:05d}"


async def test_desktop_add_checks_the_address_with_a_login_that_vnc_servers_do_not_count(
        config: Path, vnc: XvncDisplay) -> None:
    """TigerVNC blacklists a peer after a few connections that end before a login (banner-only
    ones included); the address check logs in instead, so checking often locks nobody out."""
    assert vnc.rfbport is not None
    address = f"127.0.0.1:{vnc.rfbport}"

    def add(name: str, password: str | None) -> subprocess.CompletedProcess[str]:
        args = ["desktop", "add", name, "--provider", "static", "--vnc", address]
        if password is not None:
            args.append("--password-stdin")
        return deskgate(*args, config=config, stdin=None if password is None else password + "\n")

    for i in range(8):  # more than TigerVNC's BlacklistThreshold of 5
        assert add(f"Good {i}", "secret12").stderr == ""
    assert await vnc_login(vnc.rfbport, "secret12") == "ok"
    wrong = add("Wrong", "wrongpw1")
    assert "warning" in wrong.stderr and "refused" in wrong.stderr
    assert "needs a password" in add("None", None).stderr
    assert await vnc_login(vnc.rfbport, "secret12") == "ok"
    changed = deskgate("desktop", "set", "Wrong", "--password-stdin", stdin="secret12\n",
                       config=config)
    assert changed.stderr == ""  # a new password alone: no address given, nothing checked
    moved = deskgate("desktop", "set", "Wrong", "--vnc", address, config=config)
    assert moved.stderr == ""
