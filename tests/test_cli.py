"""The command line, run as a real process, as an admin would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from rdp_servers import make_test_ca


def deskgate(*args: str, stdin: str | None = None, config: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway.cli"]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_init_users_desktops_assign_audit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = deskgate("init", "--data", str(data), "--port", "8123").stdout
    assert "URL: http://127.0.0.1:8123" in out and "User: admin" in out
    password = out.split("Password: ")[1].split()[0]
    config = data / "deskgate.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert password not in config.read_text()
    again = deskgate("init", "--data", str(data), check=False)
    assert again.returncode == 1 and "already initialised" in again.stderr

    out = deskgate("user", "add", "alice", "--password-stdin", stdin="alice-password\n",
                   config=config).stdout
    assert "alice" in out and "Password:" not in out
    dup = deskgate("user", "add", "alice", "--password-stdin", stdin="alice-password\n",
                   config=config, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr

    out = deskgate("desktop", "add", "Lab", "--provider", "static", "--vnc", "127.0.0.1:5999",
                   "--password-stdin", stdin="vncpass1\n", config=config).stdout
    assert out.startswith("Desktop ")
    listing = deskgate("desktop", "list", config=config).stdout
    assert "Lab" in listing and "password set" in listing and "vncpass1" not in listing
    assert "Demo desktop" in listing

    deskgate("assign", "Lab", "alice", config=config)
    missing = deskgate("assign", "Nope", "alice", config=config, check=False)
    assert missing.returncode == 1 and "no desktop named" in missing.stderr
    deskgate("user", "disable", "alice", config=config)
    users = deskgate("user", "list", config=config).stdout
    header, *rows = [line.split() for line in users.splitlines()]
    alice = dict(zip(header, next(r for r in rows if r[1] == "alice"), strict=False))
    assert alice["DISABLED"] == "yes" and alice["IDENTITY"] == "local"
    audit = deskgate("audit", config=config).stdout
    for fragment in ("user created", "desktop created (static, vnc)", "desktop assigned",
                     "user disabled"):
        assert fragment in audit
    assert "vncpass1" not in audit and "alice-password" not in audit and password not in audit

    bad = deskgate("desktop", "add", "X", "--provider", "static", config=config, check=False)
    assert bad.returncode == 1 and "--vnc HOST:PORT" in bad.stderr


def test_rdp_desktops_need_an_account_and_say_their_certificate_policy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deskgate("init", "--data", str(data), "--no-demo")
    config = data / "deskgate.toml"
    missing = deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.1.2.3:3389",
                       config=config, check=False)
    assert missing.returncode == 1 and "user name" in missing.stderr
    bad_pin = deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.1.2.3:3389",
                       "--user", "bob", "--cert-fingerprint", "abc", config=config, check=False)
    assert bad_pin.returncode == 1 and "64 hex digits" in bad_pin.stderr
    bad_layout = deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.1.2.3:3389",
                          "--user", "bob", "--keyboard-layout", "dvorak?", config=config, check=False)
    assert bad_layout.returncode == 1 and "keyboard layout 'dvorak?'" in bad_layout.stderr
    deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.1.2.3:3389",
             "--user", "bob", "--domain", "CORP", "--security", "nla", "--keyboard-layout", "de",
             "--password-stdin", stdin="rdp-secret\n", config=config)
    listing = deskgate("desktop", "list", config=config).stdout
    assert "rdp 10.1.2.3:3389 as bob, certificates: ignore, keyboard 0x00000407" in listing
    assert "rdp-secret" not in listing + deskgate("audit", config=config).stdout


def test_rdp_options_change_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deskgate("init", "--data", str(data), "--no-demo")
    config = data / "deskgate.toml"
    deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.1.2.3:3389",
             "--user", "bob", config=config)
    deskgate("desktop", "set", "Win", "--keyboard-layout", "de", "--cert", "tofu",
             "--security", "tls", config=config)
    listing = deskgate("desktop", "list", config=config).stdout
    assert "rdp 10.1.2.3:3389 as bob, certificates: tofu, keyboard 0x00000407" in listing
    audit = deskgate("audit", config=config).stdout
    assert "RDP cert_policy=tofu, keyboard_layout=0x00000407, security=tls" in audit
    deskgate("desktop", "add", "Lab", "--provider", "static", "--vnc", "10.1.2.3:5901",
             config=config)
    vnc = deskgate("desktop", "set", "Lab", "--domain", "CORP", config=config, check=False)
    assert vnc.returncode == 1 and "only RDP desktops have RDP options" in vnc.stderr


def test_rdp_desktop_with_per_user_credentials(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deskgate("init", "--data", str(data), "--no-demo")
    config = data / "deskgate.toml"
    out = deskgate("desktop", "add", "Own", "--provider", "static", "--rdp", "10.1.2.4:3389",
                   "--per-user-credentials", "--domain", "CORP", config=config).stdout
    assert out.startswith("Desktop ")
    shared_pw = deskgate("desktop", "add", "Own2", "--provider", "static", "--rdp",
                         "10.1.2.4:3389", "--per-user-credentials", "--password-stdin",
                         stdin="not-wanted\n", config=config, check=False)
    assert shared_pw.returncode == 1 and "no shared password" in shared_pw.stderr
    listing = deskgate("desktop", "list", config=config).stdout
    assert "rdp 10.1.2.4:3389 as each user (credentials=per_user)" in listing
    assert "credentials: per_user" in deskgate("audit", config=config).stdout


def test_rdp_desktop_verified_against_a_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deskgate("init", "--data", str(data), "--no-demo")
    config = data / "deskgate.toml"
    ca, cert, _key = make_test_ca(tmp_path / "tls", "rdp.corp.example")
    add = ("desktop", "add", "Verified", "--provider", "static", "--rdp", "rdp.corp.example:3389",
           "--user", "bob")
    missing = deskgate(*add, "--cert-ca", str(tmp_path / "nope.pem"), config=config, check=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = deskgate(*add, "--cert-ca", str(garbage), config=config, check=False)
    assert bad.returncode == 1 and "not a PEM certificate" in bad.stderr
    no_ca = deskgate(*add, "--cert", "ca", config=config, check=False)
    assert no_ca.returncode == 1 and "needs the CA's certificate" in no_ca.stderr
    deskgate(*add, "--cert-ca", str(ca), config=config)
    listing = deskgate("desktop", "list", config=config).stdout
    assert "as bob, certificates: ca" in listing
    assert "certificates: ca" in deskgate("audit", config=config).stdout


def _serve(config: Path, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """``deskgate serve`` expected to fail at start (bounded by the timeout)."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), "serve",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_serve_on_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    """A port in use: one line naming the address and the setting, exit 1, no traceback, and
    no "listening on" for a port that is not listened on."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config = tmp_path / "data" / "deskgate.toml"
        deskgate("init", "--data", str(config.parent), "--port", str(port), "--no-demo")
        proc = _serve(config)
        assert proc.returncode == 1
        assert proc.stderr.strip() == (f"deskgate: cannot listen on 127.0.0.1:{port}"
                                       " (server.port): Address already in use"), proc.stderr
        assert "listening on" not in proc.stderr + proc.stdout

        proc = _serve(config, "--port", str(port))
        assert proc.returncode == 1 and "(--port)" in proc.stderr
        assert "Traceback" not in proc.stderr

        # The metrics listener: the main port is free (and said to be listened on), the
        # metrics port is the busy one.
        main = free_port()
        proc = _serve(config, "--port", str(main),
                      env={"DESKGATE_METRICS_METRICS_PORT": str(port)})
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert lines[-1] == (f"deskgate: cannot listen on 127.0.0.1:{port}"
                             " (metrics.metrics_port): Address already in use"), proc.stderr
        assert "Traceback" not in proc.stderr and "metrics on" not in proc.stderr
        assert f"listening on 127.0.0.1:{main}" in proc.stderr


def test_unusable_runtime_folder_names_its_setting(tmp_path: Path) -> None:
    config = tmp_path / "data" / "deskgate.toml"
    deskgate("init", "--data", str(config.parent), "--port", str(free_port()), "--no-demo")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _serve(config, env={"DESKGATE_DESKTOPS_RUNTIME_DIR": str(blocker / "runtime")})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"deskgate: cannot prepare the runtime folder {blocker / 'runtime'}"
        " (desktops.runtime_dir): Not a directory"), proc.stderr
    assert "data folder" not in proc.stderr and "Traceback" not in proc.stderr


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port: int = s.getsockname()[1]
        return port
