"""The SSH hosts page (``/admin/ssh``): every host the gateway reaches over SSH with its health
live, and the forms that add a host, pin its (new) host key and remove it, over the use case
(gateway/cases/ssh_hosts.py).

Like the other admin pages it is served by the admin sub-application (only a signed-in admin
gets through); every POST starts with ``check_form_csrf``; changes answer with a 303 and an
``?info=`` code mapped to a fixed message, refusals re-render the page with the use case's
reason and status. A private key is taken once and never shown again, not even on a form
re-rendered after an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import GatewayError
from ..keys import SHUTTING_DOWN, SSH_HOSTS
from ..ssh.connections import HOST_KEY_POLICIES, PINNED
from .admin_pages import FORMATTERS
from .common import actor, check_form_csrf, redirect, render, signed_in_admin
from .inputs import parse_int, path_id
from .sse import follow
from .ssh_views import hosts_json, jump_name

routes = web.RouteTableDef()


INFO = {
    "ssh-added": "SSH host added. Its private key is stored encrypted and never shown again.",
    "ssh-pinned": "Host key pinned: the gateway connects again with it.",
    "ssh-removed": "SSH host removed.",
}
FIELDS = ("name", "address", "port", "user", "host_key", "policy", "jump")  # never private_key


def _info(request: web.Request) -> str | None:
    return INFO.get(request.query.get("info", ""))


def _kept(form: Mapping[str, str]) -> dict[str, str]:
    return {k: form.get(k, "")[:8192] for k in FIELDS}


async def _hosts_page(request: web.Request, *, http_status: int = 200, error: str | None = None,
                      form: Mapping[str, str] | None = None, pin_id: int | None = None,
                      pin_form: Mapping[str, str] | None = None,
                      confirm_id: int | None = None) -> web.Response:
    rows = await hosts_json(request.config_dict[SSH_HOSTS])
    return render(request, "admin_ssh.html", http_status=http_status, error=error,
                  info=None if error else _info(request), rows=rows,
                  form=dict(form) if form is not None else {"port": "22", "policy": PINNED},
                  policies=HOST_KEY_POLICIES, pin_id=pin_id, pin_form=dict(pin_form or {}),
                  confirm_id=confirm_id, **FORMATTERS)


@routes.get("/ssh")
async def ssh_page(request: web.Request) -> web.StreamResponse:
    return await _hosts_page(request)


@routes.get("/ssh.json")
async def ssh_json(request: web.Request) -> web.StreamResponse:
    """Every host with its health now (what the event stream sends, for a periodic fetch)."""
    return web.json_response({"ssh_hosts": await hosts_json(request.config_dict[SSH_HOSTS])})


@routes.post("/ssh")
async def ssh_add(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    hosts = request.config_dict[SSH_HOSTS]
    try:
        policy = form.get("policy", PINNED) or PINNED
        record = await hosts.add(
            actor(request, me), name=form.get("name", "").strip(),
            address=form.get("address", "").strip(),
            port=parse_int(form.get("port", "") or "22", "the port", 1, 65535),
            user=form.get("user", "").strip(), private_key=form.get("private_key", ""),
            host_key=form.get("host_key", ""), policy=policy,
            jump=await jump_name(hosts, form.get("jump", "").strip()))
    except GatewayError as exc:
        return await _hosts_page(request, http_status=exc.http_status, error=exc.reason,
                                 form=_kept(form))
    return redirect(f"/admin/ssh?info=ssh-added#ssh-{record.id}")


def _host_id(request: web.Request) -> int:
    return path_id(request, "id", "SSH host")


@routes.post(r"/ssh/{id:\d+}/pin")
async def ssh_pin(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    host_id = _host_id(request)
    hosts = request.config_dict[SSH_HOSTS]
    await hosts.get(host_id)  # an unknown host is a 404 page
    try:
        await hosts.pin(actor(request, me), host_id, form.get("host_key", ""))
    except GatewayError as exc:
        return await _hosts_page(request, http_status=exc.http_status, error=exc.reason,
                                 pin_id=host_id,
                                 pin_form={"host_key": form.get("host_key", "")[:8192]})
    return redirect(f"/admin/ssh?info=ssh-pinned#ssh-{host_id}")


@routes.post(r"/ssh/{id:\d+}/remove")
async def ssh_remove(request: web.Request) -> web.StreamResponse:
    """The host's name typed again, or the page asks for it (409); refused (409) while a
    desktop or another host goes through it."""
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    host_id = _host_id(request)
    hosts = request.config_dict[SSH_HOSTS]
    host = await hosts.get(host_id)
    if form.get("confirm", "").strip() != host.name:
        return await _hosts_page(
            request, http_status=409, confirm_id=host_id,
            error=f"To remove the SSH host, type its name, {host.name}, to confirm.")
    try:
        await hosts.remove(actor(request, me), host_id)
    except GatewayError as exc:
        return await _hosts_page(request, http_status=exc.http_status, error=exc.reason,
                                 confirm_id=host_id)
    return redirect("/admin/ssh?info=ssh-removed")


@routes.get("/ssh/events")
async def ssh_events(request: web.Request) -> web.StreamResponse:
    """Every host's health at once, then again whenever it changed (looked at every second),
    until the browser leaves, the gateway shuts down or ``STREAM_SECONDS`` passed."""
    app = request.config_dict
    hosts, shutting_down = app[SSH_HOSTS], app[SHUTTING_DOWN]
    async def look() -> dict[str, Any]:
        return {"ssh_hosts": await hosts_json(hosts)}

    return await follow(request, "ssh_hosts", look, shutting_down)
