"""Usage and cost of desktop VMs (gateway/cases/usage.py) on rows written straight into a real
store, read with a fixed clock: clipping at the period's edges, open runs and sessions, AlwaysOn
monthly pricing and a switch mid-month, per-person attribution, periods that are none."""

from __future__ import annotations

import calendar
import time

import pytest

from gateway.cases.usage import PERIOD_RULE, Usage, UsageReport
from gateway.errors import BadRequest
from gateway.model import ALWAYS_ON, AUTO_STOP, Bundle, Desktop, DesktopVm, Session, SessionState
from gateway.store.sqlite import SQLiteStore

HOURLY, MONTHLY = 0.5, 31.0  # March has 31 days: an AlwaysOn day of March costs 1.0
NOW = "2025-03-20 12:00"


def at(text: str) -> float:
    """A UTC time written as "YYYY-MM-DD HH:MM"."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M")))


def usage(store: SQLiteStore, now: str = NOW) -> Usage:
    return Usage(store, clock=lambda: at(now))


async def vm(store: SQLiteStore, name: str, mode: str = AUTO_STOP) -> Desktop:
    bundle = await store.get_bundle_by_name("small") or await store.create_bundle(
        Bundle(0, "small", 1, 1024, 1024, 1024, "/base.qcow2", hourly_rate=HOURLY,
               monthly_rate=MONTHLY))
    return await store.create_desktop_vm(name, DesktopVm(0, bundle, "default", "stopped", "",
                                                         0.0, mode))


async def run(store: SQLiteStore, d: Desktop, start: str, end: str | None, mode: str = AUTO_STOP,
              hourly: float = HOURLY, monthly: float = MONTHLY) -> None:
    assert await store.open_vm_run(d.id, d.name, at(start), mode, hourly, monthly)
    if end is not None:
        assert await store.close_vm_run(d.id, at(end))


async def session(store: SQLiteStore, sid: str, user_id: int, d: Desktop, start: str,
                  end: str | None, state: SessionState = SessionState.CLOSED) -> None:
    await store.create_session(Session(sid, user_id, d.id, "ws", state, at(start),
                                       None if end is None else at(end)))


def desktop(report: UsageReport, name: str) -> tuple[float, float, float]:
    found, = [d for d in report.desktops if d.name == name]
    return found.running_hours, found.connected_hours, found.cost


def day(report: UsageReport, name: str, label: str) -> tuple[float, float, float]:
    found, = [d for d in report.desktops if d.name == name]
    i = [s.label for s in report.spans].index(label)
    cell = found.spans[i]
    return cell.running_hours, cell.connected_hours, cell.cost


async def test_runs_and_sessions_are_clipped_at_the_period_edges(store: SQLiteStore) -> None:
    d = await vm(store, "vm-a")
    ann = await store.create_user("ann", None, False)
    await run(store, d, "2025-02-28 22:00", "2025-03-01 03:00")  # 2 h in February, 3 in March
    await run(store, d, "2025-03-10 23:00", "2025-03-11 01:30")  # across midnight
    await session(store, "s1", ann.id, d, "2025-02-28 23:00", "2025-03-01 01:00")

    march = await usage(store).report("2025-03")
    assert (march.period, march.by, len(march.spans)) == ("2025-03", "day", 31)
    assert (march.spans[0].label, march.spans[-1].label) == ("2025-03-01", "2025-03-31")
    assert (march.start, march.end) == (at("2025-03-01 00:00"), at("2025-04-01 00:00"))
    assert day(march, "vm-a", "2025-03-01") == (3.0, 1.0, 1.5)
    assert day(march, "vm-a", "2025-03-10") == (1.0, 0.0, 0.5)
    assert day(march, "vm-a", "2025-03-11") == (1.5, 0.0, 0.75)
    assert desktop(march, "vm-a") == (5.5, 1.0, 2.75)
    assert (march.running_hours, march.connected_hours, march.cost) == (5.5, 1.0, 2.75)
    assert march.span_totals[0].running_hours == 3.0

    february = await usage(store).report("2025-02")
    assert len(february.spans) == 28
    assert day(february, "vm-a", "2025-02-28") == (2.0, 1.0, 1.0)
    assert desktop(february, "vm-a") == (2.0, 1.0, 1.0)

    year = await usage(store).report("2025")
    assert (year.by, [s.label for s in year.spans][:3]) == ("month", ["2025-01", "2025-02",
                                                                      "2025-03"])
    assert day(year, "vm-a", "2025-02") == (2.0, 1.0, 1.0)
    assert day(year, "vm-a", "2025-03") == (5.5, 1.0, 2.75)
    assert desktop(year, "vm-a") == (7.5, 2.0, 3.75)
    assert (year.previous, year.next) == ("2024", "2026")
    assert ((await usage(store).report("2025-01")).previous, march.next) == ("2024-12", "2025-04")


async def test_an_open_run_and_an_open_session_count_up_to_now(store: SQLiteStore) -> None:
    d = await vm(store, "vm-a")
    ann = await store.create_user("ann", None, False)
    await run(store, d, "2025-03-20 08:00", None)  # running now (12:00)
    await session(store, "live", ann.id, d, "2025-03-20 11:00", None, SessionState.ACTIVE)
    await session(store, "never", ann.id, d, "2025-03-20 09:00", "2025-03-20 10:00",
                  SessionState.FAILED)  # never reached it: not connected time

    march = await usage(store).report("2025-03")
    assert march.as_of == at(NOW)
    assert day(march, "vm-a", "2025-03-20") == (4.0, 1.0, 2.0)
    assert day(march, "vm-a", "2025-03-21") == (0.0, 0.0, 0.0)  # tomorrow has not happened
    assert desktop(march, "vm-a") == (4.0, 1.0, 2.0)
    later = await usage(store, "2025-03-21 00:30").report("2025-03")
    assert desktop(later, "vm-a") == (16.5, 13.5, 8.25)
    assert day(later, "vm-a", "2025-03-21") == (0.5, 0.5, 0.25)
    assert desktop(await usage(store).report("2025-04"), "vm-a") == (0.0, 0.0, 0.0)
    assert desktop(await usage(store).report("2025"), "vm-a") == (4.0, 1.0, 2.0)


async def test_always_on_costs_its_monthly_rate_once_a_month_spread_by_day(
        store: SQLiteStore) -> None:
    d = await vm(store, "vm-on", ALWAYS_ON)
    await run(store, d, "2025-03-05 10:00", "2025-03-07 12:00", ALWAYS_ON)
    await run(store, d, "2025-03-15 00:00", "2025-03-15 06:00", ALWAYS_ON)  # same month: no more

    march = await usage(store).report("2025-03")
    assert desktop(march, "vm-on") == (56.0, 0.0, MONTHLY)  # the bill: the month's rate
    found, = march.desktops
    assert found.always_on_months == ("2025-03",)
    costs = {s.label: c.cost for s, c in zip(march.spans, found.spans, strict=True) if c.cost}
    # By day, monthly rate / 31 on each day it was AlwaysOn; its hours cost nothing more.
    assert costs == {"2025-03-05": 1.0, "2025-03-06": 1.0, "2025-03-07": 1.0, "2025-03-15": 1.0}
    assert found.spans[4].modes == (ALWAYS_ON,)
    year = await usage(store).report("2025")
    assert desktop(year, "vm-on") == (56.0, 0.0, MONTHLY)
    assert day(year, "vm-on", "2025-03") == (56.0, 0.0, MONTHLY)
    assert day(year, "vm-on", "2025-04") == (0.0, 0.0, 0.0)  # not AlwaysOn then: nothing


async def test_a_switch_mid_month_keeps_each_runs_price(store: SQLiteStore) -> None:
    d = await vm(store, "vm-switch")
    # AutoStop at an older hourly rate, then at the new one; switched to AlwaysOn on the 10th
    # (the switch closes one run and opens the next); back to AutoStop on 2 April.
    await run(store, d, "2025-03-01 08:00", "2025-03-01 12:00", hourly=0.25)
    await run(store, d, "2025-03-02 08:00", "2025-03-10 08:00")
    await run(store, d, "2025-03-10 08:00", "2025-04-02 08:00", ALWAYS_ON)
    await run(store, d, "2025-04-02 08:00", "2025-04-02 20:00", hourly=1.0)

    now = "2025-04-30 00:00"
    march = await usage(store, now).report("2025-03")
    hourly = 4 * 0.25 + 192 * HOURLY
    assert desktop(march, "vm-switch") == (4 + 192 + 520, 0.0, hourly + MONTHLY)
    assert day(march, "vm-switch", "2025-03-01") == (4.0, 0.0, 1.0)
    assert day(march, "vm-switch", "2025-03-10") == (24.0, 0.0, 8 * HOURLY + 1.0)
    assert day(march, "vm-switch", "2025-03-11") == (24.0, 0.0, 1.0)
    switch_day = march.desktops[0].spans[9]
    assert switch_day.modes == (ALWAYS_ON, AUTO_STOP)

    april = await usage(store, now).report("2025-04")  # AlwaysOn on 1 and 2 April
    assert desktop(april, "vm-switch") == (32 + 12, 0.0, MONTHLY + 12 * 1.0)
    assert day(april, "vm-switch", "2025-04-02") == pytest.approx((20.0, 0.0, MONTHLY / 30 + 12))
    year = await usage(store, now).report("2025")
    assert desktop(year, "vm-switch")[2] == pytest.approx(hourly + MONTHLY + MONTHLY + 12.0)
    assert year.desktops[0].always_on_months == ("2025-03", "2025-04")


async def test_per_person_is_their_own_desktops_and_their_own_connected_time(
        store: SQLiteStore) -> None:
    mine = await vm(store, "vm-ann")
    shared = await vm(store, "vm-shared")
    by_group = await vm(store, "vm-group")
    plain = await store.create_desktop("plain", "static", "127.0.0.1", 5900, None)
    ann = await store.create_user("ann", None, False)
    bob = await store.create_user("bob", None, False)
    await store.create_user("cid", None, False)  # nothing of theirs: not listed
    await store.assign(mine.id, ann.id)
    await store.assign(shared.id, ann.id)
    await store.assign(shared.id, bob.id)
    await store.assign_group(by_group.id, "staff")  # a group's desktop is no one's own
    await store.set_user_groups(bob.id, ["staff"])
    await run(store, mine, "2025-03-03 08:00", "2025-03-03 18:00")
    await run(store, shared, "2025-03-04 08:00", "2025-03-04 12:00")
    await run(store, by_group, "2025-03-05 08:00", "2025-03-05 10:00")
    # ann's two overlapping sessions on her desktop count once; bob uses hers too.
    await session(store, "a1", ann.id, mine, "2025-03-03 09:00", "2025-03-03 11:00")
    await session(store, "a2", ann.id, mine, "2025-03-03 10:00", "2025-03-03 12:00")
    await session(store, "b1", bob.id, mine, "2025-03-03 11:00", "2025-03-03 14:00")
    await session(store, "b2", bob.id, by_group, "2025-03-05 08:00", "2025-03-05 09:00")
    await session(store, "p1", bob.id, plain, "2025-03-05 08:00", "2025-03-05 18:00")  # no VM

    report = await usage(store).report("2025-03")
    assert [d.name for d in report.desktops] == ["vm-ann", "vm-group", "vm-shared"]
    assert desktop(report, "vm-ann") == (10.0, 5.0, 5.0)  # 09:00-14:00, someone connected
    assert [d.users for d in report.desktops] == [("ann",), (), ("ann", "bob")]
    people = {u.name: (u.desktops, u.running_hours, u.connected_hours, u.cost)
              for u in report.users}
    assert people == {"ann": (("vm-ann", "vm-shared"), 14.0, 3.0, 7.0),
                      "bob": (("vm-shared",), 4.0, 4.0, 2.0)}
    without = await usage(store).report("2025-03", people=False)
    assert without.users == () and without.cost == report.cost == 8.0


async def test_a_deleted_desktop_keeps_its_usage_under_its_name(store: SQLiteStore) -> None:
    d = await vm(store, "vm-gone")
    ann = await store.create_user("ann", None, False)
    await store.assign(d.id, ann.id)
    await run(store, d, "2025-03-02 00:00", "2025-03-02 02:00")
    assert await store.delete_desktop(d.id)
    report = await usage(store).report("2025-03")
    gone, = report.desktops
    assert (gone.name, gone.present, gone.bundle, gone.users) == ("vm-gone", False, "", ())
    assert desktop(report, "vm-gone") == (2.0, 0.0, 1.0)
    assert report.users == ()


async def test_an_empty_period_lists_the_desktop_vms_with_nothing(store: SQLiteStore) -> None:
    await vm(store, "vm-a")
    report = await usage(store).report(" 2024-02 ")
    assert (report.period, len(report.spans), report.spans[-1].label) == ("2024-02", 29,
                                                                          "2024-02-29")
    assert desktop(report, "vm-a") == (0.0, 0.0, 0.0)
    assert usage(store).current_month() == "2025-03"


@pytest.mark.parametrize("period", ["", "2025-13", "2025-00", "25-03", "2025-3", "1969",
                                    "1969-12", "2025-03-01", "abcd", "2025/03", "２０２５",
                                    "10000"])
async def test_a_period_that_is_none_is_a_bad_request(store: SQLiteStore, period: str) -> None:
    with pytest.raises(BadRequest) as caught:
        await usage(store).report(period)
    assert caught.value.reason.startswith(PERIOD_RULE)
    assert period.strip() == "" or period.strip() not in caught.value.reason
