"""What a person sees after a burst of sign-in attempts from their address, in Chromium: a real
gateway process (`deskgate serve`), a real OpenID provider (oidc-provider-mock).

The bursts come from outside the browser, many requests at once, from the same loopback address
the browser uses.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from e2e_support import Gateway, Watched, shot_to, stop_pid
from sso_support import PROVIDER_ID, MockIdP, audit_lines, start_mock_idp, start_sso_gateway, user_claims

pytestmark = pytest.mark.e2e

BURST = 200


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockIdP]:
    provider = start_mock_idp(tmp_path_factory.mktemp("oidc-mock"), [user_claims("carol", [])])
    try:
        yield provider
    finally:
        stop_pid(provider.proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, idp: MockIdP) -> Iterator[Gateway]:
    gateway, proc = start_sso_gateway(tmp_path_factory.mktemp("limits-gateway"), idp)
    try:
        yield gateway
    finally:
        stop_pid(proc)
        print(f"\n--- deskgate serve log (tail) ---\n{gateway.log_tail()}")


def burst(make: Callable[[aiohttp.ClientSession], Any]) -> list[int]:
    """``make(http)`` -> a coroutine of many requests' statuses, run at once on a loop of its own
    (the browser's sync API owns this thread's loop)."""
    out: list[int] = []

    async def run() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            out.extend(await make(http))

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and len(out) > 0
    return out


def test_a_burst_of_wrong_passwords_locks_the_account_for_the_person_too(
        gw: Gateway, new_page: Callable[..., Watched]) -> None:
    password = "lena's right password"
    gw.cli("user", "add", "lena", "--password-stdin", stdin=password + "\n")

    async def guesses(http: aiohttp.ClientSession) -> list[int]:
        resp = await http.get(gw.base_url + "/login")
        pre = resp.cookies["deskgate_pre"].value
        match = re.search(r'name="_csrf" value="([^"]+)"', await resp.text())
        assert match

        async def one(i: int) -> int:
            r = await http.post(gw.base_url + "/login", allow_redirects=False,
                                headers={"Cookie": f"deskgate_pre={pre}"},
                                data={"username": "lena", "password": f"guess {i}",
                                      "_csrf": match.group(1)})
            return r.status

        return list(await asyncio.gather(*(one(i) for i in range(BURST))))

    statuses = burst(guesses)
    assert 500 not in statuses and statuses.count(401) <= 5
    checked = [ln for ln in audit_lines(gw, "signin.failed") if "wrong password" in ln]
    assert len(checked) == statuses.count(401)

    w = new_page()
    w.page.goto(gw.base_url + "/login")
    w.page.fill("#username", "lena")
    w.page.fill("#password", password)
    w.page.get_by_role("button", name="Sign in").click()
    alert = w.page.get_by_role("alert")
    alert.wait_for()
    shot_to(w.page, "signin-burst-locked.png")
    seen = alert.inner_text().strip()  # as shown (the page capitalises it)
    assert seen.lower() == "account temporarily locked after repeated failures"
    assert w.page.url == gw.base_url + "/login" and w.page.locator("#password").is_visible()


def test_a_burst_of_sign_in_starts_shows_a_wait_page(gw: Gateway, idp: MockIdP,
                                                     new_page: Callable[..., Watched]) -> None:
    async def starts(http: aiohttp.ClientSession) -> list[int]:
        async def one() -> int:
            r = await http.get(f"{gw.base_url}/login/oidc/{PROVIDER_ID}", allow_redirects=False)
            return r.status

        return list(await asyncio.gather(*(one() for _ in range(BURST))))

    statuses = burst(starts)
    assert 500 not in statuses
    assert 0 < statuses.count(303) <= 30 and statuses.count(429) == BURST - statuses.count(303)

    w = new_page()
    w.page.goto(gw.base_url + "/login")
    with w.page.expect_response(re.compile(rf"/login/oidc/{PROVIDER_ID}$")) as started:
        w.page.locator(f'.sso-button[data-provider="{PROVIDER_ID}"]').click()
    assert started.value.status == 429
    heading = w.page.locator("#error-heading")
    heading.wait_for()
    shot_to(w.page, "signin-burst-starts.png")
    assert heading.inner_text().strip().lower() == (
        "too many sign-ins started from your address; wait a minute and try again")
    assert not w.page.url.startswith(idp.issuer)
    w.page.locator("#retry").click()
    w.page.wait_for_url(gw.base_url + "/login")
