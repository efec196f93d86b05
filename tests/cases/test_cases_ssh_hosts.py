"""The SSH hosts use case on the store (no sshd: the connections are a recorder): a host removed
while desktops are added through it from another process, a pinned host switched to trust on
first use, and which changes make a host's connection again."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from casesupport import CLI, PASSWORD, admin_actor, audit_mark, audit_since

from gateway.app import Cases, build_cases
from gateway.cases.actor import Actor
from gateway.cases.ssh_hosts import SshHosts
from gateway.config import HypervisorConfig, Settings
from gateway.errors import Conflict, NotFound
from gateway.ssh.connections import PINNED, TOFU, Health, SshHost
from gateway.ssh.sshlib import asyncssh
from gateway.store.sqlite import SQLiteStore


def private_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


def public_key() -> str:
    """A host key as a host shows it: ``ssh-ed25519 AAAA...``."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_public_key().decode().strip()


def fingerprint(line: str) -> str:
    kind, blob = line.split()[-2:]
    return str(asyncssh.import_public_key(f"{kind} {blob}").get_fingerprint("sha256"))


class Recorder:
    """The connections' side the use case talks to: which hosts it dropped."""

    def __init__(self) -> None:
        self.health: dict[str, Health] = {}
        self.dropped: list[str] = []

    async def drop(self, name: str) -> None:
        self.dropped.append(name)

    def take(self) -> list[str]:
        dropped, self.dropped = self.dropped, []
        return dropped


async def _root(cases: Cases) -> Actor:
    root, _ = await cases.accounts.add_user(CLI, "root", admin=True, password=PASSWORD)
    return admin_actor(root)


def _hosts(cases: Cases, recorder: Recorder) -> SshHosts:
    return SshHosts(cases.store, cases.box, cases.audit, recorder)  # type: ignore[arg-type]


