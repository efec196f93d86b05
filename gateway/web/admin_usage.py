"""The admin usage page of desktop VMs and its CSV export, over the usage report
(gateway/cases/usage.py); served by the admin sub-application, whose middleware lets only a
signed-in admin through. The API's ``GET /api/v1/usage`` (api_usage.py) answers from the same
report, so the page, the export and the API agree."""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from ..cases.usage import PERIOD_RULE, UsageReport
from ..errors import GatewayError
from ..keys import USAGE
from ..model import MODE_NAMES
from .admin_pages import csv_cell as cell
from .api_usage import DIGITS, period_of
from .common import render

routes = web.RouteTableDef()

CSV_COLUMNS = ("date", "desktop", "running_hours", "connected_hours", "mode", "cost")
MODE_WORDS = MODE_NAMES


def hours(value: float) -> str:
    return f"{value:,.2f}"


def money(value: float) -> str:
    return f"{value:,.2f}"


def modes(names: tuple[str, ...]) -> str:
    return " + ".join(MODE_WORDS.get(n, n) for n in names)


def chart_data(r: UsageReport) -> dict[str, Any]:
    """What static/usage.js draws: the period's series, all desktop VMs together."""
    return {"by": r.by, "labels": [s.label for s in r.spans],
            "running": [round(t.running_hours, 4) for t in r.span_totals],
            "connected": [round(t.connected_hours, 4) for t in r.span_totals],
            "cost": [round(t.cost, 4) for t in r.span_totals]}


@routes.get("/usage")
async def usage_page(request: web.Request) -> web.StreamResponse:
    usage = request.config_dict[USAGE]
    period = period_of(request, usage)
    try:
        report = await usage.report(period)
    except GatewayError as exc:
        return render(request, "admin_usage.html", http_status=exc.http_status,
                      error=exc.reason, report=None, period=period[:32],
                      this_month=usage.current_month(), rule=PERIOD_RULE)
    begun = sum(1 for s in report.spans if s.start < report.as_of)  # rows up to today
    return render(request, "admin_usage.html", report=report, period=report.period,
                  this_month=usage.current_month(), rule=PERIOD_RULE, begun=begun,
                  chart=chart_data(report), hours=hours, money=money, modes=modes,
                  mode_words=MODE_WORDS)


@routes.get("/usage.csv")
async def usage_csv(request: web.Request) -> web.StreamResponse:
    """One row per desktop VM and day (a month's period) or month (a year's), up to now."""
    usage = request.config_dict[USAGE]
    report = await usage.report(period_of(request, usage))  # BadRequest: a 400 with the reason
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for i, span in enumerate(report.spans):
        if span.start >= report.as_of:
            break
        for d in report.desktops:
            c = d.spans[i]
            writer.writerow([span.label, cell(d.name), f"{c.running_hours:.{DIGITS}f}",
                             f"{c.connected_hours:.{DIGITS}f}", "+".join(c.modes),
                             f"{c.cost:.{DIGITS}f}"])
    return web.Response(body=buffer.getvalue().encode(), headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="deskgate-usage-{report.period}.csv"'})
