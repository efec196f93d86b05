"""Kiosks: thin clients enrolled as devices, and what they may do.

Over 400 lines as one room: a kiosk's life from both sides, the admin's (create, re-pair,
change, revoke) and the device's (pair, prove, start, heartbeat), which share its secrets and
the sessions a revocation must end.

An admin creates a kiosk and gets a one-time pairing code. The thin client opens ``/kiosk``,
types the code, and registers the public half of a key pair its browser made (WebCrypto,
non-extractable, kept in IndexedDB). It gets a device credential (a cookie) bound to the kiosk
row. A credential alone opens nothing: every sign-in and heartbeat also carries the signature of
a fresh single-use challenge by that key, so a copied cookie without the key is refused.

- **Shared** kiosks (hot desks): a proven device gets a sign-in *grant*, which the person's
  password or identity-provider sign-in spends. The web session that results is bound to the
  kiosk and goes idle after the kiosk's idle time.
- **Dedicated** kiosks (lobby screens): a proven device gets a web session of its own device
  account (``kiosk:<id>``), which is assigned the kiosk's desktop. That session has no idle or
  lifetime end, and the desktop is view-only unless the admin allows input.

Revoking a kiosk clears its key and credential and ends every web session and relay on it at
once. Every admin change and every device event is audited.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from ..audit import Audit, AuditKind
from ..auth.guard import AddressWindow
from ..auth.sessions import WebSessions
from ..config import Settings
from ..crypto import new_token, token_hash
from ..errors import WS_KIOSK_REVOKED, BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from ..live import LiveSessions
from ..model import (
    DEDICATED,
    KIOSK_MODES,
    KIOSK_SOURCE,
    SHARED,
    Kiosk,
    User,
    WebSessionState,
)
from ..store import Store
from .actor import Actor

# Pairing codes: 8 characters that cannot be mistaken for one another (no 0/O, 1/I/L), shown
# as ABCD-EFGH; about 40 bits, spent once, expiring in minutes, and wrong tries throttled.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CHALLENGE_SECONDS = 60.0  # a challenge must be signed and returned within this
OPEN_CHALLENGES = 8  # per kiosk; older ones are dropped
GRANT_SECONDS = 600.0  # a shared kiosk's proven sign-in, waiting for the person
CREDENTIAL_GRACE = 60.0  # a replaced credential still works this long (requests on their way)
WRONG_CODES_PER_ADDRESS = 10  # per window, then 429
WRONG_CODES_WINDOW = 600.0
REVOKED = "this device's enrolment was revoked"
NOT_ENROLLED = "this device is not enrolled (or its enrolment was revoked)"
NAME_MAX = 64


def new_pairing_code() -> str:
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{code[:4]}-{code[4:]}"


def code_key(typed: str) -> str:
    """A typed code as it is hashed: spaces and dashes dropped, upper case."""
    return "".join(c for c in typed.upper() if c.isalnum())[:32]


def _code_hash(typed: str) -> str:
    return token_hash("kiosk-pairing:" + code_key(typed))


def public_key_of(spki_b64: str) -> ec.EllipticCurvePublicKey:
    """The device's public key: an ECDSA P-256 key as SPKI (DER), base64. BadRequest otherwise."""
    try:
        key = load_der_public_key(base64.b64decode(spki_b64, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise BadRequest("the device key is not a public key (SPKI, base64)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BadRequest("the device key must be an ECDSA P-256 key")
    return key


def signature_ok(spki_b64: str, message: str, signature_b64: str) -> bool:
    """Whether ``signature_b64`` (WebCrypto's ECDSA: r || s, 64 bytes, base64) signs
    ``message`` with SHA-256 under the device's key."""
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if len(raw) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public_key_of(spki_b64).verify(der, message.encode(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, BadRequest):
        return False
    return True


@dataclass(frozen=True)
class KioskSettings:
    pairing_seconds: float
    heartbeat_seconds: float
    idle_seconds: float
    idle_warning_seconds: float
    rotate_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> KioskSettings:
        return cls(settings.kiosk_pairing_minutes * 60.0, settings.kiosk_heartbeat_seconds,
                   settings.kiosk_idle_seconds, settings.kiosk_idle_warning_seconds,
                   settings.kiosk_credential_rotate_hours * 3600.0)

    @property
    def offline_after(self) -> float:
        """A kiosk that missed this long of heartbeats is offline."""
        return 3 * self.heartbeat_seconds + 5


@dataclass(frozen=True)
class Proven:
    """A device that proved it holds its kiosk's key just now."""

    kiosk: Kiosk
    credential: str  # the credential it presented
    new_credential: str | None = None  # set when it was rotated: the cookie to send back


@dataclass(frozen=True)
class Started:
    """What a proven kiosk gets: a dedicated kiosk's device session, or a shared one's grant."""

    kiosk: Kiosk
    session_cookie: str | None = None  # dedicated
    grant: str | None = None  # shared


class Kiosks:
    def __init__(self, store: Store, audit: Audit, live: LiveSessions, sessions: WebSessions,
                 settings: KioskSettings, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._audit = audit
        self._live = live
        self._sessions = sessions
        self.settings = settings
        self._clock = clock
        # Wrong pairing codes per address (a sliding window kept in the database), never waiting.
        self._throttle = AddressWindow(store, "kiosk-pairing", WRONG_CODES_PER_ADDRESS,
                                       WRONG_CODES_WINDOW, clock, wait=0.0)

    # ---- the admin's side ---------------------------------------------------------------------
    async def fleet(self) -> list[tuple[Kiosk, bool]]:
        """Every kiosk, with whether it is online (heartbeats arriving)."""
        now = self._clock()
        return [(k, k.online(now, self.settings.offline_after))
                for k in await self._store.list_kiosks()]

    async def view_only(self, user: User) -> bool:
        """A dedicated kiosk's account whose kiosk does not allow input: its connections are
        view-only (the relay drops keys, pointer and clipboard)."""
        if user.source != KIOSK_SOURCE:
            return False
        kiosk = next((k for k in await self._store.list_kiosks() if k.user_id == user.id), None)
        return kiosk is None or not kiosk.input_allowed

    async def get(self, kiosk_id: int) -> Kiosk:
        kiosk = await self._store.get_kiosk(kiosk_id)
        if kiosk is None:
            raise NotFound("no such kiosk")
        return kiosk

    async def create(self, actor: Actor, *, name: str, location: str = "", mode: str = SHARED,
                     desktop_id: int | None = None,
                     input_allowed: bool = True) -> tuple[Kiosk, str]:
        """A kiosk waiting to be paired, and its pairing code (shown once)."""
        actor.require_admin()
        name, location = self._name(name), self._location(location)
        await self._check_mode(mode, desktop_id)
        code, now = new_pairing_code(), self._clock()
        kiosk = await self._store.create_kiosk(
            name=name, location=location, mode=mode,
            desktop_id=desktop_id if mode == DEDICATED else None, input_allowed=input_allowed,
            created_at=now, pair_code_hash=_code_hash(code),
            pair_expires=now + self.settings.pairing_seconds)
        if mode == DEDICATED:
            kiosk = await self._device_account(kiosk)
        await self._audit.record(AuditKind.KIOSK, client_ip=actor.client_ip,
                                 desktop=kiosk.desktop_name or None,
                                 detail=actor.by(f"kiosk {kiosk.name!r} created ({mode})"))
        return kiosk, code

    async def new_code(self, actor: Actor, kiosk_id: int) -> tuple[Kiosk, str]:
        """A fresh pairing code (to enrol the kiosk again, e.g. after a revocation)."""
        actor.require_admin()
        kiosk = await self.get(kiosk_id)
        code = new_pairing_code()
        await self._store.set_kiosk_pairing(kiosk.id, _code_hash(code),
                                            self._clock() + self.settings.pairing_seconds)
        await self._audit.record(AuditKind.KIOSK, client_ip=actor.client_ip,
                                 detail=actor.by(f"kiosk {kiosk.name!r}: new pairing code"))
        return await self.get(kiosk_id), code

    async def update(self, actor: Actor, kiosk_id: int, *, name: str | None = None,
                     location: str | None = None, mode: str | None = None,
                     desktop_id: int | None = None, input_allowed: bool | None = None) -> Kiosk:
        """Rename, move, or change what the kiosk does. A change of mode, desktop or input ends
        the sessions on it (they were admitted under the old rules)."""
        actor.require_admin()
        kiosk = await self.get(kiosk_id)
        fields: dict[str, object] = {}
        if name is not None and name != kiosk.name:
            fields["name"] = self._name(name)
        if location is not None:
            fields["location"] = self._location(location)
        new_mode = kiosk.mode if mode is None else mode
        new_desktop = desktop_id if desktop_id is not None else kiosk.desktop_id
        if new_mode == SHARED:
            new_desktop = None
        await self._check_mode(new_mode, new_desktop)
        rules_changed = (new_mode != kiosk.mode or new_desktop != kiosk.desktop_id
                         or (input_allowed is not None and input_allowed != kiosk.input_allowed))
        fields.update(mode=new_mode, desktop_id=new_desktop)
        if input_allowed is not None:
            fields["input_allowed"] = input_allowed
        if kiosk.user_id is not None and kiosk.desktop_id is not None and (
                new_desktop != kiosk.desktop_id):
            await self._store.unassign(kiosk.desktop_id, kiosk.user_id)
        updated = await self._store.update_kiosk(kiosk.id, **fields)
        if updated.mode == DEDICATED:
            updated = await self._device_account(updated)
        elif kiosk.user_id is not None:
            await self._store.set_disabled(kiosk.user_id, True)  # until it is dedicated again
        if rules_changed:
            await self._end_sessions(await self._store.kiosk_web_sessions(kiosk.id),
                                     "this kiosk was changed by an administrator", drop=True)
        changes = ", ".join(f"{k} {v!r}" for k, v in fields.items()
                            if getattr(kiosk, k) != v)
        await self._audit.record(AuditKind.KIOSK, client_ip=actor.client_ip,
                                 detail=actor.by(f"kiosk {kiosk.name!r} changed: "
                                                 f"{changes or 'nothing'}"))
        return updated

    async def revoke(self, actor: Actor, kiosk_id: int) -> Kiosk:
        """The kiosk's credential never works again; its sessions end now. A new pairing code
        enrols it afresh."""
        actor.require_admin()
        kiosk = await self.get(kiosk_id)
        ended = await self._store.revoke_kiosk(kiosk.id, self._clock())
        if ended is None:
            raise NotFound("no such kiosk")
        await self._end_sessions(ended, REVOKED)
        await self._audit.record(AuditKind.KIOSK, client_ip=actor.client_ip,
                                 detail=actor.by(f"kiosk {kiosk.name!r} revoked"
                                                 f" ({len(ended)} sessions ended)"))
        return await self.get(kiosk_id)

    async def delete(self, actor: Actor, kiosk_id: int) -> None:
        actor.require_admin()
        kiosk = await self.get(kiosk_id)
        ended = await self._store.delete_kiosk(kiosk.id)
        if ended is None:
            raise NotFound("no such kiosk")
        await self._end_sessions(ended, REVOKED)
        if kiosk.user_id is not None:
            await self._store.set_disabled(kiosk.user_id, True)
            if kiosk.desktop_id is not None:
                await self._store.unassign(kiosk.desktop_id, kiosk.user_id)
        await self._audit.record(AuditKind.KIOSK, client_ip=actor.client_ip,
                                 detail=actor.by(f"kiosk {kiosk.name!r} deleted"))

    @staticmethod
    def _name(name: str) -> str:
        name = name.strip()
        if not name or len(name) > NAME_MAX or not name.isprintable():
            raise BadRequest(f"a kiosk's name is 1 to {NAME_MAX} printable characters")
        return name

    @staticmethod
    def _location(location: str) -> str:
        location = location.strip()
        if len(location) > 200 or not location.isprintable():
            raise BadRequest("a kiosk's location is up to 200 printable characters")
        return location

    async def _check_mode(self, mode: str, desktop_id: int | None) -> None:
        if mode not in KIOSK_MODES:
            raise BadRequest(f"a kiosk's mode is one of {', '.join(KIOSK_MODES)}")
        if mode == DEDICATED:
            if desktop_id is None:
                raise BadRequest("a dedicated kiosk needs its desktop")
            if await self._store.get_desktop(desktop_id) is None:
                raise NotFound("no such desktop")

    async def _device_account(self, kiosk: Kiosk) -> Kiosk:
        """A dedicated kiosk's own account, assigned its desktop (made on first need)."""
        user_id = kiosk.user_id
        if user_id is None:
            name = kiosk.device_user_name
            user = await self._store.get_user_by_name(name)
            if user is None:
                try:
                    user = await self._store.create_user(name, None, False, source=KIOSK_SOURCE)
                except Conflict:
                    raise Conflict(f"an account named {name!r} exists and is not this kiosk's;"
                                   " rename it first") from None
            elif user.source != KIOSK_SOURCE:
                raise Conflict(f"an account named {name!r} exists and is not this kiosk's")
            user_id = user.id
            kiosk = await self._store.update_kiosk(kiosk.id, user_id=user_id)
        await self._store.set_disabled(user_id, False)  # off while the kiosk was shared
        if kiosk.desktop_id is not None:
            await self._store.assign(kiosk.desktop_id, user_id)
        return kiosk

    async def _end_sessions(self, web_session_ids: list[str], reason: str, *,
                            drop: bool = False) -> None:
        """End the relays of these web sessions at once (final: the kiosk does not reconnect
        into a revoked enrolment). ``drop``: also delete the web sessions themselves."""
        for ws_id in web_session_ids:
            if drop:
                await self._store.delete_web_session(ws_id)
            await self._live.end_for_web_session(ws_id, WS_KIOSK_REVOKED, reason)

    # ---- the device's side --------------------------------------------------------------------
    async def pair(self, typed_code: str, public_key: str, ip: str,
                   user_agent: str) -> tuple[Kiosk, str]:
        """Spend a pairing code: the device's key is registered and it gets its credential.
        A wrong or expired code is Unauthorized; too many wrong ones from one address, 429."""
        public_key_of(public_key)  # a malformed key is a 400, and does not spend the code
        # Counted as wrong before the check (in the database, so across gateway processes too)
        # and given back when right: a burst of concurrent tries from one address buys no more
        # guesses than the same tries one after another.
        slot = await self._throttle.take(ip)
        if slot is None:
            raise TooManyRequests("too many wrong pairing codes from this address; wait a few"
                                  " minutes")
        credential, now = new_token(), self._clock()
        paired = None
        try:
            paired = await self._store.pair_kiosk(_code_hash(typed_code), now, public_key,
                                                  token_hash(credential))
            if paired is not None:
                await self._throttle.give_back(slot)
        finally:
            self._throttle.settled(ip, gave_back=paired is not None)
        if paired is None:
            await self._audit.record(AuditKind.KIOSK_DEVICE, client_ip=ip,
                                     detail="pairing refused: wrong, used or expired code")
            raise Unauthorized("this pairing code is wrong, used or expired; ask your"
                               " administrator for a new one")
        kiosk_id, ended = paired
        await self._end_sessions(ended, REVOKED)
        await self._store.kiosk_seen(kiosk_id, now=now, ip=ip, user_agent=user_agent[:300],
                                     person="", desktop="")
        kiosk = await self.get(kiosk_id)
        await self._audit.record(AuditKind.KIOSK_DEVICE, client_ip=ip,
                                 detail=f"kiosk {kiosk.name!r} enrolled")
        return kiosk, credential

    async def device(self, credential: str | None) -> Kiosk | None:
        """The enrolled kiosk a credential belongs to (no proof: for showing the right page)."""
        if not credential or len(credential) > 200:
            return None
        found = await self._store.kiosk_by_credential(token_hash(credential), self._clock(),
                                                      CREDENTIAL_GRACE)
        return found[0] if found else None

    async def challenge(self, credential: str | None) -> str:
        """A fresh single-use challenge for the device to sign."""
        kiosk = await self.device(credential)
        if kiosk is None:
            raise Unauthorized(NOT_ENROLLED)
        nonce, now = new_token(24), self._clock()
        await self._store.add_kiosk_challenge(kiosk.id, token_hash(nonce), now,
                                              now + CHALLENGE_SECONDS, OPEN_CHALLENGES)
        return nonce

    async def prove(self, credential: str | None, challenge: str, signature: str, ip: str,
                    user_agent: str) -> Proven:
        """The device holds its kiosk's key: the credential is its kiosk's, the challenge was
        given to that kiosk and is spent now, and the signature verifies. Rotates the
        credential when it is due. Unauthorized (audited) otherwise."""
        now = self._clock()
        found = (await self._store.kiosk_by_credential(token_hash(credential), now,
                                                       CREDENTIAL_GRACE)
                 if credential and len(credential) <= 200 else None)
        if found is None:
            raise Unauthorized(NOT_ENROLLED)
        kiosk, public_key, current = found
        spent = (0 < len(challenge) <= 100
                 and await self._store.take_kiosk_challenge(kiosk.id, token_hash(challenge), now))
        if not spent or len(signature) > 200 or not signature_ok(public_key, challenge,
                                                                 signature):
            await self._audit.record(
                AuditKind.KIOSK_DEVICE, client_ip=ip,
                detail=f"kiosk {kiosk.name!r}: proof refused"
                       f" ({'bad signature' if spent else 'unknown or expired challenge'})")
            raise Unauthorized("this device could not prove it holds its key")
        new_credential = None
        assert credential is not None
        if current and kiosk.enrolled_at is not None and await self._rotation_due(kiosk, now):
            fresh = new_token()
            if await self._store.rotate_kiosk_credential(kiosk.id, token_hash(credential),
                                                         token_hash(fresh), now):
                new_credential = fresh
        return Proven(kiosk, credential, new_credential)

    async def _rotation_due(self, kiosk: Kiosk, now: float) -> bool:
        rotated = await self._store.kiosk_credential_rotated_at(kiosk.id)
        return rotated is not None and now - rotated >= self.settings.rotate_seconds

    async def heartbeat(self, proven: Proven, *, ip: str, user_agent: str, person: str,
                        desktop: str) -> None:
        await self._store.kiosk_seen(proven.kiosk.id, now=self._clock(), ip=ip,
                                     user_agent=user_agent[:300], person=person[:200],
                                     desktop=desktop[:200])

    async def person_left(self, kiosk_id: int) -> None:
        """The person signed out on the kiosk: the fleet shows nobody on it any more."""
        await self._store.kiosk_person_left(kiosk_id)

    async def start(self, proven: Proven, ip: str, user_agent: str) -> Started:
        """A proven kiosk begins: a dedicated one gets its device session (on its own
        account); a shared one a grant for the next person's sign-in."""
        kiosk = proven.kiosk
        if kiosk.mode == DEDICATED:
            if kiosk.user_id is None or kiosk.desktop_id is None:
                raise Conflict("this kiosk has no desktop yet")
            user = await self._store.get_user(kiosk.user_id)
            if user is None or user.disabled:
                raise Unauthorized(NOT_ENROLLED)
            # The kiosk starting again (its page reloaded): its earlier sessions, which have no
            # idle or lifetime end, go, so that they cannot pile up.
            await self._end_sessions(await self._store.kiosk_web_sessions(kiosk.id),
                                     "this kiosk started again", drop=True)
            cookie, ws = await self._sessions.create(user, WebSessionState.AUTHENTICATED, ip,
                                                     user_agent, kiosk_id=kiosk.id, device=True)
            # A revocation that came meanwhile did not see this session: look again.
            if await self.device(proven.credential) is None:
                await self._sessions.destroy(ws)
                raise Unauthorized(NOT_ENROLLED)
            await self._audit.record(AuditKind.KIOSK_DEVICE, user=user.name,
                                     desktop=kiosk.desktop_name or None, client_ip=ip,
                                     detail=f"kiosk {kiosk.name!r} started (dedicated)")
            return Started(kiosk, session_cookie=cookie)
        grant, now = new_token(), self._clock()
        await self._store.add_kiosk_grant(token_hash(grant), kiosk.id, now, now + GRANT_SECONDS)
        return Started(kiosk, grant=grant)

    async def redeem(self, grant: str | None) -> Kiosk | None:
        """Spend a shared kiosk's sign-in grant: its kiosk (the person signs in on it), once."""
        if not grant or len(grant) > 200:
            return None
        kiosk_id = await self._store.take_kiosk_grant(token_hash(grant), self._clock())
        return None if kiosk_id is None else await self._store.get_kiosk(kiosk_id)
