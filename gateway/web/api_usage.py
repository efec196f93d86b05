"""The REST API's usage and cost of desktop VMs: declared in the one operation table
(``api.API``), served by the same gated sub-application, documented in the same OpenAPI document.
The admin usage page, its CSV export and this answer are made from the same report
(gateway/cases/usage.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..cases.usage import PERIOD_RULE, DesktopSpan, Usage, UsageReport
from ..keys import USAGE
from ..model import RUNNING_MODES
from .api import API, PREFIX
from .openapi import BOOLEAN, INTEGER, NUMBER, STRING, TIMESTAMP, Param, array, obj, ref

DIGITS = 6  # hours and costs in answers and exports: rounded to a millionth


def figure(value: float) -> float:
    return round(value, DIGITS)


def period_of(request: web.Request, usage: Usage) -> str:
    """The ``period`` asked for; this month when none is given."""
    return request.query.get("period", "").strip() or usage.current_month()


_HOURS = {"running_hours": {**NUMBER, "description": "hours it ran (an open run: up to now)"},
          "connected_hours": {**NUMBER, "description": "hours with a session open to it"},
          "cost": {**NUMBER, "description": "in the bundles' rate unit"}}
_MODES = array({"type": "string", "enum": list(RUNNING_MODES)})
SPAN = obj(("label", "start", "end", "running_hours", "connected_hours", "cost"),
           label={**STRING, "description": "YYYY-MM-DD (a month by day) or YYYY-MM (a year by"
                                           " month)"},
           start=TIMESTAMP, end=TIMESTAMP, **_HOURS)
DESKTOP_SPAN = obj(("running_hours", "connected_hours", "cost", "modes"), **_HOURS | {
    "cost": {**NUMBER, "description": "its AutoStop hours at their rate, plus, on a day it ran"
                                      " AlwaysOn, the monthly rate / days in that month (in a"
                                      " year's series: the month's rate)"}},
                   modes={**_MODES, "description": "the running modes it ran in then"})
DESKTOP_USAGE = obj(
    ("id", "name", "present", "bundle", "mode", "users", "running_hours", "connected_hours",
     "cost", "always_on_months", "series"),
    id=INTEGER, name=STRING,
    present={**BOOLEAN, "description": "false: deleted since (its usage is kept)"},
    bundle={**STRING, "description": "empty once deleted"},
    mode={"type": "string", "enum": list(RUNNING_MODES)},
    users={**array(STRING), "description": "the people it is assigned to directly, now"},
    **_HOURS | {"cost": {**NUMBER, "description": (
        "what the period costs: each AutoStop run's hours at its hourly rate, plus the monthly"
        " rate once for each month it ran AlwaysOn at some time (in the bundles' rate unit)")}},
    always_on_months={**array(STRING), "description": "the months (YYYY-MM) it cost its"
                                                      " monthly rate: it ran AlwaysOn then"},
    series={**array(DESKTOP_SPAN), "description": "one item per item of the report's series"})
USER_USAGE = obj(
    ("id", "name", "desktops", "running_hours", "connected_hours", "cost"),
    id=INTEGER, name=STRING,
    desktops={**array(STRING), "description": "desktop VMs assigned to them directly"},
    running_hours={**NUMBER, "description": "of their desktops"},
    connected_hours={**NUMBER, "description": "their own, on any desktop VM"},
    cost={**NUMBER, "description": "of their desktops"})
USAGE_REPORT = obj(
    ("period", "by", "start", "end", "as_of", "totals", "series", "desktops", "users"),
    period=STRING, by={"type": "string", "enum": ["day", "month"]},
    start=TIMESTAMP, end=TIMESTAMP,
    as_of={**TIMESTAMP, "description": "now: open runs and sessions count up to here"},
    totals=obj(("running_hours", "connected_hours", "cost"), **_HOURS),
    series={**array(ref("UsageSpan")), "description": "every day or month of the period, all"
                                                      " desktop VMs together"},
    desktops=array(ref("DesktopUsage")), users=array(ref("UserUsage")))
API.schemas.update({"UsageSpan": SPAN, "DesktopUsage": DESKTOP_USAGE, "UserUsage": USER_USAGE,
                    "UsageReport": USAGE_REPORT})


def _desktop_span(cell: DesktopSpan) -> dict[str, Any]:
    return {"running_hours": figure(cell.running_hours),
            "connected_hours": figure(cell.connected_hours), "cost": figure(cell.cost),
            "modes": list(cell.modes)}


def report_json(r: UsageReport) -> dict[str, Any]:
    return {
        "period": r.period, "by": r.by, "start": r.start, "end": r.end, "as_of": r.as_of,
        "totals": {"running_hours": figure(r.running_hours),
                   "connected_hours": figure(r.connected_hours), "cost": figure(r.cost)},
        "series": [{"label": s.label, "start": s.start, "end": s.end,
                    "running_hours": figure(t.running_hours),
                    "connected_hours": figure(t.connected_hours), "cost": figure(t.cost)}
                   for s, t in zip(r.spans, r.span_totals, strict=True)],
        "desktops": [{"id": d.desktop_id, "name": d.name, "present": d.present,
                      "bundle": d.bundle, "mode": d.mode, "users": list(d.users),
                      "running_hours": figure(d.running_hours),
                      "connected_hours": figure(d.connected_hours), "cost": figure(d.cost),
                      "always_on_months": list(d.always_on_months),
                      "series": [_desktop_span(c) for c in d.spans]} for d in r.desktops],
        "users": [{"id": u.user_id, "name": u.name, "desktops": list(u.desktops),
                   "running_hours": figure(u.running_hours),
                   "connected_hours": figure(u.connected_hours), "cost": figure(u.cost)}
                  for u in r.users],
    }


@API.operation("GET", f"{PREFIX}/usage",
               "Usage and cost of desktop VMs in a period: totals per desktop and per person,"
               " and the series by day (a month) or by month (a year)", tag="usage",
               query=(Param("period", {**STRING, "pattern": "^[0-9]{4}(-[0-9]{2})?$"},
                            f"{PERIOD_RULE}; this month when not given"),),
               response=ref("UsageReport"))
async def get_usage(request: web.Request) -> web.StreamResponse:
    usage = request.config_dict[USAGE]
    return web.json_response(report_json(await usage.report(period_of(request, usage))))
