"""Fixtures for browser tests: a real gateway process, real Xvnc desktops, real Chromium.

Every process is started here and stopped by its PID. The static desktop sits behind a small
TCP relay whose live connections a test can cut, to simulate a dropped upstream connection.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    LOCAL_DESKTOP,
    STATIC_DESKTOP,
    STATIC_VNC_PASSWORD,
    VIEWPORT,
    Account,
    Desktop,
    Gateway,
    LoopThread,
    Relay,
    Watched,
    deskgate_exe,
    free_port,
    healthy,
    need,
    private_runtime_dir,
    run_cli,
    signed_in_state,
    stop_pid,
    wait_until,
    watch,
)

REPO = Path(__file__).resolve().parents[2]


# -- an asyncio loop in a thread, for the async Xvnc launcher --------------------------------


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


# -- the static desktop: Xvnc (VncAuth) + openbox + xterm ------------------------------------


@pytest.fixture(scope="session")
def static_xvnc(loop_thread: LoopThread) -> Iterator[Desktop]:
    need("Xvnc")
    need("xterm")
    from gateway.xdisplay.numbers import free_tcp_port
    from gateway.xdisplay.xvnc import start_display

    d = loop_thread.run(
        start_display(
            rfbport=free_tcp_port(),
            password=STATIC_VNC_PASSWORD,
            name="static-e2e",
            geometry="1024x768",
            # This host's root ~/.bashrc stalls an interactive shell; keep the test shell plain.
            xterm_args=("-e", "/bin/bash", "--noprofile", "--norc"),
        )
    )
    try:
        assert d.rfbport is not None
        yield Desktop(display=d.display, rfbport=d.rfbport, env=d.env())
    finally:
        loop_thread.run(d.stop())


# -- a TCP relay whose connections a test can cut --------------------------------------------


@pytest.fixture(scope="session")
def relay(static_xvnc: Desktop) -> Iterator[Relay]:
    r = Relay(static_xvnc.rfbport)
    yield r
    r.close()


# -- the gateway process -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, relay: Relay) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("gateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = run_cli(
        "init",
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--public-url",
        base,
        "--no-demo",
    )
    m = re.search(r"^Password:\s*(\S+)\s*$", out, re.M)
    assert m, f"no admin password in init output: {out!r}"
    assert re.search(r"^User:\s*admin\s*$", out, re.M), out
    admin = Account("admin", m.group(1))
    config = data / "deskgate.toml"
    assert config.exists(), "init wrote no deskgate.toml"

    log_path = data / "serve.log"
    runtime = private_runtime_dir()
    with open(log_path, "wb") as log:
        # Local desktops outlive the gateway unless told otherwise: these stop with it, and
        # live in a runtime folder of their own (not /run/deskgate, which other runs use).
        proc = subprocess.Popen(
            [deskgate_exe(), "--config", str(config), "serve", "--stop-desktops-on-exit"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
            # A frozen desktop is reported after 2 s + 2 s instead of 10 s + 10 s.
            env={**os.environ, "DESKGATE_DESKTOPS_RUNTIME_DIR": str(runtime),
                 "DESKGATE_RELAY_DESKTOP_UNRESPONSIVE_SECONDS": "2",
                 "DESKGATE_RELAY_DESKTOP_IDLE_PROBE_SECONDS": "2"},
        )
    gw = Gateway(
        base_url=base,
        data_dir=data,
        config=config,
        log_path=log_path,
        admin=admin,
        accounts={},
        desktop_ids={},
        pid=proc.pid,
    )
    try:
        wait_until(
            lambda: healthy(base) or (proc.poll() is not None and "exited"),
            30,
            "GET /healthz",
        )
        assert proc.poll() is None, f"deskgate serve exited {proc.returncode}:\n{gw.log_tail()}"

        for name in ("alice", "bob", "dave"):
            pw = f"{name}-Pw-{os.urandom(4).hex()}"
            gw.cli("user", "add", name, "--password-stdin", stdin=pw + "\n")
            gw.accounts[name] = Account(name, pw)
        for name, extra, stdin in (
            (
                STATIC_DESKTOP,
                ["--provider", "static", "--vnc", f"127.0.0.1:{relay.port}", "--password-stdin"],
                STATIC_VNC_PASSWORD + "\n",
            ),
            (LOCAL_DESKTOP, ["--provider", "local"], None),
        ):
            out = gw.cli("desktop", "add", name, *extra, stdin=stdin)
            m = re.search(r"^Desktop\s+(\S+)\s+(.+?)\s*$", out, re.M)
            assert m, f"no 'Desktop <id> <name>' line in {out!r}"
            gw.desktop_ids[name] = m.group(1)
        for desktop, user in (
            (STATIC_DESKTOP, "alice"),
            (LOCAL_DESKTOP, "alice"),
            (STATIC_DESKTOP, "dave"),
            (LOCAL_DESKTOP, "dave"),
        ):
            gw.cli("assign", desktop, user)
        yield gw
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gw.log_tail()}")
        shutil.rmtree(runtime, ignore_errors=True)


# -- Chromium -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    need(CHROMIUM)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def dave_state(browser: Any, gateway: Gateway) -> dict[str, Any]:
    """Storage state of dave, fully signed in (assigned both desktops)."""
    return signed_in_state(browser, gateway, "dave")


@pytest.fixture(scope="session")
def bob_state(browser: Any, gateway: Gateway) -> dict[str, Any]:
    """Storage state of bob, fully signed in (assigned no desktop)."""
    return signed_in_state(browser, gateway, "bob")


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Watched]]:
    """new_page(storage_state=None) -> Watched; contexts are closed after the test."""
    contexts: list[Any] = []

    def make(storage_state: dict[str, Any] | None = None) -> Watched:
        ctx = browser.new_context(viewport=VIEWPORT, storage_state=storage_state)
        contexts.append(ctx)
        return watch(ctx.new_page())

    yield make
    for ctx in contexts:
        ctx.close()
