"""Security checks through the real server, with the browser's own cookies.

A user reaches only the desktops assigned to them; websocket upgrades check Origin, cookie and
a single-use ticket; the desktop's VNC password never reaches the browser.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from e2e_support import ARTIFACTS, STATIC_DESKTOP, STATIC_VNC_PASSWORD, Gateway, Watched
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e


def csrf_of(page: Any) -> str:
    token = page.locator('input[name="_csrf"]').first.get_attribute("value")
    assert token, "no _csrf field on the page"
    return str(token)


def post_connect(page: Any, gw: Gateway, desktop_id: str) -> tuple[int, dict[str, Any]]:
    """POST /desktops/<id>/connect from inside the page, as the client does."""
    result: dict[str, Any] = page.evaluate(
        """async ([url, csrf]) => {
            const r = await fetch(url, {method: 'POST', credentials: 'same-origin',
                headers: {'X-CSRF-Token': csrf, 'Accept': 'application/json'}});
            let body = null;
            try { body = await r.json(); } catch (e) { body = null; }
            return {status: r.status, body};
        }""",
        [f"{gw.base_url}/desktops/{desktop_id}/connect", csrf_of(page)],
    )
    return result["status"], result["body"] or {}


def cookie_header(page: Any, gw: Gateway) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies(gw.base_url))


def ws_url(gw: Gateway, path: str) -> str:
    return "ws://" + gw.base_url.removeprefix("http://") + path


@contextmanager
def open_ws(gw: Gateway, path: str, cookie: str, origin: str) -> Iterator[ClientConnection]:
    with connect(
        ws_url(gw, path),
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        close_timeout=2,
        max_size=None,
    ) as ws:
        yield ws


def assert_ws_refused(gw: Gateway, path: str, cookie: str, origin: str, why: str) -> None:
    """Refused: the upgrade fails (4xx), or the socket closes before one byte of RFB."""
    try:
        with open_ws(gw, path, cookie, origin) as ws:
            try:
                data = ws.recv(timeout=5)
            except ConnectionClosed:
                return
            except TimeoutError:
                pytest.fail(f"{why}: the websocket was accepted and left open")
            pytest.fail(f"{why}: the websocket was accepted and sent {data[:20]!r}")
    except InvalidStatus as exc:
        assert 400 <= exc.response.status_code < 500, f"{why}: status {exc.response.status_code}"
    except InvalidHandshake:
        return


def rfb_banner(gw: Gateway, path: str, cookie: str) -> bytes:
    with open_ws(gw, path, cookie, gw.base_url) as ws:
        data = ws.recv(timeout=10)
        return data if isinstance(data, bytes) else data.encode()


@pytest.fixture
def dave_page(gateway: Gateway, dave_state: dict[str, Any], new_page: Callable[..., Watched]) -> Watched:
    w = new_page(dave_state)
    w.page.goto(gateway.base_url + "/")
    return w


def test_unassigned_desktop_is_refused(
    gateway: Gateway,
    bob_state: dict[str, Any],
    dave_page: Watched,
    new_page: Callable[..., Watched],
) -> None:
    static_id = gateway.desktop_ids[STATIC_DESKTOP]
    bob = new_page(bob_state).page
    bob.goto(gateway.base_url + "/")
    assert bob.locator("a.desktop-connect").count() == 0
    assert bob.get_by_text(STATIC_DESKTOP).count() == 0

    resp = bob.goto(f"{gateway.base_url}/desktops/{static_id}")
    assert resp is not None and resp.status in (403, 404), resp and resp.status
    assert bob.locator("#deskgate-client").count() == 0
    assert bob.locator('a[href="/"]').count() >= 1
    bob.screenshot(path=str(ARTIFACTS / "error-page.png"))

    bob.goto(gateway.base_url + "/")
    status, body = post_connect(bob, gateway, static_id)
    assert status == 404, (status, body)  # as for a desktop that does not exist
    assert "ws_url" not in body and "session_id" not in body

    bob_cookie = cookie_header(bob, gateway)
    # A guessed session and ticket.
    assert_ws_refused(
        gateway,
        f"/ws/sessions/{secrets.token_urlsafe(12)}?ticket={secrets.token_urlsafe(24)}",
        bob_cookie,
        gateway.base_url,
        "guessed session and ticket",
    )
    # Dave's real, unused ticket presented with bob's cookie.
    status, ticket = post_connect(dave_page.page, gateway, static_id)
    assert status == 200, (status, ticket)
    assert_ws_refused(gateway, ticket["ws_url"], bob_cookie, gateway.base_url, "another's ticket")
    # Without any cookie at all.
    status, ticket = post_connect(dave_page.page, gateway, static_id)
    assert status == 200, (status, ticket)
    assert_ws_refused(gateway, ticket["ws_url"], "", gateway.base_url, "no cookie")


def test_connect_needs_csrf_token(gateway: Gateway, dave_page: Watched) -> None:
    page = dave_page.page
    result = page.evaluate(
        """async (url) => {
            const r = await fetch(url, {method: 'POST', credentials: 'same-origin',
                headers: {'X-CSRF-Token': 'forged', 'Accept': 'application/json'}});
            return r.status;
        }""",
        f"{gateway.base_url}/desktops/{gateway.desktop_ids[STATIC_DESKTOP]}/connect",
    )
    assert result in (400, 403), result


def test_foreign_origin_is_refused(gateway: Gateway, dave_page: Watched) -> None:
    page = dave_page.page
    cookie = cookie_header(page, gateway)
    status, ticket = post_connect(page, gateway, gateway.desktop_ids[STATIC_DESKTOP])
    assert status == 200, (status, ticket)
    assert_ws_refused(gateway, ticket["ws_url"], cookie, "http://evil.example", "foreign Origin")


def test_ticket_is_single_use(gateway: Gateway, dave_page: Watched) -> None:
    page = dave_page.page
    cookie = cookie_header(page, gateway)
    status, ticket = post_connect(page, gateway, gateway.desktop_ids[STATIC_DESKTOP])
    assert status == 200, (status, ticket)
    assert ticket["ws_url"].startswith(f"/ws/sessions/{ticket['session_id']}?ticket=")
    banner = rfb_banner(gateway, ticket["ws_url"], cookie)
    assert banner.startswith(b"RFB 003.00"), banner
    assert_ws_refused(gateway, ticket["ws_url"], cookie, gateway.base_url, "reused ticket")


def test_vnc_password_never_reaches_the_browser(gateway: Gateway, dave_page: Watched) -> None:
    w = dave_page
    page = w.page
    page.goto(f"{gateway.base_url}/desktops/{gateway.desktop_ids[STATIC_DESKTOP]}")
    page.wait_for_function(
        "() => document.getElementById('deskgate-client').dataset.state === 'connected'",
        timeout=30_000,
    )
    page.wait_for_timeout(1500)  # let framebuffer updates flow
    page.goto(gateway.base_url + "/")
    assert w.ws_frames, "no websocket frames were recorded"
    needle = STATIC_VNC_PASSWORD.encode()
    for url, body in w.received_bodies():
        assert needle not in body, f"VNC password in the response of {url}"
    for frame in w.ws_frames:
        assert needle not in frame, "VNC password in a websocket frame"
    # The browser is offered no VNC authentication: security type None only (RFB 3.8).
    assert w.ws_frames[0].startswith(b"RFB 003.008"), w.ws_frames[0][:12]
    assert w.ws_frames[1][:2] == b"\x01\x01", w.ws_frames[1]


def test_portal_visits_do_not_get_the_gateway_blacklisted(
    gateway: Gateway, dave_state: dict[str, Any], new_page: Callable[..., Watched]
) -> None:
    """TigerVNC blacklists a host after 5 connections that end before authentication
    (BlacklistThreshold), banner-only probes included. Showing the portal must not use up
    that allowance, or a few page views lock everyone out of a VncAuth desktop."""
    page = new_page(dave_state).page
    for _ in range(6):
        page.goto(gateway.base_url + "/")
        assert page.locator("a.desktop-connect").count() == 2
    page.goto(f"{gateway.base_url}/desktops/{gateway.desktop_ids[STATIC_DESKTOP]}")
    page.wait_for_function(
        """() => ['connected', 'disconnected'].includes(
            document.getElementById('deskgate-client').dataset.state)""",
        timeout=30_000,
    )
    state = page.locator("#deskgate-client").get_attribute("data-state")
    detail = page.locator("#status-detail").text_content()
    assert state == "connected", f"after 6 portal views the desktop refused: {detail}"
