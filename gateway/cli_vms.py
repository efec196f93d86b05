"""Command line for desktop VMs: ``deskgate bundle ...`` and ``deskgate vm ...``.

The same use cases as the pages and the API (gateway/cases/bundles.py, vms.py), acting as the
command line; a power action waits until it is done and prints the state it ended in.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .cases.actor import Actor
from .cases.bundles import describe
from .cases.vms import POWER
from .errors import BadRequest
from .model import AUTO_STOP, RUNNING_MODES, SELF_SERVICE, VM_PROTOCOLS, Bundle, Desktop

if TYPE_CHECKING:
    from .app import Cases

CLI = Actor.cli()
# Bundle fields as flags: (flag, field, type, help)
_BUNDLE_FLAGS: tuple[tuple[str, str, Callable[[str], object], str], ...] = (
    ("--vcpus", "vcpus", int, "virtual CPUs"),
    ("--memory", "memory_mib", int, "memory in MiB"),
    ("--root-size", "root_mib", int, "root disk in MiB"),
    ("--user-size", "user_mib", int, "user volume in MiB (kept across rebuilds)"),
    ("--base-image", "base_image", str, "qcow2 base image on the hypervisor's host"),
    ("--protocol", "protocol", str, f"where the screen is: {', '.join(VM_PROTOCOLS)}"
                                    " (console: the VM's own screen, on a private socket)"),
    ("--hourly-rate", "hourly_rate", float, "AutoStop cost per running hour"),
    ("--monthly-rate", "monthly_rate", float, "AlwaysOn cost per month"),
    ("--kernel", "kernel", str, "direct kernel boot: the kernel (with --initrd)"),
    ("--initrd", "initrd", str, "direct kernel boot: the initrd"),
    ("--cmdline", "cmdline", str, "direct kernel boot: the kernel command line"),
    ("--ready-text", "ready_text", str, "what the guest prints on its serial console once it"
                                        " is ready (a start waits for it)"),
)


def _policy(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v.strip()) if value != "none" else ()


def vm_line(d: Desktop, problem: str | None = None) -> str:
    vm = d.vm
    assert vm is not None
    mode = "AlwaysOn" if vm.mode != AUTO_STOP else f"AutoStop {vm.auto_stop_seconds}s"
    reason = f" ({vm.reason})" if vm.reason else ""
    unreachable = f" [hypervisor unreachable: {problem}]" if problem else ""
    return (f"{d.id:4d}  {d.name:24s} {vm.state:10s} {vm.bundle.name:12s} {vm.hypervisor:10s}"
            f" {mode}{reason}{unreachable}")


def _run(args: argparse.Namespace, action: Callable[[Cases], Awaitable[int]]) -> int:
    from .cli import run_command  # the command line's one way to the use cases

    return run_command(args, action)


def cmd_bundle(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        bundles = cases.bundles
        fields = {field: getattr(args, field) for _, field, _, _ in _BUNDLE_FLAGS
                  if getattr(args, field, None) is not None}
        if getattr(args, "self_service", None) is not None:
            fields["self_service"] = _policy(args.self_service)
        if args.bundle_cmd == "add":
            if "base_image" not in fields:
                raise BadRequest("give the bundle's --base-image")
            made = await bundles.create(CLI, Bundle(
                0, args.name, fields.pop("vcpus", 1), fields.pop("memory_mib", 2048),
                fields.pop("root_mib", 20480), fields.pop("user_mib", 10240),
                **fields))
            print(f"Bundle {made.id} {made.name}: {describe(made)}")
        elif args.bundle_cmd == "set":
            found = await bundles.bundle_named(args.name)
            if args.rename:
                fields["name"] = args.rename
            changed = await bundles.update(CLI, found.id, **fields)
            print(f"Bundle {changed.id} {changed.name}: {describe(changed)}")
        elif args.bundle_cmd == "remove":
            found = await bundles.bundle_named(args.name)
            await bundles.delete(CLI, found.id)
            print(f"Bundle {found.name} removed")
        else:
            for b in await bundles.bundles():
                print(f"{b.id:4d}  {b.name:16s} {describe(b)}; used by {await bundles.uses(b.id)}")
        return 0

    return _run(args, run)


def cmd_vm(args: argparse.Namespace) -> int:
    async def run(cases: Cases) -> int:
        vms = cases.vms
        if args.vm_cmd == "add":
            bundle = await cases.bundles.bundle_named(args.bundle)
            host, port = args.address or ("", 0)
            d = await vms.create(CLI, args.name, bundle, hypervisor=args.hypervisor,
                                 mode=args.mode, auto_stop_seconds=args.auto_stop,
                                 self_service=None if args.self_service is None
                                 else _policy(args.self_service), host=host, port=port)
            print(vm_line(d))
            return 0 if d.vm is not None and d.vm.state != "error" else 1
        if args.vm_cmd == "list":
            for d in await vms.desktops():
                assert d.vm is not None
                print(vm_line(d, vms.hypervisor_problem(d.vm.hypervisor)))
            return 0
        d = await cases.catalog.desktop_named(args.name)
        if args.vm_cmd == "mode":
            d = await vms.set_mode(CLI, d.id, args.running_mode, args.auto_stop)
        elif args.vm_cmd == "self-service":
            policy = None if args.policy == "bundle" else _policy(args.policy)
            d = await vms.set_self_service(CLI, d.id, policy)
        else:
            d = await vms.power(CLI, d.id, args.vm_cmd, confirm=args.confirm or "")
            if args.vm_cmd == "delete":
                print(f"Desktop VM {d.name} deleted with its volumes")
                return 0
        print(vm_line(d))
        return 0 if d.vm is not None and d.vm.state != "error" else 1

    return _run(args, run)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``bundle`` and ``vm`` with their subcommands, on the main parser's ``sub``."""
    bundle = sub.add_parser("bundle", help="desktop VM bundles: sizes, base image and rates")
    bsub = bundle.add_subparsers(dest="bundle_cmd", required=True)
    for name, text in (("add", "create a bundle"), ("set", "change a bundle")):
        p = bsub.add_parser(name, help=text)
        p.add_argument("name")
        for flag, field, kind, words in _BUNDLE_FLAGS:
            p.add_argument(flag, dest=field, type=kind, help=words)
        p.add_argument("--self-service", metavar="LIST",
                       help=f"what users may do themselves: a comma list of"
                            f" {', '.join(SELF_SERVICE)}, or none")
        if name == "set":
            p.add_argument("--rename", metavar="NEW", help="a new name")
    bsub.add_parser("list", help="list bundles")
    bsub.add_parser("remove", help="remove a bundle no desktop uses").add_argument("name")
    bundle.set_defaults(func=cmd_bundle)

    vm = sub.add_parser("vm", help="desktop VMs: create, power, running mode")
    vsub = vm.add_subparsers(dest="vm_cmd", required=True)
    p = vsub.add_parser("add", help="create a desktop VM from a bundle (assign it afterwards)")
    p.add_argument("name")
    p.add_argument("--bundle", required=True)
    p.add_argument("--hypervisor", default="default")
    p.add_argument("--mode", choices=RUNNING_MODES, default=AUTO_STOP)
    p.add_argument("--auto-stop", type=int, default=3600, metavar="SECONDS",
                   help="AutoStop: stop this long after the last session ends")
    p.add_argument("--self-service", metavar="LIST",
                   help="this desktop's own policy (default: its bundle's)")
    p.add_argument("--address", type=_host_port, metavar="HOST:PORT",
                   help="vnc/rdp bundles: the guest's server")
    vsub.add_parser("list", help="list desktop VMs with their state")
    for action in POWER:
        p = vsub.add_parser(action, help=f"{action} a desktop VM (waits until done)")
        p.add_argument("name")
        if action in ("rebuild", "delete"):
            p.add_argument("--confirm", metavar="NAME", required=True,
                           help="the desktop's name again: this cannot be undone")
        else:
            p.set_defaults(confirm="")
    p = vsub.add_parser("mode", help="switch a desktop VM's running mode")
    p.add_argument("name")
    p.add_argument("running_mode", choices=RUNNING_MODES)
    p.add_argument("--auto-stop", type=int, metavar="SECONDS")
    p = vsub.add_parser("self-service", help="a desktop VM's own self-service policy")
    p.add_argument("name")
    p.add_argument("policy", help=f"a comma list of {', '.join(SELF_SERVICE)}; none; or bundle"
                                  " (follow its bundle)")
    vm.set_defaults(func=cmd_vm)

