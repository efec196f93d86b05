"""Usage and cost of desktop VMs, per desktop and per person, by day or by month (UTC).

Read from what ``vms.py`` writes beside every state move: the intervals each VM ran, each with
the running mode and the bundle's rates of its time (a mode switch closes one run and opens the
next, so a past period keeps its price), and the sessions that reached a desktop.

The rules, as WorkSpaces bills:

- Running hours: a desktop's runs clipped to the period; a run still open counts up to now.
- Connected hours: time with at least one session open to the desktop (sessions that reached it;
  overlapping ones count once); a session still open counts up to now.
- Cost: a run in AutoStop mode costs its hours times its hourly rate. A desktop that ran in
  AlwaysOn mode at some time in a month costs that month's monthly rate once (the rate of the
  last AlwaysOn run of the month), whatever its hours. By day, that rate is spread as
  monthly rate / days in the month over each day it ran AlwaysOn, so a month's days add up to
  less than its bill when it was AlwaysOn for only part of it; the month's total is the bill.
- Per person: the desktop VMs assigned to them directly (as assigned now; a desktop assigned to
  several people counts in full for each), with those desktops' running hours and cost, and
  the person's own connected hours on any desktop VM (their overlapping sessions on one desktop
  count once).
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import BadRequest
from ..model import ALWAYS_ON, AUTO_STOP, VmRun
from ..store import Store

HOUR = 3600.0
FIRST_YEAR, LAST_YEAR = 1970, 9999
PERIOD_RULE = ("the period is a month, YYYY-MM (shown by day), or a year, YYYY (shown by month),"
               f" from {FIRST_YEAR} to {LAST_YEAR}")
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_YEAR = re.compile(r"[0-9]{4}")

Interval = tuple[float, float]


@dataclass(frozen=True)
class Span:
    """One day (a month's report) or one month (a year's report), [start, end) in UTC."""

    label: str  # "2025-03-07" or "2025-03"
    start: float
    end: float
    month: str  # the month it is in, "2025-03"
    days_in_month: int


@dataclass(frozen=True)
class Figures:
    running_hours: float = 0.0
    connected_hours: float = 0.0
    cost: float = 0.0


@dataclass(frozen=True)
class DesktopSpan:
    """One desktop in one span. ``modes``: the running modes it ran in then, sorted."""

    running_hours: float
    connected_hours: float
    cost: float
    modes: tuple[str, ...]


@dataclass(frozen=True)
class DesktopUsage:
    desktop_id: int
    name: str
    present: bool  # False: deleted since (its usage is kept)
    bundle: str  # "" once deleted
    mode: str  # its running mode now; once deleted, that of its last run
    users: tuple[str, ...]  # assigned to it directly, now
    spans: tuple[DesktopSpan, ...]  # one per report span
    running_hours: float
    connected_hours: float
    cost: float  # the bill: see the module's docstring
    always_on_months: tuple[str, ...]  # the months it cost its monthly rate


@dataclass(frozen=True)
class UserUsage:
    user_id: int
    name: str
    desktops: tuple[str, ...]  # desktop VMs assigned to them directly
    running_hours: float  # of those desktops
    connected_hours: float  # their own, on any desktop VM
    cost: float  # of those desktops


@dataclass(frozen=True)
class UsageReport:
    period: str  # "2025-03" or "2025"
    by: str  # "day" or "month"
    start: float
    end: float
    as_of: float  # now: open runs and sessions count up to here
    previous: str  # the period before and after, for paging
    next: str
    spans: tuple[Span, ...]
    span_totals: tuple[Figures, ...]  # all desktops, one per span
    desktops: tuple[DesktopUsage, ...]  # by name
    users: tuple[UserUsage, ...]  # by name
    running_hours: float
    connected_hours: float
    cost: float


def _utc(year: int, month: int, day: int = 1) -> float:
    return float(calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _month_span(year: int, month: int) -> Span:
    days = calendar.monthrange(year, month)[1]
    label = f"{year:04d}-{month:02d}"
    return Span(label, _utc(year, month), _utc(*_next_month(year, month)), label, days)


def parse_period(text: str) -> tuple[str, tuple[Span, ...]]:
    """``("day", the month's days)`` for YYYY-MM, ``("month", the year's months)`` for YYYY;
    BadRequest otherwise."""
    text = text.strip()
    if m := _MONTH.fullmatch(text):
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise BadRequest(f"{PERIOD_RULE}; months are 01 to 12")
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise BadRequest(PERIOD_RULE)
        whole = _month_span(year, month)
        days = tuple(Span(f"{whole.label}-{d:02d}", _utc(year, month, d),
                          _utc(year, month, d) + 86400.0, whole.label, whole.days_in_month)
                     for d in range(1, whole.days_in_month + 1))
        return "day", days
    if _YEAR.fullmatch(text):
        year = int(text)
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise BadRequest(PERIOD_RULE)
        return "month", tuple(_month_span(year, m) for m in range(1, 13))
    raise BadRequest(PERIOD_RULE)


def _neighbours(period: str) -> tuple[str, str]:
    if len(period) == 4:
        year = int(period)
        return (str(year - 1) if year > FIRST_YEAR else "",
                str(year + 1) if year < LAST_YEAR else "")
    year, month = int(period[:4]), int(period[5:])
    before = (year - 1, 12) if month == 1 else (year, month - 1)
    after = _next_month(year, month)
    return (f"{before[0]:04d}-{before[1]:02d}" if before[0] >= FIRST_YEAR else "",
            f"{after[0]:04d}-{after[1]:02d}" if after[0] <= LAST_YEAR else "")


def overlap(a: Interval, b: Interval) -> float:
    """Seconds two intervals share (0 when none)."""
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals as disjoint ones, in order (empty ones dropped)."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _seconds_in(intervals: Iterable[Interval], window: Interval) -> float:
    return sum(overlap(i, window) for i in intervals)


class Usage:
    """The usage report of a period (see the module's docstring for the rules)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def current_month(self) -> str:
        return time.strftime("%Y-%m", time.gmtime(self._clock()))

    async def report(self, period: str, *, people: bool = True) -> UsageReport:
        """The period's usage and cost. ``people``: with the per-person figures (they need a
        read per desktop VM; metrics go without). BadRequest for a period that is none."""
        by, spans = parse_period(period)
        period = spans[0].month if by == "day" else spans[0].label[:4]
        start, end, now = spans[0].start, spans[-1].end, self._clock()
        until = min(end, now)  # nothing is counted after now
        runs = await self._store.vm_runs(start, end) if until > start else []
        vms = await self._store.list_desktop_vms()
        # Runs are clipped to the period and to now; an open one runs up to now.
        clipped: dict[int, list[tuple[Interval, VmRun]]] = defaultdict(list)
        for run in runs:
            interval = (max(run.started_at, start),
                        min(run.ended_at if run.ended_at is not None else now, until))
            if interval[1] > interval[0]:
                clipped[run.desktop_id].append((interval, run))
        names = {run.desktop_id: run.desktop_name for run in runs}  # the latest run's name
        ids = {d.id for d in vms} | set(clipped)
        sessions = (await self._store.connected_intervals(start, end)
                    if until > start else [])
        by_desktop: dict[int, list[Interval]] = defaultdict(list)
        by_user: dict[tuple[int, int], list[Interval]] = defaultdict(list)
        for desktop_id, user_id, began, ended in sessions:
            if desktop_id not in ids:
                continue  # a desktop that is no VM
            interval = (max(began, start), min(ended if ended is not None else now, until))
            by_desktop[desktop_id].append(interval)
            by_user[(user_id, desktop_id)].append(interval)

        present = {d.id: d for d in vms}
        desktops: list[DesktopUsage] = []
        for desktop_id in ids:
            d = present.get(desktop_id)
            runs_of = clipped.get(desktop_id, [])
            vm = d.vm if d is not None else None
            desktops.append(_desktop_usage(
                desktop_id, d.name if d is not None else names[desktop_id], d is not None,
                vm.bundle.name if vm is not None else "",
                vm.mode if vm is not None else (runs_of[-1][1].mode if runs_of else AUTO_STOP),
                spans, by, runs_of, merged(by_desktop.get(desktop_id, []))))
        desktops.sort(key=lambda u: (u.name.casefold(), u.desktop_id))

        users: list[UserUsage] = []
        if people:
            desktops, users = await self._people(desktops, by_user)
        totals = tuple(Figures(sum(u.spans[i].running_hours for u in desktops),
                               sum(u.spans[i].connected_hours for u in desktops),
                               sum(u.spans[i].cost for u in desktops))
                       for i in range(len(spans)))
        previous, after = _neighbours(period)
        return UsageReport(period, by, start, end, now, previous, after, spans, totals,
                           tuple(desktops), tuple(users),
                           sum(u.running_hours for u in desktops),
                           sum(u.connected_hours for u in desktops),
                           sum(u.cost for u in desktops))

    async def _people(self, desktops: list[DesktopUsage],
                      by_user: dict[tuple[int, int], list[Interval]],
                      ) -> tuple[list[DesktopUsage], list[UserUsage]]:
        """The desktops with the people assigned to them directly, and each person's figures."""
        accounts = {u.name: u for u in await self._store.list_users()}
        ids = {u.id: u.name for u in accounts.values()}
        with_users: list[DesktopUsage] = []
        theirs: dict[int, list[DesktopUsage]] = defaultdict(list)
        for usage in desktops:
            names: tuple[str, ...] = ()
            if usage.present:
                direct, _groups = await self._store.desktop_assignments(usage.desktop_id)
                names = tuple(direct)
                for name in names:
                    if name in accounts:
                        theirs[accounts[name].id].append(usage)
            with_users.append(dataclasses.replace(usage, users=names))
        connected: dict[int, float] = defaultdict(float)
        for (user_id, _desktop), intervals in by_user.items():
            connected[user_id] += sum(e - s for s, e in merged(intervals)) / HOUR
        people = [UserUsage(user_id, ids.get(user_id, f"#{user_id}"),
                            tuple(u.name for u in theirs.get(user_id, [])),
                            sum(u.running_hours for u in theirs.get(user_id, [])),
                            connected.get(user_id, 0.0),
                            sum(u.cost for u in theirs.get(user_id, [])))
                  for user_id in set(theirs) | set(connected)]
        people.sort(key=lambda p: (p.name.casefold(), p.user_id))
        return with_users, people


def _desktop_usage(desktop_id: int, name: str, present: bool, bundle: str, mode: str,
                   spans: tuple[Span, ...], by: str,
                   runs: list[tuple[Interval, VmRun]],
                   connected: list[Interval]) -> DesktopUsage:
    # The monthly rate of each month it ran AlwaysOn in: its last AlwaysOn run's there.
    monthly: dict[str, float] = {}
    months = {s.month: _month_span(int(s.month[:4]), int(s.month[5:])) for s in spans}
    for interval, run in sorted(runs, key=lambda r: r[0][0]):
        if run.mode != ALWAYS_ON:
            continue
        for month, whole in months.items():
            if overlap(interval, (whole.start, whole.end)) > 0:
                monthly[month] = run.monthly_rate
    cells: list[DesktopSpan] = []
    for span in spans:
        window = (span.start, span.end)
        running = 0.0
        cost = 0.0
        modes: set[str] = set()
        always_on = False
        for interval, run in runs:
            seconds = overlap(interval, window)
            if seconds <= 0:
                continue
            running += seconds
            modes.add(run.mode)
            if run.mode == ALWAYS_ON:
                always_on = True
            else:
                cost += seconds / HOUR * run.hourly_rate
        if always_on:
            share = 1.0 if by == "month" else 1.0 / span.days_in_month
            cost += monthly[span.month] * share
        cells.append(DesktopSpan(running / HOUR, _seconds_in(connected, window) / HOUR, cost,
                                 tuple(sorted(modes))))
    hourly = sum(overlap(interval, (spans[0].start, spans[-1].end)) / HOUR * run.hourly_rate
                 for interval, run in runs if run.mode != ALWAYS_ON)
    return DesktopUsage(desktop_id, name, present, bundle, mode, (), tuple(cells),
                        sum(c.running_hours for c in cells),
                        sum(c.connected_hours for c in cells),
                        hourly + sum(monthly.values()), tuple(sorted(monthly)))
