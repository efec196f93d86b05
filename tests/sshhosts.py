"""Real Linux "hosts" that tests reach only through SSH: a network namespace each, on a private
/24, with an OpenSSH server of its own and, on demand, TigerVNC desktops that listen only inside.

Import the helpers (``start_ssh_host``, ``start_xvnc_in``, ``cleanup_ssh_host``) or the pytest
fixtures (``ssh_host``, ``ssh_hosts``) from anywhere under tests/: ``tests/`` is on ``sys.path``
because ``tests/conftest.py`` has no package around it. A test module that uses the fixtures
imports them by name (``from sshhosts import ssh_host``) or lists ``pytest_plugins``.

Over 400 lines as one harness: a host's network, account, sshd and desktops are made and undone
together, and a failure halfway must undo what was made.

A host made ``behind`` another is linked into that host's namespace instead: this machine has
no route to it, only its jump host does.

Host ``i`` is the namespace ``dgssh-<pid>-<i>``, joined to this machine by a veth pair: the
machine's side (``dgs<pid%1000>-<i>``) is 10.231.<i>.1/24, the host's side (``eth0`` inside)
is 10.231.<i>.2/24. The namespace has no default route and forwarding is not touched, so the
host can reach nothing but this machine's 10.231.<i>.1, and this machine reaches only the
host's sshd there (a desktop listens on the namespace's own loopback, or on a unix socket).

Every process is started by us and stopped by its PID (``ip netns exec`` and ``setpriv`` exec
the program, so the PID we hold is the server's own). The host account (``dgssh<pid>``, one
per test process) is created when missing and deleted only by the harness that created it,
once no host of this process uses it. Needs root, iproute2 (ip, ss), util-linux (runuser,
setpriv), OpenSSH's sshd and ssh-keygen; the desktops also need TigerVNC's Xvnc and vncpasswd,
openbox, xterm, xprop and xdotool.

Quirks worth knowing:

- ``useradd`` leaves the password field ``!`` (locked), and sshd without PAM refuses a locked
  account even for public keys: an account we create gets ``*`` (no password, not locked).
- sshd reads ``AuthorizedKeysFile`` as the user, so every folder on the way to the workdir must
  let the account pass (``tmp`` of ``start_ssh_host`` is checked); pytest's ``tmp_path`` does
  not (its root is 0700): the fixtures use a short 0711 folder under /tmp instead.
- Stopping sshd (SIGTERM to the listener) leaves the connections it already accepted running,
  as on any machine; cleanup ends every process left in the namespace.
- TigerVNC's listen backlog is 5: with SYN cookies (Linux's default, kept here) a burst of
  more connections to one Xvnc TCP port can leave some hanging for good (see
  ``SshHost.set_syncookies``; the kernel logs "Possible SYN flooding ... Sending cookies").
- A unix socket is a file, not a network address: root in this namespace can open a desktop's
  ``-rfbunixpath`` socket directly. Only TCP is isolated by the namespace.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.xdisplay.numbers import UNIX_PATH_MAX, free_display, lock_file
from gateway.xdisplay.xvnc import xterm_font_args

NET_PREFIX = "10.231"
# One per test process: a run that ends its account ends nothing of a run beside it.
DEFAULT_USER = f"dgssh{os.getpid()}"
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
STEP_TIMEOUT = 10.0  # one command, one server coming up, one process stopping
RFB_BANNER = b"RFB 003.008\n"

_TOOLS = ("ip", "ss", "ssh-keygen", "useradd", "usermod", "userdel", "runuser", "setpriv", "timeout")
_DESKTOP_TOOLS = ("Xvnc", "vncpasswd", "openbox", "xterm", "xprop", "xdotool")

needs_ssh_hosts = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SSHD).is_file() or any(shutil.which(t) is None for t in _TOOLS),
    reason=f"needs root, {SSHD} and {', '.join(_TOOLS)}",
)
needs_desktops = pytest.mark.skipif(
    any(shutil.which(t) is None for t in _DESKTOP_TOOLS),
    reason=f"needs {', '.join(_DESKTOP_TOOLS)}",
)


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = STEP_TIMEOUT,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short command (stdin closed unless ``input``); RuntimeError naming it on failure."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(argv)}: no answer after {timeout} s") from None
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _stop_child(proc: subprocess.Popen[bytes], timeout: float = STEP_TIMEOUT, group: bool = False) -> None:
    """SIGTERM our child ``proc`` (its process group when ``group``), SIGKILL after ``timeout``;
    reaped."""
    kill = os.killpg if group else os.kill
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    elif group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what its group left behind


def _stop_pids(pids: Sequence[int], timeout: float = STEP_TIMEOUT) -> list[int]:
    """SIGTERM, then SIGKILL, processes that are not our children; the PIDs still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _pid_alive(p)]
        if not pids:
            break
    return list(pids)


