"""A desktop VM as the admin pages show it: its state and reason, the power actions its state
allows now, its running mode in words, and the snapshot the live pages are kept current with
(``GET /admin/vms/events``, static/vm_states.js).

Shared by the desktop VM pages (admin_vms.py) and the desktop pages (admin_pages.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cases.vms import MAX_AUTO_STOP_SECONDS, POWER, DesktopVms, mode_words
from ..model import ALWAYS_ON, AUTO_STOP, SELF_SERVICE, Desktop, DesktopVm
from ..providers.libvirt.lifecycle import ACTIONS, VmState

# The power actions an admin is offered, in the order of their buttons.
ADMIN_ACTIONS = ("start", "stop", "reboot", "rebuild", "delete")
# Those that lose something: the admin types the desktop's name to confirm.
CONFIRMED = ("rebuild", "delete")
DEFAULT_AUTO_STOP_MINUTES = 60
MAX_AUTO_STOP_MINUTES = MAX_AUTO_STOP_SECONDS // 60
# What the VM forms offer (the templates' ``vm_forms``).
VM_FORMS = {"modes": ((AUTO_STOP, "AutoStop: stopped when idle"),
                      (ALWAYS_ON, "AlwaysOn: kept running")),
            "self_service": SELF_SERVICE, "confirmed": CONFIRMED,
            "default_minutes": DEFAULT_AUTO_STOP_MINUTES, "max_minutes": MAX_AUTO_STOP_MINUTES}
# The fixed messages of the VM forms' ``?info=`` codes.
VM_INFO = {
    "start": "Start asked: the state follows it live.",
    "stop": "Stop asked: the state follows it live.",
    "reboot": "Reboot asked: the state follows it live.",
    "rebuild": "Rebuild asked: the VM gets a fresh root disk and stays stopped; its user volume"
               " is kept.",
    "delete": "Delete asked: the VM and its volumes are removed.",
    "mode": "Running mode saved.",
    "self-service": "Self-service policy saved.",
}


def allowed_actions(state: str) -> tuple[str, ...]:
    """The power actions the lifecycle's state table allows from ``state`` (none for a state
    it does not know)."""
    try:
        now = VmState(state)
    except ValueError:
        return ()
    return tuple(name for name in ADMIN_ACTIONS if now in ACTIONS[POWER[name]].allowed_from)


def mib(n: int) -> str:
    """A size in MiB as people read it: "2 GiB" when whole GiB, else "1536 MiB"."""
    return f"{n // 1024} GiB" if n >= 1024 and n % 1024 == 0 else f"{n} MiB"


@dataclass(frozen=True)
class VmRow:
    desktop: Desktop
    vm: DesktopVm
    busy: bool  # an action on it runs on this gateway now
    problem: str | None  # its hypervisor could not be reached lately: libvirt's reason
    actions: tuple[str, ...]  # the power actions its state allows now
    mode_text: str

    @property
    def live(self) -> dict[str, Any]:
        """What the live pages are sent of it (one entry of the snapshot)."""
        return {"id": self.desktop.id, "name": self.desktop.name, "state": self.vm.state,
                "reason": self.vm.reason, "busy": self.busy, "mode": self.vm.mode,
                "mode_text": self.mode_text, "hypervisor": self.vm.hypervisor,
                "hypervisor_problem": self.problem, "actions": list(self.actions)}


def vm_row(d: Desktop, vms: DesktopVms) -> VmRow | None:
    """The row of a desktop VM; None for a desktop that is not one."""
    vm = d.vm
    if vm is None:
        return None
    return VmRow(d, vm, vms.busy(d.id), vms.hypervisor_problem(vm.hypervisor),
                 allowed_actions(vm.state), mode_words(vm.mode, vm.auto_stop_seconds))


async def vm_rows(vms: DesktopVms) -> list[VmRow]:
    rows = [vm_row(d, vms) for d in await vms.desktops()]
    return [r for r in rows if r is not None]


async def snapshot(vms: DesktopVms) -> dict[str, Any]:
    """Every desktop VM's state, reason and allowed actions, as the event stream sends it."""
    return {"type": "vms", "vms": [r.live for r in await vm_rows(vms)]}
