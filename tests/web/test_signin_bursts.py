"""Bursts of sign-in attempts against a real gateway: every attempt is reserved before the slow
check, so a burst buys no more guesses than one attempt at a time would.

Many requests are in flight at once (asyncio.gather); the counts come from the audit trail and the
users table, which the gateway writes for every checked attempt.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pyotp
import pytest
from websupport import PASSWORD, Client, app_client, base_url, csrf_of, secret_of

from gateway.auth import local
from gateway.auth.local import cpu_count
from gateway.config import Settings, new_secret_key, render_toml
from gateway.crypto import hash_password
from gateway.keys import STORE
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_tcp_port

BURST = 200


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Client]:
    """The whole app on a real port, trusting X-Forwarded-For so a test can speak for many
    client addresses; one user, alice."""
    client = await app_client(settings, trust_proxy_headers=True)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


class Anonymous:
    """One browser before sign-in: its anonymous CSRF cookie and token, kept out of any jar so
    that many requests can share them while each response's cookies are thrown away."""

    def __init__(self, http: aiohttp.ClientSession, base: str, cookie: str, csrf: str) -> None:
        self.http, self.base, self.cookie, self.csrf = http, base, cookie, csrf

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base: str) -> Anonymous:
        resp = await http.get(base + "/login")
        page = await resp.text()
        pre = resp.cookies["deskgate_pre"].value
        return cls(http, base, f"deskgate_pre={pre}", csrf_of(page))

    async def password(self, user: str, password: str, ip: str) -> tuple[int, str]:
        resp = await self.http.post(
            self.base + "/login", data={"username": user, "password": password, "_csrf": self.csrf},
            headers={"Cookie": self.cookie, "X-Forwarded-For": ip}, allow_redirects=False)
        return resp.status, await resp.text()


