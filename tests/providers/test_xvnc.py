from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest
from provider_support import needs_xvnc, pid_gone

from gateway.probe import probe_rfb
from gateway.xdisplay import XvncStartError
from gateway.xdisplay.files import read_private_file, read_vnc_password_file
from gateway.xdisplay.numbers import (
    X11_UNIX_DIR,
    display_taken,
    free_display,
    free_tcp_port,
    lock_file,
    xvnc_serving,
)
from gateway.xdisplay.xvnc import XvncDisplay, start_display

pytestmark = [needs_xvnc, pytest.mark.timeout(60)]


async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(12), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def xterm_windows(d: XvncDisplay) -> list[str]:
    out = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--class", "xterm"],
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.split()


def assert_stopped(d: XvncDisplay) -> None:
    assert all(pid_gone(pid) for pid in d.pids), d.pids
    assert not lock_file(d.display).exists()
    assert not Path(f"/tmp/.X11-unix/X{d.display}").exists()


async def test_tcp_vncauth_display() -> None:
    port = free_tcp_port()
    d = await start_display(rfbport=port, password="secret12", name="tcp-test")
    try:
        assert d.rfbport == port and len(d.pids) == 3
        assert await banner(*await asyncio.open_connection("127.0.0.1", port)) in (
            b"RFB 003.008\n",
            b"RFB 003.007\n",
        )
        # VncAuth is offered (security type 2), not None (1).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(12)
        writer.write(b"RFB 003.008\n")
        n = (await reader.readexactly(1))[0]
        types = await reader.readexactly(n)
        writer.close()
        assert types == b"\x02"
        assert xterm_windows(d)
        assert d.password_file is not None
        assert stat.S_IMODE(d.password_file.stat().st_mode) == 0o600
        for pid in d.pids:
            assert b"secret12" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        await d.stop()
    assert_stopped(d)
    assert not d.state_dir.exists()  # temporary state folder removed


async def test_unix_socket_display_without_password(tmp_path: Path) -> None:
    sock = tmp_path / "vnc.sock"
    async with await start_display(unix_path=sock, geometry="800x600") as d:
        assert d.rfbport is None
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert (await reader.readexactly(12)).startswith(b"RFB 003.")
        writer.write(b"RFB 003.008\n")
        n = (await reader.readexactly(1))[0]
        assert await reader.readexactly(n) == b"\x01"  # security type None
        writer.close()
        assert xterm_windows(d)
    assert_stopped(d)
    assert not sock.exists()


async def test_xauth_cookie_required(tmp_path: Path) -> None:
    async with await start_display(unix_path=tmp_path / "s", xauth=True, window_manager=False) as d:
        assert xterm_windows(d)  # with the cookie
        env = d.env()
        env["XAUTHORITY"] = str(tmp_path / "none")
        out = subprocess.run(["xprop", "-root"], env=env, capture_output=True, timeout=10, check=False)
        assert out.returncode != 0  # without it the display refuses
    assert_stopped(d)


async def test_busy_display_is_skipped() -> None:
    async with await start_display(rfbport=free_tcp_port(), xterm=False, window_manager=False) as a:
        # Ask for the busy number explicitly: a clear error.
        with pytest.raises(XvncStartError):
            await start_display(display=a.display, rfbport=free_tcp_port(), xterm=False)
        # Automatic choice starting at the busy number moves on.
        async with await start_display(
            rfbport=free_tcp_port(), display_base=a.display, xterm=False, window_manager=False
        ) as b:
            assert b.display > a.display
            assert free_display(a.display) > b.display


async def test_lock_left_by_a_killed_server_is_reused() -> None:
    # A server killed by another program (no stop() of ours) leaves its lock file and socket;
    # the number is free again instead of leaking, as X servers judge a stale lock.
    d = await start_display(rfbport=free_tcp_port(), xterm=False, window_manager=False)
    number, sock = d.display, X11_UNIX_DIR / f"X{d.display}"
    assert display_taken(number)
    os.kill(d.xvnc_pid, 9)
    for _ in range(100):
        if not d.alive():
            break
        await asyncio.sleep(0.05)
    assert lock_file(number).exists() and sock.exists()
    assert not display_taken(number)
    assert not lock_file(number).exists() and not sock.exists()
    async with await start_display(
        rfbport=free_tcp_port(), display_base=number, xterm=False, window_manager=False
    ) as again:
        assert again.display == number
    await d.stop()


