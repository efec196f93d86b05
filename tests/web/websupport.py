"""Helpers for the web tests: the app on a test server, signing in, RFB, X queries."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import re
import struct
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pyotp
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_cases, create_app
from gateway.cases.actor import Actor
from gateway.config import Settings
from gateway.store.sqlite import SQLiteStore
from gateway.xdisplay.numbers import free_tcp_port
from gateway.xdisplay.xvnc import XvncDisplay

CLI = Actor.cli()  # who makes the changes that set the scene

PASSWORD = "a long enough password"
VNC_PASSWORD = "vncpw123"

Client = TestClient  # type: ignore[type-arg]
Browser = Client | aiohttp.ClientSession


async def app_client(settings: Settings, users: Mapping[str, bool] | None = None,
                     desktop: XvncDisplay | None = None, **changes: object) -> Client:
    """A test client (not started yet) for the app on a free port that public_url names, so the
    gateway's origin checks accept the test's websockets.

    ``users`` maps each name to whether it is an admin, in order of creation (alice, no admin, by
    default); all have PASSWORD. With ``desktop``, alice is assigned the desktop "VM" on it."""
    port = free_tcp_port()
    settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}", **changes)
    store = SQLiteStore(settings.database_path)
    await store.open()
    cases = build_cases(settings, store)
    for name, admin in (users or {"alice": False}).items():
        await cases.accounts.add_user(CLI, name, password=PASSWORD, admin=admin)
    if desktop is not None:
        vm = await cases.catalog.add_desktop(CLI, "VM", "static", host="127.0.0.1",
                                             port=desktop.rfbport or 0, password=VNC_PASSWORD)
        await cases.catalog.assign(CLI, vm.id, user_ref="alice")
    await store.close()
    return TestClient(TestServer(create_app(settings), host="127.0.0.1", port=port))


def base_url(client: Client) -> str:
    return f"http://127.0.0.1:{client.port}"


def csrf_of(html: str) -> str:
    """The CSRF token of a page: its forms' _csrf field, else its data-csrf attribute."""
    match = re.search(r'name="_csrf" value="([^"]+)"', html) or re.search(
        r'data-csrf="([^"]+)"', html)
    assert match, "no CSRF token in page"
    return match.group(1)


def secret_of(html: str) -> str:
    """The TOTP secret an enrolment page shows."""
    match = re.search(r'id="totp-secret"[^>]*>(.*?)</code>', html, re.S)
    assert match, "enrolment page shows the secret as text"
    return re.sub(r"<[^>]+>|\s", "", match.group(1))


async def password_step(browser: Browser, user: str, password: str = PASSWORD, *,
                        base: str = "") -> aiohttp.ClientResponse:
    """The first factor: the sign-in form, with its CSRF token; the response is not followed."""
    page = await (await browser.get(base + "/login")).text()
    return await browser.post(base + "/login", data={"username": user, "password": password,
                                                     "_csrf": csrf_of(page)}, allow_redirects=False)


async def sign_in(browser: Browser, user: str, secrets: dict[str, str] | None = None, *,
                  base: str = "", password: str = PASSWORD) -> str:
    """Both factors (enrolling on first use); returns the CSRF token of the signed-in session.

    ``secrets`` keeps each user's TOTP secret for later sign-ins. A code is good once, so a
    second sign-in within 30 seconds uses the next step's code."""
    secrets = {} if secrets is None else secrets
    resp = await password_step(browser, user, password, base=base)
    assert resp.status == 303, await resp.text()
    page = await (await browser.get(base + "/login/totp")).text()
    if 'id="totp-secret"' in page:
        secrets[user] = secret_of(page)
        secrets.pop(f"{user} signed in", None)
    ahead = 30 if f"{user} signed in" in secrets else 0
    secrets[f"{user} signed in"] = "yes"
    code = pyotp.TOTP(secrets[user]).at(time.time() + ahead)
    resp = await browser.post(base + "/login/totp", data={"code": code, "_csrf": csrf_of(page)})
    page = await resp.text()
    assert resp.status == 200, page
    return csrf_of(page)  # the recovery codes page, or the portal it redirects to


async def connect(browser: Browser, csrf: str, desktop_id: int = 1, *,
                  base: str = "") -> dict[str, str]:
    """POST .../connect as the portal's script does; returns its JSON (ws_url, session_id, ...)."""
    resp = await browser.post(f"{base}/desktops/{desktop_id}/connect",
                              headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    assert resp.status == 200, await resp.text()
    data: dict[str, str] = await resp.json()
    return data


async def rfb_handshake(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """Browser side of RFB 3.8 with security None; returns ServerInit."""
    buf = b""

    async def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            buf += msg.data
        out, buf = buf[:n], buf[n:]
        return out

    assert await need(12) == b"RFB 003.008\n"
    await ws.send_bytes(b"RFB 003.008\n")
    count = (await need(1))[0]
    assert list(await need(count)) == [1]  # the browser is only ever offered None
    await ws.send_bytes(b"\x01")
    assert await need(4) == b"\0\0\0\0"
    await ws.send_bytes(b"\x01")  # ClientInit, shared
    head = await need(24)
    name = await need(struct.unpack(">I", head[20:24])[0])
    return head + name


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack(">BBxxI", 4, int(down), keysym)


def pointer_event(x: int, y: int, buttons: int = 0) -> bytes:
    return struct.pack(">BBHH", 5, buttons, x, y)


def pointer_at(desktop: XvncDisplay) -> tuple[int, int]:
    out = subprocess.run(["xdotool", "getmouselocation"], env=desktop.env(), capture_output=True,
                         text=True, timeout=5, check=True).stdout
    m = re.search(r"x:(\d+) y:(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def keys_down(desktop: XvncDisplay) -> int:
    """How many keys the X server holds pressed (XQueryKeymap through libX11)."""
    x11: Any = ctypes.CDLL("libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XQueryKeymap.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(f":{desktop.display}".encode())
    assert dpy, "cannot open the X display"
    try:
        keymap = ctypes.create_string_buffer(32)
        x11.XQueryKeymap(dpy, keymap)
        return sum(bin(b).count("1") for b in keymap.raw)
    finally:
        x11.XCloseDisplay(dpy)


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(0.05)
