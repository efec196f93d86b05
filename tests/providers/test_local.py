from __future__ import annotations

import asyncio
import os
import pwd
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from provider_support import needs_root, needs_xvnc, pid_gone

from gateway.errors import DesktopUnavailable
from gateway.providers import DesktopSpec, ProviderContext, make_provider
from gateway.providers.base import probe_rfb
from gateway.providers.local import LocalProvider
from gateway.providers.xvnc import lock_file

pytestmark = [needs_xvnc, pytest.mark.timeout(120)]

USER = "deskgate-desktop"


def spec(n: int = 1) -> DesktopSpec:
    return DesktopSpec(id=n, name=f"local {n}", provider="local", geometry="1024x768")


@pytest.fixture
async def provider(data_dir: Path) -> AsyncIterator[LocalProvider]:
    p = make_provider("local", ProviderContext(data_dir=data_dir, run_as_user=USER))
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
    await provider.close()
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
