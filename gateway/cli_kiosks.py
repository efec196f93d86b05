"""Command line for kiosks (thin clients): ``deskgate kiosk ...``.

The same use case as the fleet page and the API (gateway/cases/kiosks.py), acting as the
command line. A pairing code is printed once, when it is made.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .cases.actor import Actor
from .errors import NotFound
from .model import DEDICATED, KIOSK_MODES, SHARED, Kiosk
from .web.kiosk_views import clock_time, kiosk_state, state_words

if TYPE_CHECKING:
    from .app import Cases
    from .cases.kiosks import Kiosks

CLI = Actor.cli()


def kiosk_line(k: Kiosk, online: bool, now: float) -> str:
    shows = ""
    if k.mode == DEDICATED:
        shows = f" {k.desktop_name or '(no desktop)'}"
        shows += "" if k.input_allowed else " view-only"
    seen = (time.strftime(" seen %Y-%m-%d %H:%M:%S UTC", time.gmtime(k.last_seen))
            + (f" from {k.last_ip}" if k.last_ip else "")) if k.last_seen is not None else ""
    who = f" [{k.current_user}]" if k.current_user and online else ""
    return (f"{k.id:4d}  {k.name:20s} {k.mode:9s} {state_words(k, kiosk_state(k, online, now), now)}"
            f"{shows}{seen}{who}{'  @ ' + k.location if k.location else ''}")


def _code_lines(k: Kiosk, code: str) -> str:
    until = f" until {clock_time(k.pair_expires)}" if k.pair_expires is not None else ""
    return (f"Pairing code for kiosk {k.name}: {code}\n"
            f"Type it at /kiosk on the thin client; it works once{until}.")


def _run(args: argparse.Namespace, action: Callable[[Cases], Awaitable[int]]) -> int:
    from .cli import run_command  # the command line's one way to the use cases

    return run_command(args, action)


async def _named(kiosks: Kiosks, name: str) -> Kiosk:
    found = next((k for k, _ in await kiosks.fleet() if k.name == name), None)
    if found is None:
        raise NotFound(f"no kiosk named {name!r}")
    return found


def cmd_kiosk(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        kiosks = cases.kiosks
        desktop_id = None
        if getattr(args, "desktop", None):
            desktop_id = (await cases.catalog.desktop_named(args.desktop)).id
        if args.kiosk_cmd == "add":
            k, code = await kiosks.create(CLI, name=args.name, location=args.location or "",
                                          mode=args.mode, desktop_id=desktop_id,
                                          input_allowed=not args.view_only)
            print(_code_lines(k, code))
            return 0
        if args.kiosk_cmd == "list":
            now = time.time()
            for k, online in await kiosks.fleet():
                print(kiosk_line(k, online, now))
            return 0
        k = await _named(kiosks, args.name)
        if args.kiosk_cmd == "set":
            k = await kiosks.update(CLI, k.id, name=args.rename, location=args.location,
                                    mode=args.mode, desktop_id=desktop_id,
                                    input_allowed=args.input)
            print(kiosk_line(k, False, time.time()))
        elif args.kiosk_cmd == "code":
            k, code = await kiosks.new_code(CLI, k.id)
            print(_code_lines(k, code))
        elif args.kiosk_cmd == "revoke":
            await kiosks.revoke(CLI, k.id)
            print(f"Kiosk {k.name} revoked: its sessions ended; `deskgate kiosk code"
                  f" {k.name}` enrols it afresh")
        else:
            await kiosks.delete(CLI, k.id)
            print(f"Kiosk {k.name} removed")
        return 0

    return _run(args, run)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``kiosk`` with its subcommands, on the main parser's ``sub``."""
    kiosk = sub.add_parser("kiosk", help="kiosks (thin clients): create, pair, revoke")
    ksub = kiosk.add_subparsers(dest="kiosk_cmd", required=True)
    p = ksub.add_parser("add", help="create a kiosk and print its one-time pairing code")
    p.add_argument("name")
    p.add_argument("--location", help="where it stands")
    p.add_argument("--mode", choices=KIOSK_MODES, default=SHARED,
                   help="shared: people sign in on it; dedicated: it shows --desktop")
    p.add_argument("--desktop", metavar="DESKTOP", help="a dedicated kiosk's desktop (its name)")
    p.add_argument("--view-only", action="store_true",
                   help="dedicated: keys and pointer do not reach the desktop")
    ksub.add_parser("list", help="list kiosks with their state")
    p = ksub.add_parser("set", help="change a kiosk (sessions on it end if its mode, desktop or"
                                    " input change)")
    p.add_argument("name")
    p.add_argument("--name", dest="rename", metavar="NEW", help="a new name")
    p.add_argument("--location")
    p.add_argument("--mode", choices=KIOSK_MODES)
    p.add_argument("--desktop", metavar="DESKTOP", help="a dedicated kiosk's desktop (its name)")
    p.add_argument("--input", dest="input", action="store_true", default=None,
                   help="dedicated: keys and pointer reach the desktop")
    p.add_argument("--view-only", dest="input", action="store_false",
                   help="dedicated: its desktop is view-only")
    ksub.add_parser("code", help="a new one-time pairing code (the previous one stops working)"
                    ).add_argument("name")
    ksub.add_parser("revoke", help="revoke a kiosk: its sessions end, its credential never"
                                   " works again").add_argument("name")
    ksub.add_parser("remove", help="delete a kiosk").add_argument("name")
    kiosk.set_defaults(func=cmd_kiosk)
