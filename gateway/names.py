"""User names: the key under which they must be unique, so that look-alikes are one name.

``Admin``, ``ADMIN``, ``аdmin`` (Cyrillic а) and ``ａｄｍｉｎ`` (full width) all read as ``admin`` to
a person choosing whom to give a desktop. Their key is the same: Unicode NFKC with case folding
(so compatibility forms and case do not count), then the UTS #39 confusable *skeleton* computed by
ICU's spoof checker (so letters of other scripts that look like Latin ones do not count either;
``rn`` and ``m`` share a skeleton too). ICU is the reference implementation of UTS #39 and brings
Unicode's confusables data with it; nothing here is a hand-made table.
"""

from __future__ import annotations

import unicodedata

import icu

_SPOOF = icu.SpoofChecker()


def name_key(name: str) -> str:
    """The uniqueness key of a user name: NFKC_Casefold, then the UTS #39 skeleton."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    skeleton = str(_SPOOF.getSkeleton(0, folded))  # the type argument is ignored since ICU 58
    return unicodedata.normalize("NFKC", skeleton.casefold())
