"""The shared readers of request input that need no request: times and window sizes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import BadRequest
from gateway.model import WINDOW_MAX, WINDOW_MIN, window_size
from gateway.web.inputs import parse_time

NOON = datetime(2025, 1, 31, 12, 0, tzinfo=UTC).timestamp()


def test_parse_time_reads_iso_8601_as_utc_unless_it_says_otherwise() -> None:
    for epoch_seconds in (False, True):
        assert parse_time("2025-01-31T12:00", "from", epoch_seconds=epoch_seconds) == NOON
        assert parse_time("2025-01-31T12:00Z", "from", epoch_seconds=epoch_seconds) == NOON
        assert parse_time("2025-01-31T13:00+01:00", "from", epoch_seconds=epoch_seconds) == NOON
        assert parse_time("2025-01-31", "from", epoch_seconds=epoch_seconds) == NOON - 12 * 3600
        assert parse_time("", "from", epoch_seconds=epoch_seconds) is None


def test_parse_time_takes_epoch_seconds_only_where_asked() -> None:
    assert parse_time(str(NOON), "since", epoch_seconds=True) == NOON
    assert parse_time("12.5", "since", epoch_seconds=True) == 12.5
    with pytest.raises(BadRequest, match=r"^from must look like 2025-01-31T13:45$"):
        parse_time("12.5", "from")


def test_parse_time_names_the_field_and_the_expected_form() -> None:
    with pytest.raises(BadRequest, match=r"^since must be ISO 8601 or seconds since the epoch$"):
        parse_time("yesterday", "since", epoch_seconds=True)
    with pytest.raises(BadRequest, match=r"^before must look like 2025-01-31T13:45$"):
        parse_time("yesterday", "before")


def test_window_size_bounds() -> None:
    assert (WINDOW_MIN, WINDOW_MAX) == (16, 8192)
    assert window_size(16, 8192) == (16, 8192)
    assert window_size(1280, 800) == (1280, 800)
    for width, height in ((15, 800), (1280, 8193), (0, 0), (-1, 800), (1280, 15)):
        assert window_size(width, height) is None
