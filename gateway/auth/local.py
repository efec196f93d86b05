"""The embedded identity provider: local accounts with scrypt password hashes."""

from __future__ import annotations

import asyncio

from ..crypto import dummy_password_hash, verify_password
from ..errors import AuthenticationFailed
from ..model import User
from ..store import Store


class LocalAccounts:
    name = "local"

    def __init__(self, store: Store) -> None:
        self._store = store

    async def authenticate(self, username: str, password: str) -> User:
        """Return the user, or raise AuthenticationFailed. Deny by default.

        The password check runs even for unknown or disabled users so that timing does not tell
        which accounts exist. scrypt runs in a thread: it must not stall the event loop.
        """
        user = await self._store.get_user_by_name(username)
        stored = await self._store.get_password_hash(user.id) if user else None
        ok = await asyncio.to_thread(verify_password, password, stored or dummy_password_hash())
        if user is None or stored is None or not ok:
            raise AuthenticationFailed()
        return user