async def test_a_socket_that_answers_keeps_its_number() -> None:
    # A lock file whose PID is gone does not free a number whose X socket still answers.
    async with await start_display(rfbport=free_tcp_port(), xterm=False, window_manager=False) as d:
        lock = lock_file(d.display)
        real = lock.read_text()
        lock.write_text(f"{2**22:10d}\n")  # beyond pid_max's default: no such process
        try:
            assert display_taken(d.display)
        finally:
            lock.write_text(real)


async def test_sigkilled_display_cleans_its_lock() -> None:
    d = await start_display(rfbport=free_tcp_port(), xterm=False, window_manager=False)
    os.kill(d.xvnc_pid, 9)
    for _ in range(100):
        if not d.alive():
            break
        await asyncio.sleep(0.05)
    assert not d.alive()
    assert not await probe_rfb(port=d.rfbport or 0, timeout=1)
    await d.stop()
    assert_stopped(d)


async def test_fixture_display(vnc_tcp: XvncDisplay) -> None:
    assert await vnc_tcp.answers()


# -- one socket, one server ------------------------------------------------------------------------


@pytest.mark.parametrize("detached", [False, True])
async def test_never_a_second_server_on_a_live_socket(tmp_path: Path, detached: bool) -> None:
    sock = tmp_path / "vnc.sock"
    async with await start_display(unix_path=sock, xterm=False, window_manager=False,
                                   detached=detached) as first:
        with pytest.raises(XvncStartError, match=f"pid {first.xvnc_pid}"):
            await start_display(unix_path=sock, xterm=False, window_manager=False,
                                detached=detached)
        assert [p.pid for p in xvnc_serving(sock)] == [first.xvnc_pid]
        assert await probe_rfb(unix_path=sock)


async def test_an_old_display_stopped_late_leaves_the_new_socket_alone(tmp_path: Path) -> None:
    """An earlier server on a socket path died (kill -9) and a new one now serves that path:
    stopping (cleaning up after) the old one must not delete the new one's socket and files."""
    sock = tmp_path / "vnc.sock"
    old = await start_display(unix_path=sock, password="oldpass1", state_dir=tmp_path,
                              xterm=False, window_manager=False, detached=True)
    os.kill(old.xvnc_pid, 9)
    for _ in range(100):
        if not old.alive():
            break
        await asyncio.sleep(0.05)
    new = await start_display(unix_path=sock, password="newpass1", state_dir=tmp_path,
                              xterm=False, window_manager=False, detached=True)
    try:
        await old.stop()
        assert sock.exists() and await probe_rfb(unix_path=sock)
        assert new.password_file is not None and new.password_file.exists()
        assert read_vnc_password_file(new.password_file).reveal() == "newpass1"
    finally:
        await new.stop()
    assert not sock.exists()
    assert all(pid_gone(pid) for pid in old.pids + new.pids)


async def test_detached_display_is_not_our_child(tmp_path: Path) -> None:
    async with await start_display(unix_path=tmp_path / "s", detached=True) as d:
        assert len(d.pids) == 3
        for pid in d.pids:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid != os.getpid() and os.getsid(pid) == pid
    assert all(pid_gone(pid) for pid in d.pids)


def test_private_files_are_read_safely(tmp_path: Path) -> None:
    """Files in a folder the desktop user controls: no FIFO (would block), no symlink, no
    hard link to another file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError):
        read_private_file(fifo, 64)
    target = tmp_path / "target"
    target.write_bytes(b"x" * 8)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError):
        read_private_file(tmp_path / "link", 64)
    os.link(target, tmp_path / "hard")
    with pytest.raises(ValueError):
        read_private_file(tmp_path / "hard", 64)
