"""The usage page of desktop VMs, its CSV export and GET /api/v1/usage through the real app: they
agree on the same data, they are for admins only, and a period that is none is a 400 with its
reason. And the month's usage per desktop VM in the metrics."""

from __future__ import annotations

import calendar
import csv
import html
import io
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websupport import Client, app_client, sign_in

from gateway.cases.usage import PERIOD_RULE
from gateway.config import Settings
from gateway.keys import METRICS, STORE
from gateway.metrics import VM_USAGE_SECONDS
from gateway.model import (
    ALWAYS_ON,
    AUTO_STOP,
    Bundle,
    Desktop,
    DesktopVm,
    Secret,
    Session,
    SessionState,
)
from gateway.store.sqlite import SQLiteStore

PERIOD = "2024-05"  # over: its figures no longer move; 31 days, so an AlwaysOn day costs 1.0


def at(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M")))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"root": True, "ann": False}) as c:
        yield c


@pytest.fixture
async def other(client: Client) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def vm(store: SQLiteStore, name: str, mode: str = AUTO_STOP) -> Desktop:
    bundle = await store.get_bundle_by_name("small") or await store.create_bundle(
        Bundle(0, "small", 1, 1024, 1024, 1024, "/base.qcow2", hourly_rate=0.5,
               monthly_rate=31.0))
    return await store.create_desktop_vm(name, DesktopVm(0, bundle, "default", "stopped", "",
                                                         0.0, mode))


async def ran(store: SQLiteStore, d: Desktop, start: str, end: str, mode: str = AUTO_STOP) -> None:
    assert await store.open_vm_run(d.id, d.name, at(start), mode, 0.5, 31.0)
    assert await store.close_vm_run(d.id, at(end))


async def scene(store: SQLiteStore) -> None:
    """ann's AutoStop desktop (4 h, 1.5 h of them connected), an AlwaysOn one for two days, and
    one whose name a spreadsheet would run as a formula."""
    ann = await store.get_user_by_name("ann")
    assert ann is not None
    mine = await vm(store, "vm-ann")
    always = await vm(store, "vm-always", ALWAYS_ON)
    formula = await vm(store, "=SUM(A1)")
    await store.assign(mine.id, ann.id)
    await ran(store, mine, "2024-05-03 08:00", "2024-05-03 12:00")
    await ran(store, always, "2024-05-10 00:00", "2024-05-12 00:00", ALWAYS_ON)
    await ran(store, formula, "2024-05-04 10:00", "2024-05-04 11:00")
    await store.create_session(Session("s1", ann.id, mine.id, "ws", SessionState.CLOSED,
                                       at("2024-05-03 09:00"), at("2024-05-03 10:30")))


def chart_of(page: str) -> dict[str, Any]:
    found = re.search(r'data-series="([^"]*)"', page)
    assert found, "the page carries its chart's figures"
    data: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return data


def table_rows(page: str, table_id: str) -> list[list[str]]:
    body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", " ", c)).split("  ")[0].strip()
             for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)[1:]]


