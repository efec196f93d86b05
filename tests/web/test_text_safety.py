"""Text from outside cannot forge a log line, an audit line, a CSV row or reorder what a page shows.

A user name typed on the sign-in form, a browser's user agent and an identity provider's error
carry newlines, ANSI escapes and bidi overrides here; the gateway's log, ``deskgate audit``,
the CSV export, the pages and the event streams show them escaped, and the audit chain keeps
(and verifies) the raw values.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import requests
from served import Served, serve, sign_in
from websupport import app_client, base_url, connect, csrf_of, rfb_handshake
from websupport import sign_in as sign_in_async

from gateway.config import Settings
from gateway.keys import STORE
from gateway.textsafe import SafeFormatter, log_handler, visible
from gateway.xdisplay.xvnc import XvncDisplay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from hostile_idp import HostileIdp, hostile_idp  # noqa: E402, F401 (the fixture)

# A line as the log writes them; the sign-in form keeps 64 characters of a user name.
FORGED = "2026-01-01 00:00:00,000 INFO forged"
USER = f"eve\n{FORGED}\r\x1b[2J\u202eevil\u2028\x85"
AGENT = f"Mozilla/5.0\r\n{FORGED}\x1b]0;title\x07\u2066"
# What a header can carry (the gateway refuses ASCII controls in headers): a tab, and UTF-8 for
# a right-to-left override and NEL (a C1 line break).
HEADER_AGENT = "Mozilla/5.0\t\u202eevil\x85x"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@pytest.mark.parametrize("raw,shown", [
    ("a\nb", "a\\nb"), ("a\r\nb", "a\\r\\nb"), ("\tx", "\\tx"), ("\x1b[31m", "\\x1b[31m"),
    ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"), ("\u2028\u2029", "\\u2028\\u2029"),
    ("abc\u202edef", "abc\\u202edef"), ("\u2066\u2069\u200e\u061c", "\\u2066\\u2069\\u200e\\u061c"),
    ("\ud800", "\\ud800"), ("Zoë 東京 café ✓ CORP\\alice", "Zoë 東京 café ✓ CORP\\alice"),
])
def test_visible_shows_control_characters_as_escapes(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def test_a_log_record_is_one_line_whatever_its_arguments() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("deskgate.test.textsafe")
    handler = log_handler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sign-in failed for %s from %s", USER, AGENT)
        try:
            raise ValueError(f"bad value {USER}")
        except ValueError:
            logger.exception("failed: %s", USER)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    records = [ln for ln in lines if not ln.startswith("  ")]
    assert len(records) == 2, lines
    assert all(ln.startswith("  ") for ln in lines[2:]), lines  # the traceback, indented
    assert not any(ln.startswith(FORGED[:10]) for ln in lines), lines
    assert not RAW_CONTROLS.search(stream.getvalue()), stream.getvalue()
    assert "eve\\n2026-01-01" in records[0] and "\\x1b[2J" in records[0]
    assert isinstance(handler.formatter, SafeFormatter)


# a real gateway -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("gateway")) as served:
        yield served


def test_a_forged_user_name_on_the_sign_in_form(gateway: Served) -> None:
    """Unauthenticated: the typed name and the user agent go to the log and the audit raw."""
    stranger = requests.Session()
    csrf = csrf_of(stranger.get(gateway.base + "/login", timeout=10).text)
    resp = stranger.post(gateway.base + "/login", timeout=30,
                         headers={"User-Agent": HEADER_AGENT.encode()},
                         data={"username": USER, "password": "wrong password", "_csrf": csrf})
    assert resp.status_code == 401, resp.text[-1500:]
    admin, _ = sign_in(gateway, gateway.admin_name, gateway.admin_password)
    # The gateway's own log: the forged text is inside one line, escaped.
    log = gateway.log()
    assert not RAW_CONTROLS.search(log), log[-2000:]
    lines = log.splitlines()
    assert not [ln for ln in lines if ln.startswith(FORGED[:19])], log[-2000:]
    failed = [ln for ln in lines if "signin.failed" in ln and "eve" in ln]
    assert len(failed) == 1 and "eve\\n2026-01-01" in failed[0] and "\\u202eevil" in failed[0]

    # deskgate audit: one line per event; the chain still verifies over the raw values.
    verify = gateway.cli("audit", "verify")
    rows = int(re.search(r"(\d+) rows checked", verify).group(1))  # type: ignore[union-attr]
    listing = gateway.cli("audit", "--limit", "100000")
    assert len(listing.splitlines()) == rows, listing
    assert not RAW_CONTROLS.search(listing), listing
    assert "user=eve\\n2026-01-01 00:00:00,000 INFO" in listing
    with sqlite3.connect(gateway.config.parent / "deskgate.db") as db:
        stored = [r[0] for r in db.execute("SELECT user_name FROM audit WHERE user_name LIKE 'eve%'")]
    assert stored == [USER]  # the raw value, as typed

    # The CSV export: one row per event, nothing raw.
    export = admin.get(gateway.base + "/admin/audit.csv", timeout=30).text
    assert not RAW_CONTROLS.search(export.replace("\r\n", "")), export
    parsed = list(csv.reader(io.StringIO(export)))
    assert len(export.split("\r\n")) - 1 == len(parsed) == rows + 1  # header + rows, no breaks
    eve = [r for r in parsed if r[3].startswith("eve")]
    assert len(eve) == 1 and eve[0][3].startswith("eve\\n2026-01-01"), eve

    # The admin's audit page and its filter form (the name in a value attribute).
    page = admin.get(gateway.base + "/admin/audit", params={"user": USER[:64]}, timeout=30).text
    assert not RAW_CONTROLS.search(page), page
    assert "eve\\n2026-01-01" in page and "\\u202eevil" in page


# the identity provider's error, and the dashboard's event stream ----------------------------------
async def test_an_identity_providers_error_is_shown_escaped(
        settings: Settings, hostile_idp: HostileIdp) -> None:  # noqa: F811 (the fixture)
    stream = io.StringIO()
    handler = log_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    client = await app_client(settings, {"boss": True},
                              oidc=(hostile_idp.config(admin_group="admins"),))
    async with client:
        try:
            start = await client.get("/login/oidc/hostile", allow_redirects=False)
            assert start.status == 303, await start.text()
            query = parse_qs(urlsplit(start.headers["Location"]).query)
            callback = query["redirect_uri"][0]
            error = "x\n" + FORGED[:40] + "\x1b[31m\u202e"
            resp = await client.session.get(callback, params={
                "state": query["state"][0], "error": error,
                "error_description": AGENT, "iss": hostile_idp.issuer})
            assert resp.status in (400, 401, 403), await resp.text()
            assert not RAW_CONTROLS.search(await resp.text())
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        rows = await client.server.app[STORE].list_audit(kind="signin.failed")
        raw = [r for r in rows if "x\n2026" in r.detail]
        assert raw, [r.detail for r in rows]  # stored as it came
        base = base_url(client)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
            await sign_in_async(admin, "boss", base=base)
            page = await (await admin.get(base + "/admin/audit")).text()
        assert "x\\n2026-01-01" in page and not RAW_CONTROLS.search(page)
    log = stream.getvalue()
    assert "x\\n2026-01-01" in log and not RAW_CONTROLS.search(log), log
    assert not [ln for ln in log.splitlines() if ln.startswith(FORGED[:19])], log


async def test_the_dashboard_stream_shows_a_user_agent_escaped(
        settings: Settings, desktop: XvncDisplay) -> None:
    client = await app_client(settings, {"alice": False, "boss": True}, desktop=desktop)
    async with client:
        base = base_url(client)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                      headers={"User-Agent": HEADER_AGENT}) as alice:
            await sign_in_async(admin, "boss", base=base)
            csrf = await sign_in_async(alice, "alice", base=base)
            conn = await connect(alice, csrf, base=base)
            async with alice.ws_connect(base + conn["ws_url"], origin=base) as ws:
                await rfb_handshake(ws)
                stream = await admin.get(base + "/admin/sessions/events")
                data = ""
                for _ in range(100):
                    line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
                    if line.startswith("data: ") and conn["session_id"] in line:
                        data = line
                        break
                stream.close()
        assert data, "no snapshot with the live session"
        live = [s for s in json.loads(data[6:])["live"] if s["id"] == conn["session_id"]]
        assert live[0]["user_agent"] == "Mozilla/5.0\\t\\u202eevil\\x85x", live
