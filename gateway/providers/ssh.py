"""Desktops on Linux hosts reached over SSH, started on demand as the host's account.

A desktop with provider "ssh" names its SSH host in the option ``via``. Starting, probing and
stopping it are one fixed POSIX shell script (``_SCRIPT``) run on the host over the host's
shared SSH connection (``SshConnections.run``); the desktop id, the geometry and the display
base are its positional arguments (quoted by ``run``), the fresh VNC password goes in on stdin
(never in an argv). Everything a desktop needs lives in ``<runtime>/deskgate/<desktop id>/``
(mode 0700) on the host, where ``<runtime>`` is ``$XDG_RUNTIME_DIR``, else ``/run/user/<uid>``,
else the fallback ``~/.cache`` (then ``~/.cache/deskgate/<id>``): pid files, the
``vncpasswd -f`` password file, an Xauthority cookie, logs and the VNC socket ``vnc.sock``
(0600).

Xvnc listens on that unix socket only (``-rfbport -1``, ``-nolisten tcp``), wants VncAuth, and
X clients need the cookie. Xvnc, openbox and the xterm each run in a session of their own
(``setsid``), detached from the SSH channel, and carry ``DESKGATE_DESKTOP=<folder>`` in their
environment: a recorded pid is signalled only when that process still carries it. The gateway
reaches the socket through a local unix socket forwarded over the connection
(direct-streamlocal) and does the VncAuth handshake itself, as for a local desktop; the password
is read back from the host's file and cached in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.errors import DesktopUnavailable
from gateway.model import Endpoint, Secret
from gateway.probe import probe_rfb
from gateway.providers.base import DesktopSpec, ProviderContext, desktop_log
from gateway.ssh.connections import SshConnections, SshError, SshHost
from gateway.xdisplay.files import decode_vnc_password, random_vnc_password
from gateway.xdisplay.numbers import GEOMETRY_RE

log = logging.getLogger(__name__)

READY_TIMEOUT = 15.0  # the socket answers with an RFB banner within this after a start
COMMAND_TIMEOUT = 30.0
DISPLAY_BASE = 20

SshReach = Callable[[str], Awaitable[tuple[SshConnections, SshHost]]]

# $1: action (status | start | stop | password), $2: desktop id, $3: geometry, $4: display base.
# Output: one line "started|running <display> <socket> <Xvnc pid>" / "stopped" /
# "password <base64 of the vncpasswd file> <Xvnc pid>";
# a failure: "deskgate: <reason>" on stderr and exit 1 (the reason is shown to the user).
_SCRIPT = r"""
set -u
umask 077
action=$1 id=$2 geometry=$3 base=$4
fail() { echo "deskgate: $*" >&2; exit 1; }
case $id in ''|*[!0-9]*) fail "bad desktop id";; esac
uid=$(id -u)
if [ -n "${XDG_RUNTIME_DIR:-}" ] && [ -d "$XDG_RUNTIME_DIR" ] && [ -w "$XDG_RUNTIME_DIR" ]; then
  top=$XDG_RUNTIME_DIR/deskgate
elif [ -d "/run/user/$uid" ] && [ -w "/run/user/$uid" ]; then
  top=/run/user/$uid/deskgate
else
  top=$HOME/.cache/deskgate