async def test_the_page_the_csv_and_the_api_agree(client: Client) -> None:
    await sign_in(client, "root")
    await scene(client.server.app[STORE])

    resp = await client.get("/admin/usage", params={"period": PERIOD})
    page = await resp.text()
    assert resp.status == 200
    assert '<a href="/admin/usage">Usage</a>' in page  # in the admin navigation
    resp = await client.get("/api/v1/usage", params={"period": PERIOD})
    assert resp.status == 200
    api = await resp.json()
    resp = await client.get("/admin/usage.csv", params={"period": PERIOD})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="deskgate-usage-{PERIOD}.csv"')
    rows = list(csv.DictReader(io.StringIO(await resp.text())))

    # The API: totals, per desktop, per person, the series.
    assert (api["period"], api["by"], len(api["series"])) == (PERIOD, "day", 31)
    assert api["totals"] == {"running_hours": 53.0, "connected_hours": 1.5, "cost": 33.5}
    desktops = {d["name"]: d for d in api["desktops"]}
    assert {n: (d["running_hours"], d["connected_hours"], d["cost"], d["mode"])
            for n, d in desktops.items()} == {
        "=SUM(A1)": (1.0, 0.0, 0.5, AUTO_STOP), "vm-always": (48.0, 0.0, 31.0, ALWAYS_ON),
        "vm-ann": (4.0, 1.5, 2.0, AUTO_STOP)}
    assert desktops["vm-always"]["always_on_months"] == [PERIOD]
    assert desktops["vm-ann"]["users"] == ["ann"]
    assert [(u["name"], u["desktops"], u["running_hours"], u["connected_hours"], u["cost"])
            for u in api["users"]] == [("ann", ["vm-ann"], 4.0, 1.5, 2.0)]

    # The CSV: one row per desktop and day, the same figures as the API's series.
    assert list(rows[0]) == ["date", "desktop", "running_hours", "connected_hours", "mode",
                             "cost"]
    assert len(rows) == 31 * 3
    names = {"'=SUM(A1)": "=SUM(A1)", "vm-always": "vm-always", "vm-ann": "vm-ann"}
    assert {r["desktop"] for r in rows} == set(names)  # the formula is defused
    labels = [s["label"] for s in api["series"]]
    for r in rows:
        cell = desktops[names[r["desktop"]]]["series"][labels.index(r["date"])]
        assert float(r["running_hours"]) == pytest.approx(cell["running_hours"], abs=1e-6)
        assert float(r["connected_hours"]) == pytest.approx(cell["connected_hours"], abs=1e-6)
        assert float(r["cost"]) == pytest.approx(cell["cost"], abs=1e-6)
        assert r["mode"] == "+".join(cell["modes"])
    always_days = {r["date"]: (r["running_hours"], r["mode"], r["cost"])
                   for r in rows if r["desktop"] == "vm-always" and float(r["running_hours"])}
    assert always_days == {"2024-05-10": ("24.000000", ALWAYS_ON, "1.000000"),
                           "2024-05-11": ("24.000000", ALWAYS_ON, "1.000000")}
    for name, d in desktops.items():
        mine = [r for r in rows if names[r["desktop"]] == name]
        assert sum(float(r["running_hours"]) for r in mine) == pytest.approx(d["running_hours"])

    # The page: its totals, its tables and its chart's figures are the API's.
    assert re.search(r'id="total-running">53\.00<', page)
    assert re.search(r'id="total-connected">1\.50<', page)
    assert re.search(r'id="total-cost">33\.50<', page)
    assert table_rows(page, "usage-desktops") == [
        ["=SUM(A1)", "small", "AutoStop", "", "1.00", "0.00", "0.50"],
        ["vm-always", "small", "AlwaysOn", "", "48.00", "0.00", "31.00"],
        ["vm-ann", "small", "AutoStop", "ann", "4.00", "1.50", "2.00"]]
    assert table_rows(page, "usage-users") == [["ann", "vm-ann", "4.00", "1.50", "2.00"]]
    by_day = table_rows(page, "usage-by-span")
    assert len(by_day) == 31
    assert by_day[2] == ["2024-05-03", "4.00", "1.50", "2.00"]
    assert by_day[9] == ["2024-05-10", "24.00", "0.00", "1.00"]
    chart = chart_of(page)
    assert chart["labels"] == labels
    assert chart["running"] == [s["running_hours"] for s in api["series"]]
    assert chart["connected"] == [s["connected_hours"] for s in api["series"]]
    assert chart["cost"] == [s["cost"] for s in api["series"]]
    assert "Per person" in page and "assigned to them directly" in page
    # The chart's library comes from npm's package, served beside noVNC.
    assert '<script src="/chartjs/chart.umd.min.js"></script>' in page
    resp = await client.get("/chartjs/chart.umd.min.js")
    assert resp.status == 200 and "Chart" in await resp.text()

    # A year: by month, May's bill as the month's total.
    year = await (await client.get("/api/v1/usage", params={"period": "2024"})).json()
    assert (year["by"], len(year["series"])) == ("month", 12)
    assert year["series"][4] == {"label": PERIOD, "start": at("2024-05-01 00:00"),
                                 "end": at("2024-06-01 00:00"), "running_hours": 53.0,
                                 "connected_hours": 1.5, "cost": 33.5}
    assert year["totals"] == api["totals"]
    year_rows = list(csv.DictReader(io.StringIO(
        await (await client.get("/admin/usage.csv", params={"period": "2024"})).text())))
    assert len(year_rows) == 12 * 3
    assert {r["cost"] for r in year_rows if r["desktop"] == "vm-always" and
            r["date"] == PERIOD} == {"31.000000"}


async def test_this_month_when_no_period_is_given(client: Client) -> None:
    await sign_in(client, "root")
    month = time.strftime("%Y-%m", time.gmtime())
    page = await (await client.get("/admin/usage")).text()
    assert f'name="period" type="text" value="{month}"' in page
    assert (await (await client.get("/api/v1/usage")).json())["period"] == month


