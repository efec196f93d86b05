"""Shared fixtures: a bare configuration, then a store and the use cases built on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Cases, build_cases
from gateway.config import Settings, load_settings, new_secret_key, render_toml
from gateway.store.sqlite import SQLiteStore


def write_config(directory: Path, **values: object) -> Path:
    path = directory / "deskgate.toml"
    base: dict[str, object] = {"data_dir": str(directory), "secret_key": new_secret_key()}
    base.update(values)
    path.write_text(render_toml(base))
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path), env={})


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(settings.database_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def cases(settings: Settings, store: SQLiteStore) -> Cases:
    return build_cases(settings, store)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API keeps an event loop running on the main
    thread for as long as its session-scoped browser lives, which async tests cannot share."""
    browser = Path(__file__).parent / "e2e"
    for item in items:  # every test in tests/e2e is a browser test, marked or not
        if item.path.is_relative_to(browser) and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