class ScryptCalls:
    """Counts the gateway's password checks (the real scrypt runs) and how many ran at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = self.running = self.most = 0
        self._lock = threading.Lock()
        real = local.verify_password

        def counted(password: str, stored: str) -> bool:
            with self._lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return real(password, stored)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(local, "verify_password", counted)


def error_of(page: str) -> str:
    match = re.search(r'class="error"[^>]*>(.*?)<', page, re.S)
    return match.group(1).strip() if match else ""


async def audit_details(client: Client, kind: str) -> list[str]:
    store: SQLiteStore = client.server.app[STORE]
    return [e.detail for e in await store.list_audit(kind=kind, limit=10_000)]


async def test_wrong_password_burst_checks_at_most_the_threshold(
        gateway: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    threshold = 5
    scrypt = ScryptCalls(monkeypatch)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        browser = await Anonymous.open(http, base_url(gateway))
        results = await asyncio.gather(*(browser.password("alice", f"wrong guess {i}", "10.7.0.1")
                                         for i in range(BURST)))
        statuses = [status for status, _ in results]
        assert 500 not in statuses
        wrong = await audit_details(gateway, "signin.failed")
        assert wrong.count("wrong password") <= threshold, "every checked guess is audited"
        assert statuses.count(401) == wrong.count("wrong password") == scrypt.calls
        refused = [error_of(page) for status, page in results if status == 429]
        assert len(refused) == BURST - statuses.count(401)
        assert set(refused) <= {"account temporarily locked after repeated failures",
                                "too many failed attempts from your address; wait a minute"}
        assert "account temporarily locked after repeated failures" in refused
        # Locked: the right password is refused too, from any address.
        status, page = await browser.password("alice", PASSWORD, "10.7.0.2")
        assert status == 429 and "locked" in error_of(page)
    alice = await gateway.server.app[STORE].get_user_by_name("alice")
    assert alice is not None and alice.failed_attempts == threshold


async def test_many_user_names_from_one_address_are_throttled(gateway: Client) -> None:
    """Unknown names still cost a password check (timing hides which names exist): the address
    pays for each, reserved before the check."""
    per_minute = 30
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        browser = await Anonymous.open(http, base_url(gateway))
        results = await asyncio.gather(*(browser.password(f"nobody{i}", "some guess", "10.7.1.1")
                                         for i in range(BURST)))
        statuses = [status for status, _ in results]
        assert 500 not in statuses
        checked = await audit_details(gateway, "signin.failed")
        assert checked.count("unknown user") == statuses.count(401) <= per_minute
        throttled = [error_of(page) for status, page in results if status == 429]
        assert len(throttled) == BURST - statuses.count(401)
        assert set(throttled) == {"too many failed attempts from your address; wait a minute"}
        # Another address is not affected.
        status, _ = await browser.password("alice", PASSWORD, "10.7.1.2")
        assert status == 303


async def test_different_accounts_sign_in_in_parallel(settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Reservations are per account and per address: many people at once, each from their own
    address, all get in; and successes from one shared address give their reservation back.
    The password checks queue: no more run at once than the machine has cores."""
    scrypt = ScryptCalls(monkeypatch)
    client = await app_client(settings, trust_proxy_headers=True)
    store = SQLiteStore(settings.database_path)
    await store.open()
    shared_hash = await asyncio.to_thread(hash_password, PASSWORD)
    for i in range(BURST):
        await store.create_user(f"person{i}", shared_hash, False)
    await store.close()
    await client.start_server()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
            browser = await Anonymous.open(http, base_url(client))
            results = await asyncio.gather(*(browser.password(f"person{i}", PASSWORD,
                                                              f"10.8.{i // 250}.{i % 250 + 1}")
                                             for i in range(BURST)))
            assert [status for status, _ in results] == [303] * BURST
            # One office behind one address: 60 sign-ins, ten at a time, twice the throttle.
            for batch in range(6):
                results = await asyncio.gather(*(
                    browser.password(f"person{batch * 10 + i}", PASSWORD, "10.9.0.1")
                    for i in range(10)))
                assert [status for status, _ in results] == [303] * 10
        store = client.server.app[STORE]
        assert all(u.failed_attempts == 0 and u.locked_until == 0
                   for u in await store.list_users())
        assert len(await audit_details(client, "signin.ok")) == BURST + 60 == scrypt.calls
        assert 1 <= scrypt.most <= cpu_count()
    finally:
        await client.close()


async def half_signed_in(gateway: Client, *, enrol: bool) -> tuple[aiohttp.ClientSession, str, str]:
    """A browser past the password, at the second-factor page: (session, its CSRF, TOTP secret).
    With ``enrol``, alice enrols first in another browser (and gets recovery codes)."""
    base = base_url(gateway)

    async def past_password(http: aiohttp.ClientSession) -> str:
        page = await (await http.get(base + "/login")).text()
        resp = await http.post(base + "/login", data={"username": "alice", "password": PASSWORD,
                                                      "_csrf": csrf_of(page)},
                               allow_redirects=False)
        assert resp.status == 303
        return await (await http.get(base + "/login/totp")).text()

    secret = ""
    if enrol:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as first:
            page = await past_password(first)
            secret = secret_of(page)
            resp = await first.post(base + "/login/totp", data={
                "code": pyotp.TOTP(secret).now(), "_csrf": csrf_of(page)})
            assert resp.status == 200 and "recovery" in await resp.text()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(limit=0))
    page = await past_password(http)
    return http, csrf_of(page), secret


def wrong_codes(kind: str, secret: str) -> list[str]:
    """``BURST`` distinct wrong codes of one kind (none of them the current TOTP code)."""
    if kind == "recovery code":
        return [f"zzzzz-{i:05d}".replace("0", "z").replace("1", "y") for i in range(BURST)]
    now = time.time()
    good = {pyotp.TOTP(secret).at(now + t) for t in (-30, 0, 30)} if secret else set()
    return [c for c in (f"{i:06d}" for i in range(BURST + 3)) if c not in good][:BURST]