@pytest.mark.parametrize("period", ["2024-13", "24-05", "2024-05-01", "x" * 500, "1969"])
async def test_a_period_that_is_none_is_a_400_with_the_reason(client: Client,
                                                            period: str) -> None:
    await sign_in(client, "root")
    resp = await client.get("/admin/usage", params={"period": period})
    page = await resp.text()
    assert resp.status == 400
    assert html.escape(PERIOD_RULE, quote=False) in page
    assert "x" * 40 not in page  # what was typed is not shown back at length
    resp = await client.get("/admin/usage.csv", params={"period": period})
    assert resp.status == 400 and resp.content_type != "text/csv"
    resp = await client.get("/api/v1/usage", params={"period": period})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(PERIOD_RULE)


async def test_usage_is_for_admins_only(client: Client, other: aiohttp.ClientSession) -> None:
    paths = ("/admin/usage", f"/admin/usage?period={PERIOD}", f"/admin/usage.csv?period={PERIOD}")
    for path in paths:  # nobody signed in
        resp = await other.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login", path
    resp = await other.get("/api/v1/usage")
    assert resp.status == 401
    await sign_in(other, "ann")
    for path in paths:
        resp = await other.get(path, allow_redirects=False)
        assert resp.status == 403, path
        assert "total-cost" not in await resp.text() and "date,desktop" not in await resp.text()
    resp = await other.get("/api/v1/usage")
    assert resp.status == 403
    denied = await client.server.app[STORE].list_audit(kind="admin.denied", limit=10)
    assert {e.user for e in denied} == {"ann"} and len(denied) == len(paths) + 1


async def test_metrics_show_this_months_usage_per_desktop_vm_and_vms_by_state(
        settings: Settings) -> None:
    token = "metrics-token-for-usage-tests-0123456789"
    headers = {"Authorization": f"Bearer {token}"}
    async with await app_client(settings, metrics_token=Secret(token)) as client:
        store = client.server.app[STORE]
        metrics = client.server.app[METRICS]
        now = time.time()
        month = time.gmtime(now)
        month_start = float(calendar.timegm((month.tm_year, month.tm_mon, 1, 0, 0, 0)))
        started, ended = max(month_start, now - 7200), now - 1
        auto = await vm(store, "vm-auto")
        always = await vm(store, "vm-always", ALWAYS_ON)
        assert await store.move_vm_state(always.id, ["stopped"], "running", "", now)
        assert await store.open_vm_run(auto.id, auto.name, started, AUTO_STOP, 0.5, 31.0)
        assert await store.close_vm_run(auto.id, ended)
        assert await store.open_vm_run(always.id, always.name, started, ALWAYS_ON, 0.5, 31.0)

        async def scrape() -> str:
            resp = await client.get("/metrics", headers=headers)
            assert resp.status == 200
            return await resp.text()

        text = await scrape()
        hours = (ended - started) / 3600
        auto_labels = f'{{desktop="vm-auto",desktop_id="{auto.id}"}}'
        always_labels = f'{{desktop="vm-always",desktop_id="{always.id}"}}'
        assert value(text, f"deskgate_vm_running_hours{auto_labels}") == pytest.approx(hours)
        assert value(text, f"deskgate_vm_cost{auto_labels}") == pytest.approx(hours * 0.5)
        assert value(text, f"deskgate_vm_cost{always_labels}") == 31.0
        assert value(text, 'deskgate_desktop_vms{state="running"}') == 1
        assert value(text, 'deskgate_desktop_vms{state="stopped"}') == 1
        assert value(text, 'deskgate_desktop_vms{state="error"}') == 0

        # Bounded work: the month's usage is read again only once its reading has aged.
        await store.close_vm_run(always.id, now)
        assert await store.move_vm_state(auto.id, ["stopped"], "error", "", now)
        assert await store.open_vm_run(auto.id, auto.name, ended, AUTO_STOP, 0.5, 31.0)
        assert await store.close_vm_run(auto.id, ended + 0.5)
        text = await scrape()
        assert value(text, f"deskgate_vm_running_hours{auto_labels}") == pytest.approx(hours)
        assert value(text, 'deskgate_desktop_vms{state="error"}') == 1  # states: every scrape
        metrics.vm_usage_read -= VM_USAGE_SECONDS
        text = await scrape()
        assert value(text, f"deskgate_vm_running_hours{auto_labels}") == pytest.approx(
            hours + 0.5 / 3600)


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))
