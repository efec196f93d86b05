"""Deskgate bench: desktops behind an SSH host, in one run: the relay through an SSH tunnel
against the direct path, and click -> first frame of a desktop started over SSH.

One network namespace with its own sshd stands for the SSH host (tests/sshhosts.py makes it:
needs root, and for the phase start TigerVNC, openbox and xterm); one gateway serves every
desktop of the run (``deskgate init``, ``ssh add`` with the host's key pinned, ``desktop add``,
``assign``, ``serve``), and people sign in over HTTP as ``bench/relay.py`` does.

**Phase ``relay``.** One fake RFB desktop (bench/relay.py's, streaming raw updates as fast as
they are read) runs in the namespace. Two static desktops are on that same server process:
"direct" at the namespace's address, "tunnel" at its loopback through the SSH host
(direct-tcpip over the gateway's one SSH connection to it). Rounds interleave the two paths;
each run streams the same bytes and reports MB/s, the gateway's CPU seconds per GB (its whole
process tree: asyncssh's encryption runs in it) and the host's sshd CPU seconds per GB (what
the tunnel costs the desktop's host).

**Phase ``start``** (bench/ssh_start.py). One desktop with provider ``ssh`` on the host: the
gateway starts Xvnc, openbox and an xterm there over SSH on the first connect. A click is
``POST /desktops/{id}/connect``, the websocket, the browser's side of the RFB handshake and a
non-incremental FramebufferUpdateRequest; timed from the POST to the whole first
FramebufferUpdate. Each round clicks three times: the desktop **running** with the gateway's SSH
connection open (the baseline); then stopped (through the provider, over the bench's own SSH
connection) and the gateway restarted: **cold**, no Xvnc and no SSH connection yet; then stopped
again: **stopped**, no Xvnc but the connection open. Reported: p50, min and max of each, and
of the click -> connect answered part (the start). Whether the gateway's connection is open is
checked on sshd's side before each click.

    sudo .venv/bin/python bench/ssh.py                   # 3 relay rounds of 200 MB, 5 start rounds
    sudo .venv/bin/python bench/ssh.py --quick           # a tiny run that proves every step works
    sudo .venv/bin/python bench/ssh.py --phases start --start-rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import relay  # noqa: E402 - bench/relay.py: the fake desktop, the gateway, the RFB client
import ssh_start  # noqa: E402 - bench/ssh_start.py: the phase start
from sshhosts import SshHost, _cleanup_all, _start_indexed, short_tmp  # noqa: E402

PHASES = ("relay", "start")
BENCH_USER = "dgbench"  # the SSH host's account, made and deleted by this run


class _Gateway(relay.Gateway):
    """The bench's gateway, signing in as ``person``: a TOTP code is enrolled once per person,
    so every run signs in a person of its own."""

    person: str = "bench"

    async def sign_in(self, http: object, name: str = "bench") -> str:
        return await super().sign_in(http, self.person)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default=",".join(PHASES), help="relay,start (default: both)")
    p.add_argument("--rounds", type=int, default=3, help="relay rounds")
    p.add_argument("--mb", type=float, default=200.0, help="MB streamed per run")
    p.add_argument("--fences", type=int, default=50, help="round trips timed per run")
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--start-rounds", type=int, default=5, help="start rounds (3 clicks each)")
    p.add_argument("--quick", action="store_true", help="1 relay round of 20 MB, 2 start rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.mb, args.fences, args.start_rounds = 1, 20.0, 10, 2
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if set(args.phases) - set(PHASES):
        p.error(f"phases are {', '.join(PHASES)}")
    return args


def add_desktop(config: Path, name: str, people: list[str], *args: str) -> int:
    out = relay.cli(config, "desktop", "add", name, *args)
    found = re.search(r"Desktop (\d+)", out)
    assert found, out
    for person in people:
        relay.cli(config, "assign", name, person)
    return int(found.group(1))


async def bench(args: argparse.Namespace) -> int:
    tmp = short_tmp()
    # An account of its own: the tests' (dgssh) may be ended, runtime folder and processes,
    # by a test run beside this one when its last host goes.
    host = _start_indexed(tmp, name="benchhost", user=BENCH_USER)
    fake = gw = None
    folder = Path(tempfile.mkdtemp(prefix="deskgate-bench-ssh-"))  # the gateway's data
    try:
        fake = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, sys.executable,
             str(Path(relay.__file__).resolve()), "--fake-server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "DESKGATE_BENCH_BIND": "0.0.0.0"})  # noqa: S104 - the namespace's own
        assert fake.stdout is not None
        line = fake.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the fake desktop did not start: {line!r}")
        port = int(line)
        gw = _Gateway(folder / "data", relay.free_port())
        config = gw.config
        relay.cli(None, "init", "--data", str(gw.data), "--port", str(gw.port), "--no-demo")
        people = [f"p{rnd}{path}" for rnd in range(1, args.rounds + 1)
                  for path in ("direct", "tunnel")]
        for person in [*people, ssh_start.PERSON]:
            relay.cli(config, "user", "add", person, "--password-stdin", stdin=gw.password + "\n")
            gw.users[person] = gw.password
        key = gw.data / "host.key"
        key.write_text(host.client_key)
        key.chmod(0o600)
        relay.cli(config, "ssh", "add", "benchhost", "--address", host.address, "--port",
                  str(host.port), "--user", host.user, "--key-file", str(key), "--host-key",
                  host.host_key_line)
        ids = {"direct": add_desktop(config, "direct", people, "--provider", "static", "--vnc",
                                     f"{host.address}:{port}"),
               "tunnel": add_desktop(config, "tunnel", people, "--provider", "static", "--vnc",
                                     f"127.0.0.1:{port}", "--via", "benchhost"),
               "remote": add_desktop(config, "remote", [ssh_start.PERSON], "--provider", "ssh",
                                     "--via", "benchhost")}
        gw.serve()
        if "relay" in args.phases:
            await relay_phase(args, gw, host, fake, ids)
        if "start" in args.phases:
            ssh_start.report_start(await ssh_start.start_phase(args, gw, host, ids["remote"]))
        return 0
    except Exception:
        if gw is not None:  # its data folder goes with the run: what it logged is shown here
            print(gw.log_tail(), file=sys.stderr)
        raise
    finally:
        if gw is not None:
            gw.stop()
        if fake is not None:
            if fake.stdin is not None:
                fake.stdin.close()
            relay.stop(fake, 5)
        _cleanup_all([host], tmp)
        shutil.rmtree(folder, ignore_errors=True)  # its database and the host's private key


async def relay_phase(args: argparse.Namespace, gw: _Gateway, host: SshHost,
                      fake: subprocess.Popen[str], ids: dict[str, int]) -> None:
    assert gw.proc is not None
    rows: dict[str, list[tuple[float, float, float]]] = {"direct": [], "tunnel": []}
    for rnd in range(1, args.rounds + 1):
        for path in ("direct", "tunnel"):
            gw.desktop_id, gw.person = ids[path], f"p{rnd}{path}"
            sshd_before = relay.ProcStat.tree(host.sshd_pid or 0)
            run = await relay.measure(relay.Run(path, rnd), gw.open_link, gw.proc.pid,
                                      fake.pid, args)
            sshd_after = relay.ProcStat.tree(host.sshd_pid or 0)
            gb = args.mb / 1024
            rows[path].append((run.mbps, run.cpu_per_gb or 0.0,
                               (sshd_after.cpu - sshd_before.cpu) / gb))
            print(f"round {rnd} {path:6s} {run.mbps:8.1f} MB/s  gateway"
                  f" {run.cpu_per_gb or 0:.2f} CPU-s/GB  sshd"
                  f" {(sshd_after.cpu - sshd_before.cpu) / gb:.2f} CPU-s/GB"
                  f"  rtt p50 {run.rtt_p50 * 1000:.2f} ms", flush=True)
    med = {path: tuple(statistics.median(r[i] for r in runs) for i in range(3))
           for path, runs in rows.items()}
    d, t = med["direct"], med["tunnel"]
    print("\n== relay: medians of the interleaved rounds, the same byte stream ==")
    print(f"direct: {d[0]:.1f} MB/s, gateway {d[1]:.2f} CPU-s/GB")
    print(f"tunnel: {t[0]:.1f} MB/s, gateway {t[1]:.2f} CPU-s/GB, host sshd {t[2]:.2f} CPU-s/GB")
    print(f"tunnel/direct throughput: {t[0] / d[0]:.2f}x;"
          f" gateway CPU per GB: {t[1] / d[1]:.2f}x" if d[0] and d[1] else "")


def main(argv: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("bench/ssh.py makes a network namespace and an sshd: run it as root", file=sys.stderr)
        return 2
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
