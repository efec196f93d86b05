"""Brute-force protection: every attempt is paid for BEFORE the work it costs.

Two independent brakes on sign-in: a per-account lockout (N failed passwords or codes lock the
account for a while) and a per-client-address throttle that slows guessing across many accounts.
Both reserve the attempt atomically in the database before the slow check (scrypt, a code) and
give the reservation back only when the check passes, so a burst of simultaneous requests buys
no more checks than the same requests one at a time, across every gateway process sharing the
database. Both fail closed: an attempt that never reports back stays counted as a failure.

A third brake covers single sign-on starts, which write a pre-login record before redirecting to
the identity provider: throttled per client address, and capped in all and per address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AccountLocked, TooManyRequests
from ..model import OidcLogin, PendingCaps, User
from ..store import Store

WINDOW_SECONDS = 60.0
THROTTLED_STARTS = "too many sign-ins started from your address; wait a minute and try again"


class AddressWindow:
    """At most ``limit`` events per client address (per ``kind``) in any sliding window of
    ``window`` seconds, counted in the database. A slot is taken before the work it pays for
    and may be given back when that work turns out to be harmless.

    Many people behind one address (an office's NAT) signing in at the same minute fill the
    window with attempts that are still being checked, not with failures: a request that finds
    the window full while this process has attempts from that address in flight waits (up to
    ``wait`` seconds) for one of them to give its slot back, instead of being refused. It is
    refused once every slot in the window is a failure (nothing in flight here any more).
    """

    def __init__(self, store: Store, kind: str, limit: int, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time, wait: float = 60.0) -> None:
        self._store = store
        self._kind = kind
        self._limit = limit
        self._window = window
        self._clock = clock
        self._wait = wait
        self._purged = 0.0
        self._in_flight: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def take(self, ip: str) -> int | None:
        """A slot id, or None when the address has used up its window (nothing written).
        Every slot taken is reported once to :meth:`settled`."""
        deadline = time.monotonic() + self._wait
        while True:
            slot = await self._take_once(ip)
            if slot is not None:
                self._in_flight[ip] = self._in_flight.get(ip, 0) + 1
                return slot
            remaining = deadline - time.monotonic()
            if not self._in_flight.get(ip) or remaining <= 0:
                return None
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(ip, deque())
            queue.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return None
            finally:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self._waiters.get(ip) is queue:
                    del self._waiters[ip]

    async def _take_once(self, ip: str) -> int | None:
        now = self._clock()
        if now - self._purged > self._window:
            self._purged = now
            await self._store.purge_rate_slots(now - self._window)
        return await self._store.take_rate_slot(f"{self._kind}:{ip}", now, now - self._window,
                                                self._limit)

    async def give_back(self, slot: int) -> None:
        await self._store.give_back_rate_slot(slot)

    def settled(self, ip: str, *, gave_back: bool) -> None:
        """An attempt from ``ip`` is over: its slot was given back (wake one waiter to take it)
        or stays a failure (when nothing is in flight any more, wake every waiter: they are
        refused)."""
        left = self._in_flight.get(ip, 0) - 1
        if left > 0:
            self._in_flight[ip] = left
        else:
            self._in_flight.pop(ip, None)
        queue = self._waiters.get(ip, deque())
        wake = list(queue) if left <= 0 else [w for w in queue if not w.done()][:1 if gave_back else 0]
        for waiter in wake:
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Attempt:
    """One reserved sign-in attempt: it counts as a failure (for the account and the address)
    until :meth:`passed` gives it back. Report exactly one outcome."""

    guard: LoginGuard
    user: User | None
    slot: int
    count: int  # the account's failures including this attempt (0 without an account)
    ip: str = ""
    _settled: bool = field(default=False, repr=False)

    def failed(self) -> bool:
        """The check failed: the reservation stays. True when this attempt locked the account."""
        self.done()
        return self.user is not None and self.count >= self.guard.threshold

    def done(self) -> None:
        """However the attempt ended (an error, a cancelled request): unless it passed, its
        reservation stays counted as a failure. Safe to call more than once."""
        if not self._settled:
            self._settled = True
            self.guard.throttle.settled(self.ip, gave_back=False)

    async def passed(self, *, signed_in: bool) -> None:
        """The check passed. ``signed_in`` (both factors done) clears the account's failures;
        otherwise (the password of a two-step sign-in) only this attempt is given back."""
        await self.guard.throttle.give_back(self.slot)
        if not self._settled:
            self._settled = True
            self.guard.throttle.settled(self.ip, gave_back=True)
        if self.user is None:
            return
        if signed_in:
            await self.guard.store.clear_failures(self.user.id)
        else:
            await self.guard.store.release_attempt(self.user.id, self.guard.threshold)


class LoginGuard:
    def __init__(self, store: Store, throttle: AddressWindow, threshold: int, lock_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.throttle = throttle
        self.threshold = threshold
        self._lock_seconds = lock_seconds
        self._clock = clock

    async def reserve(self, user: User | None, ip: str) -> Attempt:
        """Reserve one attempt from ``ip`` on ``user`` (None: an unknown name, which the address
        still pays for) before checking it. Raises TooManyRequests when the address has used up
        its minute, AccountLocked while the account is locked; nothing is counted then."""
        now = self._clock()
        if user is not None and user.locked_until > now:
            raise AccountLocked()  # known already: refused without a write
        slot = await self.throttle.take(ip)
        if slot is None:
            raise TooManyRequests("too many failed attempts from your address; wait a minute")
        if user is None:
            return Attempt(self, None, slot, 0, ip)
        try:
            count = await self.store.reserve_attempt(user.id, self.threshold, now,
                                                     now + self._lock_seconds)
        except BaseException:
            self.throttle.settled(ip, gave_back=False)
            raise
        if count is None:
            await self.throttle.give_back(slot)
            self.throttle.settled(ip, gave_back=True)
            raise AccountLocked()
        return Attempt(self, user, slot, count, ip)


class PreLogins:
    """Sign-ins started at an identity provider and not back yet (their pre-login records).

    Starting one is an anonymous GET that writes a record, so starts are throttled per client
    address (``per_minute``) and at most ``per_address`` from one address and ``total`` in all
    may wait for their callback; expired ones are purged. The records themselves are the count:
    :meth:`admit` refuses early with a read only (before any work, writing nothing), and
    :meth:`save` checks again and stores in one atomic step.
    """

    def __init__(self, store: Store, per_minute: int, per_address: int, total: int, ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._per_minute = per_minute
        self._per_address = per_address
        self._total = total
        self._ttl = ttl
        self._clock = clock

    async def admit(self, ip: str) -> None:
        recent = await self._store.count_oidc_logins(ip, self._clock() - WINDOW_SECONDS)
        if recent >= self._per_minute:
            raise TooManyRequests(THROTTLED_STARTS)

    async def save(self, state_hash: str, login: OidcLogin, ip: str) -> None:
        now = self._clock()
        caps = PendingCaps(self._total, self._per_address, self._per_minute, now - self._ttl,
                           now - WINDOW_SECONDS)
        full = await self._store.save_oidc_login(state_hash, login, client_ip=ip, caps=caps)
        if full == "per_minute":  # filled up since admit() looked
            raise TooManyRequests(THROTTLED_STARTS)
        if full is not None:
            raise TooManyRequests("too many sign-ins are waiting for the identity provider;"
                                  " finish one or wait a few minutes")
