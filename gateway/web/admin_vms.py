"""Admin pages for desktop VMs and bundles, as plain forms over the use cases (gateway/cases/
vms.py, bundles.py), and the event stream that keeps VM states live on the admin pages.

Like the other admin pages (admin_pages.py) they are served by the admin sub-application, whose
middleware lets only a signed-in admin through; every POST starts with ``check_form_csrf``;
changes answer with a 303 and an ``?info=`` code mapped to a fixed message, refusals re-render
the page with the use case's reason and status. Power actions answer at once (they carry on in
the background): the page shows the VM's passing state live through ``GET /admin/vms/events``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..cases.vms import POWER
from ..errors import BadRequest, GatewayError, NotFound
from ..keys import BUNDLES, SETTINGS, SHUTTING_DOWN, VMS
from ..model import AUTO_STOP, SELF_SERVICE, VM_PROTOCOLS, Bundle
from .admin_pages import FORMATTERS, render_desktop_page
from .common import actor, check_form_csrf, redirect, render, signed_in_admin
from .inputs import parse_int, path_id
from .sse import follow
from .vm_views import (
    DEFAULT_AUTO_STOP_MINUTES,
    MAX_AUTO_STOP_MINUTES,
    VM_FORMS,
    VM_INFO,
    snapshot,
    vm_rows,
)

routes = web.RouteTableDef()

MAX_RATE_CHARS = 32

INFO = {
    "vm-created": "Desktop VM created; its state is below. Assign users or groups on its page.",
    "vm-failed": "Desktop VM recorded, but the hypervisor did not make it: the reason is below.",
    **VM_INFO,
    "bundle-created": "Bundle created.",
    "bundle-saved": "Bundle saved. Its desktops take a new size at their next start and a new"
                    " base image at their next rebuild.",
    "bundle-deleted": "Bundle deleted.",
}
CREATE_FIELDS = ("name", "bundle", "hypervisor", "mode", "auto_stop_minutes", "policy", "host",
                 "port", *(f"ss_{item}" for item in SELF_SERVICE))
BUNDLE_FIELDS = ("name", "vcpus", "memory_mib", "root_mib", "user_mib", "base_image", "protocol",
                 "hourly_rate", "monthly_rate", "kernel", "initrd", "cmdline", "ready_text",
                 *(f"ss_{item}" for item in SELF_SERVICE))
BUNDLE_DEFAULTS = {"vcpus": "2", "memory_mib": "2048", "root_mib": "20480", "user_mib": "10240",
                   "protocol": "console", "hourly_rate": "0", "monthly_rate": "0"}
SIZE_WORDS = {"vcpus": "vCPUs", "memory_mib": "memory (MiB)", "root_mib": "root disk (MiB)",
              "user_mib": "user volume (MiB)"}


def _info(request: web.Request) -> str | None:
    return INFO.get(request.query.get("info", ""))


def _kept(form: Mapping[str, str], fields: tuple[str, ...]) -> dict[str, str]:
    return {k: form.get(k, "")[:4096] for k in fields}


def _policy(form: Mapping[str, str]) -> tuple[str, ...]:
    """The self-service checkboxes (``ss_<action>=yes``) that are ticked."""
    return tuple(item for item in SELF_SERVICE if form.get(f"ss_{item}") == "yes")


def _own_policy(form: Mapping[str, str]) -> tuple[str, ...] | None:
    """``policy=bundle`` (or nothing): None, the bundle's; ``policy=own``: the checkboxes."""
    choice = form.get("policy", "bundle") or "bundle"
    if choice not in ("bundle", "own"):
        raise BadRequest("the self-service policy is the bundle's or the desktop's own")
    return None if choice == "bundle" else _policy(form)


def _minutes(form: Mapping[str, str]) -> int:
    raw = form.get("auto_stop_minutes", "").strip() or str(DEFAULT_AUTO_STOP_MINUTES)
    return parse_int(raw, "the AutoStop time (minutes)", 1, MAX_AUTO_STOP_MINUTES) * 60


