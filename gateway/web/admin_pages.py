"""Admin pages: desktops, users and the audit trail, as plain forms over the use cases.

They are served by the admin sub-application (``/admin/``, gateway/app.py), whose middleware
lets only a fully signed-in admin through (deny by default; refusals are audited); every POST
starts with ``check_form_csrf``. Changes answer with a 303 back to the page and an ``?info=`` code
that maps to a fixed message, so a crafted link cannot put words on an admin page.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..audit import AuditKind
from ..cases.actor import Actor
from ..cases.catalog import DesktopView, addable_providers
from ..errors import BadRequest, GatewayError, NotFound
from ..keyboards import describe
from ..keys import ACCOUNTS, AUDIT_TRAIL, CATALOG, SSH_HOSTS, VMS
from ..model import AuditEvent, Desktop
from ..rdp.options import EDITABLE, OPTIONS, ca_names
from ..textsafe import visible
from .common import actor, check_form_csrf, redirect, render, signed_in_admin
from .inputs import parse_int, parse_time, path_id
from .ssh_views import hosts_json, jump_name
from .vm_views import VM_FORMS, VM_INFO, mib, vm_row

log = logging.getLogger("deskgate.web.admin")

routes = web.RouteTableDef()

AUDIT_PAGE = 100
EXPORT_BATCH = 1000
EXPORT_CAP = 100_000
KIND_CHOICES = sorted({k.value for k in AuditKind}
                      | {k.value.split(".")[0] + "." for k in AuditKind if "." in k.value})

INFO = {
    "created": "Desktop created. Nobody can use it yet: assign users or groups below.",
    "saved": "Changes saved.",
    "assigned": "Assignment added.",
    "unassigned": "Assignment removed.",
    "deleted": "Desktop deleted.",
    "start": "Desktop started.",
    "stop": "Desktop stopped.",
    "restart": "Desktop restarted.",
    "disabled": "Account disabled; its sessions were ended.",
    "enabled": "Account enabled.",
    "totp-reset": "Second factor reset: the user enrols a new authenticator at the next sign-in.",
    **{f"vm-{code}": text for code, text in VM_INFO.items()},
}


def _info(request: web.Request) -> str | None:
    return INFO.get(request.query.get("info", ""))


def _id(request: web.Request, what: str) -> int:
    return path_id(request, "id", what)


def _int(value: str, what: str) -> int:
    return parse_int(value, what)


def when(at: float | None) -> str:
    """A timestamp as admins read it: UTC to the second."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


FORMATTERS: dict[str, Any] = {"when": when, "size": size, "mib": mib, "keyboard": describe,
                              "ca_names": ca_names,
                              "rdp_fields": [o for o in OPTIONS if o.form is not None],
                              "rdp_editable": [o for o in EDITABLE if o.form is not None]}


# desktops --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesktopRow:
    view: DesktopView
    state: str


async def _desktops_page(request: web.Request, *, http_status: int = 200,
                         error: str | None = None,
                         form: Mapping[str, str] | None = None) -> web.Response:
    catalog = request.config_dict[CATALOG]
    views = await catalog.desktop_views()
    states = await asyncio.gather(*(catalog.state(v.desktop) for v in views))
    rows = [DesktopRow(v, s) for v, s in zip(views, states, strict=True)]
    return render(request, "admin_desktops.html", http_status=http_status, error=error,
                  info=None if error else _info(request), rows=rows,
                  providers=addable_providers(),
                  any_vm=any(r.view.desktop.vm is not None for r in rows),
                  ssh_hosts=await hosts_json(request.config_dict[SSH_HOSTS]),
                  form=dict(form or {}), **FORMATTERS)


@routes.get("/desktops")
async def desktops(request: web.Request) -> web.StreamResponse:
    return await _desktops_page(request)


