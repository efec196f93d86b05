"""The SQLite store's SSH hosts: a host is deleted only while nothing goes through it, and a
desktop through a host is made only while the host exists, each check in the same transaction
as its write, also from two connections (the server and the command line) at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import Conflict, NotFound
from gateway.store.sqlite import SQLiteStore


async def _host(store: SQLiteStore, name: str, jump_id: int | None = None) -> int:
    record = await store.create_ssh_host(
        name=name, address="192.0.2.1", port=22, user="desk", key_enc="enc", host_key="",
        policy="tofu", jump_id=jump_id, created_at=time.time())
    return record.id


async def test_a_host_something_goes_through_is_kept(store: SQLiteStore) -> None:
    bastion = await _host(store, "bastion")
    inner = await _host(store, "inner", jump_id=bastion)
    await store.create_desktop("B", "static", "10.0.0.5", 5901, None, options={"via": "inner"})
    await store.create_desktop("A", "ssh", "", 0, None, options={"via": "inner"})
    await store.create_desktop("plain", "static", "10.0.0.6", 5901, None)
    # Desktops first, then hosts, each by name.
    assert await store.delete_ssh_host(bastion) == ["inner"]
    assert await store.delete_ssh_host(inner) == ["A", "B"]
    assert await store.get_ssh_host(inner) is not None
    for name in ("A", "B"):
        found = await store.get_desktop_by_name(name)
        assert found is not None and await store.delete_desktop(found.id)
    assert await store.delete_ssh_host(inner) == []
    assert await store.delete_ssh_host(inner) is None  # gone: no such host
    assert await store.delete_ssh_host(bastion) == []


async def test_a_desktop_through_a_missing_host_is_not_made(store: SQLiteStore) -> None:
    with pytest.raises(NotFound, match="no SSH host named 'nowhere'"):
        await store.create_desktop("D", "static", "10.0.0.5", 5901, None,
                                   options={"via": "nowhere"})
    assert await store.get_desktop_by_name("D") is None
    await _host(store, "here")
    made = await store.create_desktop("D", "static", "10.0.0.5", 5901, None,
                                      options={"via": "here"})
    assert made.option("via") == "here"
    with pytest.raises(Conflict, match="desktop 'D' already exists"):
        await store.create_desktop("D", "static", "10.0.0.5", 5901, None,
                                   options={"via": "here"})


async def test_deletes_and_adds_from_two_connections_leave_no_desktop_without_its_host(
        store: SQLiteStore) -> None:
    other = SQLiteStore(store.path)  # another process's store (the command line's)
    await other.open()
    try:
        for round_ in range(6):
            name = f"h{round_}"
            host_id = await _host(store, name)

            async def add(i: int, name: str = name) -> str:
                try:
                    await other.create_desktop(f"{name}-d{i}", "static", "10.0.0.5", 5901, None,
                                               options={"via": name})
                    return "added"
                except NotFound:
                    return "refused"

            async def delete(host_id: int = host_id) -> str:
                users = await store.delete_ssh_host(host_id)
                return "gone" if users is None else "kept" if users else "deleted"

            calls = [add(i) if (i + round_) % 2 else delete() for i in range(20)]
            results = await asyncio.gather(*calls)
            host = await store.get_ssh_host(host_id)
            desktops = [d for d in await store.list_desktops() if d.option("via") == name]
            assert (host is None) == ("deleted" in results), results
            if host is None:
                assert desktops == []
            assert len(desktops) == results.count("added")
    finally:
        await other.close()