async def test_removes_and_adds_at_once_leave_no_desktop_without_its_host(
        cases: Cases, settings: Settings) -> None:
    """20 calls in flight per host, removes through this process and desktop adds through
    another (the command line's store on the same database), in several orders."""
    me = await _root(cases)
    hosts = _hosts(cases, Recorder())
    other_store = SQLiteStore(settings.database_path)
    await other_store.open()
    other = build_cases(settings, other_store)
    outcomes: set[bool] = set()
    try:
        # Rounds 0-9 race; in round 10 the removal goes first and in round 11 the adds do, so
        # that both outcomes are checked whatever the machine's load makes of the races.
        for round_ in range(12):
            name = f"h{round_}"
            host = await hosts.add(me, name=name, address="192.0.2.9", user="desk",
                                   private_key=private_key(), policy=TOFU)

            async def add(i: int, delay: float, name: str = name) -> str:
                await asyncio.sleep(delay)  # some before the removals' checks, some after
                desktop = f"{name}-d{i}"
                provider = "ssh" if i % 2 else "static"  # started on it, or behind it
                await other.catalog.add_desktop(
                    me, desktop, provider, host="10.0.0.5" if provider == "static" else "",
                    port=5901 if provider == "static" else 0, via=name)
                return "added"

            async def remove(delay: float, host_id: int = host.id) -> str:
                await asyncio.sleep(delay)
                await hosts.remove(me, host_id)
                return "removed"

            # Odd rounds: the adds start a little later, so that a removal may win.
            add_delay = 0.5 if round_ == 10 else 0.005 * (round_ % 2)
            remove_delay = 0.5 if round_ == 11 else 0.0
            removes = [(i % 3 if round_ >= 10 else (i * (round_ + 1)) % 3) == 0 for i in range(20)]
            calls = [remove(remove_delay) if removes[i]
                     else add(i, add_delay + ((i * 7 + round_) % 5) * 0.003) for i in range(20)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            for result in results:
                if isinstance(result, NotFound):
                    # An add after the removal, or a second removal.
                    assert result.reason in (f"no SSH host named {name!r}", "no such SSH host")
                elif isinstance(result, Conflict):
                    users, _, tail = result.reason.partition(" go through ")
                    assert tail == f"{name}; change them first", result.reason
                    assert all(u.startswith(f"{name}-d") for u in users.split(", "))
                else:
                    assert result in ("added", "removed"), result
            assert results.count("removed") <= 1
            names = {h.name for h, _ in await hosts.hosts()}
            through = [d for d in await cases.catalog.desktops() if d.option("via") == name]
            assert (name in names) != ("removed" in results)
            assert len(through) == results.count("added")
            assert not through or name in names  # no desktop names a host that is gone
            outcomes.add("removed" in results)
            # Each refusal once more, on its own: what the person is told.
            if name in names:
                with pytest.raises(Conflict) as refused:
                    await hosts.remove(me, host.id)
                listed = ", ".join(sorted(d.name for d in through))
                assert refused.value.reason == f"{listed} go through {name}; change them first"
            else:
                with pytest.raises(NotFound) as refused:
                    await other.catalog.add_desktop(me, "late", "ssh", via=name)
                assert refused.value.reason == f"no SSH host named {name!r}"
        assert outcomes == {True, False}  # some hosts were removed, some kept
        every = {h.name for h, _ in await hosts.hosts()}
        assert all(d.option("via") in every for d in await cases.catalog.desktops())
    finally:
        await other_store.close()


async def test_switching_to_trust_on_first_use_forgets_the_pinned_key(cases: Cases) -> None:
    me = await _root(cases)
    recorder = Recorder()
    hosts = _hosts(cases, recorder)
    old_key = public_key()
    host = await hosts.add(me, name="lab", address="192.0.2.9", user="desk",
                           private_key=private_key(), host_key=old_key)
    assert host.policy == PINNED

    mark = await audit_mark(cases.store)
    switched = await hosts.update(me, host.id, policy=TOFU)
    assert (switched.policy, switched.host_key) == (TOFU, "")
    assert recorder.take() == ["lab"]  # connected again: the next connection learns the key
    [row] = await audit_since(cases.store, mark)
    assert row.detail == (
        f"SSH host lab changed: host_key, policy; its pinned key (ssh-ed25519"
        f" {fingerprint(old_key)}) is forgotten: the next connection records the key the host"
        " shows (by root)")

    # The next connection's key is recorded (once) and audited.
    new_line = f"[192.0.2.9]:22 {public_key()}"
    mark = await audit_mark(cases.store)
    await hosts.first_key(SshHost("lab", "192.0.2.9", policy=TOFU), new_line)
    await hosts.first_key(SshHost("lab", "192.0.2.9", policy=TOFU), f"[192.0.2.9]:22 {old_key}")
    assert (await hosts.get("lab")).host_key == new_line
    [row] = await audit_since(cases.store, mark)
    assert row.kind == "ssh.host_key" and "key trusted on first use and pinned" in row.detail

    # Already trusted on first use (with its key learnt): asking for it again keeps the key.
    again = await hosts.update(me, host.id, policy=TOFU)
    assert again.host_key == new_line and recorder.take() == []
    # Switched with a key given: that key is the one kept.
    await hosts.pin(me, host.id, old_key)
    recorder.take()
    given = public_key()
    kept = await hosts.update(me, host.id, policy=TOFU, host_key=given)
    assert (kept.policy, kept.host_key) == (TOFU, given) and recorder.take() == ["lab"]


async def test_only_a_change_of_how_a_host_is_reached_makes_its_connection_again(
        cases: Cases) -> None:
    me = await _root(cases)
    recorder = Recorder()
    hosts = _hosts(cases, recorder)
    key, host_key = private_key(), public_key()
    bastion = await hosts.add(me, name="bastion", address="192.0.2.1", user="desk",
                              private_key=private_key(), policy=TOFU)
    lab = await hosts.add(me, name="lab", address="192.0.2.9", user="desk", private_key=key,
                          host_key=host_key)
    inner = await hosts.add(me, name="inner", address="10.0.0.2", user="desk",
                            private_key=private_key(), policy=TOFU, jump="lab")
    await hosts.add(me, name="deep", address="10.0.1.2", user="desk",
                    private_key=private_key(), policy=TOFU, jump="inner")

    # Nothing that changes the connection: kept.
    same_key_other_format = asyncssh.import_private_key(key).export_private_key(
        "pkcs8-pem").decode()
    mark = await audit_mark(cases.store)
    for change in ({}, {"address": "192.0.2.9", "port": 22, "user": "desk"},
                   {"private_key": key}, {"private_key": same_key_other_format},
                   {"host_key": host_key}, {"host_key": f"192.0.2.9 {host_key}"},
                   {"host_key": f"{host_key} admin@laptop"}):
        await hosts.update(me, lab.id, **change)  # type: ignore[arg-type]
        assert recorder.take() == [], change
    assert {r.detail for r in await audit_since(cases.store, mark)} == {
        "SSH host lab changed: nothing (by root)"}
    # The policy alone (the key it is checked against stays the same): kept.
    await hosts.update(me, inner.id, host_key=f"10.0.0.2 {host_key}")
    recorder.take()
    await hosts.pin(me, inner.id, host_key)  # tofu with this key learnt -> pinned to it
    assert recorder.take() == [] and (await hosts.get("inner")).policy == PINNED

    # Each change of how it is reached: made again, with the hosts reached through it.
    for change in ({"address": "192.0.2.10"}, {"port": 2222}, {"user": "other"},
                   {"private_key": private_key()}, {"host_key": public_key()},
                   {"jump": "bastion"}):
        mark = await audit_mark(cases.store)
        await hosts.update(me, lab.id, **change)  # type: ignore[arg-type]
        assert sorted(recorder.take()) == ["deep", "inner", "lab"], change
        [row] = await audit_since(cases.store, mark)
        assert row.detail != "SSH host lab changed: nothing (by root)"
    await hosts.update(me, lab.id, no_jump=True)
    assert sorted(recorder.take()) == ["deep", "inner", "lab"]
    await hosts.update(me, bastion.id, address="192.0.2.2")
    assert recorder.take() == ["bastion"]  # nothing goes through it any more
    with pytest.raises(NotFound):
        await hosts.update(me, 999, address="192.0.2.3")
    assert recorder.take() == []


async def test_a_host_a_configured_hypervisor_goes_through_is_not_removed(
        settings: Settings, store: SQLiteStore) -> None:
    far = HypervisorConfig("rack2", "qemu:///system", storage_dir="/srv/vms",
                           socket_dir="/run/dg-screens", via="rack2-ssh")
    cases = build_cases(dataclasses.replace(settings, hypervisors=(far,)), store)
    host = await cases.ssh_hosts.add(CLI, name="rack2-ssh", address="10.0.2.5", user="root",
                                     private_key=private_key(), host_key=public_key())
    with pytest.raises(Conflict, match=r"hypervisor rack2 \(in the configuration\) goes through"
                                       " rack2-ssh; change the configuration first"):
        await cases.ssh_hosts.remove(CLI, host.id)
    assert [h.name for h, _ in await cases.ssh_hosts.hosts()] == ["rack2-ssh"]
