"""A real `deskgate serve` process for tests that talk to it over HTTP as outsiders do.

Made with the command line as an admin would (`init`, `user add`, `desktop add`, `assign`,
`token create`), started in its own session, stopped by its PID. Signing in goes through the
real forms with ``requests`` (the client schemathesis drives too).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import requests
from websupport import PASSWORD, csrf_of, secret_of

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    base: str
    metrics_base: str
    config: Path
    log_path: Path
    admin_name: str
    admin_password: str
    token: str
    desktops: dict[str, int]  # name -> id: "Mine" is alice's, "Theirs" is nobody's

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return cli("--config", str(self.config), *args, stdin=stdin)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, f"deskgate {args}: {proc.stderr}"
    return proc.stdout


def _healthy(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def serve(data: Path) -> Iterator[Served]:
    """A gateway with an admin ("admin"), a user ("alice", password PASSWORD), a desktop she is
    assigned ("Mine") and one nobody is ("Theirs"), an admin API token, metrics on a port."""
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    out = cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
              "--public-url", base, "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, out
    served = Served(base, f"http://127.0.0.1:{metrics_port}", data / "deskgate.toml",
                    data / "serve.log", "admin", m.group(1), "", {})
    served.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    for name, vnc_port in (("Mine", "5999"), ("Theirs", "5998")):
        line = served.cli("desktop", "add", name, "--provider", "static", "--vnc",
                          f"127.0.0.1:{vnc_port}")
        served.desktops[name] = int(line.split()[1])
    served.cli("assign", "Mine", "alice")
    token = served.cli("token", "create", "tests", "--admin-user", "admin")
    served.token = re.search(r"^Secret: (\S+)$", token, re.M).group(1)  # type: ignore[union-attr]
    env = {**os.environ, "DESKGATE_METRICS_METRICS_PORT": str(metrics_port),
           # Many bad sign-ins from one address are what these tests send on purpose.
           "DESKGATE_SECURITY_IP_THROTTLE_PER_MINUTE": "1000000",
           "DESKGATE_SECURITY_LOCKOUT_THRESHOLD": "1000000"}
    with open(served.log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config",
                                 str(served.config), "serve"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(base):
            assert proc.poll() is None, f"deskgate serve exited:\n{served.log()}"
            assert time.monotonic() < deadline, f"deskgate serve did not answer:\n{served.log()}"
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def sign_in(served: Served, name: str, password: str) -> tuple[requests.Session, str]:
    """Both factors through the real forms (enrolling the TOTP app); (session, CSRF token)."""
    http = requests.Session()
    page = http.get(served.base + "/login", timeout=10).text
    resp = http.post(served.base + "/login", data={"username": name, "password": password,
                                                  "_csrf": csrf_of(page)},
                     allow_redirects=False, timeout=30)
    assert resp.status_code == 303, resp.text
    page = http.get(served.base + "/login/totp", timeout=10).text
    code = pyotp.TOTP(secret_of(page)).now()
    resp = http.post(served.base + "/login/totp", data={"code": code, "_csrf": csrf_of(page)},
                     timeout=30)
    assert resp.status_code == 200, resp.text
    return http, csrf_of(resp.text)
