"""SSH hosts from the command line, as an admin would: real processes over a real data folder.
The private key is read from a file and never printed; bad input exits non-zero with the reason;
a host a desktop goes through cannot be removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def deskgate(*args: str, config: Path, ok: bool = True,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, input=stdin)
    assert (proc.returncode == 0) is ok, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--data", str(data),
                    "--no-demo"], check=True, capture_output=True, timeout=60)
    return data / "deskgate.toml"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    """A private key file, and a host key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
                   check=True, timeout=30)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")],
                   check=True, timeout=30)
    return tmp_path / "id", (tmp_path / "hk.pub").read_text().strip()


def test_add_list_use_pin_remove(config: Path, keys: tuple[Path, str]) -> None:
    key_file, host_key = keys
    secret = key_file.read_text()
    out = deskgate("ssh", "add", "bastion", "--address", "10.231.9.2", "--port", "2222",
                   "--user", "gw", "--key-file", str(key_file), "--host-key", host_key,
                   config=config).stdout
    assert "bastion" in out and "gw@10.231.9.2:2222" in out and "pinned" in out
    deskgate("ssh", "add", "inner", "--address", "10.0.0.5", "--user", "gw", "--key-file", "-",
             "--trust-on-first-use", "--via", "bastion", config=config, stdin=secret)
    listed = deskgate("ssh", "list", config=config).stdout
    assert "inner" in listed and "through bastion" in listed and "first use" in listed
    assert "PRIVATE KEY" not in listed + out
    deskgate("desktop", "add", "Behind", "--provider", "static", "--vnc", "127.0.0.1:5901",
             "--via", "bastion", config=config)
    refused = deskgate("ssh", "remove", "bastion", config=config, ok=False)
    assert "Behind" in refused.stderr and "inner" in refused.stderr
    deskgate("ssh", "pin", "inner", "--host-key", host_key, config=config)
    assert "inner" in deskgate("ssh", "list", config=config).stdout
    deskgate("desktop", "remove", "Behind", config=config)
    deskgate("ssh", "remove", "inner", config=config)
    deskgate("ssh", "remove", "bastion", config=config)
    assert deskgate("ssh", "list", config=config).stdout.strip() == ""


@pytest.mark.parametrize("args", [
    ["--address", "10.0.0.5", "--user", "gw", "--host-key", "not a key"],
    ["--address", "10.0.0.5 ; rm", "--user", "gw", "--trust-on-first-use"],
    ["--address", "10.0.0.5", "--user", "Bad User", "--trust-on-first-use"],
    ["--address", "10.0.0.5", "--user", "gw", "--port", "70000", "--trust-on-first-use"],
    ["--address", "10.0.0.5", "--user", "gw", "--trust-on-first-use", "--via", "nowhere"],
])
def test_bad_input_is_refused_with_the_reason(config: Path, keys: tuple[Path, str],
                                              args: list[str]) -> None:
    proc = deskgate("ssh", "add", "h1", "--key-file", str(keys[0]), *args, config=config,
                    ok=False)
    assert proc.stderr.strip() and "Traceback" not in proc.stderr
    assert deskgate("ssh", "list", config=config).stdout.strip() == ""


def test_a_key_that_cannot_be_read_is_refused(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not a private key\n")
    proc = deskgate("ssh", "add", "h1", "--address", "10.0.0.5", "--user", "gw", "--key-file",
                    str(bad), "--trust-on-first-use", config=config, ok=False)
    assert "private key cannot be read" in proc.stderr


def test_a_desktop_started_on_an_ssh_host(config: Path, keys: tuple[Path, str]) -> None:
    """Provider ssh: the desktop names its SSH host (--via, required), speaks VNC only."""
    key_file, host_key = keys
    deskgate("ssh", "add", "box", "--address", "10.231.9.2", "--user", "gw", "--key-file",
             str(key_file), "--host-key", host_key, config=config)
    refused = deskgate("desktop", "add", "Far", "--provider", "ssh", config=config, ok=False)
    assert "--via" in refused.stderr and "Traceback" not in refused.stderr
    refused = deskgate("desktop", "add", "Far", "--provider", "ssh", "--via", "nowhere",
                       config=config, ok=False)
    assert "nowhere" in refused.stderr
    refused = deskgate("desktop", "add", "Far", "--provider", "ssh", "--via", "box",
                       "--rdp", "10.0.0.9:3389", config=config, ok=False)
    assert "Traceback" not in refused.stderr
    deskgate("desktop", "add", "Far", "--provider", "ssh", "--via", "box", config=config)
    assert "on SSH host box" in deskgate("desktop", "list", config=config).stdout
    assert "Far" in deskgate("ssh", "remove", "box", config=config, ok=False).stderr
    deskgate("desktop", "remove", "Far", config=config)
    deskgate("ssh", "remove", "box", config=config)


def test_an_rdp_desktop_behind_a_jump_host_and_its_jump_host_changed(
        config: Path, keys: tuple[Path, str]) -> None:
    """A static RDP desktop goes through an SSH host (--via) like a VNC one; ``desktop set``
    changes or takes away its jump host, checked like ``add``."""
    key_file, host_key = keys
    for name in ("bastion", "other"):
        deskgate("ssh", "add", name, "--address", "10.231.9.2", "--user", "gw", "--key-file",
                 str(key_file), "--host-key", host_key, config=config)
    deskgate("desktop", "add", "Win", "--provider", "static", "--rdp", "10.9.0.4:3389",
             "--user", "svc", "--via", "bastion", config=config)
    assert "10.9.0.4:3389 through SSH host bastion as svc" in deskgate(
        "desktop", "list", config=config).stdout
    deskgate("desktop", "set", "Win", "--via", "other", config=config)
    assert "through SSH host other" in deskgate("desktop", "list", config=config).stdout
    refused = deskgate("desktop", "set", "Win", "--via", "nowhere", config=config, ok=False)
    assert "no SSH host named 'nowhere'" in refused.stderr and "Traceback" not in refused.stderr
    refused = deskgate("desktop", "set", "Win", "--via", "other", "--no-via", config=config,
                       ok=False)
    assert "not both" in refused.stderr
    deskgate("desktop", "add", "Here", "--provider", "local", config=config)
    refused = deskgate("desktop", "set", "Here", "--via", "other", config=config, ok=False)
    assert "only a static desktop" in refused.stderr
    assert "Win" in deskgate("ssh", "remove", "other", config=config, ok=False).stderr
    deskgate("desktop", "set", "Win", "--no-via", config=config)
    listed = deskgate("desktop", "list", config=config).stdout
    assert "10.9.0.4:3389 as svc" in listed and "through" not in listed
    deskgate("ssh", "remove", "other", config=config)
    audit = deskgate("audit", config=config).stdout
    assert "through SSH host other" in audit and "no jump host" in audit
