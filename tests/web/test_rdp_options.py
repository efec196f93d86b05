"""The one RDP option table feeds the checks, the CLI, the API schema and the admin forms: every
option it lists appears in each of them, and a value set through any of them reads back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websupport import Client, app_client, sign_in

from gateway.cli import build_parser
from gateway.config import Settings
from gateway.keys import CATALOG
from gateway.rdp.options import BY_NAME, EDITABLE, OPTIONS, rdp_options


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": True}) as c:
        yield c


def cli_help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return capsys.readouterr().out


def test_every_option_is_checked_and_stored() -> None:
    checked = rdp_options({"username": "anna"})
    assert list(checked) == [o.name for o in OPTIONS]
    assert all(checked[o.name] == o.default for o in OPTIONS if o.name != "username")
    assert set(BY_NAME) == set(checked)


@pytest.mark.parametrize("command", [("desktop", "add"), ("desktop", "set")])
def test_every_option_has_its_flag_on_the_command_line(capsys: pytest.CaptureFixture[str],
                                                       command: tuple[str, ...]) -> None:
    text = cli_help(capsys, *command)
    for option in OPTIONS:
        assert option.cli is not None, option.name
        assert re.search(rf"{re.escape(option.cli.flag)}\b", text), option.cli.flag
        for choice in option.choices if option.cli.switch is None else ():
            assert choice in text, (option.name, choice)


async def test_every_option_is_in_the_api_schema(client: Client) -> None:
    spec: dict[str, Any] = await (await client.get("/api/v1/openapi.json")).json()
    desktop = spec["components"]["schemas"]["Desktop"]["properties"]["rdp"]["properties"]
    path = spec["paths"]["/api/v1/desktops"]["post"]
    create = path["requestBody"]["content"]["application/json"]["schema"]["properties"]["rdp"]
    patch = spec["paths"]["/api/v1/desktops/{id}"]["patch"]
    change = patch["requestBody"]["content"]["application/json"]["schema"]["properties"]["rdp"]
    for option in OPTIONS:
        for schema in (desktop, create["properties"], change["properties"]):
            assert schema[option.name]["description"] == option.help
            assert schema[option.name].get("enum", []) == list(option.choices)
    assert create["additionalProperties"] is False


async def test_every_option_is_on_the_admin_form(client: Client) -> None:
    secrets: dict[str, str] = {}
    csrf = await sign_in(client, "alice", secrets)
    form = await (await client.get("/admin/desktops")).text()
    for option in OPTIONS:
        assert option.form is not None, option.name
        assert f'id="{option.form.id}" name="rdp_{option.name}"' in form, option.name
        assert option.form.label in form
    # Created through the form with every option given, read back as the table checked them.
    resp = await client.post("/admin/desktops", allow_redirects=False, data={
        "_csrf": csrf, "name": "Table VM", "provider": "static", "host": "10.9.8.7",
        "port": "3389", "protocol": "rdp", "rdp_credentials": "shared", "rdp_username": "anna",
        "rdp_domain": "CORP", "rdp_security": "tls", "rdp_cert_policy": "tofu",
        "rdp_cert_fingerprint": "", "rdp_cert_ca": "", "rdp_keyboard_layout": "de"})
    assert resp.status == 303, await resp.text()
    desktop = await client.server.app[CATALOG].desktop_named("Table VM")
    assert dict(desktop.options) == {
        "credentials": "shared", "username": "anna", "domain": "CORP", "security": "tls",
        "cert_policy": "tofu", "cert_fingerprint": "", "cert_ca": "",
        "keyboard_layout": "0x00000407"}
    page = await (await client.get(f"/admin/desktops/{desktop.id}")).text()
    for option in EDITABLE:
        assert option.form is not None
        assert f'id="{option.form.edit_id}" name="rdp_{option.name}"' in page, option.name
    assert '<option value="0x00000407" selected>' in page
