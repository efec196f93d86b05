"""The embedded identity provider: local accounts with scrypt password hashes."""

from __future__ import annotations

import asyncio
import os

from ..crypto import dummy_password_hash, hash_password, verify_password
from ..errors import AuthenticationFailed
from ..model import User
from ..store import Store


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


def _verify(password: str, stored: str | None) -> bool:
    return verify_password(password, stored or dummy_password_hash())


class LocalAccounts:
    name = "local"

    def __init__(self, store: Store, concurrency: int | None = None) -> None:
        self._store = store
        # scrypt is 32 MiB and a core for tens of milliseconds: at most one per core at a time,
        # so a burst of sign-ins queues here instead of taking every core and that much memory
        # each, and the event loop keeps answering everyone else.
        self._scrypt = asyncio.Semaphore(concurrency or cpu_count())

    async def hash(self, password: str) -> str:
        async with self._scrypt:
            return await asyncio.to_thread(hash_password, password)

    async def authenticate(self, user: User | None, password: str) -> User:
        """Return the user, or raise AuthenticationFailed. Deny by default.

        The password check runs even for unknown (None) or disabled users so that timing does
        not tell which accounts exist. scrypt runs in a thread: it must not stall the event
        loop. The caller has already reserved the attempt (see auth.guard).
        """
        stored = await self._store.get_password_hash(user.id) if user else None
        async with self._scrypt:
            ok = await asyncio.to_thread(_verify, password, stored)
        if user is None or stored is None or not ok:
            raise AuthenticationFailed()
        return user