@pytest.mark.parametrize("kind", ["totp code", "recovery code", "enrolment code"])
async def test_second_factor_burst_checks_at_most_the_threshold(settings: Settings,
                                                                kind: str) -> None:
    threshold = 5
    client = await app_client(settings, trust_proxy_headers=True)
    await client.start_server()
    try:
        http, csrf, secret = await half_signed_in(client, enrol=kind != "enrolment code")
        base = base_url(client)
        try:
            async def submit(code: str, ip: str = "10.5.0.1") -> tuple[int, str]:
                resp = await http.post(base + "/login/totp", headers={"X-Forwarded-For": ip},
                                       data={"code": code, "_csrf": csrf}, allow_redirects=False)
                return resp.status, await resp.text()

            codes = wrong_codes(kind, secret)
            results = await asyncio.gather(*(submit(code) for code in codes))
            statuses = [status for status, _ in results]
            assert 500 not in statuses
            checked = await audit_details(client, "second_factor.failed")
            assert checked.count("wrong or reused code") == statuses.count(401) <= threshold
            refused = [error_of(page) for status, page in results if status == 429]
            assert len(refused) == BURST - statuses.count(401)
            assert "account temporarily locked after repeated failures" in refused
            if secret:  # the right code is refused while locked
                status, page = await submit(pyotp.TOTP(secret).now(), "10.5.0.2")
                assert status == 429 and "locked" in error_of(page)
                assert (await http.get(base + "/", allow_redirects=False)).status == 303
        finally:
            await http.close()
    finally:
        await client.close()



@pytest.fixture
async def two_gateways(tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two `deskgate serve` processes on one database (alice has PASSWORD), trusting
    X-Forwarded-For; their base URLs. Stopped by PID."""
    config = tmp_path / "deskgate.toml"
    config.write_text(render_toml({"data_dir": str(tmp_path), "secret_key": new_secret_key(),
                                   "trust_proxy_headers": True}))
    store = SQLiteStore(tmp_path / "deskgate.db")
    await store.open()
    await store.create_user("alice", await asyncio.to_thread(hash_password, PASSWORD), False)
    await store.close()
    exe = Path(sys.executable).parent / "deskgate"
    procs: list[asyncio.subprocess.Process] = []
    bases = []
    try:
        for i in range(2):
            port = free_tcp_port()
            with (tmp_path / f"serve{i}.log").open("wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    str(exe), "--config", str(config), "serve", "--port", str(port),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
            bases.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            for base in bases:
                for _ in range(300):  # at most 30 s
                    try:
                        if (await http.get(base + "/healthz")).status == 200:
                            break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"{base} did not answer: {(tmp_path / 'serve0.log').read_text()}")
        yield bases
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def test_two_processes_share_the_lockout_and_the_throttle(two_gateways: list[str],
                                                                tmp_path: Path) -> None:
    """The reservations live in the database: a burst split over two gateway processes checks
    no more passwords than one process would."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        browsers = [await Anonymous.open(http, base) for base in two_gateways]
        results = await asyncio.gather(*(
            browsers[i % 2].password("alice", f"wrong guess {i}", "10.7.2.1")
            for i in range(BURST)))
        results += await asyncio.gather(*(
            browsers[i % 2].password(f"nobody{i}", "some guess", "10.7.2.2")
            for i in range(BURST)))
        status, page = await browsers[1].password("alice", PASSWORD, "10.7.2.3")
        assert status == 429 and "locked" in error_of(page)
    assert 500 not in [status for status, _ in results]
    store = SQLiteStore(tmp_path / "deskgate.db")
    await store.open()
    try:
        checked = [e.detail for e in await store.list_audit(kind="signin.failed", limit=10_000)]
    finally:
        await store.close()
    assert 0 < checked.count("wrong password") <= 5
    assert 0 < checked.count("unknown user") <= 30