# --- the host account, shared by every host of this process ---------------------------------


@dataclass
class _Account:
    name: str
    uid: int
    gid: int
    home: Path
    created: bool  # by this process: deleted when its last host is cleaned up
    holders: int = 0
    runtime_dir_created: bool = False


_ACCOUNTS: dict[str, _Account] = {}


def _acquire_account(name: str) -> _Account:
    account = _ACCOUNTS.get(name)
    if account is None:
        created = False
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", name])
            created = True
            try:
                # "!" (useradd's locked password) makes sshd without PAM refuse the account, keys
                # included; "*" matches no password and is not a lock.
                _run(["usermod", "-p", "*", name])
                entry = pwd.getpwnam(name)
            except BaseException:
                _run(["userdel", "-r", name], check=False)
                raise
        account = _Account(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), created)
        _ACCOUNTS[name] = account
    account.holders += 1
    return account


def _release_account(account: _Account) -> None:
    account.holders -= 1
    if account.holders > 0:
        return
    del _ACCOUNTS[account.name]
    runtime = _runtime_dir(account)
    if account.runtime_dir_created:
        shutil.rmtree(runtime, ignore_errors=True)
        with contextlib.suppress(OSError):
            runtime.parent.rmdir()  # /run/user, when nothing else is in it
    if account.created:
        # Its every process was started by us (desktops, SSH sessions): none may outlive it.
        left = _stop_pids(_pids_of_uid(account.uid), 3.0)
        done = _run(["userdel", "-r", account.name], check=False, timeout=30)
        if left or done.returncode not in (0, 12):  # 12: no mail spool to remove
            raise RuntimeError(f"userdel {account.name}: {done.stderr.strip()} (processes left: {left})")


