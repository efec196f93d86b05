"""Command line: builds Settings and runs the server, or runs one admin command.

Admin commands use the same use cases as the web pages (gateway/cases/), acting as
``Actor.cli()``: the audit trail says "(by the command line)".

Over 400 lines because it is the whole command line in one place: the argument parser and one
short function per command, each only parsing, calling a use case and printing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import cli_kiosks, cli_ssh, cli_vms
from .capacity import AcceptErrorLog, BackoffListener, raise_fd_limit
from .cases.actor import Actor
from .cases.catalog import Catalog, addable_providers
from .config import Settings, load_settings, new_secret_key, render_toml
from .crypto import new_token
from .errors import BadRequest, GatewayError
from .listen import address, bind
from .model import Desktop, User
from .names import name_key
from .rdp.options import MAX_CA_PEM, OPTIONS
from .store.sqlite import SQLiteStore
from .textsafe import log_handler, visible

if TYPE_CHECKING:
    from .app import Cases

DEFAULT_CONFIG = "data/deskgate.toml"
DEMO_DESKTOP = "Demo desktop"


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise GatewayError("no password on standard input")
    return line


def _read_text(path: str | None) -> str | None:
    """A small text file named on the command line (a CA's PEM), or a clear error."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_CA_PEM + 1)  # more is refused as too long
    except OSError as exc:
        raise GatewayError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise GatewayError(f"{path} is not a text (PEM) file") from None


async def _with_cases(settings: Settings, action: Callable[[Cases], Awaitable[int]]) -> int:
    """Run one command's ``action`` on the use cases over the configured database. No session
    is live in this process; a provider is made only if a change needs it."""
    from .app import build_cases, provider_context
    from .crypto import SecretBox
    from .providers.registry import Providers
    from .ssh.connections import SshConnections

    store = SQLiteStore(settings.database_path)
    await store.open()
    box = SecretBox(settings.secret_key)
    # Desktops on SSH hosts are stopped (a removed desktop) over this process's own connections;
    # their forwards' sockets live in a private folder of its own.
    forwards = Path(tempfile.mkdtemp(prefix="deskgate-cli-"))
    ssh = SshConnections(forwards)
    providers = Providers(provider_context(settings, store, box, settings.desktop_runtime_dir,
                                           ssh=ssh))
    cases = build_cases(settings, store, box=box, providers=providers, ssh=ssh)
    try:
        return await action(cases)
    finally:
        await cases.vms.close()
        await cases.providers.close()
        await ssh.close()
        shutil.rmtree(forwards, ignore_errors=True)
        await store.close()


def run_command(args: argparse.Namespace, action: Callable[[Cases], Awaitable[int]]) -> int:
    """Run one admin command's ``action`` (see ``_with_cases``) with the configured settings."""
    return asyncio.run(_with_cases(_settings(args), action))


CLI = Actor.cli()  # every change made here is audited "(by the command line)"


# init ------------------------------------------------------------------------------------------
def first_admin_block(url: str, user: str, password: str) -> str:
    """Where to sign in and as whom, set apart by rules so that it stands out at the end of
    set-up output. Each fact stays a line of its own ("Password: ..."), for scripts."""
    lines = ["Deskgate is ready. Sign in as its first admin:", "",
             f"URL: {url}", f"User: {user}", f"Password: {password}", "",
             "The password is shown only now: keep it somewhere safe.",
             "At first sign-in you set up an authenticator app (TOTP)."]
    rule = "=" * max(64, *(len(line) for line in lines))
    return "\n".join(["", rule, *lines, rule, ""])


def cmd_init(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    config_path = data / "deskgate.toml"
    if config_path.exists():
        print(f"Deskgate is already initialised: {config_path}", file=sys.stderr)
        return 1
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    values = {"host": args.host, "port": args.port, "public_url": public_url,
              "data_dir": str(data), "secret_key": new_secret_key(),
              "metrics_token": new_token(32)}
    config_path.write_text(render_toml(values))
    config_path.chmod(0o600)
    settings = load_settings(config_path, env={})

    async def populate(cases: Cases) -> int:
        admin, password = await cases.accounts.add_user(CLI, args.admin, admin=True)
        if not args.no_demo:
            demo = await cases.catalog.add_desktop(CLI, DEMO_DESKTOP, "local")
            await cases.catalog.assign(CLI, demo.id, user_id=admin.id)
        print(f"Configuration: {config_path}")
        assert password is not None  # generated
        print(first_admin_block(public_url, args.admin, password))
        return 0

    return asyncio.run(_with_cases(settings, populate))


# serve -----------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    settings = _settings(args)
    if args.stop_desktops_on_exit:
        settings = dataclasses.replace(settings, stop_desktops_on_exit=True)
    host = args.host or settings.host
    port = args.port or settings.port
    # Bound before anything starts or logs: a busy port is one clear line naming its setting.
    sockets = bind(host, port, port_setting="--port" if args.port else "server.port",
                   host_setting="--host" if args.host else "server.host")
    # Descriptors bound the sessions this process relays (gateway/capacity.py): take all the
    # hard limit allows; at the limit the listener backs off and says so once a minute.
    before, after = raise_fd_limit()
    logging.getLogger("asyncio").addFilter(AcceptErrorLog())
    sockets = [BackoffListener.wrap(sock) for sock in sockets]
    logging.getLogger("deskgate").info("Deskgate on %s (listening on %s; open files limit %d%s)",
                                       settings.public_url, address(host, port), after,
                                       f", raised from {before}" if after > before else "")
    web.run_app(create_app(settings), sock=sockets, print=None, access_log=None,
                shutdown_timeout=5)
    return 0


# users -----------------------------------------------------------------------------------------
def cmd_user(args: argparse.Namespace) -> int:
    settings = _settings(args)
    password = _read_password(args)

    async def run(cases: Cases) -> int:
        accounts = cases.accounts
        if args.user_cmd == "add":
            user, generated = await accounts.add_user(CLI, args.name, admin=args.admin,
                                                      password=password)
            print(f"User {user.id} {user.name}{' (admin)' if user.is_admin else ''}")
            if generated:
                print(f"Password: {generated}")
        elif args.user_cmd == "passwd":
            generated = await accounts.set_password(CLI, args.name, password)
            print(f"Password changed for {args.name}")
            if generated:
                print(f"Password: {generated}")
        elif args.user_cmd in ("disable", "enable"):
            user = await accounts.user(args.name)
            await accounts.set_disabled(CLI, user.id, args.user_cmd == "disable")
            print(f"User {args.name} {args.user_cmd}d")
        elif args.user_cmd == "reset-totp":
            await accounts.reset_totp(CLI, (await accounts.user(args.name)).id)
            print(f"Second factor reset for {args.name}: they enrol again at next sign-in")
        else:  # list
            _print_users(await accounts.users(), await accounts.identities())
        return 0

    return asyncio.run(_with_cases(settings, run))


def _print_users(users: Sequence[User], identities: Mapping[int, str]) -> None:
    """A table with a header: who each account really is (its identity provider and subject,
    or "local"), and which accounts have names that look alike."""
    keys = {u.name_key: u for u in users if u.name_key is not None}
    rows = [("ID", "NAME", "IDENTITY", "ADMIN", "DISABLED", "TOTP", "NOTE")]
    for u in users:
        older = keys.get(name_key(u.name)) if u.name_key is None else None
        note = f"looks like #{older.id} {older.name}" if older is not None else ""
        rows.append((str(u.id), u.name, identities.get(u.id, u.source), _yes(u.is_admin),
                     _yes(u.disabled), _yes(u.totp_enrolled), note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# desktops --------------------------------------------------------------------------------------
def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def _rdp_flag_arguments(p: argparse.ArgumentParser) -> None:
    """The RDP options' flags (gateway.rdp.options.OPTIONS)."""
    for option in OPTIONS:
        cli = option.cli
        if cli is None:
            continue
        if cli.switch is not None:
            p.add_argument(cli.flag, action="store_true", help=cli.help)
        else:
            p.add_argument(cli.flag, metavar=cli.metavar, choices=option.choices or None,
                           help=cli.help)


def _rdp_flags(args: argparse.Namespace) -> dict[str, str]:
    """The RDP options given on the command line, by option name."""
    given = {}
    for option in OPTIONS:
        cli = option.cli
        if cli is None:
            continue
        value = getattr(args, cli.dest)
        if cli.switch is not None:
            value = cli.switch if value else None
        elif cli.file:
            value = _read_text(value)
        if value:
            given[option.name] = value
    return given


def cmd_desktop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    password = _read_password(args)

    async def run(cases: Cases) -> int:
        catalog = cases.catalog
        if args.desktop_cmd == "add":
            if args.vnc and args.rdp:
                raise BadRequest("give --vnc or --rdp, not both")
            host, port = args.vnc or args.rdp or ("", 0)
            options = _rdp_flags(args)
            desktop = await catalog.add_desktop(
                CLI, args.name, args.provider, host=host, port=port, password=password,
                protocol="rdp" if args.rdp else "vnc", options=options if args.rdp else None,
                via=args.via)
            print(f"Desktop {desktop.id} {desktop.name}")
            if not args.via:  # behind a jump host, its address is not this host's to probe
                await _warn_if_silent(catalog, desktop)
        elif args.desktop_cmd == "remove":
            desktop = await catalog.desktop_named(args.name)
            await catalog.delete_desktop(CLI, desktop.id)
            print(f"Desktop {desktop.name} removed")
        elif args.desktop_cmd == "set":
            await _set_desktop(catalog, args, password)
        else:
            for d in await catalog.desktops():
                where = (f"{d.host}:{d.port}" if d.provider == "static"
                         else f"on SSH host {d.option('via')}" if d.provider == "ssh"
                         else "on this host")
                if d.provider == "static" and d.option("via"):
                    where += f" through SSH host {d.option('via')}"
                if d.protocol == "rdp" and d.option("credentials") == "per_user":
                    where += (f" as each user (credentials=per_user), certificates:"
                              f" {d.option('cert_policy')}")
                elif d.protocol == "rdp":
                    where += (f" as {d.option('username')}, certificates:"
                              f" {d.option('cert_policy')}")
                if d.protocol == "rdp" and d.option("keyboard_layout"):
                    where += f", keyboard {d.option('keyboard_layout')}"
                secret = " (password set)" if d.has_password else ""
                print(f"{d.id:4d}  {d.name:24s} {d.provider:8s} {d.protocol} {where}{secret}")
        return 0

    return asyncio.run(_with_cases(settings, run))


async def _warn_if_silent(catalog: Catalog, desktop: Desktop) -> None:
    """A warning on stderr (never an error) when a static desktop's server does not answer,
    or refuses the stored password (see ``address_problem``)."""
    problem = await catalog.address_problem(desktop)
    if problem:
        print(f"deskgate: warning: {desktop.protocol.upper()} at {desktop.host}:{desktop.port}:"
              f" {problem}; the desktop is saved anyway", file=sys.stderr)


async def _set_desktop(catalog: Catalog, args: argparse.Namespace,
                       password: str | None) -> None:
    if args.vnc and args.rdp:
        raise BadRequest("give --vnc or --rdp, not both")
    if password is not None and args.clear_password:
        raise BadRequest("give --password-stdin or --clear-password, not both")
    desktop = await catalog.desktop_named(args.name)
    address = args.vnc or args.rdp
    if address is not None:
        wanted = "vnc" if args.vnc else "rdp"
        if desktop.provider != "static":
            raise BadRequest(f"{desktop.name} is a {desktop.provider} desktop: it has no address")
        if wanted != desktop.protocol:
            raise BadRequest(f"{desktop.name} is a {desktop.protocol.upper()} desktop:"
                             f" give --{desktop.protocol} HOST:PORT")
    rdp = _rdp_flags(args)
    if args.via and args.no_via:
        raise BadRequest("give --via SSH_HOST or --no-via, not both")
    via = "" if args.no_via else args.via
    if (address is None and password is None and not args.clear_password and args.rename is None
            and not rdp and via is None):
        raise BadRequest("nothing to change: give --vnc/--rdp HOST:PORT, --password-stdin,"
                         " --clear-password, --rename NEW, --via/--no-via or RDP options")
    host, port = address if address is not None else (None, None)
    changed = await catalog.update_desktop(
        CLI, desktop.id, name=args.rename, host=host, port=port, password=password,
        clear_password=args.clear_password, rdp=rdp or None, via=via)
    print(f"Desktop {changed.name} changed")
    if address is not None and not changed.option("via"):  # else not this host's to probe
        await _warn_if_silent(catalog, changed)


def cmd_unassign(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run(cases: Cases) -> int:
        if (args.user is None) == (args.group is None):
            raise BadRequest("name a user, or a group with --group, not both")
        desktop = await cases.catalog.desktop_named(args.desktop)
        done = await cases.catalog.assign(CLI, desktop.id, user_ref=args.user, group=args.group,
                                          remove=True)
        if done.user is not None:
            print(f"Desktop {desktop.name} no longer assigned to {done.user.name}")
        else:
            print(f"Desktop {desktop.name} no longer assigned to group {done.group}")
        return 0

    return asyncio.run(_with_cases(settings, run))


def cmd_assign(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        given = [x for x in (args.user, args.user_id, args.group) if x is not None]
        if len(given) != 1:
            raise BadRequest("name one user (USER, or --user-id N), or a group with --group")
        desktop = await cases.catalog.desktop_named(args.desktop)
        done = await cases.catalog.assign(CLI, desktop.id, user_ref=args.user,
                                          user_id=args.user_id, group=args.group)
        if done.group is not None:
            print(f"Desktop {args.desktop} assigned to group {args.group}")
        else:
            print(f"Desktop {args.desktop} assigned to {done.who}")
        return 0

    return asyncio.run(_with_cases(_settings(args), run))


def cmd_audit(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        if args.audit_cmd == "verify":
            problem, checked = await cases.audit_trail.verify()
            if problem:
                print(f"audit trail BROKEN: {problem}")
                return 2
            print(f"audit trail intact: {checked} rows checked")
            return 0
        for e in reversed(await cases.audit_trail.events(args.limit)):
            when = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            # Names and details come from outside: one event, one line, no terminal escapes.
            print(visible(f"{when}  {e.kind:34s} user={e.user or '-'} desktop={e.desktop or '-'}"
                          f" ip={e.client_ip or '-'}  {e.detail}"))
        return 0

    return asyncio.run(_with_cases(_settings(args), run))


# API tokens ------------------------------------------------------------------------------------

def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run(cases: Cases) -> int:
        accounts = cases.accounts
        if args.token_cmd == "create":  # noqa: S105 (a subcommand name)
            owner = await accounts.user(args.admin_user)
            token, secret = await accounts.create_token(CLI, owner, args.name, days=args.days,
                                                        read_only=args.read_only)
            print(f"Token {token.id} {token.name} for {owner.name}"
                  f"{' (read-only)' if token.read_only else ''}, expires {_when(token.expires_at)}"
                  " UTC")
            print(f"Secret: {secret}")
            print("The secret is shown only now. Send it as: Authorization: Bearer <secret>")
        elif args.token_cmd == "revoke":  # noqa: S105 (a subcommand name)
            await accounts.revoke_token(CLI, args.id)
            print(f"Token {args.id} revoked")
        else:  # list
            names = {u.id: u.name for u in await accounts.users()}
            now = time.time()
            for t in await accounts.tokens():
                flags = [f for f, on in (("read-only", t.read_only),
                                         ("expired", t.expires_at <= now)) if on]
                print(f"{t.id:4d}  {t.name:24s} {names.get(t.user_id, '?'):16s}"
                      f" expires {_when(t.expires_at)}  last used {_when(t.last_used)}"
                      f"  {' '.join(flags)}".rstrip())
        return 0

    return asyncio.run(_with_cases(settings, run))


# parser ----------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deskgate", description="Browser desktop gateway")
    parser.add_argument("--config", default=os.environ.get("DESKGATE_CONFIG", DEFAULT_CONFIG),
                        help="configuration file (default: $DESKGATE_CONFIG or %(default)s)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO for"
                        " serve, WARNING for the other commands)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a data folder, configuration, first admin and demo")
    p.add_argument("--data", default="data", help="data folder (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--public-url", help="URL people use (default: http://HOST:PORT)")
    p.add_argument("--admin", default="admin", help="first admin's user name")
    p.add_argument("--no-demo", action="store_true", help="do not create the demo desktop")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--stop-desktops-on-exit", action="store_true",
                   help="stop the local desktops when the gateway stops (default: they keep"
                        " running and are taken over at the next start; desktops.stop_desktops_on_exit)")
    p.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="local accounts")
    usub = user.add_subparsers(dest="user_cmd", required=True)
    p = usub.add_parser("add", help="create a user (password generated unless --password-stdin)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--password-stdin", action="store_true")
    p = usub.add_parser("passwd", help="set a new password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    for name, text in (("disable", "disable a user and end their web sessions"),
                       ("enable", "enable a user"),
                       ("reset-totp", "forget a user's TOTP secret and recovery codes")):
        usub.add_parser(name, help=text).add_argument("name")
    usub.add_parser("list", help="list users")
    user.set_defaults(func=cmd_user)

    desk = sub.add_parser("desktop", help="desktops")
    dsub = desk.add_subparsers(dest="desktop_cmd", required=True)
    p = dsub.add_parser("add", help="add a desktop")
    p.add_argument("name")
    p.add_argument("--provider", choices=addable_providers(), required=True,
                   help="desktop VMs are made from a bundle: deskgate vm add")
    p.add_argument("--vnc", type=_host_port, metavar="HOST:PORT", help="static: VNC server")
    p.add_argument("--rdp", type=_host_port, metavar="HOST:PORT", help="static: RDP server")
    _rdp_flag_arguments(p)
    p.add_argument("--password-stdin", action="store_true",
                   help="static: the VNC or RDP password on stdin")
    p.add_argument("--via", metavar="SSH_HOST",
                   help="static: reach HOST:PORT through this SSH host (as it sees it);"
                        " ssh: the SSH host the desktop is started on")
    dsub.add_parser("list", help="list desktops")
    p = dsub.add_parser("remove", help="remove a desktop with its assignments (its past"
                                       " sessions stay in the history)")
    p.add_argument("name")
    p = dsub.add_parser("set", help="change a desktop's address, password, name or RDP options")
    p.add_argument("name")
    p.add_argument("--vnc", type=_host_port, metavar="HOST:PORT",
                   help="static VNC desktop: new address")
    p.add_argument("--rdp", type=_host_port, metavar="HOST:PORT",
                   help="static RDP desktop: new address")
    p.add_argument("--password-stdin", action="store_true",
                   help="a new VNC or RDP password on stdin (stored encrypted)")
    p.add_argument("--clear-password", action="store_true", help="forget the stored password")
    p.add_argument("--rename", metavar="NEW", help="a new name")
    p.add_argument("--via", metavar="SSH_HOST",
                   help="static: reach the address through this SSH host from now on")
    p.add_argument("--no-via", action="store_true",
                   help="static: reach the address directly from now on")
    _rdp_flag_arguments(p)
    desk.set_defaults(func=cmd_desktop)

    p = sub.add_parser("assign", help="assign a desktop to a user or to an IdP group")
    p.add_argument("desktop")
    p.add_argument("user", nargs="?", help="a user name that no other account's name looks"
                   " like, or PROVIDER:SUBJECT of a single sign-on account")
    p.add_argument("--user-id", type=int, metavar="N", help="the account with this id"
                   " (see `deskgate user list`)")
    p.add_argument("--group", help="an identity provider group instead of a user")
    p.set_defaults(func=cmd_assign)

    p = sub.add_parser("unassign", help="take a desktop away from a user or an IdP group")
    p.add_argument("desktop")
    p.add_argument("user", nargs="?")
    p.add_argument("--group", help="an identity provider group instead of a user")
    p.set_defaults(func=cmd_unassign)

    token = sub.add_parser("token", help="REST API tokens")
    tsub = token.add_subparsers(dest="token_cmd", required=True)
    p = tsub.add_parser("create", help="create a token for an admin; the secret is printed once")
    p.add_argument("name")
    p.add_argument("--admin-user", required=True, metavar="NAME",
                   help="the admin the token acts as")
    p.add_argument("--days", type=int, default=30, help="lifetime (default: %(default)s)")
    p.add_argument("--read-only", action="store_true", help="GET requests only")
    tsub.add_parser("list", help="list tokens (never their secrets)")
    p = tsub.add_parser("revoke", help="revoke a token")
    p.add_argument("id", type=int)
    token.set_defaults(func=cmd_token)

    cli_vms.add_commands(sub)
    cli_kiosks.add_commands(sub)
    cli_ssh.add_commands(sub)

    p = sub.add_parser("audit", help="print the audit trail, or verify its hash chain")
    p.add_argument("audit_cmd", nargs="?", choices=("list", "verify"), default="list",
                   help="list (default) or verify")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    # Every log line is one line with no terminal escapes, whatever a user name or an
    # identity provider's text holds (gateway/textsafe.py).
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        handlers=[log_handler()])
    try:
        result: int = args.func(args)
        return result
    except GatewayError as exc:
        print(f"deskgate: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
