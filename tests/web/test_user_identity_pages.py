"""The admin pages say who an account really is: its identity provider (and subject) next to
single sign-on users, so that ``admin`` and an impostor's ``admin@evil`` are told apart."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from websupport import Client, app_client, sign_in

from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.keys import CATALOG, STORE


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": True, "admin": False}) as c:
        yield c


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


async def test_desktop_and_user_pages_show_the_provider_of_sso_users(client: Client) -> None:
    store = client.server.app[STORE]
    impostor = await store.create_user("admin@evil", None, False, source="evil")
    await store.link_identity("evil", "evil-subject-1", impostor.id)
    desktop = await client.server.app[CATALOG].add_desktop(Actor.cli(), "Lab", "static",
                                                           host="127.0.0.1", port=5999)
    await store.assign(desktop.id, impostor.id)
    await sign_in(client, "alice", {})

    page = await (await client.get(f"/admin/desktops/{desktop.id}")).text()
    assigned = re.search(r'<ul class="item-list" id="assigned-users">(.*?)</ul>', page, re.S)
    assert assigned and text(assigned.group(1)).startswith("admin@evil evil")
    options = re.findall(r'<option value="\d+">([^<]*)</option>', page)
    assert "admin (local)" in options and "alice (local)" in options

    page = await (await client.get(f"/admin/users/{impostor.id}")).text()
    source = re.search(r'<dd id="user-source">(.*?)</dd>', page, re.S)
    assert source and text(source.group(1)) == "identity provider evil , subject evil-subject-1"
    local = await store.get_user_by_name("admin")
    assert local is not None
    page = await (await client.get(f"/admin/users/{local.id}")).text()
    source = re.search(r'<dd id="user-source">(.*?)</dd>', page, re.S)
    assert source and text(source.group(1)) == "local account"
