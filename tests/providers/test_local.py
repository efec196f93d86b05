from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from provider_support import needs_root, needs_xvnc, pid_gone

from gateway.errors import DesktopUnavailable
from gateway.model import Secret
from gateway.probe import probe_rfb
from gateway.providers import DesktopSpec, ProviderContext, make_provider
from gateway.providers.local import LocalProvider
from gateway.providers.local_state import DesktopRecord, write_record
from gateway.proxy.rfb import DesktopHandshake
from gateway.xdisplay import procs
from gateway.xdisplay.numbers import lock_file, xvnc_serving
from gateway.xdisplay.xvnc import XvncDisplay, x_client_output

pytestmark = [needs_xvnc, pytest.mark.timeout(120)]

USER = "deskgate-desktop"


def spec(n: int = 1) -> DesktopSpec:
    return DesktopSpec(id=n, name=f"local {n}", provider="local", geometry="1024x768")


@pytest.fixture
async def provider(data_dir: Path) -> AsyncIterator[LocalProvider]:
    """A provider that stops its desktops when closed (``stop_on_exit``), as tests must."""
    p = make_provider("local", ProviderContext(data_dir=data_dir, run_as_user=USER,
                                               stop_on_exit=True))
    assert isinstance(p, LocalProvider)
    try:
        yield p
    finally:
        pids = [pid for d in p._displays.values() for pid in d.pids]
        await p.close()
        assert all(pid_gone(pid) for pid in pids)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid; effective etc. follow
    raise AssertionError("no Uid line")


def status_ids(pid: int) -> tuple[list[int], list[int], str]:
    uids = gids = []
    groups = ""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            uids = [int(v) for v in value.split()]
        elif key == "Gid":
            gids = [int(v) for v in value.split()]
        elif key == "Groups":
            groups = value.strip()
    return uids, gids, groups


@needs_root
async def test_runs_unprivileged_on_private_socket(provider: LocalProvider) -> None:
    s = spec()
    assert await provider.state(s) == "stopped"
    with pytest.raises(DesktopUnavailable):
        await provider.endpoint(s)
    await provider.ensure_running(s)
    assert await provider.state(s) == "running"
    d = provider._displays[s.id]
    user = pwd.getpwnam(USER)
    assert user.pw_uid != 0 and user.pw_shell == "/usr/sbin/nologin"
    assert len(d.pids) == 3  # Xvnc, openbox, xterm
    for pid in d.pids:
        uids, gids, groups = status_ids(pid)
        assert set(uids) == {user.pw_uid}, pid
        assert set(gids) == {user.pw_gid}, pid
        assert groups == ""  # root's supplementary groups dropped

    ep = await provider.endpoint(s)
    assert ep.unix_path == str(provider.socket_path(s)) and ep.port == 0
    assert ep.password is not None and 1 <= len(ep.password.reveal()) <= 8
    sock = Path(ep.unix_path)
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == user.pw_uid
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0
    home = sock.parent
    assert home.stat().st_uid == user.pw_uid and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert await probe_rfb(unix_path=sock)

    # No TCP listener for VNC or X11 belongs to these processes.
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for pid in d.pids for fd in os.listdir(f"/proc/{pid}/fd")}
    tcp = (
        Path("/proc/net/tcp").read_text().splitlines()[1:]
        + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    )
    listening = {f"socket:[{ln.split()[9]}]" for ln in tcp if ln.split()[3] == "0A"}
    assert not inodes & listening

    pw = ep.password.reveal().encode()
    for pid in d.pids:
        assert pw not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert pw not in Path(f"/proc/{pid}/environ").read_bytes()
    assert "**" in repr(ep) and ep.password.reveal() not in repr(ep)


@needs_root
async def test_idempotent_restart_and_close(provider: LocalProvider) -> None:
    s = spec(2)
    await asyncio.gather(*(provider.ensure_running(s) for _ in range(3)))  # concurrent: one start
    first = provider._displays[s.id]
    pw1 = (await provider.endpoint(s)).password
    await provider.ensure_running(s)
    assert provider._displays[s.id] is first
    assert (await provider.endpoint(s)).password == pw1

    os.kill(first.xvnc_pid, 9)
    for _ in range(100):
        if not first.alive():
            break
        await asyncio.sleep(0.05)
    assert await provider.state(s) == "stopped"
    with pytest.raises(DesktopUnavailable):
        await provider.endpoint(s)

    await provider.ensure_running(s)
    second = provider._displays[s.id]
    assert second is not first and second.xvnc_pid != first.xvnc_pid
    assert all(pid_gone(pid) for pid in first.pids)  # leftover openbox/xterm stopped
    # The killed server's stale lock was removed (the number may already serve someone else:
    # other test runs on this machine start displays too).
    stale = lock_file(first.display)
    assert not stale.exists() or stale.read_text().strip() != str(first.xvnc_pid)
    pw2 = (await provider.endpoint(s)).password
    assert pw2 is not None and pw2 != pw1
    assert await provider.state(s) == "running"

    other = spec(3)
    await provider.ensure_running(other)
    assert provider._displays[other.id].display != second.display
    pids = second.pids + provider._displays[other.id].pids
    await provider.close()  # stop_on_exit: closing stops every desktop
    assert all(pid_gone(pid) for pid in pids)
    assert not provider.socket_path(s).exists()
    assert not (provider.desktop_dir(s) / "vnc.passwd").exists()
    with pytest.raises(DesktopUnavailable):
        await provider.ensure_running(s)


