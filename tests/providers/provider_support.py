"""Marks and helpers shared by the provider tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

needs_xvnc = pytest.mark.skipif(shutil.which("Xvnc") is None, reason="TigerVNC Xvnc missing")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"
