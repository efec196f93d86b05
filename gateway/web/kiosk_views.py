"""A kiosk as the admin sees it: its state in one word and in words, and the JSON that the REST
API answers and the fleet page's event stream sends (``GET /admin/kiosks/events``,
static/kiosk_fleet.js). Shared by admin_kiosks.py and api_kiosks.py; never a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..cases.kiosks import Kiosks
from ..model import Kiosk

# A kiosk's state, one word each (the page's data-state and the API's ``state``).
ONLINE, OFFLINE, PAIRING, NOT_ENROLLED, REVOKED = (
    "online", "offline", "pairing", "not_enrolled", "revoked")
KIOSK_STATES = (ONLINE, OFFLINE, PAIRING, NOT_ENROLLED, REVOKED)


def clock_time(at: float) -> str:
    """A moment within the next minutes as an admin reads it: ``14:05 UTC``."""
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M UTC")


def pairing_until(kiosk: Kiosk, now: float) -> float | None:
    """When the kiosk's waiting pairing code expires; None when no code is waiting."""
    if kiosk.pair_expires is None or kiosk.pair_expires <= now:
        return None
    return kiosk.pair_expires


def kiosk_state(kiosk: Kiosk, online: bool, now: float) -> str:
    """An enrolled kiosk is online or offline (heartbeats arriving or not); otherwise it waits
    for its pairing code, or was revoked, or was never enrolled (its code expired)."""
    if kiosk.enrolled:
        return ONLINE if online else OFFLINE
    if pairing_until(kiosk, now) is not None:
        return PAIRING
    return REVOKED if kiosk.revoked_at is not None else NOT_ENROLLED


def state_words(kiosk: Kiosk, state: str, now: float) -> str:
    if state == PAIRING:
        until = pairing_until(kiosk, now)
        assert until is not None
        return f"waiting for pairing until {clock_time(until)}"
    return state.replace("_", " ")


def kiosk_json(kiosk: Kiosk, online: bool, now: float) -> dict[str, Any]:
    """A kiosk, field by field: what it is, what it does and what it did last."""
    state = kiosk_state(kiosk, online, now)
    return {"id": kiosk.id, "name": kiosk.name, "location": kiosk.location, "mode": kiosk.mode,
            "desktop_id": kiosk.desktop_id, "desktop": kiosk.desktop_name or None,
            "input_allowed": kiosk.input_allowed, "state": state,
            "state_text": state_words(kiosk, state, now), "online": online,
            "enrolled": kiosk.enrolled, "revoked": kiosk.revoked_at is not None,
            "created_at": kiosk.created_at, "enrolled_at": kiosk.enrolled_at,
            "revoked_at": kiosk.revoked_at, "pairing_until": pairing_until(kiosk, now),
            "last_seen": kiosk.last_seen, "last_ip": kiosk.last_ip,
            "user_agent": kiosk.user_agent,
            # Who is on it and what it shows are known only while it reports them.
            "current_user": kiosk.current_user if online else "",
            "current_desktop": kiosk.current_desktop if online else ""}


async def fleet_json(kiosks: Kiosks, now: float) -> list[dict[str, Any]]:
    return [kiosk_json(k, online, now) for k, online in await kiosks.fleet()]
