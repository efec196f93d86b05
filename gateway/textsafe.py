"""Text from outside, made safe to print: control characters are shown, never obeyed (CWE-117).

User names, user agents, desktop names, an identity provider's error texts and claims are stored
as they came (the audit chain hashes the raw values). Wherever such text is printed or exported
(the gateway's log, ``deskgate audit``, the audit CSV, pages, server-sent events), ``visible``
writes each control character as an escape a person can read: a newline as the two characters
``\\n``, ESC as ``\\x1b``, a right-to-left override as ``\\u202e``. One record stays one line, a
terminal runs no escape sequence, and no text is silently reordered or hidden.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import markupsafe
from aiohttp.http_exceptions import BadHttpMessage

# C0 controls and DEL, C1 controls (NEL among them), the Arabic letter mark, the bidi marks,
# embeddings, overrides and isolates, the line and paragraph separators, and lone surrogates
# (which cannot even be encoded for a terminal or a file).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character written as a visible escape (see the module)."""
    return _UNSAFE.sub(_escape, text)


def visible_lines(text: str) -> str:
    """Like ``visible`` but keeps line breaks: for multi-line text that is meant to be so (a PEM
    certificate in a form field). Use only where a line break cannot forge anything."""
    return "\n".join(visible(line) for line in text.replace("\r\n", "\n").split("\n"))


def visible_data(value: Any) -> Any:
    """Every string in a JSON-like value (dicts, lists, scalars) made ``visible``: keys too."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, Mapping):
        return {visible_data(k): visible_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_data(v) for v in value]
    return value


def page_value(value: Any) -> Any:
    """Jinja's ``finalize``: every ``{{ … }}`` of a page shows control characters visibly, before
    autoescaping. Markup (our own HTML) passes as it is."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return visible(value)
    return value


def multiline(value: str | None) -> markupsafe.Markup:
    """A Jinja filter for multi-line form values: escaped, line breaks kept."""
    return markupsafe.Markup(markupsafe.escape(visible_lines(value or "")))  # noqa: S704


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    """A log formatter whose every record is one line, whatever its arguments hold.

    The message (format string and arguments alike) is made ``visible``. A traceback keeps its
    lines, each one ``visible`` and indented, so that no line of it can pass for a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        # Another handler may have cached its own (unindented) traceback text on the record.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + visible(line) for line in text.split("\n"))


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a header line too long, a bad method or
    header) as an ERROR with a traceback: that is the client's mistake, already answered 400.
    Such records become one INFO line saying what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and isinstance(exc, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: malformed request ({type(exc).__name__}), answered 400"
            record.exc_info, record.exc_text = None, None
        return True


def log_handler(stream: Any = None) -> logging.Handler:
    """The gateway's log handler: standard error (or ``stream``), through ``SafeFormatter``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    handler.addFilter(MalformedRequests())
    return handler
