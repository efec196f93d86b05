"""The relay's state machine (gateway/relay.py): its one table of legal moves, illegal moves
refused and logged, closed final, and the ending (code, reason, final) carried from the move to
closing on. Closing real relays from each state: tests/web/test_relay_close.py."""

from __future__ import annotations

import itertools
import logging

import pytest

from gateway.errors import (
    WS_ADMIN_DISCONNECT,
    WS_NORMAL,
    DesktopUnavailable,
    Forbidden,
    GatewayError,
    InputLimit,
    UpstreamClosed,
)
from gateway.relay import BY_THE_USER, TRANSITIONS, Ending, Phase, RelayState

S, R, C, X = Phase.STARTING, Phase.RELAYING, Phase.CLOSING, Phase.CLOSED
LEGAL = {(S, R), (S, C), (R, C), (C, X)}
ADMIN = Ending(WS_ADMIN_DISCONNECT, "disconnected by an administrator", final=True)


def at(phase: Phase, ending: Ending = ADMIN) -> RelayState:
    """A state brought to ``phase`` by legal moves only (closing with ``ending``)."""
    state = RelayState("[test]")
    path = {S: [], R: [R], C: [C], X: [C, X]}[phase]
    for to in path:
        assert state.move(to, ending if to is C else None)
    assert state.phase is phase
    return state


def test_the_table_is_the_four_legal_moves_and_closed_is_final() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[X] == frozenset()
    with pytest.raises(TypeError):
        TRANSITIONS[X] = frozenset({S})  # type: ignore[index]  # read-only


@pytest.mark.parametrize(("start", "to"), sorted(LEGAL, key=str))
def test_every_legal_move_is_made(start: Phase, to: Phase, caplog: pytest.LogCaptureFixture
                                  ) -> None:
    state = at(start)
    assert state.may(to)
    assert state.move(to, ADMIN if to is C else None)
    assert state.phase is to
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


ILLEGAL = sorted(set(itertools.product(Phase, Phase)) - LEGAL, key=str)


@pytest.mark.parametrize(("start", "to"), ILLEGAL)
def test_every_illegal_move_is_refused_and_logged_loudly(
        start: Phase, to: Phase, caplog: pytest.LogCaptureFixture) -> None:
    state = at(start)
    ending_before = state.ending
    caplog.set_level(logging.ERROR, logger="deskgate.session")
    assert not state.may(to)
    assert not state.move(to, Ending(WS_NORMAL, "another reason") if to is C else None)
    assert state.phase is start
    assert state.ending is ending_before
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "illegal move" in record.getMessage()
    assert f"{start.value} -> {to.value}" in record.getMessage()
    assert record.stack_info  # where the programming error is


def test_closed_is_final() -> None:
    state = at(X)
    for to in Phase:
        assert not state.move(to, ADMIN if to is C else None)
        assert state.phase is X


def test_closing_and_only_closing_carries_an_ending() -> None:
    assert not at(S).move(C)  # closing without saying why
    assert not at(S).move(R, ADMIN)
    assert not at(C).move(X, ADMIN)
    state = at(S)
    assert state.move(C, ADMIN)


@pytest.mark.parametrize("error", [Forbidden(), DesktopUnavailable(), UpstreamClosed(),
                                   InputLimit(), GatewayError("a reason of its own")])
def test_the_ending_carries_code_reason_and_final_from_the_error(error: GatewayError) -> None:
    ending = Ending.of(error)
    assert (ending.code, ending.reason, ending.final) == (error.ws_code, error.reason,
                                                           type(error).final)
    for path in ([C, X], [R, C, X]):
        state = RelayState()
        assert (state.code, state.reason, state.final) == (
            BY_THE_USER.code, BY_THE_USER.reason, False)  # until it closes
        for to in path:
            assert state.move(to, ending if to is C else None)
            if to in (C, X):
                assert state.ending is ending
                assert (state.code, state.reason, state.final) == (
                    error.ws_code, error.reason, type(error).final)


def test_final_comes_from_the_class_attribute() -> None:
    assert Ending.of(Forbidden()).final is True  # trying again cannot help
    assert Ending.of(UpstreamClosed()).final is False  # the client may reconnect
