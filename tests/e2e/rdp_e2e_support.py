"""Helpers for the RDP browser tests: a gateway of their own (small bridge grace time, private
runtime folder), RDP desktops added through the CLI, the bridge's processes in the process
table, and X tools on the remote xrdp session's display.

Every process is started by the tests and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_support import (
    REPO,
    Account,
    Gateway,
    deskgate_exe,
    free_port,
    healthy,
    run_cli,
    shot,
    shot_to,
    stop_pid,
    wait_until,
)
from pngpixels import count, is_white
from rdp_servers import RdpServer, free_display, pid_alive, pids_of_uid

GRACE_SECONDS = 2.0
LOGON_TIMEOUT_SECONDS = 8.0  # xrdp confirms a right password's sign-in in about 0.5 s


@dataclass
class RdpGateway:
    gw: Gateway
    runtime_dir: Path  # the bridges' folders (rdp-XXXX) live here, and only this gateway's
    proc: subprocess.Popen[bytes]
    display_base: int  # [rdp] rdp_display_base

    def add_rdp_desktop(self, name: str, port: int, user: str, password: str, *extra: str,
                        assign: tuple[str, ...] = ()) -> str:
        out = self.gw.cli("desktop", "add", name, "--provider", "static", "--rdp", f"127.0.0.1:{port}",
                          "--user", user, *extra, "--password-stdin", stdin=password + "\n")
        m = re.search(r"^Desktop\s+(\S+)\s+(.+?)\s*$", out, re.M)
        assert m, f"no 'Desktop <id> <name>' line in {out!r}"
        self.gw.desktop_ids[name] = m.group(1)
        for person in assign:
            self.gw.cli("assign", name, person)
        return m.group(1)

    def log_text(self) -> str:
        return self.gw.log_path.read_text(errors="replace")


@contextlib.contextmanager
def rdp_gateway(data: Path, users: tuple[str, ...], grace: float = GRACE_SECONDS,
                log_level: str = "DEBUG") -> Iterator[RdpGateway]:
    """``deskgate init`` + ``serve`` (``log_level``) with ``[rdp] rdp_grace_seconds`` = ``grace``,
    ``rdp_logon_timeout_seconds`` = ``LOGON_TIMEOUT_SECONDS``, ``rdp_display_base`` a free X
    display from :500 up, and a private ``[desktops] runtime_dir`` the unprivileged bridge user
    can traverse."""
    runtime = Path(tempfile.mkdtemp(prefix="dg-e2e-rdp-", dir="/tmp"))
    display_base = free_display(500, 600)
    os.chmod(runtime, 0o711)  # noqa: S103 - traverse only: the bridge user must reach its folder
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli("init", "--data", str(data), "--host", "127.0.0.1", "--port", str(port),
                  "--public-url", base, "--no-demo")
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, f"no admin password in init output: {out!r}"
    config = data / "deskgate.toml"
    with open(config, "a") as f:
        f.write(f'\n[desktops]\nruntime_dir = "{runtime}"\n\n[rdp]\nrdp_grace_seconds = {grace}\n'
                f"rdp_logon_timeout_seconds = {LOGON_TIMEOUT_SECONDS}\nrdp_display_base = {display_base}\n")
    log_path = data / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(config), "--log-level", log_level, "serve"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
    gw = Gateway(base_url=base, data_dir=data, config=config, log_path=log_path,
                 admin=Account("admin", m.group(1)), accounts={}, desktop_ids={}, pid=proc.pid)
    try:
        wait_until(lambda: healthy(base) or (proc.poll() is not None and "exited"), 30, "GET /healthz")
        assert proc.poll() is None, f"deskgate serve exited {proc.returncode}:\n{gw.log_tail()}"
        for name in users:
            pw = f"{name}-Pw-{os.urandom(4).hex()}"
            gw.cli("user", "add", name, "--password-stdin", stdin=pw + "\n")
            gw.accounts[name] = Account(name, pw)
        yield RdpGateway(gw, runtime, proc, display_base)
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (RDP gateway, tail) ---\n{gw.log_tail(60)}")
        wait_until(lambda: not bridge_processes(runtime), 10, "the bridges to stop with the gateway")
        shutil.rmtree(runtime, ignore_errors=True)


def bridge_displays(runtime_dir: Path) -> list[int]:
    """The X display numbers of this gateway's running bridges (their Xvnc command lines)."""
    found = []
    for argv in bridge_processes(runtime_dir).values():
        m = re.match(r"\S*Xvnc :(\d+) ", argv)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