def _pids_of_uid(uid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
    return out


def _runtime_dir(account: _Account) -> Path:
    return Path("/run/user") / str(account.uid)


def ensure_runtime_dir(account: _Account) -> Path:
    """The account's runtime folder /run/user/<uid> (0700, its own), created when missing
    (there is no logind here) and then removed with the account's last host."""
    path = _runtime_dir(account)
    if not path.exists():
        path.parent.mkdir(mode=0o755, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chown(path, account.uid, account.gid)
        account.runtime_dir_created = True
    return path


# --- hosts -------------------------------------------------------------------------------------


@dataclass(eq=False)
class SshHost:
    """A network namespace with an sshd on ``address``:``port`` and one account, ``user``.

    ``client_key`` (OpenSSH format) is authorized for ``user``; ``host_key_line`` is the
    known_hosts line of sshd's host key. ``exec`` runs a command in the namespace.
    """

    name: str
    netns: str
    address: str
    gateway_address: str
    port: int
    user: str
    client_key: str = field(repr=False)
    client_public: str
    host_key_line: str
    workdir: Path
    index: int
    veth: str
    sshd_pid: int | None = None
    desktops: list[NsDesktop] = field(default_factory=list)
    # A host on a private network behind another (its jump host): its only link goes into that
    # host's namespace, so this machine has no route to it.
    behind: SshHost | None = None
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _account: _Account | None = field(default=None, repr=False)
    _netns_created: bool = field(default=False, repr=False)
    _cleaned: bool = field(default=False, repr=False)

    @property
    def config(self) -> Path:
        return self.workdir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.workdir / "host_ed25519"

    @property
    def created_user(self) -> bool:
        return self._account is not None and self._account.created

    @property
    def uid(self) -> int:
        assert self._account is not None
        return self._account.uid

    @property
    def home(self) -> Path:
        assert self._account is not None
        return self._account.home

    def runtime_dir(self) -> Path:
        """The account's runtime folder (/run/user/<uid>), created when missing."""
        assert self._account is not None
        return ensure_runtime_dir(self._account)

    def exec(self, *argv: str, user: str | None = None, check: bool = True, timeout: float = STEP_TIMEOUT,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace, as root or as ``user`` (``runuser``); text output."""
        prefix = ["ip", "netns", "exec", self.netns]
        if user is not None:
            prefix += ["runuser", "-u", user, "--"]
        return _run([*prefix, *argv], check=check, timeout=timeout, input=input)

    def connections(self) -> int:
        """Established TCP connections to sshd's port, as the namespace's kernel sees them."""
        out = self.exec("ss", "-Htn", "state", "established", f"( sport = :{self.port} )").stdout
        return sum(1 for line in out.splitlines() if line.strip())

    def start_sshd(self, timeout: float = STEP_TIMEOUT) -> None:
        """Start sshd (same config, the current host key) and wait until it greets us."""
        if self._sshd is not None and self._sshd.poll() is None:
            raise RuntimeError(f"{self.name}: sshd (pid {self._sshd.pid}) is running")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        with open(self.workdir / "sshd.out", "ab") as out:
            self._sshd = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.sshd_pid = self._sshd.pid
        deadline = time.monotonic() + timeout
        while True:
            if self._sshd.poll() is not None:
                tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                raise RuntimeError(f"{self.name}: sshd exited {self._sshd.returncode}: {tail}")
            with contextlib.suppress(OSError):
                if self._greets():
                    return
            if time.monotonic() > deadline:
                self.stop_sshd()
                raise RuntimeError(f"{self.name}: sshd did not answer on {self.address}:{self.port}")
            time.sleep(0.05)

    def _greets(self) -> bool:
        """sshd's banner, read from this machine, or from the jump host for a hidden host."""
        if self.behind is None:
            return ssh_banner(self.address, self.port, timeout=1.0).startswith("SSH-2.0-")
        script = f"exec 3<>/dev/tcp/{self.address}/{self.port} && head -c 8 <&3"
        done = self.behind.exec("timeout", "2", "bash", "-c", script, check=False, timeout=5)
        return done.stdout.startswith("SSH-2.0-")

    def stop_sshd(self, timeout: float = STEP_TIMEOUT) -> None:
        """SIGTERM sshd's listener by its PID and reap it (accepted connections live on)."""
        if self._sshd is not None:
            _stop_child(self._sshd, timeout)
        self._sshd = None
        self.sshd_pid = None

    def set_syncookies(self, on: bool) -> None:
        """``net.ipv4.tcp_syncookies`` of the namespace (1, Linux's default, when created).

        TigerVNC listens with a backlog of 5: a burst of connections to one Xvnc port overflows
        it, and with SYN cookies the kernel then drops the handshake's last ACK after answering
        with a cookie. The connecting side (sshd, for a direct-tcpip channel) believes it is
        connected, but Xvnc sees the connection only when the client sends something, and an
        RFB client waits for the server's banner first: the channel hangs. Without cookies the
        SYN or ACK is retried a second later instead."""
        self.exec("sysctl", "-q", "-w", f"net.ipv4.tcp_syncookies={1 if on else 0}")

    def restart_sshd(self) -> None:
        self.stop_sshd()
        self.start_sshd()

    def rotate_host_key(self) -> str:
        """A new host key file (the running sshd keeps the old one until restarted); returns
        and remembers its known_hosts line."""
        for path in (self.host_key, self.host_key.with_name(self.host_key.name + ".pub")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.host_key_line = _make_host_key(self.host_key, self.address, self.port)
        return self.host_key_line


def _make_host_key(path: Path, address: str, port: int) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)])
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"[{address}]:{port} {kind} {blob}"


def ssh_banner(address: str, port: int, timeout: float = 2.0) -> str:
    """The first line an SSH server sends (OSError when nothing answers)."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _passable(path: Path) -> bool:
    """Every folder from / to ``path`` lets others pass (o+x)."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _subnet_in_use(index: int) -> bool:
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    return f" {NET_PREFIX}.{index}." in out


def start_ssh_host(index: int, tmp: Path, *, user: str = DEFAULT_USER, port: int | None = None,
                   name: str | None = None, behind: SshHost | None = None) -> SshHost:
    """Host ``index`` (1-254): namespace, veth pair on 10.231.<index>.0/24, account ``user``,
    keys, sshd on 10.231.<index>.2:``port`` (2200 + index by default), answering when returned.

    ``tmp`` holds the host's workdir; every folder on its way must let ``user`` pass (sshd
    reads authorized_keys as the user). On failure everything already made is undone.
    """
    if not 1 <= index <= 254:
        raise ValueError("index must be in 1..254")
    if not _passable(tmp):
        raise ValueError(f"{tmp}: a folder on the way is closed to others (sshd reads keys as the user)")
    if _subnet_in_use(index):
        raise RuntimeError(f"{NET_PREFIX}.{index}.0/24 is already in use on this machine")
    pid = os.getpid()
    workdir = Path(tempfile.mkdtemp(prefix=f"h{index}-", dir=tmp))
    os.chmod(workdir, 0o711)  # noqa: S103 - the account passes through to its authorized_keys
    host = SshHost(
        name=name or f"host{index}", netns=f"dgssh-{pid}-{index}",
        address=f"{NET_PREFIX}.{index}.2", gateway_address=f"{NET_PREFIX}.{index}.1",
        port=port or 2200 + index, user=user, client_key="", client_public="", host_key_line="",
        workdir=workdir, index=index, veth=f"dgs{pid % 1000}-{index}", behind=behind,
    )  # fmt: skip
    try:
        host._account = _acquire_account(user)
        # The network: nothing but the /24 between this machine and the host.
        _run(["ip", "netns", "add", host.netns])
        host._netns_created = True
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        if behind is None:
            _run(["ip", "addr", "add", f"{host.gateway_address}/24", "dev", host.veth])
            _run(["ip", "link", "set", host.veth, "up"])
        else:  # the outer end in the jump host's namespace: no route from this machine
            _run(["ip", "link", "set", host.veth, "netns", behind.netns])
            behind.exec("ip", "addr", "add", f"{host.gateway_address}/24", "dev", host.veth)
            behind.exec("ip", "link", "set", host.veth, "up")
        host.exec("ip", "link", "set", "lo", "up")
        host.exec("ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        host.exec("ip", "link", "set", "eth0", "up")

        # Keys: the client's in a private folder, the host's beside the config.
        keys = Path(tempfile.mkdtemp(prefix="client-", dir=workdir))  # 0700
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deskgate-test@{host.name}",
              "-f", str(keys / "id_ed25519")])  # fmt: skip
        host.client_key = (keys / "id_ed25519").read_text()
        host.client_public = (keys / "id_ed25519.pub").read_text().strip()
        host.host_key_line = _make_host_key(host.host_key, host.address, host.port)
        if user == "root":
            (workdir / "root-home").mkdir(mode=0o700)
        authorized = workdir / "authorized_keys"
        authorized.mkdir(mode=0o755)
        (authorized / user).write_text(host.client_public + "\n")
        os.chmod(authorized / user, 0o644)

        host.config.write_text(
            "\n".join([
                f"Port {host.port}",
                f"ListenAddress {host.address}",
                f"HostKey {host.host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}/%u",
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # root only for a host that logs in as root (a hypervisor's machine), by key
                f"PermitRootLogin {'prohibit-password' if user == 'root' else 'no'}",
                f"AllowUsers {user}",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "AllowStreamLocalForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "MaxSessions 100",
                "MaxStartups 100:30:200",
                "ClientAliveInterval 0",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                # root's own dotfiles on this machine are not the host's: its sessions start in
                # an empty home (bash reads ~/.bashrc for commands run over SSH)
                *([f"SetEnv HOME={workdir / 'root-home'}"] if user == "root" else []),
                "",
            ])
        )  # fmt: skip
        host.start_sshd()
    except BaseException:
        cleanup_ssh_host(host)
        raise
    return host


