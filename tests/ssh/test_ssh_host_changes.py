"""An admin's changes to an SSH host against a real sshd (tests/sshhosts.py): a reinstalled
host (new host key) is refused while pinned, and switching it to trust on first use lets the
next connection record the key it shows; a change that does not change how the host is reached
keeps its connection, one that does makes it again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sshhosts import SshHost as NsHost
from sshhosts import needs_ssh_hosts, ssh_host

from gateway.app import Cases, ssh_hosts
from gateway.cases.actor import Actor
from gateway.cases.ssh_hosts import SshHosts
from gateway.config import Settings
from gateway.ssh.connections import CONNECTED, KEY_CHANGED, TOFU, HostKeyChanged, SshConnections
from gateway.ssh.sshlib import asyncssh

__all__ = ["ssh_host"]  # fixture, used by name

pytestmark = [needs_ssh_hosts, pytest.mark.timeout(120)]
CLI = Actor.cli()


@pytest.fixture
async def hosts(cases: Cases, settings: Settings, tmp_path: Path) -> AsyncIterator[SshHosts]:
    connections = SshConnections(tmp_path, keepalive=1.0, connect_timeout=5.0)
    yield ssh_hosts(settings, cases.store, cases.box, cases.audit, connections)
    await connections.close()


async def connections_settle(host: NsHost, count: int) -> None:
    """Wait until sshd holds ``count`` connections (a dropped one takes a moment to go)."""
    for _ in range(100):
        if host.connections() == count:
            return
        await asyncio.sleep(0.05)
    assert host.connections() == count


async def test_a_reinstalled_host_switched_to_first_use_records_its_new_key(
        ssh_host: NsHost, hosts: SshHosts, cases: Cases) -> None:  # type: ignore[no-untyped-def]
    ssh = hosts.connections
    assert ssh is not None
    record = await hosts.add(CLI, name=ssh_host.name, address=ssh_host.address,
                             port=ssh_host.port, user=ssh_host.user,
                             private_key=ssh_host.client_key, host_key=ssh_host.host_key_line)
    done = await ssh.run(await hosts.spec(record.id), ["true"])
    assert done.exit_status == 0 and host_connected(hosts, ssh_host)

    # The same key in another format, the same host key, the policy alone: kept.
    same = asyncssh.import_private_key(ssh_host.client_key).export_private_key("pkcs8-pem")
    await hosts.update(CLI, record.id, private_key=same.decode())
    await hosts.update(CLI, record.id, host_key=ssh_host.host_key_line)
    assert host_connected(hosts, ssh_host) and ssh.health[ssh_host.name].connects == 1

    # Reinstalled: a new host key. Pinned, it is refused.
    await ssh.drop(ssh_host.name)
    old_line = ssh_host.host_key_line
    ssh_host.rotate_host_key()
    ssh_host.restart_sshd()
    with pytest.raises(HostKeyChanged):
        await ssh.run(await hosts.spec(record.id), ["true"])
    assert ssh.health[ssh_host.name].state == KEY_CHANGED

    # The admin switches it to trust on first use: the old key is forgotten, the next
    # connection records the new one.
    mark = (await cases.store.list_audit(limit=1))[0].id
    switched = await hosts.update(CLI, record.id, policy=TOFU)
    assert (switched.policy, switched.host_key) == (TOFU, "")
    assert ssh.health.get(ssh_host.name) is None  # the refusal is not this host's state now
    done = await ssh.run(await hosts.spec(record.id), ["true"])
    assert done.exit_status == 0 and ssh.health[ssh_host.name].state == CONNECTED
    learnt = (await hosts.get(record.id)).host_key
    assert learnt.split()[1:] == ssh_host.host_key_line.split()[1:] != old_line.split()[1:]
    details = [e.detail for e in await cases.store.audit_chain(after_id=mark)]
    assert details[0].startswith(f"SSH host {ssh_host.name} changed: host_key, policy; its"
                                 " pinned key (ssh-ed25519 SHA256:")
    assert "is forgotten: the next connection records the key the host shows" in details[0]
    assert details[1].startswith(f"SSH host {ssh_host.name}: key trusted on first use and"
                                 " pinned: ssh-ed25519 ")

    # Another private key: how it is reached changed, so the connection goes.
    other = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    await hosts.update(CLI, record.id, private_key=other)
    assert not ssh.connected(ssh_host.name)
    await connections_settle(ssh_host, 0)


def host_connected(hosts: SshHosts, host: NsHost) -> bool:
    assert hosts.connections is not None
    return hosts.connections.connected(host.name) and host.connections() == 1