@routes.post("/desktops")
async def desktop_create(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    fields = ("name", "provider", "host", "port", "protocol", "via",
              *(o.form_name for o in OPTIONS if o.form is not None))
    kept = {k: form.get(k, "") for k in fields}  # never the password
    try:
        static = form.get("provider") == "static"
        rdp = static and form.get("protocol") == "rdp"
        options = {k[4:]: v for k, v in kept.items() if k.startswith("rdp_") and v} if rdp else None
        via = (await jump_name(request.config_dict[SSH_HOSTS], kept["via"].strip())
               if static or form.get("provider") == "ssh" else None)
        desktop = await request.config_dict[CATALOG].add_desktop(
            actor(request, me), form.get("name", ""), form.get("provider", ""),
            host=form.get("host", "").strip() if static else "",
            port=_int(form.get("port", ""), "port") if static else 0,
            password=(form.get("password") or None) if static else None,
            protocol="rdp" if rdp else "vnc",
            options=options, via=via)
    except GatewayError as exc:
        return await _desktops_page(request, http_status=exc.http_status, error=exc.reason,
                                    form=kept)
    return redirect(f"/admin/desktops/{desktop.id}?info=created")


async def render_desktop_page(request: web.Request, desktop_id: int, *, http_status: int = 200,
                              error: str | None = None,
                              confirm_delete: bool = False) -> web.Response:
    """The desktop's page; a desktop VM's shows its VM (state live, power, running mode and
    self-service) instead of the generic delete."""
    catalog = request.config_dict[CATALOG]
    view = await catalog.desktop_view(desktop_id)
    vm = vm_row(view.desktop, request.config_dict[VMS])
    users = await request.config_dict[ACCOUNTS].users()
    assigned = set(view.users)
    return render(request, "admin_desktop.html", http_status=http_status, error=error,
                  info=None if error else _info(request), view=view, d=view.desktop,
                  state=await catalog.state(view.desktop),
                  assigned_users=[u for u in users if u.name in assigned],
                  other_users=[u for u in users if u.name not in assigned],
                  confirm_delete=confirm_delete and vm is None, vm=vm, vm_forms=VM_FORMS,
                  ssh_host_names=[h.name for h, _ in
                                  await request.config_dict[SSH_HOSTS].hosts()],
                  **FORMATTERS)


async def _desktop_action(request: web.Request, me: Actor, desktop_id: int,
                          form: Mapping[str, str]) -> str:
    """Carry out one form's change; returns the ``info`` code. Raises GatewayError."""
    catalog = request.config_dict[CATALOG]
    action = request.match_info.get("action", "")
    if action == "":
        desktop = await catalog.desktop(desktop_id)
        static = desktop.provider == "static"
        password, clear = form.get("password", ""), form.get("clear_password") == "yes"
        if password and clear:
            raise BadRequest("give a new password or clear it, not both")
        # The jump host's field is on a static desktop's form only: absent, it is kept (and
        # for another desktop the use case refuses it).
        via = (await jump_name(request.config_dict[SSH_HOSTS], form["via"].strip()) or ""
               if "via" in form else None)
        await catalog.update_desktop(
            me, desktop_id, name=form.get("name", ""),
            host=form.get("host", "") if static else None,
            port=_int(form.get("port", ""), "port") if static else None,
            password=password or None, clear_password=clear,
            maintenance=form.get("maintenance") == "yes",
            rdp={o.name: form[o.form_name] for o in EDITABLE if o.form_name in form} or None,
            via=via)
        return "saved"
    if action == "assign":
        remove = form.get("op") == "remove"
        if "group" in form:
            await catalog.assign(me, desktop_id, group=form["group"], remove=remove)
        else:
            await catalog.assign(me, desktop_id, user_id=_int(form.get("user_id", ""), "user"),
                                 remove=remove)
        return "unassigned" if remove else "assigned"
    if action == "power":
        power = form.get("power", "")
        await catalog.power(me, desktop_id, power)
        return power
    raise NotFound()


@routes.get(r"/desktops/{id:\d+}")
async def desktop_page(request: web.Request) -> web.StreamResponse:
    return await render_desktop_page(request, _id(request, "desktop"))


@routes.post(r"/desktops/{id:\d+}")
@routes.post(r"/desktops/{id:\d+}/{action:assign|power}")
async def desktop_change(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    desktop_id = _id(request, "desktop")
    try:
        code = await _desktop_action(request, actor(request, me), desktop_id, form)
    except NotFound:
        raise
    except GatewayError as exc:
        return await render_desktop_page(request, desktop_id, http_status=exc.http_status,
                                   error=exc.reason)
    return redirect(f"/admin/desktops/{desktop_id}?info={code}")


@routes.post(r"/desktops/{id:\d+}/delete")
async def desktop_delete(request: web.Request) -> web.StreamResponse:
    """Two steps: without ``confirm=yes`` the page asks again instead of deleting."""
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    desktop_id = _id(request, "desktop")
    if form.get("confirm") != "yes":
        return await render_desktop_page(request, desktop_id, confirm_delete=True)
    await request.config_dict[CATALOG].delete_desktop(actor(request, me), desktop_id)
    return redirect("/admin/desktops?info=deleted")


# users -----------------------------------------------------------------------------------------
@routes.get("/users")
async def users(request: web.Request) -> web.StreamResponse:
    q = request.query.get("q", "")[:64]
    return render(request, "admin_users.html", info=_info(request), q=q,
                  users=await request.config_dict[ACCOUNTS].users(q), now=time.time(), **FORMATTERS)


@dataclass(frozen=True)
class Access:
    desktop: Desktop
    direct: bool
    groups: list[str]


async def _user_page(request: web.Request, user_id: int, *, http_status: int = 200,
                     error: str | None = None) -> web.Response:
    catalog = request.config_dict[CATALOG]
    view = await request.config_dict[ACCOUNTS].user_view(user_id)
    access = []
    for d in view.desktops:
        users_, groups = await catalog.assignments(d.id)
        access.append(Access(d, view.user.name in users_,
                             [g for g in groups if g in view.groups]))
    names = {d.id: d.name for d in await catalog.desktops()}
    return render(request, "admin_user.html", http_status=http_status, error=error,
                  info=None if error else _info(request), view=view, u=view.user,
                  access=access, desktop_names=names, now=time.time(), **FORMATTERS)


@routes.get(r"/users/{id:\d+}")
async def user_page(request: web.Request) -> web.StreamResponse:
    return await _user_page(request, _id(request, "user"))


@routes.post(r"/users/{id:\d+}/{action:disable|enable|reset-totp}")
async def user_change(request: web.Request) -> web.StreamResponse:
    _, me = signed_in_admin(request)
    form = await check_form_csrf(request)
    user_id = _id(request, "user")
    accounts, action = request.config_dict[ACCOUNTS], request.match_info["action"]
    back = "/admin/users" if form.get("back") == "list" else f"/admin/users/{user_id}"
    try:
        if action == "reset-totp":
            await accounts.reset_totp(actor(request, me), user_id)
            code = "totp-reset"
        else:
            await accounts.set_disabled(actor(request, me), user_id, action == "disable")
            code = f"{action}d"
    except NotFound:
        raise
    except GatewayError as exc:
        return await _user_page(request, user_id, http_status=exc.http_status, error=exc.reason)
    return redirect(f"{back}?info={code}")


# audit -----------------------------------------------------------------------------------------
FILTER_FIELDS = ("user", "desktop", "kind", "from", "to")


def audit_filters(query: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """(the form's values, ``list_audit`` keyword arguments). Raises BadRequest."""
    values = {k: query.get(k, "").strip()[:256] for k in FILTER_FIELDS}
    args: dict[str, Any] = {k: values[k] or None for k in ("user", "desktop", "kind")}
    args["since"] = parse_time(values["from"], "from")
    args["until"] = parse_time(values["to"], "before")
    return values, args


@routes.get("/audit")
async def audit(request: web.Request) -> web.StreamResponse:
    values = {k: request.query.get(k, "").strip()[:256] for k in FILTER_FIELDS}
    rows: list[AuditEvent] = []
    error, status, older = None, 200, None
    try:
        values, args = audit_filters(request.query)
        before = request.query.get("before_id", "")
        if before:
            args["before_id"] = _int(before, "before_id")
        rows = await request.config_dict[AUDIT_TRAIL].events(limit=AUDIT_PAGE + 1, **args)
    except GatewayError as exc:
        error, status = exc.reason, exc.http_status
    query = {k: v for k, v in values.items() if v}
    if len(rows) > AUDIT_PAGE:
        rows = rows[:AUDIT_PAGE]
        older = "/admin/audit?" + urlencode({**query, "before_id": rows[-1].id})
    users = [u.name for u in await request.config_dict[ACCOUNTS].users()]
    desktops = [d.name for d in await request.config_dict[CATALOG].desktops()]
    return render(request, "admin_audit.html", http_status=status, error=error, rows=rows,
                  filters=values, kinds=KIND_CHOICES, user_names=users, desktop_names=desktops,
                  filtered=bool(query), paged="before_id" in request.query,
                  first_page="/admin/audit?" + urlencode(query),
                  older=older, export="/admin/audit.csv?" + urlencode(query),
                  export_cap=EXPORT_CAP, **FORMATTERS)


CSV_COLUMNS = ("id", "time", "kind", "user", "desktop", "client_ip", "detail", "row_hash")


def csv_cell(value: str | None) -> str:
    """Text as a spreadsheet shows it, not runs it: user names and details come from anyone
    who types into the sign-in form, so control characters are shown as escapes (one event, one
    row) and a leading =, +, - or @ is defused with a quote mark."""
    text = visible(value or "")
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def csv_row(e: AuditEvent) -> list[str]:
    at = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="milliseconds")
    return [str(e.id), at.replace("+00:00", "Z"), csv_cell(e.kind), csv_cell(e.user), csv_cell(e.desktop),
            csv_cell(e.client_ip), csv_cell(e.detail), e.row_hash or ""]


@routes.get("/audit.csv")
async def audit_csv(request: web.Request) -> web.StreamResponse:
    """The filtered trail, newest first, streamed in batches; at most ``EXPORT_CAP`` rows."""
    _, args = audit_filters(request.query)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="deskgate-audit-{stamp}.csv"'})
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    sent, before = 0, None
    while sent < EXPORT_CAP:
        batch = await request.config_dict[AUDIT_TRAIL].events(
            limit=min(EXPORT_BATCH, EXPORT_CAP - sent), before_id=before, **args)
        for event in batch:
            writer.writerow(csv_row(event))
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        if len(batch) < EXPORT_BATCH:
            break
        sent += len(batch)
        before = batch[-1].id
    await response.write_eof()
    return response
