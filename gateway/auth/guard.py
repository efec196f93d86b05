"""Brute-force protection that listens to authentication results.

Two independent brakes: a per-account lockout (N failed passwords or codes lock the account for
a while) and a per-client-IP throttle that slows guessing across many accounts. Both fail closed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..errors import AccountLocked, TooManyRequests
from ..model import User
from ..store import Store

_MAX_TRACKED_IPS = 100_000


class IpThrottle:
    """At most ``per_minute`` failures per client IP in any sliding 60-second window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _window(self, ip: str) -> deque[float]:
        now = self._clock()
        window = self._failures.get(ip)
        if window is None:
            if len(self._failures) >= _MAX_TRACKED_IPS:
                self._prune(now)
            window = self._failures[ip] = deque()
        while window and window[0] <= now - 60:
            window.popleft()
        return window

    def _prune(self, now: float) -> None:
        for ip in [ip for ip, w in self._failures.items() if not w or w[-1] <= now - 60]:
            del self._failures[ip]

    def check(self, ip: str) -> None:
        if len(self._window(ip)) >= self._limit:
            raise TooManyRequests("too many failed attempts from your address; wait a minute")

    def failure(self, ip: str) -> None:
        self._window(ip).append(self._clock())


class LoginGuard:
    def __init__(self, store: Store, throttle: IpThrottle, threshold: int, lock_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._throttle = throttle
        self._threshold = threshold
        self._lock_seconds = lock_seconds
        self._clock = clock

    def check_ip(self, ip: str) -> None:
        self._throttle.check(ip)

    def check_user(self, user: User) -> None:
        if user.locked_until > self._clock():
            raise AccountLocked()

    async def failure(self, user: User | None, ip: str) -> bool:
        """Record a failure; return True when this failure locked the account."""
        self._throttle.failure(ip)
        if user is None:
            return False
        count = await self._store.record_failure(user.id, self._threshold,
                                                 self._clock() + self._lock_seconds)
        return count == self._threshold

    async def success(self, user: User) -> None:
        if user.failed_attempts:
            await self._store.clear_failures(user.id)
