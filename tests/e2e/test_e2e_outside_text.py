"""What people see in Chromium: an admin reading the audit trail after a forged sign-in, and a
person opening a desktop id that is not theirs (the same page as one that does not exist)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_support import ARTIFACTS, VIEWPORT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from served import Served, serve, sign_in  # noqa: E402
from websupport import PASSWORD, csrf_of  # noqa: E402

from gateway.textsafe import visible  # noqa: E402

pytestmark = pytest.mark.e2e

USER = "eve\n2026-01-01 00:00:00,000 INFO forged\r\x1b[2J\u202enimda"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("gateway")) as gateway:
        yield gateway


def page_as(browser: Any, served: Served, name: str, password: str) -> Any:
    """A page whose context carries the session of ``name`` signed in with both factors."""
    http, _ = sign_in(served, name, password)
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.add_cookies([{"name": c.name, "value": c.value or "", "url": served.base}
                     for c in http.cookies])
    return ctx.new_page()


def test_the_admin_reads_a_forged_user_name_escaped(browser: Any, served: Served) -> None:
    stranger = requests.Session()
    csrf = csrf_of(stranger.get(served.base + "/login", timeout=10).text)
    stranger.post(served.base + "/login", timeout=30,
                  data={"username": USER, "password": "wrong password", "_csrf": csrf})
    page = page_as(browser, served, served.admin_name, served.admin_password)
    try:
        page.goto(served.base + "/admin/audit?kind=signin.failed")
        rows = page.locator("tbody tr")
        forged = [i for i in range(rows.count())
                  if rows.nth(i).locator("td").nth(3).inner_text().startswith("eve")]
        assert len(forged) == 1, rows.all_inner_texts()
        row = rows.nth(forged[0])
        cells = row.locator("td").all_inner_texts()
        # The user cell reads exactly as typed, control characters spelled out: the override
        # does not turn "nimda" into "admin", the newline does not start a second row.
        assert cells[3] == visible(USER), cells
        assert "\\u202enimda" in cells[3] and "\\n2026-01-01" in cells[3]
        ARTIFACTS.mkdir(exist_ok=True)
        row.screenshot(path=str(ARTIFACTS / "audit-forged-user-name.png"))
        assert "\n" not in cells[3]  # one line of text in one row
    finally:
        page.context.close()


def test_a_desktop_that_is_not_yours_looks_like_none_at_all(browser: Any,
                                                            served: Served) -> None:
    page = page_as(browser, served, "alice", PASSWORD)
    try:
        seen = []
        for desktop_id in (served.desktops["Theirs"], 987654):
            resp = page.goto(f"{served.base}/desktops/{desktop_id}")
            assert resp is not None
            heading = page.locator("#error-heading").inner_text()
            seen.append((resp.status, heading, page.locator("main").inner_text(),
                         page.screenshot(full_page=True)))
        assert seen[0][:3] == seen[1][:3], seen
        assert seen[0][0] == 404 and seen[0][1].lower() == "no such desktop"
        assert seen[0][3] == seen[1][3]  # pixel for pixel
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "desktop-not-yours.png").write_bytes(seen[0][3])
        mine = page.goto(f"{served.base}/desktops/{served.desktops['Mine']}")
        assert mine is not None and mine.status == 200
        assert re.search("Mine", page.title())
    finally:
        page.context.close()