def cleanup_ssh_host(host: SshHost) -> None:
    """Stop the host's desktops and sshd by PID, end what is left in its namespace, delete the
    namespace and veth, its workdir, and the account when the harness created it (and no other
    host of this process uses it). Tries every step; RuntimeError listing what failed."""
    if host._cleaned:
        return
    host._cleaned = True
    errors: list[str] = []

    def step(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every step is tried, failures reported together
            errors.append(f"{what}: {e}")

    for desktop in list(host.desktops):
        step(f"desktop :{desktop.display}", desktop.stop)
    step("sshd", host.stop_sshd)
    if host._netns_created:

        def end_leftovers() -> None:
            # Only processes we started live here: sshd's per-connection children and what
            # ran in the sessions.
            out = _run(["ip", "netns", "pids", host.netns], check=False).stdout
            left = _stop_pids([int(p) for p in out.split() if p.isdigit()], 3.0)
            if left:
                raise RuntimeError(f"processes {left} did not stop")

        step("processes in the namespace", end_leftovers)
        step("namespace", lambda: _run(["ip", "netns", "del", host.netns]))

    def drop_veth() -> None:
        # Deleting the namespace destroys its end of the pair, and with it ours, a moment later.
        deadline = time.monotonic() + 3
        while _run(["ip", "link", "show", host.veth], check=False).returncode == 0:
            if time.monotonic() > deadline:
                done = _run(["ip", "link", "del", host.veth], check=False)
                if done.returncode != 0 and "Cannot find device" not in done.stderr:
                    raise RuntimeError(done.stderr.strip())
                return
            time.sleep(0.05)

    if host.behind is None:  # else the pair went with the namespaces
        step("veth", drop_veth)
    account, host._account = host._account, None
    if account is not None:
        step("account", lambda: _release_account(account))
    shutil.rmtree(host.workdir, ignore_errors=True)
    if errors:
        raise RuntimeError(f"cleanup of {host.name}: " + "; ".join(errors))


# --- desktops inside a host --------------------------------------------------------------------


@dataclass(eq=False)
class NsDesktop:
    """An Xvnc (+ openbox, + xterm) in a host's namespace, running as the host account.

    ``port``: VNC on the namespace's 127.0.0.1 only; ``unix_path``: VNC on a unix socket (0600,
    the account's). ``pids`` lists Xvnc first."""

    host: SshHost = field(repr=False)
    display: int
    port: int | None
    unix_path: Path | None
    log: Path
    password: str | None = field(default=None, repr=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def xvnc_pid(self) -> int:
        return self.procs[0].pid

    def banner_inside(self, timeout: float = 2.0) -> bytes:
        """The first 12 bytes of the TCP port, read from inside the namespace (b"" if none)."""
        assert self.port is not None
        script = f"exec 3<>/dev/tcp/127.0.0.1/{self.port} && head -c 12 <&3"
        done = self.host.exec("timeout", str(timeout), "bash", "-c", script, check=False,
                              timeout=timeout + 3)  # fmt: skip
        return done.stdout.encode() if done.returncode == 0 else b""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop xterm, openbox, then Xvnc (each its process group, by PID), remove its files."""
        for proc in reversed(self.procs):
            _stop_child(proc, timeout, group=True)
        if self in self.host.desktops:
            self.host.desktops.remove(self)
        # Xvnc removes its lock and X socket on SIGTERM; after a SIGKILL they stay behind.
        lock = lock_file(self.display)
        with contextlib.suppress(OSError, ValueError):
            if self.procs and int(lock.read_text().strip()) == self.xvnc_pid:
                lock.unlink()
                with contextlib.suppress(FileNotFoundError):
                    Path(f"/tmp/.X11-unix/X{self.display}").unlink()
        for path in (self.unix_path, self.log.with_name(f"vnc{self.display}.passwd")):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _desktop_env(host: SshHost, display: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(host.home),
        "USER": host.user,
        "LOGNAME": host.user,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "DISPLAY": f":{display}",
        "XDG_RUNTIME_DIR": str(host.runtime_dir()),
    }


def _spawn_in(host: SshHost, argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` in the namespace as the host account, in its own process group, umask 077.
    ``ip netns exec`` and ``setpriv`` both exec, so the PID is the program's own."""
    assert host._account is not None
    account = host._account
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "setpriv", f"--reuid={account.uid}",
             f"--regid={account.gid}", "--clear-groups", "--", *argv],
            env=env, cwd=str(account.home), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, umask=0o077,
        )  # fmt: skip