@needs_root
async def test_concurrent_desktops_get_distinct_displays(provider: LocalProvider) -> None:
    specs = [spec(n) for n in (10, 11, 12)]
    await asyncio.gather(*(provider.ensure_running(s) for s in specs))
    displays = {provider._displays[s.id].display for s in specs}
    assert len(displays) == 3
    assert all([await provider.state(s) == "running" for s in specs])
    parent = provider.desktop_dir(specs[0]).parent
    assert stat.S_IMODE(parent.stat().st_mode) == 0o711


@needs_root
async def test_stop(provider: LocalProvider) -> None:
    s = spec(4)
    await provider.ensure_running(s)
    pids = list(provider._displays[s.id].pids)
    await provider.stop(s)
    assert all(pid_gone(pid) for pid in pids)
    assert await provider.state(s) == "stopped"
    assert not provider.socket_path(s).exists()
    await provider.stop(s)  # stopping again is harmless


@needs_root
async def test_closed_parent_folder_is_a_clear_error(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The folder is the runtime folder, and the message names its setting."""
    closed = tmp_path / "d"  # under pytest's 0700 folder: the desktop user cannot enter
    p = LocalProvider(ProviderContext(data_dir=closed, run_as_user=USER))
    with pytest.raises(DesktopUnavailable) as raised:
        await p.ensure_running(spec(5))
    assert raised.value.reason == ("desktop local 5 could not be started (runtime folder"
                                   " permissions: see desktops.runtime_dir)")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"cannot enter {tmp_path}" in m and "runtime folder" in m
               and "desktops.runtime_dir" in m for m in logged), logged
    assert not any("data folder" in m for m in logged)
    await p.close()


@needs_root
async def test_planted_symlink_is_not_followed(provider: LocalProvider, data_dir: Path) -> None:
    """The desktop user owns its folder; a symlink there must not make root write elsewhere."""
    s = spec(6)
    await provider.ensure_running(s)
    await provider.stop(s)
    victim = data_dir / "victim"
    victim.write_text("keep")
    (provider.desktop_dir(s) / "vnc.passwd").symlink_to(victim)
    await provider.ensure_running(s)
    assert victim.read_text() == "keep"
    assert victim.stat().st_uid == 0


# -- desktops outlive the gateway: taken over by the next run, never doubled -----------------------

MARKER = "dg-marker-8"


async def leave_marker(d: XvncDisplay) -> None:
    """Type a harmless command into the desktop's xterm: its title becomes MARKER."""
    rc, _ = await x_client_output(
        d, ["xdotool", "type", "--delay", "5", f"printf '\\033]2;%s\\007' {MARKER}\n"], 20)
    assert rc == 0
    for _ in range(100):
        if await marker_window(d):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the xterm never took the marker title")


async def marker_window(d: XvncDisplay) -> str:
    rc, out = await x_client_output(d, ["xdotool", "search", "--name", MARKER])
    return out.strip() if rc == 0 else ""


async def vnc_login(sock: Path, password: Secret) -> bool:
    """A real VncAuth login on the desktop's socket with ``password``: True when accepted."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        shake = DesktopHandshake(password)
        while not shake.authenticated:
            data = await asyncio.wait_for(reader.read(4096), 5)
            if not data:
                return False
            writer.write(shake.feed(data))
        return True
    finally:
        writer.close()


def local_provider(data_dir: Path, stop_on_exit: bool = False) -> LocalProvider:
    return LocalProvider(ProviderContext(data_dir=data_dir, run_as_user=USER,
                                         stop_on_exit=stop_on_exit))


@needs_root
async def test_desktops_outlive_the_provider_and_are_taken_over(data_dir: Path) -> None:
    """Closing the provider (gateway shutdown) leaves the desktop and its work running; the
    next provider takes over the same processes (record, password, clients), 50 concurrent
    connects start no second Xvnc, and an explicit stop ends it all."""
    s = spec(20)
    first = local_provider(data_dir)
    await first.ensure_running(s)
    d = first._displays[s.id]
    record = provider_record(first, s)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and record.stat().st_uid == os.geteuid()
    for pid in d.pids:  # detached: not our children, own session, no pipe to us
        assert os.getsid(pid) == pid
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not any(f.startswith("pipe:") for f in fds if pid != d.xvnc_pid), fds
    await leave_marker(d)
    await first.close()
    assert not any(pid_gone(pid) for pid in d.pids)

    second = local_provider(data_dir, stop_on_exit=True)
    try:
        await second.recover()
        again = second._displays[s.id]
        assert again.pids == d.pids and again.display == d.display
        assert await second.state(s) == "running"
        ep = await second.endpoint(s)
        assert ep.password == d.password and ep.unix_path == str(second.socket_path(s))
        assert await vnc_login(Path(ep.unix_path), ep.password)
        assert await marker_window(again)  # the same xterm, with the work in it

        results = await asyncio.gather(*(second.ensure_running(s) for _ in range(50)),
                                       *(second.state(s) for _ in range(50)))
        assert results[50:] == ["running"] * 50
        assert [p.pid for p in xvnc_serving(second.socket_path(s))] == [d.xvnc_pid]
        assert second._displays[s.id] is again

        await second.stop(s)
        assert all(pid_gone(pid) for pid in d.pids)
        assert not second.socket_path(s).exists() and not record.exists()
    finally:
        await second.close()


@needs_root
async def test_a_lost_record_still_finds_the_running_desktop(data_dir: Path) -> None:
    """The desktop user owns its folder and may delete the record: the Xvnc serving the socket
    (found by its command line) is taken over instead of a second one being started beside it."""
    s = spec(21)
    first = local_provider(data_dir)
    await first.ensure_running(s)
    d = first._displays[s.id]
    await first.close()
    provider_record(first, s).unlink()
    second = local_provider(data_dir, stop_on_exit=True)
    try:
        await second.ensure_running(s)
        assert second._displays[s.id].xvnc_pid == d.xvnc_pid
        assert [p.pid for p in xvnc_serving(second.socket_path(s))] == [d.xvnc_pid]
        assert await vnc_login(second.socket_path(s), d.password or Secret(""))
    finally:
        await second.close()
    assert all(pid_gone(pid) for pid in d.pids[:1])


@needs_root
async def test_a_hung_orphan_is_replaced_and_cannot_take_the_new_socket(data_dir: Path) -> None:
    """An earlier run's Xvnc that no longer answers (stopped with SIGSTOP) is ended before the
    new one starts, so that its exit cannot delete the new server's socket."""
    s = spec(22)
    first = local_provider(data_dir)
    await first.ensure_running(s)
    old = first._displays[s.id]
    await first.close()
    os.kill(old.xvnc_pid, signal.SIGSTOP)
    second = local_provider(data_dir, stop_on_exit=True)
    try:
        await second.ensure_running(s)
        new = second._displays[s.id]
        assert new.xvnc_pid != old.xvnc_pid
        assert pid_gone(old.xvnc_pid)
        sock = second.socket_path(s)
        assert [p.pid for p in xvnc_serving(sock)] == [new.xvnc_pid]
        assert await probe_rfb(unix_path=sock)
        assert await vnc_login(sock, new.password or Secret(""))
    finally:
        await second.close()


@needs_root
async def test_a_forged_record_signals_nothing_that_is_not_the_desktop(data_dir: Path) -> None:
    """The record lives in a folder the desktop user controls: PIDs it names are checked
    (program, uid, start time) and a process that is not the desktop's is never signalled."""
    s = spec(23)
    first = local_provider(data_dir)
    await first.ensure_running(s)
    d = first._displays[s.id]
    await first.stop(s)
    victim = subprocess.Popen(["sleep", "60"])  # a root process the record will name
    try:
        me = procs.identify(victim.pid)
        assert me is not None
        home = first.desktop_dir(s)
        forged = DesktopRecord.now(d.display, first.socket_path(s), home / "vnc.passwd",
                                   home / "Xauthority",
                                   [me, dataclasses.replace(me, name="xterm", uid=999)])
        write_record(home, forged)
        (home / "desktop.json").chmod(0o644)
        second = local_provider(data_dir, stop_on_exit=True)
        await second.recover()
        await second.stop(s)
        await second.ensure_running(s)
        await second.close()
        assert victim.poll() is None  # still running: never signalled
    finally:
        victim.kill()
        victim.wait()


def provider_record(p: LocalProvider, s: DesktopSpec) -> Path:
    return p.desktop_dir(s) / "desktop.json"
