"""First run: what a newcomer sees from `make run` ends with the first admin's name and
password, framed, right before the server starts; the install steps stay quiet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.xdisplay.numbers import free_tcp_port

ROOT = Path(__file__).resolve().parent.parent


def framed_block(lines: list[str]) -> list[str]:
    """The last block set apart by two ==== rules in ``lines``."""
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    assert len(rules) >= 2, lines
    return lines[rules[-2]:rules[-1] + 1]


def test_init_ends_with_the_first_admin_in_a_frame(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--data",
                          str(tmp_path / "data"), "--port", "8124", "--admin", "root-admin"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.rstrip("\n").splitlines()
    block = framed_block(lines)
    assert lines[-1] == block[-1]  # nothing after it
    assert block[0] == block[-1] and len(block[0]) >= 64
    inner = block[1:-1]
    assert "URL: http://127.0.0.1:8124" in inner and "User: root-admin" in inner
    password = next(line.removeprefix("Password: ") for line in inner
                    if line.startswith("Password: "))
    assert len(password) >= 12


def test_make_run_prints_the_first_admin_last_before_the_server_starts(tmp_path: Path) -> None:
    port = free_tcp_port()
    env = {**os.environ, "PORT": str(port), "DATA": str(tmp_path / "data")}
    env.pop("MAKEFLAGS", None)
    lines: list[str] = []
    with subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(lines) < 200:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip("\n"))
                if "listening on" in line:
                    break
            assert lines and "listening on" in lines[-1], lines
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started, nothing else
            proc.wait(timeout=30)
    before_serve = [line for line in lines[:-1] if line.strip()]
    block = framed_block(before_serve)
    assert before_serve[-len(block):] == block, before_serve  # the block is the last thing
    assert any(f"URL: http://127.0.0.1:{port}" in line for line in block)
    assert any("Password: " in line for line in block)
    # No commands echoed, no installer chatter: only our own lines precede the block (a step
    # that had to run says so in one line, e.g. after pyproject.toml changed).
    ours = ("Configuration:", "Creating the Python environment", "Installing ")
    noise = [line for line in before_serve[:-len(block)] if not line.startswith(ours)]
    assert noise == [], noise
