"""Log lines that say what they are about: ``[desktop=win10] started display :21``."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class TaggedLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with its ``extra`` as ``[key=value ...]``, e.g.
    ``TaggedLog(log, {"bridge": key})`` writes ``[bridge=<key>] ...``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        tags = " ".join(f"{key}={value}" for key, value in (self.extra or {}).items())
        return f"[{tags}] {msg}", kwargs
