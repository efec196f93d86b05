"""Command line for SSH hosts: ``deskgate ssh ...`` (jump hosts, desktop hosts).

The same use case as the admin pages and the API (gateway/cases/ssh_hosts.py), acting as the
command line. A private key is read from a file (or stdin), never from the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .cases.actor import Actor
from .errors import BadRequest
from .model import SshHostRecord
from .ssh.connections import HOST_KEY_POLICIES, PINNED, TOFU

if TYPE_CHECKING:
    from .app import Cases

CLI = Actor.cli()


def host_line(h: SshHostRecord, jump: str = "") -> str:
    key = (h.host_key.split()[-2] + " " + h.host_key.split()[-1][:16] + "…" if h.host_key
           else "(first use: not seen yet)")
    return (f"{h.id:4d}  {h.name:20s} {h.user}@{h.address}:{h.port}  host key {h.policy}: {key}"
            f"{'  through ' + jump if jump else ''}")


def _private_key(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeError) as exc:
        raise BadRequest(f"cannot read the private key from {path}: {exc}") from None


def _run(args: argparse.Namespace, action: Callable[[Cases], Awaitable[int]]) -> int:
    from .cli import run_command  # the command line's one way to the use cases

    return run_command(args, action)


def cmd_ssh(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        hosts = cases.ssh_hosts
        if args.ssh_cmd == "add":
            record = await hosts.add(
                CLI, name=args.name, address=args.address, port=args.port, user=args.user,
                private_key=_private_key(args.key_file), host_key=args.host_key or "",
                policy=TOFU if args.trust_on_first_use else PINNED, jump=args.via)
            print(host_line(record, args.via or ""))
            return 0
        if args.ssh_cmd == "list":
            records = {h.id: h for h, _ in await hosts.hosts()}
            for h in records.values():
                print(host_line(h, records[h.jump_id].name if h.jump_id in records else ""))
            return 0
        record = await hosts.get(args.name)
        if args.ssh_cmd == "pin":
            print(host_line(await hosts.pin(CLI, record.id, args.host_key)))
        else:
            await hosts.remove(CLI, record.id)
            print(f"SSH host {record.name} removed")
        return 0

    return _run(args, run)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``ssh`` with its subcommands, on the main parser's ``sub``."""
    ssh = sub.add_parser("ssh", help="SSH hosts: jump hosts and desktop hosts")
    ssub = ssh.add_subparsers(dest="ssh_cmd", required=True)
    p = ssub.add_parser("add", help="add a host the gateway reaches over SSH")
    p.add_argument("name", help="a short name: a-z, 0-9, '.', '_', '-'")
    p.add_argument("--address", required=True, help="its host name or IP address")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--user", required=True, help="the account the gateway signs in as")
    p.add_argument("--key-file", required=True, metavar="FILE",
                   help="the gateway's private key for it (stored encrypted; '-': stdin)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--host-key", metavar="LINE",
                     help="its host key, pinned: a known_hosts line or 'ssh-ed25519 AAAA...'")
    key.add_argument("--trust-on-first-use", action="store_true",
                     help="record the key it shows at the first connection, then pin it")
    p.add_argument("--via", metavar="HOST", help="reach it through this SSH host")
    ssub.add_parser("list", help="list SSH hosts")
    p = ssub.add_parser("pin", help="pin a host's (new) key after checking it")
    p.add_argument("name")
    p.add_argument("--host-key", required=True, metavar="LINE")
    ssub.add_parser("remove", help="remove an SSH host nothing goes through").add_argument("name")
    ssh.set_defaults(func=cmd_ssh)
    assert set(HOST_KEY_POLICIES) == {PINNED, TOFU}
