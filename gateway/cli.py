"""Command line: builds Settings and runs the server, or runs one admin command.

Admin commands use the same service layer as the web pages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .admin import AdminService
from .audit import verify_chain
from .broker import Providers
from .config import Settings, load_settings, new_secret_key, render_toml
from .crypto import new_token
from .errors import BadRequest, GatewayError
from .live import LiveSessions
from .model import User
from .providers import ProviderContext
from .services import MAX_CA_PEM, RDP_CERT_POLICIES, RDP_SECURITY, Services
from .store.sqlite import SQLiteStore
from .textsafe import log_handler, visible

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


async def _with_services(settings: Settings,
                         action: Callable[[Services], Awaitable[int]]) -> int:
    from .app import build_services

    store = SQLiteStore(settings.database_path)
    await store.open()
    try:
        return await action(build_services(settings, store))
    finally:
        await store.close()


# init ------------------------------------------------------------------------------------------
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

    async def populate(services: Services) -> int:
        _, password = await services.add_user(args.admin, admin=True)
        if not args.no_demo:
            await services.add_desktop(DEMO_DESKTOP, "local")
            await services.assign(DEMO_DESKTOP, args.admin)
        print(f"Configuration: {config_path}")
        print(f"URL: {public_url}")
        print(f"User: {args.admin}")
        print(f"Password: {password}")
        print("The password is shown only now. You will enrol a TOTP app at first sign-in.")
        return 0

    return asyncio.run(_with_services(settings, populate))


# serve -----------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    settings = _settings(args)
    host = args.host or settings.host
    port = args.port or settings.port
    logging.getLogger("deskgate").info("Deskgate on %s (listening on %s:%d)",
                                       settings.public_url, host, port)
    web.run_app(create_app(settings), host=host, port=port, print=None,
                access_log=None, shutdown_timeout=5)
    return 0


# users -----------------------------------------------------------------------------------------
def cmd_user(args: argparse.Namespace) -> int:
    settings = _settings(args)
    password = _read_password(args)

    async def run(services: Services) -> int:
        if args.user_cmd == "add":
            user, generated = await services.add_user(args.name, admin=args.admin,
                                                      password=password)
            print(f"User {user.id} {user.name}{' (admin)' if user.is_admin else ''}")
            if generated:
                print(f"Password: {generated}")
        elif args.user_cmd == "passwd":
            generated = await services.set_password(args.name, password)
            print(f"Password changed for {args.name}")
            if generated:
                print(f"Password: {generated}")
        elif args.user_cmd in ("disable", "enable"):
            admin = _admin_service(services, settings)
            user = await services.user(args.name)
            await admin.set_disabled(CLI_ACTOR, user.id, args.user_cmd == "disable")
            print(f"User {args.name} {args.user_cmd}d")
        elif args.user_cmd == "reset-totp":
            admin = _admin_service(services, settings)
            await admin.reset_totp(CLI_ACTOR, (await services.user(args.name)).id)
            print(f"Second factor reset for {args.name}: they enrol again at next sign-in")
        else:  # list
            for u in await services.store.list_users():
                flags = [f for f, on in (("admin", u.is_admin), ("disabled", u.disabled),
                                         ("totp", u.totp_enrolled)) if on]
                print(f"{u.id:4d}  {u.name:24s} {' '.join(flags)}")
        return 0

    return asyncio.run(_with_services(settings, run))


# desktops --------------------------------------------------------------------------------------
def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def cmd_desktop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    password = _read_password(args)

    async def run(services: Services) -> int:
        if args.desktop_cmd == "add":
            if args.vnc and args.rdp:
                raise BadRequest("give --vnc or --rdp, not both")
            host, port = args.vnc or args.rdp or ("", 0)
            options = {k: v for k, v in (("username", args.user), ("domain", args.domain),
                                         ("security", args.security),
                                         ("cert_policy", args.cert),
                                         ("cert_fingerprint", args.cert_fingerprint),
                                         ("cert_ca", _read_text(args.cert_ca)),
                                         ("credentials",
                                          "per_user" if args.per_user_credentials else None),
                                         ("keyboard_layout", args.keyboard_layout))
                       if v}
            desktop = await services.add_desktop(
                args.name, args.provider, host=host, port=port, password=password,
                protocol="rdp" if args.rdp else "vnc", options=options if args.rdp else None)
            print(f"Desktop {desktop.id} {desktop.name}")
        else:
            for d in await services.store.list_desktops():
                where = f"{d.host}:{d.port}" if d.provider == "static" else "on this host"
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

    return asyncio.run(_with_services(settings, run))


def cmd_assign(args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        if (args.user is None) == (args.group is None):
            raise BadRequest("name a user, or a group with --group, not both")
        if args.group is not None:
            await services.assign_group(args.desktop, args.group)
            print(f"Desktop {args.desktop} assigned to group {args.group}")
        else:
            await services.assign(args.desktop, args.user)
            print(f"Desktop {args.desktop} assigned to {args.user}")
        return 0

    return asyncio.run(_with_services(_settings(args), run))


def cmd_audit(args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        if args.audit_cmd == "verify":
            problem, checked = await verify_chain(services.store)
            if problem:
                print(f"audit trail BROKEN: {problem}")
                return 2
            print(f"audit trail intact: {checked} rows checked")
            return 0
        for e in reversed(await services.audit_events(args.limit)):
            when = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            # Names and details come from outside: one event, one line, no terminal escapes.
            print(visible(f"{when}  {e.kind:34s} user={e.user or '-'} desktop={e.desktop or '-'}"
                          f" ip={e.client_ip or '-'}  {e.detail}"))
        return 0

    return asyncio.run(_with_services(_settings(args), run))


# API tokens ------------------------------------------------------------------------------------
CLI_ACTOR = User(id=0, name="the command line", is_admin=True, disabled=False,
                 totp_enrolled=False)  # names the command line as the actor in the audit trail


def _admin_service(services: Services, settings: Settings) -> AdminService:
    """The admin use cases for one command: no live sessions or providers are touched here."""
    ctx = ProviderContext(settings.desktop_runtime_dir, settings.run_as_user, settings.display_base)
    return AdminService(services.store, services.box, services.audit, Providers(ctx),
                        LiveSessions(), settings.desktop_geometry)


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run(services: Services) -> int:
        admin = _admin_service(services, settings)
        if args.token_cmd == "create":  # noqa: S105 (a subcommand name)
            owner = await services.user(args.admin_user)
            if not owner.is_admin or owner.disabled:
                raise BadRequest(f"{owner.name} is not an enabled admin: tokens act as an admin")
            token, secret = await admin.create_token(owner, args.name, days=args.days,
                                                     read_only=args.read_only)
            print(f"Token {token.id} {token.name} for {owner.name}"
                  f"{' (read-only)' if token.read_only else ''}, expires {_when(token.expires_at)}"
                  " UTC")
            print(f"Secret: {secret}")
            print("The secret is shown only now. Send it as: Authorization: Bearer <secret>")
        elif args.token_cmd == "revoke":  # noqa: S105 (a subcommand name)
            await admin.revoke_token(CLI_ACTOR, args.id)
            print(f"Token {args.id} revoked")
        else:  # list
            names = {u.id: u.name for u in await services.store.list_users()}
            now = time.time()
            for t in await admin.tokens():
                flags = [f for f, on in (("read-only", t.read_only),
                                         ("expired", t.expires_at <= now)) if on]
                print(f"{t.id:4d}  {t.name:24s} {names.get(t.user_id, '?'):16s}"
                      f" expires {_when(t.expires_at)}  last used {_when(t.last_used)}"
                      f"  {' '.join(flags)}".rstrip())
        return 0

    return asyncio.run(_with_services(settings, run))


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
    p.add_argument("--provider", choices=("static", "local"), required=True)
    p.add_argument("--vnc", type=_host_port, metavar="HOST:PORT", help="static: VNC server")
    p.add_argument("--rdp", type=_host_port, metavar="HOST:PORT", help="static: RDP server")
    p.add_argument("--user", help="rdp: the account to sign in with")
    p.add_argument("--per-user-credentials", action="store_true",
                   help="rdp: each person signs in with their own account on the server"
                        " (entered once in the browser and stored encrypted; no --user)")
    p.add_argument("--domain", help="rdp: the account's domain")
    p.add_argument("--security", choices=RDP_SECURITY,
                   help="rdp: security mode (default: negotiate)")
    p.add_argument("--cert", choices=RDP_CERT_POLICIES,
                   help="rdp: server certificate policy: ignore, tofu (trust the first"
                        " certificate seen, refuse a changed one), fingerprint or ca (default:"
                        " ignore, or fingerprint/ca when --cert-fingerprint/--cert-ca is given)")
    p.add_argument("--cert-fingerprint", metavar="SHA256", help="rdp: pinned certificate")
    p.add_argument("--cert-ca", metavar="PEM_FILE",
                   help="rdp: verify the server's certificate against this CA (its certificate"
                        " in a PEM file) and the desktop's host name (policy ca)")
    p.add_argument("--keyboard-layout", metavar="LAYOUT",
                   help="rdp: the keyboard layout the server maps keys with: a name (us, gb, de,"
                        " fr, ch-de, es, it, ...) or a layout id such as 0x00000407"
                        " (default: us)")
    p.add_argument("--password-stdin", action="store_true",
                   help="static: the VNC or RDP password on stdin")
    dsub.add_parser("list", help="list desktops")
    desk.set_defaults(func=cmd_desktop)

    p = sub.add_parser("assign", help="assign a desktop to a user or to an IdP group")
    p.add_argument("desktop")
    p.add_argument("user", nargs="?")
    p.add_argument("--group", help="an identity provider group instead of a user")
    p.set_defaults(func=cmd_assign)

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
