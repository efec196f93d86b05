"""The VM state table: every action from every state, their ends, and what reconciliation does."""

from __future__ import annotations

import itertools

import pytest

from gateway.providers.libvirt.lifecycle import (
    ACTIONS,
    PASSING,
    SETTLED,
    Abandoned,
    Action,
    Asked,
    Done,
    Failed,
    IllegalMove,
    Observed,
    Seen,
    Step,
    VmState,
    step,
)

S = VmState


@pytest.mark.parametrize(("state", "action"), list(itertools.product(VmState, Action)))
def test_an_action_is_allowed_exactly_from_its_states(state: VmState, action: Action) -> None:
    rule = ACTIONS[action]
    if state is not S.DELETED and state in rule.allowed_from:
        assert step(state, Asked(action)) == Step(rule.passing)
    else:
        with pytest.raises(IllegalMove):
            step(state, Asked(action))


@pytest.mark.parametrize("action", list(Action))
def test_each_action_ends_done_or_in_error_with_the_reason(action: Action) -> None:
    rule = ACTIONS[action]
    assert step(rule.passing, Done(action)) == Step(rule.done)
    assert step(rule.passing, Failed(action, "libvirt: no space")) == Step(
        S.ERROR, "libvirt: no space")
    for other in set(VmState) - {rule.passing, S.DELETED}:
        with pytest.raises(IllegalMove):
            step(other, Done(action))


def test_the_usual_lives() -> None:
    state = S.CREATING
    for event in (Done(Action.CREATE), Asked(Action.START), Done(Action.START),
                  Asked(Action.REBOOT), Done(Action.REBOOT), Asked(Action.REBUILD),
                  Done(Action.REBUILD), Asked(Action.START), Failed(Action.START, "no memory"),
                  Asked(Action.DELETE), Done(Action.DELETE)):
        state = step(state, event).state
    assert state is S.DELETED
    for event in (Asked(Action.START), Observed(Seen.RUNNING)):
        with pytest.raises(IllegalMove):  # deleted is final
            step(state, event)


def test_a_settled_vm_follows_the_hypervisor_and_says_why() -> None:
    assert step(S.RUNNING, Observed(Seen.STOPPED)) == Step(
        S.STOPPED, "the VM stopped outside Deskgate")
    assert step(S.STOPPED, Observed(Seen.RUNNING)) == Step(S.RUNNING, "started outside Deskgate")
    assert step(S.ERROR, Observed(Seen.STOPPED)) == Step(S.STOPPED)
    for state in SETTLED - {S.ERROR}:
        assert step(state, Observed(Seen.MISSING)) == Step(
            S.ERROR, "the VM was deleted outside Deskgate")
    # A VM already in error keeps its reason (one whose creation failed has no domain at all).
    assert step(S.ERROR, Observed(Seen.MISSING)) == Step(S.ERROR)
    assert step(S.RUNNING, Observed(Seen.RUNNING)) == Step(S.RUNNING)


def test_an_action_in_progress_is_left_to_finish_unless_its_domain_is_gone() -> None:
    for state in PASSING - {S.CREATING, S.DELETING}:
        for seen in (Seen.RUNNING, Seen.STOPPED):
            assert step(state, Observed(seen)) == Step(state)
        assert step(state, Observed(Seen.MISSING)).state is S.ERROR
    for state in (S.CREATING, S.DELETING):  # not defined yet, or going away
        assert step(state, Observed(Seen.MISSING)) == Step(state)


def test_an_interrupted_action_follows_the_hypervisor_and_says_what_was_interrupted() -> None:
    assert step(S.STARTING, Abandoned(Seen.RUNNING)) == Step(S.RUNNING,
                                                             "starting was interrupted")
    assert step(S.STOPPING, Abandoned(Seen.STOPPED)) == Step(S.STOPPED,
                                                             "stopping was interrupted")
    assert step(S.REBUILDING, Abandoned(Seen.MISSING)) == Step(S.ERROR,
                                                               "rebuilding was interrupted")
    assert step(S.CREATING, Abandoned(Seen.MISSING)).state is S.ERROR
    for state in SETTLED | {S.DELETING}:  # nothing half done (deleting finishes by itself)
        assert step(state, Abandoned(Seen.STOPPED)) == Step(state)
