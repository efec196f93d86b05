"""The portal: the signed-in user's desktops."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..keys import ACCESS
from .common import render, require_signed_in

routes = web.RouteTableDef()


@dataclass(frozen=True)
class DesktopCard:
    id: int
    name: str
    protocol: str
    state: str


@routes.get("/")
async def portal(request: web.Request) -> web.StreamResponse:
    _, user = require_signed_in(request)
    cards = [DesktopCard(d.id, d.name, d.protocol, state)
             for d, state in await request.config_dict[ACCESS].desktops_for(user)]
    return render(request, "portal.html", desktops=cards)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})