def start_xvnc_in(host: SshHost, *, tcp: bool = True, unix: bool = True, password: str | None = None,
                  geometry: str = "1024x768", window_manager: bool = True, xterm: bool = True,
                  display_base: int = 40, timeout: float = 15.0) -> NsDesktop:
    """A TigerVNC desktop in ``host``'s namespace, run by the host account; returns once the
    VNC socket(s) answer, openbox owns the root window and the xterm is mapped.

    ``tcp``: VNC on the namespace's 127.0.0.1:5900+k (k = 1 for the host's first desktop, ...);
    ``unix``: VNC on ``<runtime dir>/deskgate-vnc<k>.sock``. ``password`` None: security type
    None, else VncAuth (1-8 characters). Display numbers come from ``free_display``: the X lock
    files and /tmp/.X11-unix are shared with this machine.
    """
    if not (tcp or unix):
        raise ValueError("start_xvnc_in needs tcp or unix")
    k = 1 + max([d.port - 5900 for d in host.desktops if d.port is not None] + [len(host.desktops)])
    port = 5900 + k if tcp else None
    unix_path = host.runtime_dir() / f"deskgate-vnc{k}.sock" if unix else None
    if unix_path is not None and len(os.fsencode(unix_path)) > UNIX_PATH_MAX:
        raise ValueError(f"unix socket path too long ({unix_path})")
    deadline = time.monotonic() + timeout
    number = free_display(display_base)
    for _attempt in range(5):
        desktop = NsDesktop(host=host, display=number, port=port, unix_path=unix_path,
                            log=host.workdir / f"xvnc{number}.log", password=password)  # fmt: skip
        try:
            if _start_desktop(desktop, geometry, window_manager, xterm, deadline):
                return desktop
        except BaseException:
            desktop.stop()
            raise
        desktop.stop()
        number = free_display(number + 1)  # taken by someone else meanwhile
    raise RuntimeError(f"{host.name}: no free X display for Xvnc")