# -- the process table -----------------------------------------------------------------------------


def _proc_text(pid: int) -> str:
    """Command line, working folder and environment of a process (empty when gone)."""
    base = Path(f"/proc/{pid}")
    parts = []
    with contextlib.suppress(OSError):
        parts.append((base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    with contextlib.suppress(OSError):
        parts.append(os.readlink(base / "cwd"))
    with contextlib.suppress(OSError):
        parts.append((base / "environ").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(parts)


def bridge_processes(runtime_dir: Path) -> dict[int, str]:
    """Live xfreerdp and Xvnc processes (pid -> command line) whose command line, working
    folder or environment mentions ``runtime_dir``: the bridges of one gateway."""
    marker = str(runtime_dir)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm not in ("xfreerdp3", "Xvnc") or not pid_alive(pid):
            continue
        if marker in _proc_text(pid):
            with contextlib.suppress(OSError):
                found[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


def ps_args() -> str:
    """``ps -eo args``: every command line on the machine, as any local user sees them."""
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True,
                          timeout=10).stdout  # fmt: skip


# -- the xrdp session's own X display ---------------------------------------------------------------


def remote_display_env(server: RdpServer) -> dict[str, str] | None:
    """DISPLAY/XAUTHORITY of the xrdp session's X server (Xvnc, or Xorg with xorgxrdp; run by
    the test account), or None."""
    if server.uid is None:
        return None
    for pid in pids_of_uid(server.uid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(("Xvnc", "Xorg")):
            continue
        display = next((a for a in argv[1:] if re.fullmatch(r":\d+", a)), None)
        if display is None:
            continue
        # sesman passes "-auth .Xauthority": relative to the account's home
        home = Path(pwd.getpwuid(server.uid).pw_dir)
        auth = argv[argv.index("-auth") + 1] if "-auth" in argv else ".Xauthority"
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DISPLAY": display,
                "XAUTHORITY": str(home / auth)}
    return None


def x_tool(env: dict[str, str], *argv: str, timeout: float = 5) -> str:
    """Run an X tool against ``env``'s display (as root, with the session's cookie): stdout."""
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout)
    return proc.stdout if proc.returncode == 0 else ""


# -- typing as a person does ---------------------------------------------------------------------

# US layout: the key each shifted character is typed with.
_SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', [
    "Backquote", "Digit1", "Digit2", "Digit3", "Digit4", "Digit5", "Digit6", "Digit7", "Digit8",
    "Digit9", "Digit0", "Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon",
    "Quote", "Comma", "Period", "Slash"], strict=True))


def type_with_shift(page: Any, text: str, delay_ms: float = 15) -> None:
    """Type ``text`` with real Shift presses for shifted characters (Shift down, the key, Shift
    up), as a keyboard does. Playwright's ``keyboard.type`` sends '(' as a keysym with no Shift
    held, and through the RDP bridge '(' and ')' typed that way are lost (see the report)."""
    for ch in text:
        code = _SHIFTED.get(ch) or (f"Key{ch}" if "A" <= ch <= "Z" else None)
        if code is None:
            page.keyboard.press(ch)
        else:
            page.keyboard.down("Shift")
            page.keyboard.press(code)
            page.keyboard.up("Shift")
        if delay_ms:
            page.wait_for_timeout(delay_ms)


def connect_posts(page: Any) -> list[float]:
    """Times of every POST .../connect the page makes (a retry loop shows up here)."""
    posts: list[float] = []
    page.on("request", lambda r: posts.append(time.monotonic())
            if r.method == "POST" and r.url.endswith("/connect") else None)  # fmt: skip
    return posts


def wait_keys_arrive(page: Any, area: tuple[int, int, int, int], timeout: float = 20) -> None:
    """A fresh xrdp session drops the first keys for a moment after its xterm shows: type a
    harmless '#' until white text grows in the xterm, then erase the line (Ctrl+U)."""
    def white() -> int:
        return count(shot(page), is_white, area, step=2)

    before = white()
    deadline = time.monotonic() + timeout
    while True:
        page.keyboard.type("#")
        try:
            wait_until(lambda: white() > before, 1.5, "typed text", 0.2)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                shot_to(page, "failed-rdp-keys.png")
                raise AssertionError(f"no typed key reached the remote xterm in {timeout} s") from None
    page.keyboard.press("Control+U")
