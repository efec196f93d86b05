"""A desktop VM's files on its hypervisor's machine: this one (``LocalFiles``), or another
reached through an SSH host (``SshFiles``).

Both make the same things the same way: the disk folder (0711, so the qemu user passes
through), the screen folder (the qemu user's to write, the gateway's group's to read, 0750;
``socket_dir`` itself 0711), the root overlay and the user volume (``volumes``: made under a
temporary name and moved into place, a user volume never replaced), a fresh run (the last
run's screen socket and serial log removed), the bundle's ready text looked up in the serial
log, and removal. ``screen`` says where the gateway connects to the VM's screen: the socket
itself, or a private local socket forwarded to it through the SSH connection.

On another machine, every step is one fixed POSIX shell script (``_SCRIPT``) run over the SSH
host's shared connection, with the paths as its positional arguments (quoted by
``SshConnections.run``). Its account there is root: it hands the screen folder to the qemu
user, as libvirt's own ``qemu+ssh://root@host/system`` would.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from gateway.config import HypervisorConfig, remote_libvirt_socket
from gateway.errors import DesktopUnavailable
from gateway.providers.libvirt import volumes
from gateway.providers.libvirt.hypervisor import HypervisorError, HypervisorUnreachable
from gateway.ssh.connections import SshConnections, SshHost
from gateway.xdisplay.sysuser import first_closed_folder

COMMAND_TIMEOUT = volumes.QEMU_IMG_TIMEOUT + 10.0

SshReach = Callable[[str], Awaitable[tuple[SshConnections, SshHost]]]


class VmFiles(Protocol):
    """One hypervisor's machine, as far as a desktop VM's files go (see the module)."""

    async def prepare(self, folder: Path, screen_dir: Path) -> None: ...

    async def root_disk(self, path: Path, base: Path, size_mib: int, *, fresh: bool) -> None:
        """A fresh overlay on ``base`` (``fresh``), or one only when there is none."""
        ...

    async def user_volume(self, path: Path, size_mib: int) -> None: ...

    async def new_run(self, screen_socket: Path, console_log: Path) -> None: ...

    async def console_has(self, console_log: Path, text: str) -> bool: ...

    async def remove(self, disks: tuple[Path, ...], folder: Path, screen_dir: Path) -> str:
        """Removes them; says what was left (files someone else put there), or ""."""
        ...

    async def screen(self, screen_socket: Path) -> Path: ...

    async def forget_screen(self, screen_socket: Path) -> None: ...


# ---- this machine ------------------------------------------------------------------------------

class LocalFiles:
    def __init__(self, config: HypervisorConfig) -> None:
        self._config = config

    def _qemu(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self._config.qemu_user)
        except KeyError:
            raise HypervisorError(f"hypervisor {self._config.name}: there is no user "
                                  f"{self._config.qemu_user} (its qemu_user) on this host"
                                  ) from None

    async def prepare(self, folder: Path, screen_dir: Path) -> None:
        qemu = self._qemu()
        try:
            folder.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            folder.mkdir(mode=0o711, exist_ok=True)
        except OSError as exc:
            raise HypervisorError(f"cannot make {folder}: {exc.strerror}") from None
        _reachable(folder, qemu)
        try:
            screen_dir.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            screen_dir.parent.chmod(0o711)
            screen_dir.mkdir(mode=0o750, exist_ok=True)
            os.chown(screen_dir, qemu.pw_uid, os.getegid())
            screen_dir.chmod(0o750)
        except OSError as exc:
            raise HypervisorError(f"cannot prepare {screen_dir}: {exc.strerror}") from None
        _reachable(screen_dir.parent, qemu)

    async def root_disk(self, path: Path, base: Path, size_mib: int, *, fresh: bool) -> None:
        if fresh or not path.exists():
            await volumes.create_overlay(path, base, size_mib)

    async def user_volume(self, path: Path, size_mib: int) -> None:
        await volumes.create_blank(path, size_mib)

    async def new_run(self, screen_socket: Path, console_log: Path) -> None:
        screen_socket.unlink(missing_ok=True)  # an earlier run's: QEMU binds a new one
        console_log.unlink(missing_ok=True)

    async def console_has(self, console_log: Path, text: str) -> bool:
        try:
            return text.encode() in console_log.read_bytes()
        except FileNotFoundError:
            return False

    async def remove(self, disks: tuple[Path, ...], folder: Path, screen_dir: Path) -> str:
        volumes.remove(*disks)
        left = ""
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # files someone else put there: left alone
            left = f"{folder} not removed: {exc.strerror}"
        shutil.rmtree(screen_dir, ignore_errors=True)
        return left

    async def screen(self, screen_socket: Path) -> Path:
        return screen_socket

    async def forget_screen(self, screen_socket: Path) -> None:
        return None


def _reachable(folder: Path, qemu: pwd.struct_passwd) -> None:
    closed = first_closed_folder(folder, qemu)
    if closed is not None:
        raise HypervisorError(f"the qemu user {qemu.pw_name} cannot pass through {closed}: "
                              "give it search permission (chmod o+x) or choose another folder")


# ---- another machine, through an SSH host ------------------------------------------------------

# $1: action; the rest: its paths and sizes. A failure: "deskgate: <reason>" on stderr, exit 1.
# Exit 3 from "has": the text is not (yet) in the log.
_SCRIPT = r"""
set -u
umask 077
fail() { echo "deskgate: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "the SSH account on a hypervisor's machine must be root"
passes() {  # the qemu user can pass through every folder down to $2
  runuser -u "$1" -- test -x "$2" || fail "the qemu user $1 cannot pass through $2 (or a" \
    "folder above it): give it search permission (chmod o+x) or choose another folder"
}
action=$1; shift
case $action in
prepare)  # folder screen_dir qemu_user
  folder=$1 screens=$2 qemu=$3
  id -u "$qemu" >/dev/null 2>&1 || fail "there is no user $qemu (its qemu_user) on that machine"
  parent=$(dirname "$folder")
  [ -d "$parent" ] || { mkdir -p "$parent" && chmod 0711 "$parent"; } || fail "cannot make $parent"
  [ -d "$folder" ] || { mkdir "$folder" && chmod 0711 "$folder"; } || fail "cannot make $folder"
  passes "$qemu" "$folder"
  top=$(dirname "$screens")
  mkdir -p "$top" && chmod 0711 "$top" || fail "cannot prepare $top"
  [ -d "$screens" ] || mkdir "$screens" || fail "cannot prepare $screens"
  chown "$qemu:$(id -g)" "$screens" && chmod 0750 "$screens" || fail "cannot prepare $screens"
  passes "$qemu" "$top"
  echo prepared ;;
