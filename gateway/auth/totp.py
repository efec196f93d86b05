"""TOTP second factor (RFC 6238) with replay protection and single-use recovery codes.

It never authenticates anyone by itself: it decorates a user that an identity provider produced.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp
import segno

from ..crypto import SecretBox, token_hash
from ..model import User
from ..store import Store

STEP_SECONDS = 30
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str
    qr_svg: str


def normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


class TotpFactor:
    name = "totp"

    def __init__(self, store: Store, box: SecretBox, issuer: str = "Deskgate",
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._box = box
        self._issuer = issuer
        self._clock = clock

    async def enrolment(self, user: User) -> Enrolment:
        """The secret to enrol (made once and kept until confirmed), its URI and QR code."""
        secret_enc, enrolled, _ = await self._store.get_totp(user.id)
        if enrolled:
            raise ValueError("already enrolled")
        if secret_enc is None:
            secret = pyotp.random_base32()
            await self._store.set_totp_secret(user.id, self._box.encrypt(secret))
        else:
            secret = self._box.decrypt(secret_enc).reveal()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=self._issuer)
        qr_svg = segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff")
        return Enrolment(secret, uri, str(qr_svg))

    def _matching_step(self, secret: str, code: str) -> int | None:
        """The time step (now-1, now, now+1) whose code equals ``code``, else None."""
        code = code.strip().replace(" ", "")
        if not (code.isdigit() and len(code) == 6):
            return None
        totp = pyotp.TOTP(secret)
        now_step = int(self._clock()) // STEP_SECONDS
        found: int | None = None
        for step in (now_step - 1, now_step, now_step + 1):
            if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
                found = step
        return found

    async def verify(self, user: User, code: str) -> bool:
        """True for a valid code whose step is newer than the last accepted one."""
        secret_enc, enrolled, _ = await self._store.get_totp(user.id)
        if secret_enc is None or not enrolled:
            return False
        step = self._matching_step(self._box.decrypt(secret_enc).reveal(), code)
        if step is None:
            return False
        return await self._store.advance_totp_step(user.id, step)

    async def confirm_enrolment(self, user: User, code: str) -> list[str] | None:
        """Check the first code; on success mark enrolled and return fresh recovery codes."""
        secret_enc, enrolled, _ = await self._store.get_totp(user.id)
        if secret_enc is None or enrolled:
            return None
        step = self._matching_step(self._box.decrypt(secret_enc).reveal(), code)
        if step is None:
            return None
        await self._store.mark_totp_enrolled(user.id, step)
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        await self._store.replace_recovery_codes(
            user.id, [token_hash(normalise_recovery_code(c)) for c in codes])
        return codes

    async def use_recovery_code(self, user: User, code: str) -> bool:
        normalised = normalise_recovery_code(code)
        if len(normalised) != 10:
            return False
        return await self._store.use_recovery_code(user.id, token_hash(normalised))