def _start_desktop(d: NsDesktop, geometry: str, window_manager: bool, xterm: bool, deadline: float) -> bool:
    """Start ``d``'s processes (into ``d.procs``, so a failure stops them); False when its
    display number turned out to be taken."""
    host = d.host
    argv = ["Xvnc", f":{d.display}", "-geometry", geometry, "-depth", "24", "-nolisten", "tcp",
            "-AlwaysShared", "-desktop", host.name, "-UseBlacklist=0"]  # fmt: skip
    if d.port is not None:
        argv += ["-localhost", "-interface", "127.0.0.1", "-rfbport", str(d.port)]
    else:
        argv += ["-rfbport", "-1"]
    if d.unix_path is not None:
        with contextlib.suppress(FileNotFoundError):
            d.unix_path.unlink()  # a stale socket of a killed server of ours
        argv += ["-rfbunixpath", str(d.unix_path), "-rfbunixmode", "0600"]
    if d.password is None:
        argv += ["-SecurityTypes", "None"]
    else:
        if not 1 <= len(d.password) <= 8:
            raise ValueError("a VncAuth password has 1 to 8 characters")
        secret = d.log.with_name(f"vnc{d.display}.passwd")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(subprocess.run(["vncpasswd", "-f"], input=f"{d.password}\n".encode(), capture_output=True,
                                   check=True, timeout=STEP_TIMEOUT).stdout)  # fmt: skip
        os.chown(secret, host.uid, -1)
        argv += ["-SecurityTypes", "VncAuth", "-PasswordFile", str(secret)]
    env = _desktop_env(host, d.display)
    xvnc = _spawn_in(host, argv, env, d.log)
    d.procs.append(xvnc)
    host.desktops.append(d)

    # 1. Every VNC socket answers with the RFB banner.
    while True:
        if xvnc.poll() is not None:
            text = d.log.read_text(errors="replace")
            if "already active" in text or "already running" in text:
                return False
            raise RuntimeError(f"Xvnc :{d.display} exited {xvnc.returncode}: {text[-600:]}")
        if _unix_banner(d.unix_path) and (d.port is None or d.banner_inside(1.0) == RFB_BANNER):
            break
        _wait_step(deadline, f"Xvnc :{d.display} did not answer")

    # 2. The window manager owns the root window before the xterm starts.
    def x_tool(*args: str) -> str:
        done = host.exec("env", f"DISPLAY=:{d.display}", *args, user=host.user, check=False, timeout=3)
        return done.stdout if done.returncode == 0 else ""

    if window_manager:
        wm = _spawn_in(host, ["openbox"], env, d.log)
        d.procs.append(wm)
        while "window id #" not in x_tool("xprop", "-root", "_NET_SUPPORTING_WM_CHECK"):
            if wm.poll() is not None:
                raise RuntimeError(f"openbox on :{d.display} exited {wm.returncode}")
            _wait_step(deadline, f"openbox on :{d.display} did not come up")

    # 3. The xterm window is mapped.
    if xterm:
        term = _spawn_in(host, ["xterm", *xterm_font_args(), "-geometry", "80x24+10+10", "-bg", "white",
                                "-fg", "black"], env, d.log)  # fmt: skip
        d.procs.append(term)
        while not x_tool("xdotool", "search", "--onlyvisible", "--pid", str(term.pid)).split():
            if term.poll() is not None:
                raise RuntimeError(f"xterm on :{d.display} exited {term.returncode}")
            _wait_step(deadline, f"the xterm on :{d.display} did not appear")
    return True


