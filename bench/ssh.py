"""Deskgate bench: the relay through an SSH tunnel against the direct path, in one run.

One fake RFB desktop (bench/relay.py's, streaming raw updates as fast as they are read) runs in a
network namespace with its own sshd (tests/sshhosts.py makes it: needs root). One gateway has two
static desktops on that same server process: "direct" at the namespace's address, "tunnel" at
its loopback through the SSH host (direct-tcpip over the gateway's one SSH connection to it).
Rounds interleave the two paths; each run streams the same bytes and reports MB/s, the gateway's
CPU seconds per GB (its whole process tree: asyncssh's encryption runs in it) and the host's
sshd CPU seconds per GB (what the tunnel costs the desktop's host).

    sudo .venv/bin/python bench/ssh.py            # 3 rounds of 200 MB per path
    sudo .venv/bin/python bench/ssh.py --quick    # a tiny run that proves every step works
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import relay  # noqa: E402 - bench/relay.py: the fake desktop, the gateway, the RFB client
from sshhosts import _cleanup_all, _start_indexed, short_tmp  # noqa: E402


class _Gateway(relay.Gateway):
    """The bench's gateway, signing in as ``person``: a TOTP code is enrolled once per person,
    so every run signs in a person of its own."""

    person: str = "bench"

    async def sign_in(self, http: object, name: str = "bench") -> str:
        return await super().sign_in(http, self.person)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mb", type=float, default=200.0, help="MB streamed per run")
    p.add_argument("--fences", type=int, default=50, help="round trips timed per run")
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--quick", action="store_true", help="1 round of 20 MB")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.mb, args.fences = 1, 20.0, 10
    return args


async def bench(args: argparse.Namespace) -> int:
    tmp = short_tmp()
    host = _start_indexed(tmp, name="benchhost")
    fake = gw = None
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
        gw = _Gateway(Path(tempfile.mkdtemp(prefix="deskgate-bench-ssh-")) / "data",
                           relay.free_port())
        config = gw.config
        relay.cli(None, "init", "--data", str(gw.data), "--port", str(gw.port), "--no-demo")
        people = [f"p{rnd}{path}" for rnd in range(1, args.rounds + 1)
                  for path in ("direct", "tunnel")]
        for person in people:
            relay.cli(config, "user", "add", person, "--password-stdin", stdin=gw.password + "\n")
            gw.users[person] = gw.password
        key = gw.data / "host.key"
        key.write_text(host.client_key)
        key.chmod(0o600)
        relay.cli(config, "ssh", "add", "benchhost", "--address", host.address, "--port",
                  str(host.port), "--user", host.user, "--key-file", str(key), "--host-key",
                  host.host_key_line)
        ids = {}
        for name, extra in (("direct", ["--vnc", f"{host.address}:{port}"]),
                            ("tunnel", ["--vnc", f"127.0.0.1:{port}", "--via", "benchhost"])):
            out = relay.cli(config, "desktop", "add", name, "--provider", "static", *extra)
            found = re.search(r"Desktop (\d+)", out)
            assert found, out
            ids[name] = int(found.group(1))
            for person in people:
                relay.cli(config, "assign", name, person)
        gw.serve()
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
        print("\n== summary (medians of the interleaved rounds, the same byte stream) ==")
        print(f"direct: {d[0]:.1f} MB/s, gateway {d[1]:.2f} CPU-s/GB")
        print(f"tunnel: {t[0]:.1f} MB/s, gateway {t[1]:.2f} CPU-s/GB, host sshd {t[2]:.2f} CPU-s/GB")
        print(f"tunnel/direct throughput: {t[0] / d[0]:.2f}x;"
              f" gateway CPU per GB: {t[1] / d[1]:.2f}x" if d[0] and d[1] else "")
        return 0
    finally:
        if gw is not None:
            gw.stop()
        if fake is not None:
            if fake.stdin is not None:
                fake.stdin.close()
            relay.stop(fake, 5)
        _cleanup_all([host], tmp)


def main(argv: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("bench/ssh.py makes a network namespace and an sshd: run it as root", file=sys.stderr)
        return 2
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
