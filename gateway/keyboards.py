"""Keyboard layouts an RDP desktop can ask its server for.

The browser sends scancodes (the key's position, not its character), the bridge passes them on,
and the RDP server turns them into characters with the keyboard layout the client announced when
it connected. That layout is a per-desktop setting: a German Windows desktop wants 0x00000407,
so that the key right of T gives "z", AltGr+Q gives "@" and the key left of 1 is the dead "^".

Layouts are Microsoft keyboard layout identifiers (KLIDs), as FreeRDP's ``/kbd`` takes them.
The short names below cover the usual ones; any other KLID can be given in hexadecimal.
"""

from __future__ import annotations

import re

DEFAULT_LAYOUT = 0x00000409

# short name -> (KLID, the name people know it by)
LAYOUTS: dict[str, tuple[int, str]] = {
    "us": (0x00000409, "English (United States)"),
    "us-intl": (0x00020409, "English (United States, international)"),
    "gb": (0x00000809, "English (United Kingdom)"),
    "de": (0x00000407, "German"),
    "ch-de": (0x00000807, "German (Switzerland)"),
    "fr": (0x0000040C, "French"),
    "be-fr": (0x0000080C, "French (Belgium)"),
    "ch-fr": (0x0000100C, "French (Switzerland)"),
    "ca-fr": (0x00001009, "French (Canada)"),
    "be": (0x00000813, "Belgian (period)"),
    "nl": (0x00000413, "Dutch"),
    "es": (0x0000040A, "Spanish"),
    "pt": (0x00000816, "Portuguese"),
    "br": (0x00000416, "Portuguese (Brazil, ABNT)"),
    "it": (0x00000410, "Italian"),
    "dk": (0x00000406, "Danish"),
    "no": (0x00000414, "Norwegian"),
    "se": (0x0000041D, "Swedish"),
    "fi": (0x0000040B, "Finnish"),
    "pl": (0x00000415, "Polish (programmers)"),
    "cz": (0x00000405, "Czech"),
    "hu": (0x0000040E, "Hungarian"),
    "tr": (0x0000041F, "Turkish (Q)"),
    "ru": (0x00000419, "Russian"),
    "jp": (0x00000411, "Japanese"),
    "kr": (0x00000412, "Korean"),
}

_HEX_RE = re.compile(r"(?:0x)?([0-9a-f]{1,8})")


def parse_layout(value: str) -> int:
    """A short name from ``LAYOUTS`` or a hexadecimal KLID ("0x00000407", "00000407", "407")
    as an int; ValueError names what is accepted."""
    text = value.strip().lower()
    if text in LAYOUTS:
        return LAYOUTS[text][0]
    m = _HEX_RE.fullmatch(text)
    if m and int(m.group(1), 16) > 0:
        return int(m.group(1), 16)
    raise ValueError(f"keyboard layout {value.strip()[:32]!r} is not a known name"
                     f" ({', '.join(LAYOUTS)}) nor a hexadecimal layout id such as 0x00000407")


def layout_of(stored: str) -> int:
    """The layout id of a desktop's stored option ("" = the default)."""
    return parse_layout(stored) if stored else DEFAULT_LAYOUT


def klid(layout: int) -> str:
    """The canonical text of a layout id: ``0x00000407``."""
    return f"0x{layout:08X}"


def describe(value: str) -> str:
    """What the admin pages show for a stored layout ("" = the default)."""
    layout = layout_of(value)
    names = [label for code, label in LAYOUTS.values() if code == layout]
    return f"{names[0]} ({klid(layout)})" if names else klid(layout)