def _unix_banner(path: Path | None) -> bool:
    """True when the unix socket answers with an RFB banner (or there is no unix socket)."""
    if path is None:
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return s.recv(12) == RFB_BANNER
        except OSError:
            return False


def _wait_step(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise RuntimeError(f"{what} in time")
    time.sleep(0.05)


# --- fixtures ----------------------------------------------------------------------------------

_INDICES_IN_USE: set[int] = set()


def free_index(start: int = 1) -> int:
    """A /24 index that neither this process nor the machine uses now."""
    for index in range(start, 255):
        if index not in _INDICES_IN_USE and not _subnet_in_use(index):
            return index
    raise RuntimeError(f"no free {NET_PREFIX}.x.0/24")


def short_tmp() -> Path:
    """A short folder under /tmp that the host account may pass (0711), for workdirs."""
    path = Path(tempfile.mkdtemp(prefix="dgssh-", dir="/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 - others may pass through, not list
    return path


def _start_indexed(tmp: Path, name: str | None = None, behind: SshHost | None = None,
                   user: str = DEFAULT_USER) -> SshHost:
    index = free_index()
    _INDICES_IN_USE.add(index)
    try:
        return start_ssh_host(index, tmp, user=user, name=name, behind=behind)
    except BaseException:
        _INDICES_IN_USE.discard(index)
        raise


def _cleanup_all(hosts: Sequence[SshHost], tmp: Path) -> None:
    errors = []
    for host in hosts:
        try:
            cleanup_ssh_host(host)
        except RuntimeError as e:
            errors.append(str(e))
        _INDICES_IN_USE.discard(host.index)
    shutil.rmtree(tmp, ignore_errors=True)
    if errors:
        raise RuntimeError("; ".join(errors))


@pytest.fixture
def ssh_host() -> Iterator[SshHost]:
    """One host, for this test only (stop, restart, rotate its key at will)."""
    tmp = short_tmp()
    try:
        host = _start_indexed(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield host
    finally:
        _cleanup_all([host], tmp)


@pytest.fixture(scope="module")
def ssh_hosts() -> Iterator[Callable[..., SshHost]]:
    """``ssh_hosts(n)``: host number n (1, 2, ...) of this module, started on first use; all
    are cleaned up after the module's last test."""
    tmp = short_tmp()
    hosts: dict[int, SshHost] = {}

    def get(n: int, behind: int | None = None) -> SshHost:
        """Host n; ``behind``: the number of the host it is reachable through, only."""
        if n < 1:
            raise ValueError("hosts are numbered from 1")
        if n not in hosts:
            jump = get(behind) if behind is not None else None
            hosts[n] = _start_indexed(tmp, name=f"host{n}", behind=jump)
        return hosts[n]

    try:
        yield get
    finally:
        _cleanup_all(list(hosts.values()), tmp)
