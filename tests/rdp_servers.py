"""Real RDP servers for tests: xrdp (Xvnc sessions) and FreeRDP's shadow server (NLA).

Import the helpers (``start_xrdp``, ``start_shadow``) or the pytest fixtures (``xrdp_server``,
``shadow_server``, ``rdp_server_factory``, ``rdp_runtime_dir``) from anywhere under tests/:
``tests/`` is on ``sys.path`` because ``tests/conftest.py`` has no package around it.

Every process is started in its own process group and stopped by its PID; the xrdp test account
(``dgrdp<hex>``) and every process it owns are removed in teardown. Needs root (useradd, mount
namespaces) and Debian's xrdp, xorgxrdp, freerdp2-shadow-x11, winpr-utils, xvfb and xterm.

xrdp reads the session manager's port from /etc/xrdp/sesman.ini whatever ``-c`` says, so each
server runs in a private mount namespace where our copy is bind-mounted over that file: several
test runs can have their own sesman on their own ports at once.

``start_xrdp(netns=...)`` runs xrdp, its session manager and so its sessions in a network
namespace (a host of tests/sshhosts.py), listening on that namespace's own loopback: this machine
reaches it only through the host's sshd.

Over 400 lines as one harness: each server's account, configuration, processes and teardown are
made and undone together.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.xdisplay.numbers import display_taken

if TYPE_CHECKING:
    from gateway.rdp.target import RdpTarget

# Distinctive backgrounds of the remote xterms, as (r, g, b).
XRDP_COLOUR = (0x2A, 0x7A, 0x3B)  # green
SHADOW_COLOUR = (0x7A, 0x2A, 0x5B)  # plum

needs_rdp = pytest.mark.skipif(
    os.geteuid() != 0
    or any(
        shutil.which(t) is None for t in ("xrdp", "xrdp-sesman", "freerdp-shadow-cli", "winpr-hash", "Xvfb")
    )
    or shutil.which("xfreerdp3") is None,
    reason="needs root, xrdp, freerdp2-shadow-x11, freerdp3-x11, winpr-utils and Xvfb",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_display(low: int = 100, high: int = 200) -> int:
    for n in range(low, high):
        if not display_taken(n):
            return n
    raise RuntimeError(f"no free X display in :{low}-:{high}")


def listening(port: int, hosts: tuple[str, ...] = ("127.0.0.1",), netns: str | None = None) -> bool:
    if netns is not None:  # a socket listening on that port, as the namespace's kernel sees it
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        return bool(out.strip())
    for host in hosts:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
    return False


def wait_listening(
    port: int,
    procs: list[subprocess.Popen[bytes]],
    timeout: float = 15.0,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    netns: str | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited {p.returncode} before listening on {port}")
        if listening(port, hosts, netns):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def pids_of_uid(uid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
    return out


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL after ``timeout``; reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group (xrdp's forks)
    if proc.poll() is None:
        proc.wait(timeout=timeout)


@dataclass
class RdpServer:
    """A running RDP server on 127.0.0.1:``port`` with one account."""

    kind: str  # "xrdp" or "shadow"
    port: int
    username: str
    password: str
    colour: tuple[int, int, int]
    workdir: Path
    domain: str = ""
    security: str = "negotiate"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    uid: int | None = None  # xrdp: the test account, whose processes teardown kills
    host: str = "127.0.0.1"  # as seen from inside ``netns`` when it runs in one
    netns: str | None = None
    _owns_workdir: bool = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def target(self, **overrides: object) -> RdpTarget:
        """A ``gateway.rdp.target.RdpTarget`` for this server (``overrides`` replace fields)."""
        from gateway.model import Secret
        from gateway.rdp.target import RdpTarget

        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "domain": self.domain,
            "password": Secret(self.password),
            "security": self.security,
        }
        values.update(overrides)
        return RdpTarget(**values)  # type: ignore[arg-type]

    @property
    def ca_pem(self) -> str:
        """xrdp: the PEM of the test CA that issued the server's certificate (CN 127.0.0.1)."""
        if self.kind != "xrdp":
            raise NotImplementedError("only xrdp has a CA-issued certificate")
        return (self.workdir / "tls" / "ca.pem").read_text()

    def certificate_sha256(self) -> str:
        """The server certificate's SHA-256 as FreeRDP shows it (xrdp: issued by ``ca_pem``)."""
        if self.kind != "xrdp":
            raise NotImplementedError("only xrdp's certificate file is known")
        out = subprocess.run(
            ["openssl", "x509", "-in", str(self.workdir / "tls" / "cert.pem"), "-noout",
             "-fingerprint", "-sha256"],
            capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
        return out.strip().split("=", 1)[1].lower()

    def kill(self) -> None:
        """SIGKILL the server's processes (not the xrdp session): connections drop at once."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_group(p)
        if self.uid is not None:
            _kill_uid(self.uid)
            _remove_x_files_of(self.uid)
            with contextlib.suppress(KeyError):
                subprocess.run(["userdel", "-r", "-f", pwd.getpwuid(self.uid).pw_name],
                               capture_output=True, timeout=30)  # fmt: skip
            self.uid = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _remove_x_files_of(uid: int) -> None:
    """The killed session's X server cannot remove its socket and lock: do it, or xrdp's
    session manager runs out of free display numbers after enough test runs."""
    for path in [*Path("/tmp/.X11-unix").glob("X*"), *Path("/tmp").glob(".X*-lock")]:
        with contextlib.suppress(OSError):
            if path.lstat().st_uid == uid:
                path.unlink()


def _kill_uid(uid: int) -> None:
    """Every process of the test account (its xrdp session outlives sesman), by PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_of_uid(uid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)


def _set_ini(text: str, section: str, key: str, value: str) -> str:
    """Set ``key=value`` in ``[section]`` of an xrdp ini text (added when missing)."""
    lines = text.splitlines()
    current = ""
    for i, line in enumerate(lines):
        m = re.match(r"^\[(.+)\]\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            lines[i] = f"{key}={value}"
            return "\n".join(lines) + "\n"
    for i, line in enumerate(lines):
        if line.strip() == f"[{section}]":
            lines.insert(i + 1, f"{key}={value}")
            return "\n".join(lines) + "\n"
    raise KeyError(section)


def _in_private_mounts(sesman_ini: Path, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace where ``sesman_ini`` replaces /etc/xrdp/sesman.ini.

    unshare and sh exec, so the process started keeps the PID of the server itself."""
    script = 'mount --bind "$1" /etc/xrdp/sesman.ini && shift && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(sesman_ini),
        *argv,
    ]


def make_test_ca(folder: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it issued for ``common_name`` (CN and DNS/IP
    subject alternative names): (ca.pem, cert.pem, key.pem) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"))
    ext = folder / "server.ext"
    san = f"DNS:{common_name}" + (f",IP:{common_name}" if re.fullmatch(r"[\d.]+", common_name) else "")
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    for argv in (
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
         "-days", "2", "-subj", "/CN=Deskgate test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={common_name}"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
    ):  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    for path in (ca_key, key):
        path.chmod(0o600)
    return ca, cert, key


def start_xrdp(workdir: Path | None = None, *, colour: tuple[int, int, int] = XRDP_COLOUR,
               netns: str | None = None, session: str = "Xvnc") -> RdpServer:
    """xrdp + xrdp-sesman on 127.0.0.1:<free port>, ``session`` sessions (xrdp.ini's section:
    "Xvnc", or "Xorg" for xorgxrdp), a fresh local account whose
    ~/.xsession is a maximised xterm with background ``colour``. TLS or RDP security, no NLA;
    the TLS certificate (CN 127.0.0.1) is issued by a CA of its own (``ca_pem``). With
    ``netns``: all of it inside that network namespace, on its own 127.0.0.1."""
    owns = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dg-xrdp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    username = f"dgrdp{secrets.token_hex(3)}"
    password = f"Rdp-{secrets.token_urlsafe(9)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", username], check=True, capture_output=True)
    entry = pwd.getpwnam(username)
    server = RdpServer(
        kind="xrdp", port=free_port(), username=username, password=password, colour=colour,
        workdir=workdir, uid=entry.pw_uid, netns=netns, _owns_workdir=owns,
    )  # fmt: skip
    inside = ["ip", "netns", "exec", netns] if netns is not None else []  # it execs: same PID
    try:
        subprocess.run(
            ["chpasswd"], input=f"{username}:{password}\n".encode(), check=True, capture_output=True
        )
        xsession = Path(entry.pw_dir) / ".xsession"
        bg = "#{:02x}{:02x}{:02x}".format(*colour)
        xsession.write_text(
            "#!/bin/sh\n"
            f"exec xterm -fn 10x20 -bg '{bg}' -fg white -geometry 100x40+0+0 -maximized -T deskgate-remote\n"
        )
        xsession.chmod(0o755)
        os.chown(xsession, entry.pw_uid, entry.pw_gid)

        sesman_port = free_port()
        xrdp_ini = _set_ini(
            Path("/etc/xrdp/xrdp.ini").read_text(), "Globals", "port", f"tcp://127.0.0.1:{server.port}"
        )
        xrdp_ini = _set_ini(xrdp_ini, "Globals", "autorun", session)
        _ca, cert, key = make_test_ca(workdir / "tls")
        xrdp_ini = _set_ini(xrdp_ini, "Globals", "certificate", str(cert))
        xrdp_ini = _set_ini(xrdp_ini, "Globals", "key_file", str(key))
        xrdp_ini = _set_ini(xrdp_ini, "Logging", "LogFile", str(workdir / "xrdp.log"))
        xrdp_ini = _set_ini(xrdp_ini, "Logging", "EnableSyslog", "false")
        (workdir / "xrdp.ini").write_text(xrdp_ini)
        sesman_ini = _set_ini(
            Path("/etc/xrdp/sesman.ini").read_text(), "Globals", "ListenPort", str(sesman_port)
        )
        sesman_ini = _set_ini(sesman_ini, "Globals", "ListenAddress", "127.0.0.1")
        sesman_ini = _set_ini(sesman_ini, "Logging", "LogFile", str(workdir / "sesman.log"))
        sesman_ini = _set_ini(sesman_ini, "Logging", "EnableSyslog", "false")
        sesman_path = workdir / "sesman.ini"
        sesman_path.write_text(sesman_ini)
        Path("/run/xrdp/sockdir").mkdir(parents=True, exist_ok=True)
        os.chmod("/run/xrdp/sockdir", 0o1777)  # noqa: S103 - as xrdp wants it

        with open(workdir / "sesman.out", "wb") as out:
            sesman = subprocess.Popen(
                inside + _in_private_mounts(sesman_path, ["xrdp-sesman", "-n", "-c", str(sesman_path)]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        server.procs.append(sesman)
        wait_listening(sesman_port, [sesman], hosts=("127.0.0.1", "::1"), netns=netns)
        with open(workdir / "xrdp.out", "wb") as out:
            xrdp = subprocess.Popen(
                inside + _in_private_mounts(sesman_path, ["xrdp", "-n", "-c", str(workdir / "xrdp.ini")]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        server.procs.append(xrdp)
        wait_listening(server.port, [xrdp], netns=netns)
    except BaseException:
        server.stop()
        raise
    return server


def start_shadow(workdir: Path | None = None, *, colour: tuple[int, int, int] = SHADOW_COLOUR) -> RdpServer:
    """FreeRDP's shadow server with NLA (SAM file from winpr-hash) sharing an Xvfb 1024x768
    whose whole screen is an xterm with background ``colour``."""
    owns = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dg-shadow-"))
    workdir.mkdir(parents=True, exist_ok=True)
    username = "shaduser"
    password = f"Shd-{secrets.token_urlsafe(9)}"
    server = RdpServer(
        kind="shadow", port=free_port(), username=username, password=password, colour=colour,
        workdir=workdir, security="nla", _owns_workdir=owns,
    )  # fmt: skip
    try:
        sam = subprocess.run(["winpr-hash", "-u", username, "-p", password, "-f", "sam"],
                             capture_output=True, check=True).stdout  # fmt: skip
        (workdir / "shadow.sam").write_bytes(sam)
        os.chmod(workdir / "shadow.sam", 0o600)
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        for _attempt in range(5):
            display = free_display()
            with open(workdir / "xvfb.log", "wb") as xvfb_log:
                xvfb = subprocess.Popen(
                    ["Xvfb", f":{display}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                    stdin=subprocess.DEVNULL, stdout=xvfb_log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + 10
            while xvfb.poll() is None and not Path(f"/tmp/.X11-unix/X{display}").exists():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if xvfb.poll() is None and Path(f"/tmp/.X11-unix/X{display}").exists():
                break
            stop_group(xvfb)
        else:
            raise RuntimeError("Xvfb did not start")
        server.procs.append(xvfb)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "DISPLAY": f":{display}"}
        bg = "#{:02x}{:02x}{:02x}".format(*colour)
        term = subprocess.Popen(
            ["xterm", "-fn", "10x20", "-bg", bg, "-fg", "white", "-geometry", "110x40+0+0",
             "-T", "deskgate-shadow"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        server.procs.append(term)
        with open(workdir / "shadow.out", "wb") as out:
            shadow = subprocess.Popen(
                ["freerdp-shadow-cli", "/bind-address:127.0.0.1", f"/port:{server.port}", "+auth",
                 "/sec:nla", f"/sam-file:{workdir / 'shadow.sam'}"],
                env=env, cwd=str(home), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server.procs.append(shadow)
        wait_listening(server.port, [shadow])
    except BaseException:
        server.stop()
        raise
    return server


# -- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def xrdp_server() -> Iterator[RdpServer]:
    """One xrdp for the whole test session (its account's session is reused between tests)."""
    if os.geteuid() != 0 or shutil.which("xrdp") is None:
        pytest.skip("needs root and xrdp")
    server = start_xrdp()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shadow_server() -> Iterator[RdpServer]:
    """One FreeRDP shadow server with NLA for the whole test session."""
    if os.geteuid() != 0 or shutil.which("freerdp-shadow-cli") is None:
        pytest.skip("needs root and freerdp-shadow-cli")
    server = start_shadow()
    yield server
    server.stop()


@pytest.fixture
def rdp_server_factory() -> Iterator[Callable[[str], RdpServer]]:
    """``rdp_server_factory("xrdp" | "shadow")``: a server of the test's own (to kill, say)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    started: list[RdpServer] = []

    def start(kind: str) -> RdpServer:
        server = start_xrdp() if kind == "xrdp" else start_shadow()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def rdp_runtime_dir() -> Iterator[Path]:
    """A short runtime folder an unprivileged bridge user can pass through (pytest's tmp_path
    sits under a 0700 folder, and unix socket paths must stay under 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="dg-rdp-", dir="/tmp"))
    os.chmod(d, 0o711)  # noqa: S103 - traverse only
    yield d
    shutil.rmtree(d, ignore_errors=True)
