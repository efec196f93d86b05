"""Helpers for the live-session tests: an app with a real Xvnc, signing in, RFB, X queries."""

from __future__ import annotations

import asyncio
import ctypes
import re
import struct
import subprocess
from typing import Any

import aiohttp
import pyotp
from aiohttp.test_utils import TestClient

from gateway.providers.xvnc import XvncDisplay

PASSWORD = "a long enough password"
VNC_PASSWORD = "vncpw123"


async def sign_in(http: aiohttp.ClientSession, base: str, name: str,
                  password: str = PASSWORD) -> str:
    """Password, then TOTP enrolment; returns the CSRF token of the signed-in session."""
    page = await (await http.get(base + "/login")).text()
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    await http.post(base + "/login", data={"username": name, "password": password,
                                           "_csrf": csrf.group(1)})
    page = await (await http.get(base + "/login/totp")).text()
    found = re.search(r'id="totp-secret"[^>]*>(.*?)</code>', page, re.S)
    assert found, page[:500]
    secret = re.sub(r"<[^>]+>|\s", "", found.group(1))
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    page = await (await http.post(base + "/login/totp", data={
        "code": pyotp.TOTP(secret).now(), "_csrf": csrf.group(1)})).text()
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert csrf
    return csrf.group(1)


def base_url(client: TestClient) -> str:  # type: ignore[type-arg]
    return f"http://127.0.0.1:{client.port}"


async def connect(http: aiohttp.ClientSession, base: str, csrf: str,
                  desktop_id: int = 1) -> dict[str, str]:
    resp = await http.post(f"{base}/desktops/{desktop_id}/connect",
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
    assert list(await need(count)) == [1]
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