overlay|overlay-missing)  # path base size_mib temp
  path=$1 base=$2 size=$3 temp=$4
  if [ "$action" = overlay-missing ] && [ -e "$path" ]; then echo kept; exit 0; fi
  case $base in /*) ;; *) fail "the base image $base is not an absolute path";; esac
  [ -e "$base" ] || fail "the base image $base does not exist"
  [ -f "$base" ] || fail "the base image $base is not a file"
  [ -r "$base" ] || fail "the base image $base cannot be read"
  command -v qemu-img >/dev/null || fail "qemu-img is not installed on that machine" \
    "(Debian package qemu-utils)"
  rm -f "$temp"
  if ! err=$(qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$temp" "${size}M" 2>&1); then
    rm -f "$temp"; fail "no root disk on the base image $base: $(echo $err)"
  fi
  chmod 0600 "$temp" && mv -f "$temp" "$path" || { rm -f "$temp"; fail "cannot make $path"; }
  echo made ;;
blank)  # path size_mib temp
  path=$1 size=$2 temp=$3
  if [ -e "$path" ]; then echo kept; exit 0; fi
  command -v qemu-img >/dev/null || fail "qemu-img is not installed on that machine" \
    "(Debian package qemu-utils)"
  rm -f "$temp"
  if ! err=$(qemu-img create -q -f qcow2 "$temp" "${size}M" 2>&1); then
    rm -f "$temp"; fail "$(echo $err)"
  fi
  chmod 0600 "$temp"
  if ln "$temp" "$path" 2>/dev/null; then rm -f "$temp"; echo made; else rm -f "$temp"; echo kept; fi ;;
fresh)  # screen_socket console_log
  rm -f "$1" "$2" || fail "cannot clear the last run's $1 and $2"
  echo cleared ;;
has)  # console_log text
  [ -f "$1" ] || exit 3
  grep -qF -e "$2" "$1" || exit 3
  echo found ;;
remove)  # folder screen_dir disk...
  folder=$1 screens=$2; shift 2
  for disk in "$@"; do rm -f "$disk" "$(dirname "$disk")/.$(basename "$disk").new"; done
  rm -rf "$screens"
  if [ -d "$folder" ] && ! rmdir "$folder" 2>/dev/null; then echo "left $folder"; else echo removed; fi ;;
*) fail "unknown action $action" ;;
esac
"""


class SshFiles:
    """The VM files on the machine of SSH host ``config.via`` (see the module)."""

    def __init__(self, config: HypervisorConfig, reach: SshReach | None) -> None:
        self._config = config
        self._reach = reach
        self._where = f"hypervisor {config.name} (through SSH host {config.via})"

    async def _host(self) -> tuple[SshConnections, SshHost]:
        if self._reach is None:
            raise HypervisorUnreachable(f"{self._where}: this gateway process does not reach"
                                        " hypervisors over SSH")
        try:
            return await self._reach(self._config.via)
        except DesktopUnavailable as exc:
            raise HypervisorUnreachable(f"{self._where}: {exc.reason}") from None

    async def _run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        ssh, host = await self._host()
        try:
            done = await ssh.run(host, ["sh", "-c", _SCRIPT, "deskgate-vm", *args],
                                 timeout=COMMAND_TIMEOUT, stdin="")
        except DesktopUnavailable as exc:
            raise HypervisorUnreachable(f"{self._where}: {exc.reason}") from None
        status = done.exit_status if isinstance(done.exit_status, int) else -1
        if status not in ok:
            err = str(done.stderr or "").strip().splitlines()
            reason = next((e[len("deskgate: "):] for e in err if e.startswith("deskgate: ")),
                          f"{args[0]} failed on {host.name} (exit status {status})")
            raise HypervisorError(reason)
        return status, str(done.stdout or "").strip()

    async def prepare(self, folder: Path, screen_dir: Path) -> None:
        await self._run("prepare", str(folder), str(screen_dir), self._config.qemu_user)

    async def root_disk(self, path: Path, base: Path, size_mib: int, *, fresh: bool) -> None:
        await self._run("overlay" if fresh else "overlay-missing", str(path), str(base),
                        str(size_mib), str(volumes.temp_name(path)))

    async def user_volume(self, path: Path, size_mib: int) -> None:
        await self._run("blank", str(path), str(size_mib), str(volumes.temp_name(path)))

    async def new_run(self, screen_socket: Path, console_log: Path) -> None:
        await self._run("fresh", str(screen_socket), str(console_log))

    async def console_has(self, console_log: Path, text: str) -> bool:
        status, _ = await self._run("has", str(console_log), text, ok=(0, 3))
        return status == 0

    async def remove(self, disks: tuple[Path, ...], folder: Path, screen_dir: Path) -> str:
        _, out = await self._run("remove", str(folder), str(screen_dir), *map(str, disks))
        return f"{folder} not removed: not empty" if out.startswith("left ") else ""

    async def screen(self, screen_socket: Path) -> Path:
        return await self._forward(str(screen_socket))

    async def libvirt_uri(self) -> str:
        """The URI that reaches libvirtd there: its socket, forwarded to a private one here."""
        path = await self._forward(remote_libvirt_socket(self._config.uri))
        return f"qemu+unix:///system?socket={path}"

    async def _forward(self, remote: str) -> Path:
        ssh, host = await self._host()
        try:
            return await ssh.local_path(host, dest_path=remote)
        except DesktopUnavailable as exc:
            raise HypervisorUnreachable(f"{self._where}: {exc.reason}") from None

    async def forget_screen(self, screen_socket: Path) -> None:
        if self._reach is None:
            return
        ssh, host = await self._host()
        await ssh.close_path(host, dest_path=str(screen_socket))


def vm_files(config: HypervisorConfig, reach: SshReach | None) -> LocalFiles | SshFiles:
    """Where ``config``'s VM files are made: here, or through its SSH host."""
    return SshFiles(config, reach) if config.via else LocalFiles(config)
