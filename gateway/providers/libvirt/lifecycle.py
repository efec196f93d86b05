"""A desktop VM's life: its states and every legal move between them, in one table.

Moves come from three places and only through ``step``:

- an action someone asks for (start, stop, reboot, rebuild, delete) — legal only from the
  states ``ACTIONS`` lists, and it puts the VM in that action's passing state at once;
- the end of that action: done (its final state) or failed (``error``, with libvirt's reason);
- what the hypervisor is seen to do (reconciliation): a VM in a settled state follows the
  hypervisor, which is the truth (stopped or deleted behind Deskgate's back shows so, with the
  reason); a VM in the middle of an action is left to the action, unless its domain is gone;
- an action nobody carries on any more (the gateway stopped in the middle of it): the VM
  follows the hypervisor, saying what was interrupted.

``creating`` is where a new desktop starts; ``deleted`` is final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class VmState(enum.StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    REBOOTING = "rebooting"
    REBUILDING = "rebuilding"
    ERROR = "error"
    DELETING = "deleting"
    DELETED = "deleted"


class Action(enum.StrEnum):
    CREATE = "create"
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    REBUILD = "rebuild"
    DELETE = "delete"


class Seen(enum.StrEnum):
    """What the hypervisor says of the domain."""

    RUNNING = "running"
    STOPPED = "stopped"  # defined, shut off (or crashed)
    MISSING = "missing"  # no such domain


@dataclass(frozen=True)
class Rule:
    allowed_from: frozenset[VmState]
    passing: VmState  # the state while it runs
    done: VmState  # the state once it succeeded


S = VmState
ACTIONS: Mapping[Action, Rule] = MappingProxyType({
    Action.CREATE: Rule(frozenset(), S.CREATING, S.STOPPED),  # a new desktop starts here
    Action.START: Rule(frozenset({S.STOPPED, S.ERROR}), S.STARTING, S.RUNNING),
    Action.STOP: Rule(frozenset({S.RUNNING, S.STARTING, S.ERROR}), S.STOPPING, S.STOPPED),
    Action.REBOOT: Rule(frozenset({S.RUNNING}), S.REBOOTING, S.RUNNING),
    # A fresh root overlay; the user volume is kept. The VM is stopped for it and stays so.
    Action.REBUILD: Rule(frozenset({S.STOPPED, S.RUNNING, S.ERROR}), S.REBUILDING, S.STOPPED),
    Action.DELETE: Rule(frozenset({S.CREATING, S.STOPPED, S.RUNNING, S.ERROR}), S.DELETING,
                        S.DELETED),
})
SETTLED = frozenset({S.STOPPED, S.RUNNING, S.ERROR})
PASSING = frozenset(rule.passing for rule in ACTIONS.values())
_ING = {S.STARTING: "starting", S.STOPPING: "stopping", S.REBOOTING: "rebooting",
        S.REBUILDING: "rebuilding"}
_SEEN = {Seen.RUNNING: S.RUNNING, Seen.STOPPED: S.STOPPED, Seen.MISSING: S.ERROR}


@dataclass(frozen=True)
class Asked:
    action: Action


@dataclass(frozen=True)
class Done:
    action: Action


@dataclass(frozen=True)
class Failed:
    action: Action
    reason: str


@dataclass(frozen=True)
class Observed:
    seen: Seen


@dataclass(frozen=True)
class Abandoned:
    """The action in progress was left unfinished (its gateway stopped): ``seen`` decides."""

    seen: Seen


Event = Asked | Done | Failed | Observed | Abandoned


@dataclass(frozen=True)
class Step:
    """The outcome of one event: the state after it and, when the state says why, the reason
    (shown to the admin)."""

    state: VmState
    reason: str = ""


class IllegalMove(ValueError):
    """An action asked for in a state that does not allow it (the caller tells the person)."""


def step(state: VmState, event: Event) -> Step:
    """The one place a VM's state changes. ``IllegalMove`` for an action that is not allowed
    now; an event that changes nothing returns the same state."""
    if state is S.DELETED:
        raise IllegalMove("the desktop's VM is deleted")
    match event:
        case Asked(action):
            rule = ACTIONS[action]
            if state not in rule.allowed_from:
                raise IllegalMove(f"cannot {action.value} a VM that is {state.value}")
            return Step(rule.passing)
        case Done(action):
            rule = ACTIONS[action]
            if state is not rule.passing:
                raise IllegalMove(f"{action.value} finished while the VM was {state.value}")
            return Step(rule.done)
        case Failed(action, reason):
            if state is not ACTIONS[action].passing:
                raise IllegalMove(f"{action.value} failed while the VM was {state.value}")
            return Step(S.ERROR, reason)
        case Observed(seen):
            if state is S.CREATING or state is S.DELETING:
                return Step(state)  # nothing defined yet / going away: the action decides
            if seen is Seen.MISSING:
                if state is S.ERROR:
                    return Step(state)  # its reason stays (a creation that failed has no domain)
                return Step(S.ERROR, "the VM was deleted outside Deskgate")
            if state in PASSING:
                return Step(state)  # the action in progress decides
            after = _SEEN[seen]
            if after is state:
                return Step(state)
            if state is S.RUNNING and after is S.STOPPED:
                return Step(after, "the VM stopped outside Deskgate")
            return Step(after, "started outside Deskgate" if after is S.RUNNING else "")
        case Abandoned(seen):
            if state not in PASSING or state is S.DELETING:
                return Step(state)  # settled, or going away: nothing was left half done
            if state is S.CREATING:
                return Step(S.ERROR, "creating the VM was interrupted")
            after = S.ERROR if seen is Seen.MISSING else _SEEN[seen]
            return Step(after, f"{_ING[state]} was interrupted")
    raise TypeError(f"not an event: {event!r}")
