"""The REST API's objects as JSON: their schemas (the OpenAPI document shows them; the
operations in gateway/web/api.py declare their bodies with them) and the builders that write
them, field by field, so that no secret can slip into an answer."""

from __future__ import annotations

from typing import Any

from ..cases.catalog import DesktopView, addable_providers, provider_names
from ..model import ApiToken, AuditEvent, Session, User
from ..protocols import PROTOCOLS
from ..rdp.options import OPTIONS
from .openapi import BOOLEAN, INTEGER, NUMBER, STRING, TIMESTAMP, array, nullable, obj, ref

PROVIDER = {"type": "string", "enum": list(provider_names())}
# A desktop added through POST /desktops (desktop VMs: POST /vms).
ADDABLE_PROVIDER = {"type": "string", "enum": list(addable_providers())}
PROTOCOL = {"type": "string", "enum": list(PROTOCOLS)}

# schemas ------------------------------------------------------------------------------------------
DESKTOP = obj(
    ("id", "name", "provider", "host", "port", "protocol", "has_password", "maintenance", "users",
     "groups", "state"),
    id=INTEGER, name=STRING, provider=PROVIDER,
    host=STRING, port=INTEGER, protocol=PROTOCOL,
    has_password={**BOOLEAN, "description": "the password itself is write-only"},
    maintenance=BOOLEAN, users=array(STRING), groups=array(STRING),
    state={**STRING, "description": "running, stopped or unknown"},
    via={"type": ["string", "null"], "description": "the SSH host a static desktop is reached"
         " through (its address is as that host sees it), or the one an ssh desktop is"
         " started on; null: none"},
    rdp={"type": ["object", "null"], "description": "RDP options (null for VNC)",
         "properties": {o.name: o.schema() for o in OPTIONS}, "additionalProperties": STRING})
# One RDP option table (gateway/rdp/options.py) describes what is accepted.
RDP_OPTIONS_BODY = {"type": "object", "description": "RDP options; on PATCH, the options given"
                " replace those values only",
                "properties": {o.name: o.schema() for o in OPTIONS},
                "additionalProperties": False}
USER = obj(("id", "name", "is_admin", "disabled", "totp_enrolled", "source", "locked_until"),
            id=INTEGER, name=STRING, is_admin=BOOLEAN, disabled=BOOLEAN, totp_enrolled=BOOLEAN,
            source=STRING, locked_until=TIMESTAMP)
SESSION = obj(("id", "user_id", "desktop_id", "state", "started_at"),
               id=STRING, user_id=INTEGER, desktop_id=INTEGER,
               state={**STRING, "enum": ["starting", "active", "closed", "failed"],
                      "description": "failed: a connection attempt that never reached the"
                                     " desktop (close_reason says why), not a session"},
               started_at=TIMESTAMP, ended_at=nullable(NUMBER), close_reason=nullable(STRING),
               bytes_up=INTEGER, bytes_down=INTEGER, client_ip=STRING, user_agent=STRING,
               tries={**INTEGER, "description": "connection tries of this attempt (a client"
                                                " retrying a desktop that is down reuses it)"})
USER_DETAIL = {"allOf": [ref("User"), {"type": "object", "properties": {
    "groups": array(STRING),
    "desktops": array(obj(("id", "name"), id=INTEGER, name=STRING)),
    "sessions": array(ref("Session"))}}]}
LIVE = {"type": "object", "description": "live figures of a relayed session on this gateway",
         "properties": {"id": STRING, "user": STRING, "desktop": STRING}}
TOKEN = obj(("id", "name", "user_id", "user", "read_only", "created_at", "expires_at"),
             id=INTEGER, name=STRING, user_id=INTEGER, user=nullable(STRING), read_only=BOOLEAN,
             created_at=TIMESTAMP, expires_at=TIMESTAMP, last_used=nullable(NUMBER),
             expired=BOOLEAN)
AUDIT_EVENT = obj(("id", "at", "kind", "detail"),
                   id=INTEGER, at=TIMESTAMP, kind=STRING, user=nullable(STRING),
                   desktop=nullable(STRING), client_ip=nullable(STRING), detail=STRING)

ASSIGNMENT = {**obj(user_id=INTEGER, group=STRING), "description": "exactly one of the two"}
# A static desktop's jump host, as given to POST and PATCH.
VIA = {"type": ["string", "null"], "description": "static desktops: the name of the SSH host"
       " (a jump host) the desktop's address is reached through, as that host sees it; on"
       " PATCH, null or \"\" takes it away. ssh desktops: the SSH host they are started on."}


# output: explicit builders, never a secret --------------------------------------------------------
def desktop_json(view: DesktopView, state: str) -> dict[str, Any]:
    d = view.desktop
    return {"id": d.id, "name": d.name, "provider": d.provider, "host": d.host, "port": d.port,
            "protocol": d.protocol, "has_password": d.has_password, "maintenance": d.maintenance,
            "users": view.users, "groups": view.groups, "state": state,
            "via": d.option("via") or None,
            "rdp": ({"credentials": "shared", "keyboard_layout": "",
                     **{k: v for k, v in d.options if k != "via"}}
                    if d.protocol == "rdp" else None)}


def user_json(u: User) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "is_admin": u.is_admin, "disabled": u.disabled,
            "totp_enrolled": u.totp_enrolled, "source": u.source, "locked_until": u.locked_until}


def session_json(s: Session) -> dict[str, Any]:
    return {"id": s.id, "user_id": s.user_id, "desktop_id": s.desktop_id, "state": str(s.state),
            "started_at": s.started_at, "ended_at": s.ended_at, "close_reason": s.close_reason,
            "bytes_up": s.bytes_up, "bytes_down": s.bytes_down, "client_ip": s.client_ip,
            "user_agent": s.user_agent, "tries": s.tries}


def token_json(t: ApiToken, owner: str | None, now: float) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "user_id": t.user_id, "user": owner,
            "read_only": t.read_only, "created_at": t.created_at, "expires_at": t.expires_at,
            "last_used": t.last_used, "expired": t.expires_at <= now}


def audit_json(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": e.at, "kind": e.kind, "user": e.user, "desktop": e.desktop,
            "client_ip": e.client_ip, "detail": e.detail}
