"""Reading what a request carries: JSON bodies, forms, whole numbers. One place for all handlers.

Whatever a client sends, the answer to bad input is a ``BadRequest`` (400) or ``NotFound`` (404)
with a reason, never a 500: an unknown charset, bytes that are not UTF-8, JSON nested deeper
than any real request, lone surrogates (which no store or terminal can encode), numbers beyond
64 bits (SQLite's INTEGER) or not finite. Values that pass are safe to hand to the layers below.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from ..errors import BadRequest, NotFound

# The range of SQLite's INTEGER: ids, limits and every JSON number that is a whole number.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# Deeper than any request of ours; far below the interpreter's recursion limit.
MAX_DEPTH = 32
# A 64-bit whole number has at most 20 characters (sign included); longer is refused unread.
_MAX_INT_CHARS = 24


def parse_int(raw: str, what: str, low: int = INT_MIN, high: int = INT_MAX) -> int:
    """``raw`` as a whole number from ``low`` to ``high``, else BadRequest naming ``what``."""
    text = raw.strip()
    try:
        if len(text) > _MAX_INT_CHARS or not text.lstrip("+-").isdigit():
            raise ValueError(text)
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
    except ValueError:
        bounds = ("that fits in 64 bits" if (low, high) == (INT_MIN, INT_MAX)
                  else f"from {low} to {high}")
        raise BadRequest(f"{what} must be a whole number {bounds}") from None
    return value


def path_id(request: web.Request, key: str, what: str) -> int:
    """An id in the path: an id that is not a whole number in range names nothing (404)."""
    try:
        return parse_int(request.match_info[key], what, 0)
    except BadRequest:
        raise NotFound(f"no such {what}") from None


def query_int(request: web.Request, name: str, low: int = INT_MIN,
              high: int = INT_MAX) -> int | None:
    """A whole-number query parameter, or None when it is absent or empty."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return parse_int(raw, name, low, high)


def parse_time(raw: str, what: str, *, epoch_seconds: bool = False) -> float | None:
    """A moment as seconds since the epoch, or None when ``raw`` is empty: an ISO 8601 date or
    date-time (UTC unless it says otherwise; a form's ``datetime-local`` is one) or, with
    ``epoch_seconds`` (the API), a number of seconds since the epoch. Else BadRequest naming
    ``what``."""
    if not raw:
        return None
    if epoch_seconds:
        with contextlib.suppress(ValueError):
            return float(raw)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        expected = ("be ISO 8601 or seconds since the epoch" if epoch_seconds
                    else "look like 2025-01-31T13:45")
        raise BadRequest(f"{what} must {expected}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def header_text(request: web.Request, name: str, limit: int = 300) -> str:
    """A header's value as text that any store or terminal can encode: aiohttp keeps bytes that
    are not UTF-8 as lone surrogates; they become U+FFFD here."""
    value = request.headers.get(name, "")[:limit]
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def _text(request: web.Request) -> str:
    """The body decoded with its declared charset (UTF-8 when none is declared)."""
    raw = await request.read()  # bounded by the application's client_max_size (413)
    charset = request.charset or "utf-8"
    try:
        return raw.decode(charset)
    except LookupError:
        raise BadRequest(f"unknown charset {charset[:32]!r}") from None
    except UnicodeDecodeError:
        raise BadRequest(f"the body is not valid {charset[:32]}") from None


def _constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number")


def _check(value: Any, depth: int = 0) -> None:
    """Refuse what json.loads lets through and no layer below can take."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"JSON nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("JSON strings must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise BadRequest("whole numbers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


async def json_body(request: web.Request) -> Any:
    """The body as JSON (any JSON value), checked by ``_check``; BadRequest when it is not."""
    text = await _text(request)
    try:
        value = json.loads(text, parse_constant=_constant)
    except RecursionError:
        raise BadRequest(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    _check(value)
    return value


async def json_object(request: web.Request, *, empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object; with ``empty``, no body at all reads as ``{}``."""
    if empty and not request.can_read_body:
        return {}
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def form_fields(request: web.Request) -> dict[str, str]:
    """A form's text fields (files are ignored); BadRequest when the form cannot be decoded."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError; LookupError: charset
        raise BadRequest("the form is not valid UTF-8") from None
    except BadHttpMessage:  # a multipart form whose parts are broken
        raise BadRequest("the form is malformed") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    for value in (*fields, *fields.values()):
        _check(value)
    return fields
