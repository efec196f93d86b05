"""The REST API's bundles and desktop VMs: declared in the one operation table (``api.API``),
served by the same gated sub-application, documented in the same OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..cases.vms import POWER, DesktopVms
from ..errors import BadRequest
from ..keys import BUNDLES, VMS
from ..model import RUNNING_MODES, SELF_SERVICE, VM_PROTOCOLS, Bundle, Desktop
from .api import API, PREFIX, _admin, _body, _id, _typed
from .openapi import BOOLEAN, INTEGER, NUMBER, STRING, TIMESTAMP, array, nullable, obj, ref

POLICY = array({"type": "string", "enum": list(SELF_SERVICE)})
_SIZES = {"vcpus": INTEGER, "memory_mib": INTEGER, "root_mib": INTEGER, "user_mib": INTEGER}
_TEXTS = ("base_image", "kernel", "initrd", "cmdline", "ready_text")
BUNDLE = obj(
    ("id", "name", "vcpus", "memory_mib", "root_mib", "user_mib", "base_image", "protocol",
     "hourly_rate", "monthly_rate", "self_service", "kernel", "initrd", "cmdline",
     "ready_text"),
    id=INTEGER, name=STRING, **_SIZES, base_image=STRING,
    protocol={"type": "string", "enum": list(VM_PROTOCOLS),
              "description": "console: the VM's own screen on a private socket; vnc or rdp: a"
                             " server inside the guest at the desktop's address"},
    hourly_rate={**NUMBER, "description": "AutoStop: cost per running hour"},
    monthly_rate={**NUMBER, "description": "AlwaysOn: cost per month"},
    self_service=POLICY, kernel=STRING, initrd=STRING, cmdline=STRING,
    ready_text={**STRING, "description": "what the guest prints on its serial console once it"
                                         " is ready; a start waits for it (empty: the screen's"
                                         " first answer)"},
    desktops={**INTEGER, "description": "desktops made from it"})
BUNDLE_BODY = obj((), name=STRING, **_SIZES, base_image=STRING,
                  protocol={"type": "string", "enum": list(VM_PROTOCOLS)},
                  hourly_rate=NUMBER, monthly_rate=NUMBER, self_service=POLICY,
                  kernel=STRING, initrd=STRING, cmdline=STRING, ready_text=STRING)
VM = obj(
    ("id", "name", "state", "reason", "since", "bundle", "bundle_id", "hypervisor", "mode",
     "auto_stop_seconds", "self_service", "own_self_service", "busy", "hypervisor_problem"),
    id=INTEGER, name=STRING,
    state={"type": "string", "description": "creating, stopped, starting, running, stopping,"
                                            " rebooting, rebuilding, error or deleting"},
    reason={**STRING, "description": "why it is in this state (libvirt's error, a change seen"
                                     " outside Deskgate); empty when there is nothing to say"},
    since=TIMESTAMP, bundle=STRING, bundle_id=INTEGER, hypervisor=STRING,
    mode={"type": "string", "enum": list(RUNNING_MODES)}, auto_stop_seconds=INTEGER,
    self_service={**POLICY, "description": "what its users may do themselves"},
    own_self_service={**BOOLEAN, "description": "false: the bundle's policy applies"},
    busy={**BOOLEAN, "description": "an action on it runs on this gateway now"},
    hypervisor_problem=nullable(STRING), maintenance=BOOLEAN)
API.schemas.update({"Bundle": BUNDLE, "DesktopVm": VM})


def bundle_json(b: Bundle, uses: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": b.id, "name": b.name, "vcpus": b.vcpus, "memory_mib": b.memory_mib,
        "root_mib": b.root_mib, "user_mib": b.user_mib, "base_image": b.base_image,
        "protocol": b.protocol, "hourly_rate": b.hourly_rate, "monthly_rate": b.monthly_rate,
        "self_service": list(b.self_service), "kernel": b.kernel, "initrd": b.initrd,
        "cmdline": b.cmdline, "ready_text": b.ready_text}
    if uses is not None:
        out["desktops"] = uses
    return out


def vm_json(d: Desktop, vms: DesktopVms) -> dict[str, Any]:
    vm = d.vm
    assert vm is not None
    return {"id": d.id, "name": d.name, "state": vm.state, "reason": vm.reason,
            "since": vm.since, "bundle": vm.bundle.name, "bundle_id": vm.bundle.id,
            "hypervisor": vm.hypervisor, "mode": vm.mode,
            "auto_stop_seconds": vm.auto_stop_seconds, "self_service": list(vm.self_service),
            "own_self_service": vm.own_self_service is not None, "busy": vms.busy(d.id),
            "hypervisor_problem": vms.hypervisor_problem(vm.hypervisor),
            "maintenance": d.maintenance}


def _policy(body: dict[str, Any], key: str = "self_service") -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key} is a list of {', '.join(SELF_SERVICE)}")
    return tuple(value)


def _bundle_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("name", *_TEXTS):
        if key in body:
            fields[key] = _typed(body, key, str)
    for key in _SIZES:
        if key in body:
            fields[key] = _typed(body, key, int)
    if "protocol" in body:
        fields["protocol"] = _typed(body, "protocol", str)
    for key in ("hourly_rate", "monthly_rate"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"{key} must be a number")
            fields[key] = float(value)
    if "self_service" in body:
        fields["self_service"] = _policy(body) or ()
    return {k: v for k, v in fields.items() if v is not None}


# bundles -----------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/bundles", "Bundles: the sizes desktop VMs are made from",
               tag="bundles", response=obj(("bundles",), bundles=array(ref("Bundle"))))
async def list_bundles(request: web.Request) -> web.StreamResponse:
    bundles = request.config_dict[BUNDLES]
    return web.json_response({"bundles": [bundle_json(b, await bundles.uses(b.id))
                                          for b in await bundles.bundles()]})


@API.operation("POST", f"{PREFIX}/bundles", "Create a bundle", tag="bundles", status=201,
               request={**BUNDLE_BODY, "required": ["name", "base_image"]},
               response=ref("Bundle"))
async def create_bundle(request: web.Request) -> web.StreamResponse:
    body = await _body(request, set(BUNDLE_BODY["properties"]))
    fields = _bundle_fields(body)
    for key in ("name", "base_image"):
        if key not in fields:
            raise BadRequest(f"{key} is required")
    made = await request.config_dict[BUNDLES].create(_admin(request), Bundle(
        0, fields.pop("name"), fields.pop("vcpus", 1), fields.pop("memory_mib", 2048),
        fields.pop("root_mib", 20480), fields.pop("user_mib", 10240), fields.pop("base_image"),
        **fields))
    return web.json_response(bundle_json(made, 0), status=201)


@API.operation("GET", f"{PREFIX}/bundles/{{id}}", "One bundle", tag="bundles",
               response=ref("Bundle"))
async def get_bundle(request: web.Request) -> web.StreamResponse:
    bundles = request.config_dict[BUNDLES]
    found = await bundles.bundle(_id(request))
    return web.json_response(bundle_json(found, await bundles.uses(found.id)))


@API.operation("PATCH", f"{PREFIX}/bundles/{{id}}",
               "Change a bundle (desktops take a new size at their next start)", tag="bundles",
               request=BUNDLE_BODY, response=ref("Bundle"))
async def update_bundle(request: web.Request) -> web.StreamResponse:
    body = await _body(request, set(BUNDLE_BODY["properties"]))
    bundles = request.config_dict[BUNDLES]
    changed = await bundles.update(_admin(request), _id(request), **_bundle_fields(body))
    return web.json_response(bundle_json(changed, await bundles.uses(changed.id)))


@API.operation("DELETE", f"{PREFIX}/bundles/{{id}}",
               "Delete a bundle (409 while a desktop is made from it)", tag="bundles")
async def delete_bundle(request: web.Request) -> web.StreamResponse:
    await request.config_dict[BUNDLES].delete(_admin(request), _id(request))
    return web.Response(status=204)


# desktop VMs -------------------------------------------------------------------------------------
@API.operation("GET", f"{PREFIX}/vms", "Desktop VMs with their state", tag="vms",
               response=obj(("vms",), vms=array(ref("DesktopVm"))))
async def list_vms(request: web.Request) -> web.StreamResponse:
    vms = request.config_dict[VMS]
    return web.json_response({"vms": [vm_json(d, vms) for d in await vms.desktops()]})


@API.operation("POST", f"{PREFIX}/vms",
               "Create a desktop VM from a bundle (its disks and domain; AlwaysOn starts it)",
               tag="vms", status=201,
               request=obj(("name", "bundle"), name=STRING,
                           bundle={**STRING, "description": "the bundle's name"},
                           hypervisor=STRING, mode={"type": "string",
                                                    "enum": list(RUNNING_MODES)},
                           auto_stop_seconds=INTEGER, self_service=nullable(POLICY),
                           host=STRING, port=INTEGER),
               response=ref("DesktopVm"))
async def create_vm(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"name", "bundle", "hypervisor", "mode", "auto_stop_seconds",
                                 "self_service", "host", "port"})
    vms = request.config_dict[VMS]
    bundle = await request.config_dict[BUNDLES].bundle_named(
        _typed(body, "bundle", str, required=True))
    auto_stop = _typed(body, "auto_stop_seconds", int)
    made = await vms.create(
        _admin(request), _typed(body, "name", str, required=True), bundle,
        hypervisor=_typed(body, "hypervisor", str) or "default",
        mode=_typed(body, "mode", str) or "auto_stop",
        auto_stop_seconds=3600 if auto_stop is None else auto_stop,
        self_service=_policy(body), host=_typed(body, "host", str) or "",
        port=_typed(body, "port", int) or 0)
    return web.json_response(vm_json(made, vms), status=201)


@API.operation("GET", f"{PREFIX}/vms/{{id}}", "One desktop VM", tag="vms",
               response=ref("DesktopVm"))
async def get_vm(request: web.Request) -> web.StreamResponse:
    vms = request.config_dict[VMS]
    return web.json_response(vm_json(await vms.desktop(_id(request)), vms))


@API.operation("POST", f"{PREFIX}/vms/{{id}}/power",
               "A power action: accepted at once (202) and carried out in the background,"
               " or with wait, answered when done; rebuild and delete need confirm, the"
               " desktop's name; 409 when its state does not allow the action now",
               tag="vms", status=202,
               request=obj(("action",), action={"type": "string", "enum": list(POWER)},
                           confirm=STRING, wait=BOOLEAN),
               response=ref("DesktopVm"))
async def power_vm(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"action", "confirm", "wait"})
    vms = request.config_dict[VMS]
    wait = bool(_typed(body, "wait", bool))
    d = await vms.power(_admin(request), _id(request), _typed(body, "action", str, required=True),
                        confirm=_typed(body, "confirm", str) or "", wait=wait)
    return web.json_response(vm_json(d, vms), status=200 if wait else 202)


@API.operation("PUT", f"{PREFIX}/vms/{{id}}/mode", "Switch a desktop VM's running mode",
               tag="vms", request=obj(("mode",), mode={"type": "string",
                                                       "enum": list(RUNNING_MODES)},
                                      auto_stop_seconds=INTEGER),
               response=ref("DesktopVm"))
async def set_vm_mode(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"mode", "auto_stop_seconds"})
    vms = request.config_dict[VMS]
    d = await vms.set_mode(_admin(request), _id(request), _typed(body, "mode", str, required=True),
                           _typed(body, "auto_stop_seconds", int))
    return web.json_response(vm_json(d, vms))


@API.operation("PUT", f"{PREFIX}/vms/{{id}}/self-service",
               "A desktop VM's own self-service policy (null: its bundle's)", tag="vms",
               request=obj(("self_service",), self_service=nullable(POLICY)),
               response=ref("DesktopVm"))
async def set_vm_self_service(request: web.Request) -> web.StreamResponse:
    body = await _body(request, {"self_service"})
    if "self_service" not in body:
        raise BadRequest("self_service is required (null follows the bundle)")
    vms = request.config_dict[VMS]
    d = await vms.set_self_service(_admin(request), _id(request), _policy(body))
    return web.json_response(vm_json(d, vms))
