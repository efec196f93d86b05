"""Every setting and every CLI command is documented in README.md."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import SECTIONS, OidcProviderConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("section,key", [(s, k) for s, keys in SECTIONS.items() for k in keys])
def test_setting_is_documented(section: str, key: str) -> None:
    assert f"| {section} | `{key}` |" in README


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(OidcProviderConfig)
                                 if f.name != "id"])
def test_oidc_setting_is_documented(key: str) -> None:
    assert f"| oidc.ID | `{key}` |" in README


def _commands(parser: argparse.ArgumentParser, prefix: str = "deskgate") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found.extend(_commands(sub, f"{prefix} {name}"))
    return found


@pytest.mark.parametrize("command", _commands(build_parser()))
def test_command_is_documented(command: str) -> None:
    assert f"`{command}" in README or f"{command} " in README


def test_keyboard_layout_names_are_documented() -> None:
    from gateway.keyboards import LAYOUTS

    missing = [name for name in LAYOUTS if f"`{name}`" not in README]
    assert missing == []
