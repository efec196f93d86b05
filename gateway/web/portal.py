"""The portal: the signed-in user's desktops; for desktop VMs, their state and what the person
may do to their own (restart, rebuild, running mode), as the desktop's policy allows."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..cases.access import NO_SUCH_DESKTOP
from ..cases.vms import DesktopVms
from ..errors import GatewayError, NotFound
from ..keys import ACCESS, VMS
from ..model import AUTO_STOP, MODE_NAMES, RUNNING_MODES, Desktop, User
from .common import actor, check_form_csrf, client_ip, redirect, render, require_signed_in
from .inputs import path_id

routes = web.RouteTableDef()


@dataclass(frozen=True)
class DesktopCard:
    id: int
    name: str
    protocol: str
    state: str
    vm: bool = False
    reason: str = ""
    mode: str = ""
    may: tuple[str, ...] = ()  # the self-service actions this person may take
    busy: bool = False  # an action is under way: its buttons wait


def _card(d: Desktop, state: str, vms: DesktopVms) -> DesktopCard:
    if d.vm is None:
        return DesktopCard(d.id, d.name, d.protocol, state)
    settled = d.vm.state in ("running", "stopped", "error")
    # The hypervisor's own words are for the admin (they name hosts and paths).
    reason = ("This desktop ran into a problem; connecting tries to start it again, and your"
              " administrator can see what went wrong." if d.vm.state == "error" else "")
    return DesktopCard(d.id, d.name, d.protocol, state, True, reason, d.vm.mode,
                       d.vm.self_service,
                       busy=not settled or vms.busy(d.id))


async def _render(request: web.Request, user: User, *, error: str | None = None,
                  http_status: int = 200) -> web.Response:
    vms = request.config_dict[VMS]
    cards = [_card(d, state, vms)
             for d, state in await request.config_dict[ACCESS].desktops_for(user)]
    return render(request, "portal.html", desktops=cards, modes=RUNNING_MODES,
                  mode_words=MODE_NAMES, error=error, http_status=http_status)


@routes.get("/")
async def portal(request: web.Request) -> web.StreamResponse:
    ws, user = require_signed_in(request)
    if ws.kiosk_id is not None:
        raise web.HTTPSeeOther("/kiosk")  # a kiosk shows its own full-screen pages
    return await _render(request, user)


@routes.post(r"/desktops/{desktop_id}/vm")
async def self_service(request: web.Request) -> web.StreamResponse:
    """A person's own desktop VM: restart, rebuild (typed confirmation) or its running mode.
    The use case checks the desktop is theirs and its policy allows it, and audits it."""
    _, user = require_signed_in(request)
    try:
        desktop_id = path_id(request, "desktop_id", "desktop")
    except NotFound:
        raise NotFound(NO_SUCH_DESKTOP) from None
    # Not theirs, or missing: the one answer, before anything else is looked at.
    await request.config_dict[ACCESS].check_access(user, desktop_id, client_ip(request))
    fields = await check_form_csrf(request)
    vms = request.config_dict[VMS]
    who = actor(request, user)
    try:
        if fields.get("action") == "mode":
            await vms.set_mode(who, desktop_id, fields.get("mode", AUTO_STOP))
        else:
            await vms.power(who, desktop_id, fields.get("action", ""),
                            confirm=fields.get("confirm", ""), wait=False)
    except GatewayError as exc:
        return await _render(request, user, error=exc.reason, http_status=exc.http_status)
    return redirect("/")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})
