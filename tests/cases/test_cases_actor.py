"""The actor: who a change is audited as."""

from __future__ import annotations

import pytest

from gateway.cases.actor import Actor
from gateway.errors import Forbidden
from gateway.model import User


def test_an_actor_is_a_user_at_an_address_or_the_command_line() -> None:
    alice = User(id=7, name="alice", is_admin=False, disabled=False, totp_enrolled=True)
    actor = Actor.of(alice, "198.51.100.4")
    assert (actor.name, actor.user_id, actor.is_admin, actor.client_ip) == (
        "alice", 7, False, "198.51.100.4")
    assert actor.is_user(alice) and actor.by("desktop deleted") == "desktop deleted (by alice)"
    with pytest.raises(Forbidden):
        actor.require_admin()

    cli = Actor.cli()
    assert (cli.name, cli.user_id, cli.is_admin, cli.client_ip) == (
        "the command line", None, True, None)
    assert not cli.is_user(User(id=0, name="the command line", is_admin=True, disabled=False,
                                totp_enrolled=False))
    cli.require_admin()
