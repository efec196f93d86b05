"""Tests of hosts reached only through SSH (see tests/sshhosts.py).

asyncssh's import warns (CryptographyDeprecationWarning about DSA) and this project's pytest
turns warnings into errors: import it here once, with that warning ignored, so that test
modules import it from the cache silently."""

from __future__ import annotations

import contextlib
import warnings

with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh  # noqa: F401
