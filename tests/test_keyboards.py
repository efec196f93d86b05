"""Keyboard layout names and ids for RDP desktops."""

from __future__ import annotations

import pytest

from gateway.keyboards import DEFAULT_LAYOUT, LAYOUTS, describe, klid, layout_of, parse_layout


@pytest.mark.parametrize(("text", "expected"), [
    ("de", 0x407), ("DE", 0x407), (" ch-de ", 0x807), ("0x00000407", 0x407), ("00000407", 0x407),
    ("407", 0x407), ("0x00020409", 0x20409), ("0xB0000407", 0xB0000407),
])  # fmt: skip
def test_names_and_hex_ids(text: str, expected: int) -> None:
    assert parse_layout(text) == expected


@pytest.mark.parametrize("text", ["", "0", "0x0", "german", "0x123456789", "0x-407", "de;rm", "4O7"])
def test_anything_else_is_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="not a known name .*0x00000407"):
        parse_layout(text)


def test_canonical_text_and_description() -> None:
    assert klid(0x40C) == "0x0000040C"
    assert layout_of("") == DEFAULT_LAYOUT == LAYOUTS["us"][0]
    assert describe("") == "English (United States) (0x00000409)"
    assert describe("0x00000407") == "German (0x00000407)"
    assert describe("0x00010407") == "0x00010407"  # a valid id without a name here
    assert len({code for code, _ in LAYOUTS.values()}) == len(LAYOUTS)  # one name per id
