"""Secrets at rest: encryption (Fernet) and hashing (scrypt for passwords, SHA-256 for tokens)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken

from .errors import ConfigError
from .model import Secret

# scrypt cost: n=2**15, r=8, p=1 is about 32 MiB and 50-100 ms on this class of machine.
_SCRYPT_N = 1 << 15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


class SecretBox:
    """Encrypts short secrets (TOTP seeds, desktop passwords) with the installation's key."""

    def __init__(self, key: Secret) -> None:
        try:
            self._fernet = Fernet(key.reveal().encode())
        except ValueError as exc:
            raise ConfigError("secret_key is not a valid key") from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> Secret:
        try:
            return Secret(self._fernet.decrypt(token.encode()).decode())
        except InvalidToken as exc:
            raise ConfigError("a stored secret cannot be decrypted with this secret_key") from exc

    def __repr__(self) -> str:
        return "SecretBox(**********)"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    salt_b64 = base64.b64encode(salt).decode()
    digest_b64 = base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt_b64}${digest_b64}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check; any malformed stored hash verifies as False (fail closed)."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                                maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


@functools.cache
def dummy_password_hash() -> str:
    """A hash to verify against when the user does not exist, so timing hides which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def token_hash(token: str) -> str:
    """Hash for high-entropy tokens (cookies, recovery codes, tickets): SHA-256 is enough.

    Whatever a client sent hashes (bytes that were not UTF-8 come as lone surrogates), and
    matches no token of ours."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_password() -> str:
    """A generated password a person can type: 4 groups of 4 from an unambiguous alphabet."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))
