"""Server-side web sessions referenced by a random cookie, and CSRF tokens.

The cookie holds a random token; the store keeps only its SHA-256, so a leaked database does not
hand out live sessions. A session is half signed in (password ok) until the second factor is done,
and it is rotated (new cookie) when it becomes fully authenticated.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from ..config import Settings
from ..crypto import new_token, token_hash
from ..model import User, WebSession, WebSessionState
from ..store import Store

COOKIE_NAME = "deskgate_session"
PRE_COOKIE_NAME = "deskgate_pre"  # anonymous CSRF token (double submit) for the sign-in forms
_TOUCH_EVERY = 30.0
KIOSK_IDLE_MARGIN = 15.0


def csrf_ok(expected: str | None, supplied: str | None) -> bool:
    """Constant-time comparison; a missing token on either side fails."""
    if not expected or not supplied:
        return False
    # surrogatepass: a header's or cookie's bytes that were not UTF-8 compare (unequal)
    # instead of raising.
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                               supplied.encode("utf-8", "surrogatepass"))


class WebSessions:
    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._idle = settings.session_idle_minutes * 60.0
        # A person on a shared kiosk: the kiosk's own idle time (its page warns, then signs
        # out); this is the backstop a little after it.
        self._kiosk_idle = settings.kiosk_idle_seconds + KIOSK_IDLE_MARGIN
        self._lifetime = settings.session_lifetime_hours * 3600.0
        self._clock = clock

    async def create(self, user: User, state: WebSessionState, client_ip: str,
                     user_agent: str, *, idp: str | None = None,
                     id_token_enc: str | None = None, kiosk_id: int | None = None,
                     device: bool = False) -> tuple[str, WebSession]:
        token = new_token()
        now = self._clock()
        ws = WebSession(token_hash(token), user.id, state, new_token(24), now, now, client_ip,
                        user_agent[:300], idp, id_token_enc, kiosk_id, device)
        await self._store.create_web_session(ws)
        return token, ws

    async def load(self, token: str | None, *, touch: bool = True) -> WebSession | None:
        """The live session for a cookie value; expired ones are deleted and give None.
        ``touch``: this request is the person's doing (not a kiosk's heartbeat), so it keeps
        the session from going idle."""
        if not token or len(token) > 200:
            return None
        ws = await self._store.get_web_session(token_hash(token))
        if ws is None:
            return None
        now = self._clock()
        if self.expiry(ws, now) is not None:
            await self._store.delete_web_session(ws.id)
            return None
        if touch and now - ws.last_seen > _TOUCH_EVERY:
            await self._store.touch_web_session(ws.id, now)
        return ws

    async def touch(self, ws: WebSession) -> None:
        """The person is active (a kiosk page saw their input)."""
        await self._store.touch_web_session(ws.id, self._clock())

    def expiry(self, ws: WebSession, now: float) -> str | None:
        """Why ``ws`` has ended by ``now``: "idle", "lifetime"; None while it is valid. A
        dedicated kiosk's own session has neither end (revoking the kiosk ends it)."""
        if ws.device:
            return None
        if now - ws.created_at > self._lifetime:
            return "lifetime"
        if now - ws.last_seen > (self._idle if ws.kiosk_id is None else self._kiosk_idle):
            return "idle"
        return None

    async def promote(self, ws: WebSession, user: User) -> tuple[str, WebSession]:
        """Second factor done: replace the half-signed-in session with a fresh authenticated one."""
        await self._store.delete_web_session(ws.id)
        return await self.create(user, WebSessionState.AUTHENTICATED, ws.client_ip, ws.user_agent,
                                 idp=ws.idp, id_token_enc=ws.id_token_enc, kiosk_id=ws.kiosk_id)

    async def destroy(self, ws: WebSession) -> None:
        await self._store.delete_web_session(ws.id)