def _rate(raw: str, what: str) -> float:
    text = raw.strip() or "0"
    try:
        if len(text) > MAX_RATE_CHARS:
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise BadRequest(f"the {what} must be a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"the {what} must be a number")
    return value


def _bundle_values(form: Mapping[str, str]) -> dict[str, Any]:
    """A bundle form's fields, typed (the use case checks their ranges); BadRequest naming the
    first that is not even a number."""
    values: dict[str, Any] = {"name": form.get("name", "")}
    for field, words in SIZE_WORDS.items():
        values[field] = parse_int(form.get(field, "") or "0", f"the {words}")
    for field in ("base_image", "kernel", "initrd", "cmdline", "ready_text"):
        values[field] = form.get(field, "").strip()
    values["protocol"] = form.get("protocol", "console")
    values["hourly_rate"] = _rate(form.get("hourly_rate", ""), "hourly rate")
    values["monthly_rate"] = _rate(form.get("monthly_rate", ""), "monthly rate")
    values["self_service"] = _policy(form)
    return values


def _bundle_form(b: Bundle) -> dict[str, str]:
    """A bundle as its edit form shows it."""
    form = {"name": b.name, "vcpus": str(b.vcpus), "memory_mib": str(b.memory_mib),
            "root_mib": str(b.root_mib), "user_mib": str(b.user_mib),
            "base_image": b.base_image, "protocol": b.protocol,
            "hourly_rate": f"{b.hourly_rate:g}", "monthly_rate": f"{b.monthly_rate:g}",
            "kernel": b.kernel, "initrd": b.initrd, "cmdline": b.cmdline,
            "ready_text": b.ready_text}
    form.update({f"ss_{item}": "yes" for item in b.self_service})
    return form


# desktop VMs -----------------------------------------------------------------------------------
async def _vms_page(request: web.Request, *, http_status: int = 200, error: str | None = None,
                    form: Mapping[str, str] | None = None) -> web.Response:
    app = request.config_dict
    vms = app[VMS]
    hypervisors = list(app[SETTINGS].hypervisor_configs)
    return render(request, "admin_vms.html", http_status=http_status, error=error,
                  info=None if error else _info(request), rows=await vm_rows(vms),
                  bundles=await app[BUNDLES].bundles(),
                  hypervisors=[(name, vms.hypervisor_problem(name)) for name in hypervisors],
                  vm_forms=VM_FORMS, form=dict(form or {}), chosen=_policy(form or {}),
                  **FORMATTERS)


@routes.get("/vms")
async def vms_page(request: web.Request) -> web.StreamResponse:
    return await _vms_page(request)


@routes.post("/vms")
async def vm_create(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    app = request.config_dict
    try:
        try:
            bundle = await app[BUNDLES].bundle(parse_int(form.get("bundle", ""), "bundle", 0))
        except (BadRequest, NotFound):
            raise BadRequest("choose the bundle the desktop VM is made from") from None
        port_text = form.get("port", "").strip()
        made = await app[VMS].create(
            actor(request, me), form.get("name", ""), bundle,
            hypervisor=form.get("hypervisor", ""), mode=form.get("mode", AUTO_STOP),
            auto_stop_seconds=_minutes(form), self_service=_own_policy(form),
            host=form.get("host", "").strip(),
            port=parse_int(port_text, "port", 1, 65535) if port_text else 0)
    except GatewayError as exc:
        return await _vms_page(request, http_status=exc.http_status, error=exc.reason,
                               form=_kept(form, CREATE_FIELDS))
    failed = made.vm is not None and made.vm.state == "error"
    return redirect(f"/admin/vms?info={'vm-failed' if failed else 'vm-created'}")


def _vm_id(request: web.Request) -> int:
    return path_id(request, "id", "desktop VM")


async def _vm_change(request: web.Request, what: str) -> web.StreamResponse:
    """One of a VM's forms (``what``: power, mode, self-service), from the VM list or from the
    desktop's own page (``back=desktop``): refusals re-render the page it came from."""
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    desktop_id = _vm_id(request)
    on_desktop = form.get("back") == "desktop"
    vms = request.config_dict[VMS]
    code = what
    try:
        if what == "power":
            name = form.get("action", "")
            await vms.power(actor(request, me), desktop_id, name,
                            confirm=form.get("confirm", ""), wait=False)
            code = POWER[name].value
        elif what == "mode":
            await vms.set_mode(actor(request, me), desktop_id, form.get("mode", ""),
                               _minutes(form))
        else:
            await vms.set_self_service(actor(request, me), desktop_id, _own_policy(form))
    except NotFound:
        raise
    except GatewayError as exc:
        if on_desktop:
            return await render_desktop_page(request, desktop_id, http_status=exc.http_status,
                                             error=exc.reason)
        return await _vms_page(request, http_status=exc.http_status, error=exc.reason)
    if on_desktop and code != "delete":
        return redirect(f"/admin/desktops/{desktop_id}?info=vm-{code}")
    return redirect(f"/admin/vms?info={code}")


@routes.post(r"/vms/{id:\d+}/power")
async def vm_power(request: web.Request) -> web.StreamResponse:
    """start, stop, reboot, rebuild or delete (the last two with ``confirm``, the desktop's
    name); answered as soon as the action began."""
    return await _vm_change(request, "power")


@routes.post(r"/vms/{id:\d+}/mode")
async def vm_mode(request: web.Request) -> web.StreamResponse:
    return await _vm_change(request, "mode")


@routes.post(r"/vms/{id:\d+}/self-service")
async def vm_self_service(request: web.Request) -> web.StreamResponse:
    return await _vm_change(request, "self-service")


@routes.get("/vms/events")
async def vm_events(request: web.Request) -> web.StreamResponse:
    """Every VM's state at once, then again whenever it changed (looked at every second), until
    the browser leaves, the gateway shuts down or ``STREAM_SECONDS`` passed (the browser's
    EventSource then opens a new stream)."""
    app = request.config_dict
    vms, shutting_down = app[VMS], app[SHUTTING_DOWN]
    async def look() -> dict[str, Any]:
        return await snapshot(vms)

    return await follow(request, "vms", look, shutting_down)


# bundles ---------------------------------------------------------------------------------------
async def _bundles_page(request: web.Request, *, http_status: int = 200,
                        error: str | None = None, form: Mapping[str, str] | None = None,
                        edit_id: int | None = None,
                        edit_form: Mapping[str, str] | None = None) -> web.Response:
    bundles = request.config_dict[BUNDLES]
    found = await bundles.bundles()
    uses = await asyncio.gather(*(bundles.uses(b.id) for b in found))
    forms = {b.id: _bundle_form(b) for b in found}
    if edit_id is not None and edit_form is not None and edit_id in forms:
        forms[edit_id] = dict(edit_form)
    return render(request, "admin_bundles.html", http_status=http_status, error=error,
                  info=None if error else _info(request),
                  rows=list(zip(found, uses, strict=True)), forms=forms, edit_id=edit_id,
                  form={**BUNDLE_DEFAULTS, **(form or {})}, protocols=VM_PROTOCOLS,
                  self_service=SELF_SERVICE, checked=_policy, **FORMATTERS)


@routes.get("/bundles")
async def bundles_page(request: web.Request) -> web.StreamResponse:
    return await _bundles_page(request)


@routes.post("/bundles")
async def bundle_create(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    try:
        await request.config_dict[BUNDLES].create(actor(request, me),
                                                  Bundle(0, **_bundle_values(form)))
    except GatewayError as exc:
        return await _bundles_page(request, http_status=exc.http_status, error=exc.reason,
                                   form=_kept(form, BUNDLE_FIELDS))
    return redirect("/admin/bundles?info=bundle-created")


def _bundle_id(request: web.Request) -> int:
    return path_id(request, "id", "bundle")


@routes.post(r"/bundles/{id:\d+}")
async def bundle_update(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    bundle_id = _bundle_id(request)
    try:
        await request.config_dict[BUNDLES].update(actor(request, me), bundle_id,
                                                  **_bundle_values(form))
    except NotFound:
        raise
    except GatewayError as exc:
        return await _bundles_page(request, http_status=exc.http_status, error=exc.reason,
                                   edit_id=bundle_id, edit_form=_kept(form, BUNDLE_FIELDS))
    return redirect("/admin/bundles?info=bundle-saved")


@routes.post(r"/bundles/{id:\d+}/delete")
async def bundle_delete(request: web.Request) -> web.StreamResponse:
    """Refused (409, with the reason) while a desktop VM is made from the bundle."""
    _, me = signed_in_admin(request)
    await check_form_csrf(request)
    try:
        await request.config_dict[BUNDLES].delete(actor(request, me), _bundle_id(request))
    except NotFound:
        raise
    except GatewayError as exc:
        return await _bundles_page(request, http_status=exc.http_status, error=exc.reason)
    return redirect("/admin/bundles?info=bundle-deleted")
