"""Usage of a real desktop VM: started and stopped through the use cases on a real libvirtd +
QEMU, it ran for an interval measured here, and the usage report, its CSV export and the API's
answer say so: its running hours are that interval (within the few milliseconds between the
state move that opens or closes the run and the call returning), its cost those hours times its
bundle's hourly rate."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypervisor import GuestImage, guest_image, hypervisor

from gateway.app import Cases, build_cases
from gateway.cases.actor import Actor
from gateway.config import HypervisorConfig, Settings
from gateway.keys import USAGE
from gateway.model import AUTO_STOP, Bundle
from gateway.store.sqlite import SQLiteStore
from gateway.web import admin_usage, api_usage

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN = Actor.cli()
HOURLY = 0.5
RUN_SECONDS = 4.0
# Between the state move that opens (closes) the run and the power call returning: a few reads
# of the store. Generous: this is about where the interval is measured, not about speed.
TOLERANCE_SECONDS = 0.5


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uri() -> AsyncIterator[str]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd's system instance needs root")
    async with hypervisor() as found:
        yield found


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return guest_image()


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="deskgate-usage-") as tmp:
        Path(tmp).chmod(0o711)  # the qemu user passes through to the disks and screen sockets
        yield Path(tmp)


@pytest_asyncio.fixture(loop_scope="module")
async def cases(settings: Settings, folder: Path, uri: str) -> AsyncIterator[Cases]:
    hypervisors = (HypervisorConfig("default", uri, "qemu", str(folder / "disks"),
                                    str(folder / "screens")),)
    store = SQLiteStore(settings.database_path)
    await store.open()
    # Other test runs may share this libvirtd, and a domain is named by its desktop's id: this
    # one's desktops get ids of their own (after a placeholder desktop's).
    placeholder = await store.create_desktop("id-placeholder", "static", "127.0.0.1", 5900, None)
    await store._exec("UPDATE desktops SET id = ? WHERE id = ?",
                      (random.randint(10**7, 9 * 10**7), placeholder.id))
    made = build_cases(dataclasses.replace(
        settings, hypervisors=hypervisors, vm_stop_timeout_seconds=1.0,  # type: ignore[arg-type]
        vm_start_timeout_seconds=40.0, vm_reconcile_seconds=3600.0), store)
    try:
        yield made
    finally:
        await made.vms.close()
        for d in await store.list_desktop_vms():  # nothing of this test left on the hypervisor
            await made.providers.get("libvirt").delete(made.vms._spec(d))  # type: ignore[attr-defined]
        await made.providers.close()
        await store.close()


def month_of(at: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(at))


async def test_a_measured_run_is_its_running_hours_and_their_cost(
        cases: Cases, image: GuestImage) -> None:
    bundle = await cases.bundles.create(ADMIN, Bundle(
        0, "tiny", 1, 128, 32, 16, str(image.base), kernel=str(image.kernel),
        initrd=str(image.initrd), cmdline="console=tty0 console=ttyS0 quiet",
        hourly_rate=HOURLY, monthly_rate=30.0))
    desktop = await cases.vms.create(ADMIN, "vm-usage", bundle, auto_stop_seconds=3600)
    assert desktop.id > 10**7  # its own domain name on a shared libvirtd

    d = await cases.vms.power(ADMIN, desktop.id, "start")  # returns once it runs
    began = time.time()
    assert d.vm is not None and d.vm.state == "running", d.vm and d.vm.reason
    await asyncio.sleep(RUN_SECONDS)
    d = await cases.vms.power(ADMIN, desktop.id, "stop")  # returns once it stopped
    ended = time.time()
    assert d.vm is not None and d.vm.state == "stopped", d.vm and d.vm.reason
    measured = ended - began
    run, = await cases.store.vm_runs(0, time.time() + 1, desktop.id)
    assert run.ended_at is not None

    # The computation (the run is in one month, or split across two at a month's turn).
    periods = sorted({month_of(began), month_of(ended)})
    reports = [await cases.usage.report(p) for p in periods]
    found = [d for r in reports for d in r.desktops if d.desktop_id == desktop.id]
    hours = sum(d.running_hours for d in found)
    cost = sum(d.cost for d in found)
    assert abs(hours * 3600 - measured) < TOLERANCE_SECONDS, (hours * 3600, measured)
    assert cost == pytest.approx(hours * HOURLY, rel=1e-9)
    assert all(d.mode == AUTO_STOP and d.always_on_months == () for d in found)
    assert sum(d.connected_hours for d in found) == 0

    # The CSV export and the API's answer, from their handlers on aiohttp's test server.
    app = web.Application()
    app[USAGE] = cases.usage
    app.router.add_get("/admin/usage.csv", admin_usage.usage_csv)
    app.router.add_get("/api/v1/usage", api_usage.get_usage)
    async with TestClient(TestServer(app)) as client:
        csv_hours = csv_cost = api_hours = api_cost = 0.0
        for period in periods:
            resp = await client.get("/admin/usage.csv", params={"period": period})
            assert resp.status == 200
            for row in csv.DictReader(io.StringIO(await resp.text())):
                if row["desktop"] == "vm-usage":
                    csv_hours += float(row["running_hours"])
                    csv_cost += float(row["cost"])
                    assert row["mode"] in ("", AUTO_STOP)
            resp = await client.get("/api/v1/usage", params={"period": period})
            assert resp.status == 200
            answer = await resp.json()
            mine, = [d for d in answer["desktops"] if d["id"] == desktop.id]
            api_hours += mine["running_hours"]
            api_cost += mine["cost"]
    for shown_hours, shown_cost in ((csv_hours, csv_cost), (api_hours, api_cost)):
        assert abs(shown_hours * 3600 - measured) < TOLERANCE_SECONDS, (shown_hours, measured)
        assert shown_cost == pytest.approx(shown_hours * HOURLY, abs=2e-6)
        assert shown_hours == pytest.approx(hours, abs=1e-5)  # a millionth per row at most
