"""The desktop VM and bundle admin pages through the real app: for admins only, forms with CSRF,
bundles made, changed and deleted (refused while in use), desktop VMs made on a hypervisor whose
libvirtd is not there (they end in error with libvirt's reason, which the pages show), typed
confirmation, the live state stream, and many power requests at once."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websupport import Client, app_client, sign_in

from gateway.config import HypervisorConfig, Settings
from gateway.keys import PROVIDERS, STORE, VMS

GONE = "qemu+unix:///system?socket=/nonexistent/sock"  # a libvirtd that is not there
IMAGE = "/var/lib/deskgate/images/base.qcow2"


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[Client]:
    gone = HypervisorConfig("gone", GONE, "qemu", str(tmp_path / "disks"),
                            str(tmp_path / "screens"))
    async with await app_client(settings, {"alice": True, "bob": False},
                                hypervisors=(gone,), vm_reconcile_seconds=1.0) as c:
        yield c


@pytest.fixture
async def csrf(client: Client) -> str:
    """alice, an admin, signed in with both factors."""
    return await sign_in(client, "alice")


async def post(client: Client, path: str, csrf: str, **fields: str) -> aiohttp.ClientResponse:
    return await client.post(path, data={"_csrf": csrf, **fields}, allow_redirects=False)


async def page(client: Client, path: str, status: int = 200) -> str:
    resp = await client.get(path)
    text = await resp.text()
    assert resp.status == status, text
    return text


def bundle_fields(**changes: str) -> dict[str, str]:
    return {"name": "small", "vcpus": "2", "memory_mib": "2048", "root_mib": "20480",
            "user_mib": "10240", "base_image": IMAGE, "protocol": "console",
            "hourly_rate": "0.25", "monthly_rate": "30", "ss_restart": "yes", **changes}


async def make_bundle(client: Client, csrf: str, **changes: str) -> int:
    resp = await post(client, "/admin/bundles", csrf, **bundle_fields(**changes))
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/admin/bundles?info=bundle-created"
    bundle = await client.server.app[STORE].get_bundle_by_name(changes.get("name", "small"))
    assert bundle is not None
    return bundle.id


async def make_vm(client: Client, csrf: str, bundle_id: int, name: str = "Lab VM",
                  **fields: str) -> int:
    resp = await post(client, "/admin/vms", csrf, name=name, bundle=str(bundle_id),
                      hypervisor="gone", mode="auto_stop", auto_stop_minutes="30", **fields)
    assert resp.status == 303, await resp.text()
    # The hypervisor cannot be reached: the VM is recorded, in error, with libvirt's reason.
    assert resp.headers["Location"] == "/admin/vms?info=vm-failed"
    found = [d for d in await client.server.app[VMS].desktops() if d.name == name]
    assert len(found) == 1
    return found[0].id


def row_of(text: str, desktop_id: int) -> str:
    match = re.search(rf'<tr data-vm-id="{desktop_id}".*?</tr>', text, re.S)
    assert match, text
    return match.group(0)


def button(text: str, desktop_id: int, action: str) -> str:
    match = re.search(rf'<button[^>]*data-vm-id="{desktop_id}" data-vm-action="{action}"[^>]*>',
                      text, re.S)
    assert match, (action, text)
    return match.group(0)


def error_of(text: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', text, re.S)
    assert match, text
    return html.unescape(match.group(1))


async def first_event(client: Client) -> dict[str, Any]:
    """The first event of the VM state stream (then the stream is left)."""
    async with client.get("/admin/vms/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = ""
        while True:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            if line.startswith("data: "):
                assert event == "vms"
                data: dict[str, Any] = json.loads(line[6:])
                return data


async def test_the_pages_are_for_admins_only(client: Client, tmp_path: Path) -> None:
    admin_csrf = await sign_in(client, "alice")
    bundle = await make_bundle(client, admin_csrf)
    vm = await make_vm(client, admin_csrf, bundle)
    gets = ["/admin/vms", "/admin/bundles", "/admin/vms/events"]
    posts = ["/admin/vms", f"/admin/vms/{vm}/power", f"/admin/vms/{vm}/mode",
             f"/admin/vms/{vm}/self-service", "/admin/bundles", f"/admin/bundles/{bundle}",
             f"/admin/bundles/{bundle}/delete"]
    for path in gets[:2]:
        text = await page(client, path)
        assert 'class="admin-nav"' in text
        assert '<a href="/admin/vms">Desktop VMs</a>' in text
        assert '<a href="/admin/bundles">Bundles</a>' in text
    async with aiohttp.ClientSession(base_url=client.make_url("/"),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
        bob_csrf = await sign_in(bob, "bob")
        for path in gets:
            resp = await bob.get(path, allow_redirects=False)
            assert resp.status == 403, path
        for path in posts:
            resp = await bob.post(path, data={"_csrf": bob_csrf, "action": "delete",
                                              "confirm": "Lab VM", "name": "x"},
                                  allow_redirects=False)
            assert resp.status == 403, path
    denied = await client.server.app[STORE].list_audit(kind="admin.denied", limit=100)
    assert {e.detail for e in denied} == {f"GET {p}" for p in gets} | {f"POST {p}" for p in posts}
    assert all(e.user == "bob" for e in denied)
    # Nothing changed: the VM and the bundle are still there.
    assert [d.id for d in await client.server.app[VMS].desktops()] == [vm]
    assert await client.server.app[STORE].get_bundle(bundle) is not None


async def test_bundle_round_trip(client: Client, csrf: str) -> None:
    store = client.server.app[STORE]
    bundle = await make_bundle(client, csrf)
    text = await page(client, "/admin/bundles?info=bundle-created")
    assert "Bundle created." in text
    row = re.search(rf'<tr data-bundle-id="{bundle}">(.*?)</tr>', text, re.S)
    assert row, text
    assert "2 vCPU · 2 GiB · root 20 GiB · user 10 GiB" in row.group(1)
    assert IMAGE in row.group(1) and "0.25/h · 30/month" in row.group(1)
    assert ">restart<" in row.group(1)
    assert f'id="edit-bundle-{bundle}"' in text

    resp = await post(client, f"/admin/bundles/{bundle}", csrf,
                      **bundle_fields(name="medium", vcpus="4", ss_rebuild="yes",
                                      ready_text="login:"))
    assert resp.status == 303 and resp.headers["Location"] == "/admin/bundles?info=bundle-saved"
    changed = await store.get_bundle(bundle)
    assert changed is not None and changed.name == "medium" and changed.vcpus == 4
    assert changed.self_service == ("rebuild", "restart") and changed.ready_text == "login:"
    assert "4 vCPU" in await page(client, "/admin/bundles")

    # In use: deleting it is refused with the use case's reason, and it stays.
    vm = await make_vm(client, csrf, bundle)
    resp = await post(client, f"/admin/bundles/{bundle}/delete", csrf)
    text = await resp.text()
    assert resp.status == 409, text
    assert "desktop" in error_of(text) and "medium" in error_of(text)
    assert await store.get_bundle(bundle) is not None
    row = re.search(rf'<tr data-bundle-id="{bundle}">(.*?)</tr>', text, re.S)
    assert row and '<td class="num">1</td>' in row.group(1)

    # Once the VM is gone (its hypervisor is not there: taken off the store directly), the
    # bundle may go.
    await store.delete_desktop(vm)
    resp = await post(client, f"/admin/bundles/{bundle}/delete", csrf)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/bundles?info=bundle-deleted"
    assert await store.get_bundle(bundle) is None
    assert "No bundles yet" in await page(client, "/admin/bundles")

    details = [e.detail for e in await store.list_audit(kind="admin", limit=20)]
    assert any(d.startswith("bundle small created: 2 vCPU, 2048 MiB") for d in details), details
    assert any("bundle medium changed: name, vcpus, self_service, ready_text" in d for d in details), details
    assert any("bundle medium deleted" in d for d in details), details
    assert all("alice" in d for d in details if "bundle" in d)


@pytest.mark.parametrize("changes,reason", [
    ({"vcpus": "lots"}, "the vCPUs must be a whole number"),
    ({"vcpus": "65"}, "vcpus must be a whole number from 1 to 64"),
    ({"memory_mib": "9" * 30}, "memory (MiB) must be a whole number"),
    ({"base_image": "relative/disk.qcow2"}, "base_image must be an absolute path"),
    ({"protocol": "spice"}, "protocol is one of console, vnc, rdp"),
    ({"hourly_rate": "nan"}, "the hourly rate must be a number"),
    ({"monthly_rate": "-1"}, "monthly_rate must be a number from 0"),
    ({"name": "  "}, "bundle names are 1-64 printable characters"),
    ({"kernel": "/boot/vmlinuz"}, "a direct kernel boot needs both"),
    ({"ready_text": "x" * 201}, "the ready text is at most 200 printable characters"),
    ({"ss_reboot_everything": "yes"}, None),  # an unknown checkbox is not a policy: ignored
])
async def test_bad_bundle_forms_answer_4xx_with_the_reason(client: Client, csrf: str,
                                                           changes: dict[str, str],
                                                           reason: str | None) -> None:
    resp = await post(client, "/admin/bundles", csrf, **bundle_fields(**changes))
    text = await resp.text()
    if reason is None:
        assert resp.status == 303, text
        return
    assert resp.status == 400, text
    assert reason in error_of(text)
    typed = changes.get("base_image", IMAGE)
    assert 'id="new-image" name="base_image"' in text and f'value="{typed}"' in text  # kept
    assert await client.server.app[STORE].list_bundles() == []


async def test_bad_vm_forms_answer_4xx_with_the_reason(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    good = {"name": "Lab VM", "bundle": str(bundle), "hypervisor": "gone", "mode": "auto_stop",
            "auto_stop_minutes": "30"}
    cases = [
        ({"bundle": ""}, 400, "choose the bundle"),
        ({"bundle": "987654"}, 400, "choose the bundle"),
        ({"hypervisor": "elsewhere"}, 400, "unknown hypervisor 'elsewhere' (configured: gone)"),
        ({"mode": "sometimes"}, 400, "running modes are always_on, auto_stop"),
        ({"auto_stop_minutes": "0"}, 400, "AutoStop time (minutes) must be a whole number"),
        ({"auto_stop_minutes": "ten"}, 400, "AutoStop time (minutes) must be a whole number"),
        ({"name": ""}, 400, "desktop names"),
        ({"policy": "mine"}, 400, "the self-service policy is the bundle's or the desktop's own"),
        ({"port": "70000"}, 400, "port must be a whole number from 1 to 65535"),
    ]
    for changes, status, reason in cases:
        resp = await post(client, "/admin/vms", csrf, **{**good, **changes})
        text = await resp.text()
        assert resp.status == status, (changes, text)
        assert reason in error_of(text).replace("\u2019", "'"), (changes, error_of(text))
    assert await client.server.app[VMS].desktops() == []
    # A vnc bundle's desktops need the guest's address.
    vnc = await make_bundle(client, csrf, name="guest-vnc", protocol="vnc")
    resp = await post(client, "/admin/vms", csrf, **{**good, "bundle": str(vnc)})
    assert resp.status == 400 and "guest's address" in error_of(await resp.text())
    assert 'value="Lab VM"' in await resp.text()


async def test_a_new_vm_shows_its_state_and_libvirts_reason(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle, ss_rebuild="yes", policy="own")
    d = await client.server.app[VMS].desktop(vm)
    assert d.vm is not None and d.vm.state == "error" and "nonexistent" in d.vm.reason
    assert d.vm.own_self_service == ("rebuild",) and d.vm.auto_stop_seconds == 1800

    text = await page(client, "/admin/vms?info=vm-failed")
    assert "the hypervisor did not make it" in text
    row = row_of(text, vm)
    assert f'href="/admin/desktops/{vm}">Lab VM</a>' in row
    assert 'class="state state-error"' in row and ">error</span>" in row
    reason = re.search(r'data-vm-part="reason"[^>]*>(.*?)</span>', row, re.S)
    assert reason and html.unescape(reason.group(1)) == d.vm.reason
    assert ">small</a>" in row and "AutoStop after 30 min" in row
    # From error: start, stop, rebuild and delete; not reboot.
    for action in ("start", "stop", "rebuild", "delete"):
        assert "disabled" not in button(row, vm, action), action
    assert "disabled" in button(row, vm, "reboot")
    assert 'name="confirm"' in row and 'placeholder="Lab VM"' in row

    # The desktop list marks its state for the live updates; the desktop page shows the VM and
    # does not offer the generic delete.
    listing = await page(client, "/admin/desktops")
    assert re.search(rf'class="state state-error" data-vm-id="{vm}" data-vm-part="state"', listing)
    assert "/static/vm_states.js" in listing
    own = await page(client, f"/admin/desktops/{vm}")
    assert 'id="vm-heading"' in own and 'id="delete-desktop"' not in own
    assert f'data-vm-id="{vm}" data-vm-part="state"' in own and "nonexistent" in own
    assert "(its own policy)" in own and 'href="/admin/bundles#bundle-' in own
    assert 'id="confirm-heading"' not in await (await post(
        client, f"/admin/desktops/{vm}/delete", csrf)).text()
    # The generic delete, sent anyway, is refused: a VM goes by its power action delete.
    resp = await post(client, f"/admin/desktops/{vm}/delete", csrf, confirm="yes")
    assert resp.status == 400 and "typing its name" in await resp.text()

    # The hypervisor's problem shows once the gateway has looked at it (every second here).
    async def problem() -> bool:
        return "cannot be reached: " in row_of(await page(client, "/admin/vms"), vm)
    for _ in range(100):
        if await problem():
            break
        await asyncio.sleep(0.1)
    assert await problem()


async def test_the_event_stream_lists_the_vms_with_their_states(client: Client,
                                                                csrf: str) -> None:
    assert await first_event(client) == {"type": "vms", "vms": []}
    bundle = await make_bundle(client, csrf)
    first = await make_vm(client, csrf, bundle, name="One")
    second = await make_vm(client, csrf, bundle, name="Two")
    data = await first_event(client)
    assert data["type"] == "vms"
    vms = {v["id"]: v for v in data["vms"]}
    assert set(vms) == {first, second}
    for vm in vms.values():
        assert vm["state"] == "error" and "nonexistent" in vm["reason"]
        assert vm["busy"] is False and vm["mode"] == "auto_stop"
        assert vm["actions"] == ["start", "stop", "rebuild", "delete"]
        assert "hypervisor_problem" in vm
    assert vms[first]["name"] == "One"


async def test_rebuild_and_delete_need_the_typed_name(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle)
    for action in ("rebuild", "delete"):
        for typed in ("", "lab vm", "Lab VM2"):
            resp = await post(client, f"/admin/vms/{vm}/power", csrf, action=action,
                              confirm=typed)
            text = await resp.text()
            assert resp.status == 400, text
            assert error_of(text) == f"to {action} this desktop, type its name (Lab VM) to confirm"
            assert 'id="vms-table"' in text
    # From the desktop's page, the refusal shows there.
    resp = await post(client, f"/admin/vms/{vm}/power", csrf, action="delete", confirm="x",
                      back="desktop")
    text = await resp.text()
    assert resp.status == 400 and 'id="vm-heading"' in text and "type its name" in text
    d = await client.server.app[VMS].desktop(vm)
    assert d.vm is not None and d.vm.state == "error"
    asked = await client.server.app[STORE].list_audit(kind="vm", limit=50)
    assert not [e for e in asked if "asked" in e.detail]
    # Typed right (surrounding blanks do not matter), it is carried out.
    resp = await post(client, f"/admin/vms/{vm}/power", csrf, action="delete", confirm=" Lab VM ")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/vms?info=delete"


async def test_unknown_actions_and_desktops(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle)
    resp = await post(client, f"/admin/vms/{vm}/power", csrf, action="explode")
    assert resp.status == 400 and "power actions are" in error_of(await resp.text())
    resp = await post(client, f"/admin/vms/{vm}/power", csrf, action="reboot")
    assert resp.status == 409 and "cannot reboot a VM that is error" in error_of(await resp.text())
    resp = await post(client, "/admin/desktops", csrf, name="Plain", provider="static",
                      host="127.0.0.1", port="5999")
    assert resp.status == 303
    plain = int(resp.headers["Location"].split("/")[3].split("?")[0])
    # Ids that name no desktop VM (none, or a desktop that is not a VM) answer alike: 404.
    for path in ("/admin/vms/987654/power", "/admin/vms/987654/mode",
                 "/admin/vms/987654/self-service", "/admin/bundles/987654",
                 "/admin/bundles/987654/delete", f"/admin/vms/{plain}/power",
                 f"/admin/vms/{plain}/mode", f"/admin/vms/{plain}/self-service"):
        resp = await post(client, path, csrf, action="start", **bundle_fields())
        assert resp.status == 404, path


async def test_mode_and_self_service_from_the_desktop_page(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle)
    resp = await post(client, f"/admin/vms/{vm}/mode", csrf, mode="always_on",
                      auto_stop_minutes="45", back="desktop")
    assert resp.status == 303 and resp.headers["Location"] == f"/admin/desktops/{vm}?info=vm-mode"
    text = await page(client, resp.headers["Location"])
    assert "Running mode saved." in text and ">AlwaysOn</span>" in text
    resp = await post(client, f"/admin/vms/{vm}/mode", csrf, mode="auto_stop",
                      auto_stop_minutes="0", back="desktop")
    text = await resp.text()
    assert resp.status == 400 and 'id="vm-heading"' in text
    assert "AutoStop time (minutes) must be a whole number from 1 to 10080" in error_of(text)

    resp = await post(client, f"/admin/vms/{vm}/self-service", csrf, policy="own",
                      ss_mode="yes", ss_restart="yes", back="desktop")
    assert resp.status == 303
    d = await client.server.app[VMS].desktop(vm)
    assert d.vm is not None and d.vm.own_self_service == ("mode", "restart")
    assert d.vm.mode == "always_on" and d.vm.auto_stop_seconds == 45 * 60
    resp = await post(client, f"/admin/vms/{vm}/self-service", csrf, policy="bundle")
    assert resp.status == 303 and resp.headers["Location"] == "/admin/vms?info=self-service"
    d = await client.server.app[VMS].desktop(vm)
    assert d.vm is not None and d.vm.own_self_service is None
    details = [e.detail for e in await client.server.app[STORE].list_audit(kind="vm", limit=20)]
    assert any("running mode set: AlwaysOn" in x for x in details), details
    assert any("self-service set: mode, restart" in x for x in details), details
    assert any("self-service set: the bundle's" in x for x in details), details


async def test_posts_need_the_csrf_token(client: Client, csrf: str) -> None:
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle)
    paths = ["/admin/vms", f"/admin/vms/{vm}/power", f"/admin/vms/{vm}/mode",
             f"/admin/vms/{vm}/self-service", "/admin/bundles", f"/admin/bundles/{bundle}",
             f"/admin/bundles/{bundle}/delete"]
    fields = {**bundle_fields(name="other"), "action": "delete", "confirm": "Lab VM",
              "bundle": str(bundle), "hypervisor": "gone", "mode": "always_on"}
    for path in paths:
        for token in ({}, {"_csrf": "forged"}):
            resp = await client.post(path, data={**fields, **token}, allow_redirects=False)
            assert resp.status == 403, path
            assert "form has expired" in await resp.text()
    assert [d.id for d in await client.server.app[VMS].desktops()] == [vm]
    d = await client.server.app[VMS].desktop(vm)
    assert d.vm is not None and d.vm.state == "error" and d.vm.mode == "auto_stop"
    assert [b.name for b in await client.server.app[STORE].list_bundles()] == ["small"]


async def test_many_power_requests_at_once(client: Client, csrf: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """20 at once on one VM in error: of the starts exactly one is accepted (the page answers at
    once, while the VM is starting), the others are told why not; reboots are never allowed
    from error. None is a 5xx."""
    bundle = await make_bundle(client, csrf)
    vm = await make_vm(client, csrf, bundle)
    provider = client.server.app[PROVIDERS].get("libvirt")
    release = asyncio.Event()

    async def slow_start(spec: object) -> None:  # the hypervisor takes its time
        await release.wait()

    monkeypatch.setattr(provider, "start", slow_start)
    actions = ["start"] * 14 + ["reboot"] * 6
    answers = await asyncio.gather(*(
        post(client, f"/admin/vms/{vm}/power", csrf, action=action) for action in actions))
    results = [(action, resp.status, error_of(await resp.text()) if resp.status != 303 else "")
               for action, resp in zip(actions, answers, strict=True)]
    assert all(status < 500 for _, status, _ in results), results
    accepted = [r for r in results if r[1] == 303]
    assert [a for a, _, _ in accepted] == ["start"], results
    for action, status, reason in results:
        if status != 303:
            assert status == 409, (action, status, reason)
            assert reason.startswith(f"cannot {action} a VM that is") or \
                "changed meanwhile" in reason, reason
    # The VM is starting, and the page and the stream say so.
    row = row_of(await page(client, "/admin/vms"), vm)
    assert 'class="state state-starting"' in row
    assert "disabled" not in button(row, vm, "stop")
    assert "disabled" in button(row, vm, "start")
    data = await first_event(client)
    assert data["vms"][0]["state"] == "starting" and data["vms"][0]["busy"] is True
    assert data["vms"][0]["actions"] == ["stop"]
    starts = [e for e in await client.server.app[STORE].list_audit(kind="vm", limit=50)
              if "start asked" in e.detail]
    assert len(starts) == 1
    release.set()