fi
dir=$top/$id
sock=$dir/vnc.sock
mark="DESKGATE_DESKTOP=$dir"
ours() {  # ours PID: alive, and started by us for this desktop
  [ -n "$1" ] && [ -r "/proc/$1/environ" ] && kill -0 "$1" 2>/dev/null &&
    tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qxF "$mark"
}
pidof_() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid" 2>/dev/null || true; }
running() { p=$(pidof_ xvnc); ours "$p" && [ -S "$sock" ]; }
stop_all() {
  for name in xterm openbox xvnc; do
    p=$(pidof_ $name)
    if ours "$p"; then kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; fi
  done
  i=0
  while [ $i -lt 50 ]; do
    left=0
    for name in xterm openbox xvnc; do p=$(pidof_ $name); ours "$p" && left=1; done
    [ $left = 0 ] && break
    sleep 0.1; i=$((i + 1))
  done
  for name in xterm openbox xvnc; do
    p=$(pidof_ $name)
    if ours "$p"; then kill -KILL "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; fi
  done
  n=$(cat "$dir/display" 2>/dev/null || true)
  p=$(pidof_ xvnc)
  if [ -n "$n" ] && [ -n "$p" ] && [ "$(tr -d ' ' < "/tmp/.X$n-lock" 2>/dev/null)" = "$p" ]; then
    rm -f "/tmp/.X$n-lock" "/tmp/.X11-unix/X$n"  # left behind by a SIGKILL
  fi
  rm -f "$sock" "$dir/vnc.passwd" "$dir/Xauthority" "$dir/xvnc.pid" "$dir/openbox.pid" \
    "$dir/xterm.pid" "$dir/display"
}
case $action in
status)
  running || { echo stopped; exit 0; }
  echo "running $(cat "$dir/display" 2>/dev/null) $sock $(pidof_ xvnc)"
  exit 0;;
password)
  running || { echo stopped; exit 0; }
  echo "password $(base64 < "$dir/vnc.passwd" | tr -d '\n') $(pidof_ xvnc)"
  exit 0;;
stop)
  [ -d "$dir" ] || { echo stopped; exit 0; }
  exec 9>"$dir/lock"
  command -v flock >/dev/null 2>&1 && { flock -w 20 9 || fail "the desktop is busy"; }
  stop_all
  echo stopped
  exit 0;;
start) ;;
*) fail "bad action";;
esac
case $geometry in *[!0-9x]*|'') fail "bad geometry";; esac
case $base in ''|*[!0-9]*) fail "bad display base";; esac
for tool in Xvnc vncpasswd openbox xterm xauth setsid; do
  command -v $tool >/dev/null 2>&1 || fail "$tool is not installed on the host"
