"""bench/ssh.py's phase ``start``: click -> first frame of a desktop the gateway starts over SSH
(provider ``ssh``), whose session was not running, beside the same desktop already running.

Imported by bench/ssh.py, which makes the SSH host and the gateway (see its docstring). The
click is ``bench/vms.py``'s: ``POST /desktops/{id}/connect`` by a person signed in once, the
websocket, the browser's side of the RFB 3.8 handshake, noVNC's pixel format and encodings and
a non-incremental FramebufferUpdateRequest for the whole screen; the time runs from the POST
to the whole first FramebufferUpdate ("answer": to the connect's answer, which comes once the
desktop is started and answers). A desktop just started sends the screen as it is then: the
xterm may not be drawn yet; that is what a browser shows first too.

A desktop is stopped through the provider itself (``SshProvider.stop``: the same script as the
gateway's, over the bench's own SSH connection, closed again), as the command line does; that
it is stopped is asked back (``state``). That the gateway's SSH connection is open, or not, is
read from sshd's side (established connections in the host's namespace) just before each click.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vms  # bench/vms.py: the signed-in person and the click to the first frame
from sshhosts import SshHost as NsHost

from gateway.model import Secret
from gateway.providers import DesktopSpec, ProviderContext
from gateway.providers.ssh import SshProvider
from gateway.ssh.connections import SshConnections, SshHost

START_LIMIT = 60.0  # seconds: one click, the desktop's start included
PERSON = "starter"
# What each click finds, in the order a round measures them.
KINDS = {
    "running": "running desktop, SSH connection open (baseline)",
    "cold": "stopped desktop, no SSH connection yet (gateway just restarted)",
    "stopped": "stopped desktop, SSH connection open",
}
SSH_OPEN = {"running": 1, "cold": 0, "stopped": 1}  # the gateway's connections at the click


@dataclass
class Click:
    kind: str
    round: int
    answered: float  # seconds: click -> the connect's answer (the desktop started and answers)
    frame: float  # seconds: click -> the whole first FramebufferUpdate
    stop: float | None = None  # seconds the provider's stop took before it


class Starter(vms.Person):
    """The person, signed in once; a connection per request (the gateway restarts between
    rounds, its session and cookie stay: they are in its database)."""

    async def sign_in(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            self.gw.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=START_LIMIT))
        self.csrf = await self.gw.sign_in(self.http)


async def stop_desktop(host: NsHost, desktop_id: int, folder: Path) -> float:
    """Stop the desktop through the ssh provider over a connection of the bench's own (closed
    again); seconds the stop took. RuntimeError unless the provider then says "stopped"."""
    ssh = SshConnections(folder, connect_timeout=10.0)
    spec = SshHost(host.name, host.address, host.port, host.user, Secret(host.client_key),
                   host.host_key_line)

    async def reach(_: str) -> tuple[SshConnections, SshHost]:
        return ssh, spec

    provider = SshProvider(ProviderContext(folder, ssh=reach))
    desktop = DesktopSpec(id=desktop_id, name="remote", provider="ssh", via=host.name)
    try:
        await ssh.connection(spec)
        t0 = time.perf_counter()
        await provider.stop(desktop)
        took = time.perf_counter() - t0
        state = await provider.state(desktop)
        if state != "stopped":
            raise RuntimeError(f"the desktop is {state} after its stop")
        return took
    finally:
        await provider.close()
        await ssh.close()


async def sshd_holds(host: NsHost, count: int, limit: float = 10.0) -> None:
    """Wait until the host's sshd holds ``count`` established connections (one that closed
    takes a moment to go); RuntimeError if it does not."""
    deadline = time.monotonic() + limit
    while (now := await asyncio.to_thread(host.connections)) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd holds {now} connections, not {count}")
        await asyncio.sleep(0.05)


async def start_phase(args: argparse.Namespace, gw: Any, host: NsHost,
                      desktop_id: int) -> list[Click]:
    """``args.start_rounds`` rounds of: running, cold, stopped (see ``KINDS``)."""
    gw.desktop_id, gw.person = desktop_id, PERSON
    person = Starter(gw, desktop_id)
    folder = Path(tempfile.mkdtemp(prefix="deskgate-bench-stop-"))
    clicks: list[Click] = []

    async def click(kind: str, rnd: int, stop: float | None = None) -> None:
        await sshd_holds(host, SSH_OPEN[kind])
        answered, frame = await person.click()
        clicks.append(Click(kind, rnd, answered, frame, stop))
        print(f"round {rnd} {kind:8s} answer {answered:6.3f} s  first frame {frame:6.3f} s"
              + (f"  (stopped in {stop:.2f} s)" if stop is not None else ""), flush=True)

    try:
        await person.sign_in()
        await person.click()  # warm-up: starts the desktop, opens the connection; not counted
        for rnd in range(1, args.start_rounds + 1):
            await click("running", rnd)
            took = await stop_desktop(host, desktop_id, folder)
            gw.stop()
            gw.serve()
            await asyncio.sleep(0.5)  # a gateway that opened a connection by itself would show
            await click("cold", rnd, took)
            took = await stop_desktop(host, desktop_id, folder)
            await click("stopped", rnd, took)
        return clicks
    finally:
        await person.close()
        shutil.rmtree(folder, ignore_errors=True)


def report_start(clicks: list[Click]) -> None:
    rounds = max((c.round for c in clicks), default=0)
    print(f"\n== start: click -> first frame, ssh desktop, {rounds} rounds"
          " (running, cold, stopped in turn) ==")
    print(f"{'':64s} {'p50':>7s} {'min':>7s} {'max':>7s}")
    medians: dict[str, float] = {}

    def row(label: str, values: list[float]) -> float:
        print(f"{label:64s} {statistics.median(values):7.3f} {min(values):7.3f} "
              f"{max(values):7.3f}")
        return statistics.median(values)

    for kind, label in KINDS.items():
        mine = [c for c in clicks if c.kind == kind]
        if mine:
            medians[kind] = row(label, [c.frame for c in mine])
            row("    of which click -> connect answered", [c.answered for c in mine])
    stops = [c.stop for c in clicks if c.stop is not None]
    if stops:
        row("(the provider's stop between clicks, for reference)", stops)
    print("(seconds; first frame = the whole first FramebufferUpdate, from the connect's POST)")
    base = medians.get("running")
    if base is not None:
        for kind in ("stopped", "cold"):
            if kind in medians:
                print(f"{kind} - running (p50): +{medians[kind] - base:.3f} s "
                      f"({medians[kind] / base:.1f}x)")
    if "cold" in medians and "stopped" in medians:
        print(f"cold - stopped (p50): +{medians['cold'] - medians['stopped']:.3f} s, what a"
              " gateway that just started adds: its SSH connection to the host (TCP, key"
              " exchange, authentication) and its first connect")
