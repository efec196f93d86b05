"""Fixtures for the use case tests: the controllable identity provider of the auth tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "auth"))

from hostile_idp import hostile_idp  # noqa: E402 (found through the path just added)

__all__ = ["hostile_idp"]