done
mkdir -p "$top" || fail "cannot create $top"
chmod 700 "$top" && mkdir -p "$dir" && chmod 700 "$dir" || fail "cannot create $dir"
[ ${#sock} -le 107 ] || fail "the socket path $sock is too long"
exec 9>"$dir/lock"
command -v flock >/dev/null 2>&1 && { flock -w 20 9 || fail "the desktop is busy"; }
if running; then
  cat > /dev/null  # the unused password
  echo "running $(cat "$dir/display") $sock $(pidof_ xvnc)"; exit 0
fi
stop_all  # what is left of an earlier run
vncpasswd -f > "$dir/vnc.passwd" || fail "vncpasswd failed"
[ -s "$dir/vnc.passwd" ] || fail "vncpasswd wrote no password"
export DESKGATE_DESKTOP="$dir" LANG="${LANG:-C.UTF-8}"
n=$base
tries=0
while :; do
  while [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ]; do n=$((n + 1)); done
  [ $n -lt $((base + 200)) ] || fail "no free X display"
  cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  rm -f "$dir/Xauthority" "$sock"
  xauth -q -f "$dir/Xauthority" add ":$n" . "$cookie" || fail "xauth failed"
  setsid Xvnc ":$n" -geometry "$geometry" -depth 24 -nolisten tcp -localhost -rfbport -1 \
    -rfbunixpath "$sock" -rfbunixmode 0600 -UseBlacklist=0 -AlwaysShared -desktop "deskgate-$id" \
    -SecurityTypes VncAuth -PasswordFile "$dir/vnc.passwd" -auth "$dir/Xauthority" \
    </dev/null >"$dir/xvnc.log" 2>&1 9>&- &
  p=$!
  echo $p > "$dir/xvnc.pid"
  i=0
  while [ $i -lt 100 ] && kill -0 $p 2>/dev/null && [ ! -S "$sock" ]; do
    sleep 0.1; i=$((i + 1))
  done
  [ -S "$sock" ] && kill -0 $p 2>/dev/null && break
  kill -TERM $p 2>/dev/null
  tries=$((tries + 1))
  if grep -qE "already (active|running)" "$dir/xvnc.log" && [ $tries -lt 10 ]; then
    n=$((n + 1)); continue
  fi
  fail "Xvnc did not start: $(tail -n 3 "$dir/xvnc.log" | tr '\n' ' ' | cut -c1-300)"
done
echo $n > "$dir/display"
export DISPLAY=":$n" XAUTHORITY="$dir/Xauthority"
cd "$HOME" 2>/dev/null || cd /
setsid openbox </dev/null >"$dir/openbox.log" 2>&1 9>&- &
echo $! > "$dir/openbox.pid"
p=$(pidof_ xvnc)
# The same terminal as a local desktop's: dark text on white, a big font when one is installed.
if fc-list 2>/dev/null | grep -qi mono; then font="-fa Monospace -fs 14"; else font="-fn 10x20"; fi
# shellcheck disable=SC2086
setsid xterm $font -geometry 80x24+10+10 -bg white -fg black </dev/null >"$dir/xterm.log" 2>&1 9>&- &
echo $! > "$dir/xterm.pid"
echo "started $n $sock $p"
"""


class SshProvider:
    """Desktops started on SSH hosts (see the module docstring)."""

    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._locks: dict[int, asyncio.Lock] = {}
        self._sockets: dict[int, str] = {}  # desktop id -> its socket's path on the host
        # desktop id -> (its Xvnc's pid on the host, its password): a new Xvnc, a new password
        self._passwords: dict[int, tuple[str, Secret]] = {}

    async def _reach(self, spec: DesktopSpec) -> tuple[SshConnections, SshHost]:
        if not spec.via:
            raise DesktopUnavailable(f"desktop {spec.name} names no SSH host (option via)")
        if self._ctx.ssh is None:
            raise DesktopUnavailable(f"desktop {spec.name}: this gateway process does not"
                                     " reach desktops over SSH")
        try:
            return await self._ctx.ssh(spec.via)
        except DesktopUnavailable as exc:
            raise _named(spec, exc) from None

    async def _script(self, spec: DesktopSpec, action: str, *,
                      stdin: str | None = None) -> tuple[SshConnections, SshHost, list[str]]:
        """The script's ``action`` on the desktop's host; its last output line, split."""
        ssh, host = await self._reach(spec)
        geometry = spec.geometry if GEOMETRY_RE.match(spec.geometry) else "1280x800"
        try:
            done = await ssh.run(host, ["sh", "-c", _SCRIPT, "deskgate", action, str(spec.id),
                                        geometry, str(self._ctx.display_base or DISPLAY_BASE)],
                                 timeout=COMMAND_TIMEOUT, stdin=stdin if stdin is not None else "")
        except SshError as exc:
            raise _named(spec, exc) from None
        out = str(done.stdout or "").strip().splitlines()
        if done.exit_status != 0 or not out:
            err = str(done.stderr or "").strip().splitlines()
            reason = next((e[len("deskgate: "):] for e in err if e.startswith("deskgate: ")), "")
            desktop_log(log, spec.name).warning("on %s: %s exited %s: %s", host.name, action,
                                                done.exit_status, " | ".join(err)[-400:])
            raise DesktopUnavailable(
                f"desktop {spec.name} could not {action} on {host.name}"
                + (f": {reason}" if reason else ""))
        return ssh, host, out[-1].split()

    def _lock(self, desktop_id: int) -> asyncio.Lock:
        return self._locks.setdefault(desktop_id, asyncio.Lock())

    def _seen(self, spec: DesktopSpec, words: list[str]) -> None:
        """A "started"/"running" line: where the socket is; a cached password of another Xvnc
        (the desktop was restarted meanwhile) is dropped."""
        if len(words) < 4:
            raise DesktopUnavailable(f"desktop {spec.name}: its host answered unexpectedly")
        self._sockets[spec.id] = words[2]
        cached = self._passwords.get(spec.id)
        if cached is not None and cached[0] != words[3]:
            del self._passwords[spec.id]

    async def ensure_running(self, spec: DesktopSpec) -> None:
        async with self._lock(spec.id):
            password = random_vnc_password()
            ssh, host, words = await self._script(spec, "start", stdin=password + "\n")
            if words[0] not in ("started", "running"):
                raise DesktopUnavailable(f"desktop {spec.name} did not start on {host.name}")
            self._seen(spec, words)
            if words[0] == "started":
                self._passwords[spec.id] = (words[3], Secret(password))
                desktop_log(log, spec.name).info("started on %s, display :%s", host.name,
                                                 words[1])
            await self._wait_ready(spec, ssh, host, words[2])

    async def _wait_ready(self, spec: DesktopSpec, ssh: SshConnections, host: SshHost,
                          remote: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                path = await ssh.local_path(host, dest_path=remote)
            except SshError as exc:
                raise _named(spec, exc) from None
            if await probe_rfb(unix_path=path, timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise DesktopUnavailable(f"desktop {spec.name} did not answer on {host.name}"
                                         f" within {READY_TIMEOUT:g} s")
            await asyncio.sleep(0.2)

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        ssh, host = await self._reach(spec)
        remote = self._sockets.get(spec.id)
        cached = self._passwords.get(spec.id)
        if remote is None or cached is None:
            _, _, status = await self._script(spec, "status")
            if status[0] != "running":
                self.forget(spec.id)
                raise DesktopUnavailable(f"desktop {spec.name} is not running on {host.name}")
            self._seen(spec, status)
            remote = status[2]
            cached = self._passwords.get(spec.id)
        if cached is None:
            _, _, words = await self._script(spec, "password")
            if words[0] != "password" or len(words) < 3:
                raise DesktopUnavailable(f"desktop {spec.name} is not running on {host.name}")
            try:
                password = decode_vnc_password(base64.b64decode(words[1], validate=True))
            except (ValueError, binascii.Error):
                raise DesktopUnavailable(f"desktop {spec.name} has no readable password on"
                                         f" {host.name}") from None
            cached = self._passwords[spec.id] = (words[2], password)
        try:
            path = await ssh.local_path(host, dest_path=remote)
        except SshError as exc:
            raise _named(spec, exc) from None
        return Endpoint(host="", port=0, unix_path=str(path), password=cached[1])

    async def state(self, spec: DesktopSpec) -> str:
        try:
            _, _, words = await self._script(spec, "status")
        except DesktopUnavailable:
            return "unknown"
        if words[0] == "running" and len(words) >= 4:
            self._seen(spec, words)
            return "running"
        self.forget(spec.id)
        return "stopped"

    async def stop(self, spec: DesktopSpec) -> None:
        async with self._lock(spec.id):
            ssh, host, _ = await self._script(spec, "stop")
            remote = self._sockets.get(spec.id)
            self.forget(spec.id)
            if remote is not None:
                await ssh.close_path(host, dest_path=remote)  # nothing answers here any more
            desktop_log(log, spec.name).info("stopped on %s", host.name)

    def forget(self, desktop_id: int) -> None:
        """What is cached about the desktop (its socket, its password) is asked again."""
        self._sockets.pop(desktop_id, None)
        self._passwords.pop(desktop_id, None)

    async def close(self) -> None:
        """Nothing is left here: the forwards belong to ``SshConnections``; the desktops keep
        running on their hosts."""
        self._sockets.clear()
        self._passwords.clear()


def _named(spec: DesktopSpec, exc: DesktopUnavailable) -> DesktopUnavailable:
    """``exc`` with the desktop's name in its reason (a changed host key stays final)."""
    named = DesktopUnavailable(f"desktop {spec.name}: {exc.reason}")
    named.final = exc.final
    return named
