"""The kiosk device's pages through the real app, as its script calls them: pairing, the proven
start (a shared kiosk's sign-in grant, a dedicated kiosk's own session), heartbeats (many at
once), a person's sign-in bound to the kiosk, sign-out, and what a copied cookie, a replayed
challenge or malformed bodies get."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pyotp
import pytest
from kioskkeys import DeviceKey
from websupport import CLI, PASSWORD, Client, app_client, csrf_of, secret_of

from gateway.config import Settings
from gateway.keys import CATALOG, KIOSKS, STORE
from gateway.model import DEDICATED
from gateway.web.kiosk import DEVICE_COOKIE, GRANT_COOKIE


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with await app_client(settings, {"alice": False}) as c:
        yield c


async def new_kiosk(client: Client, name: str = "Front desk", **kw: Any) -> tuple[int, str]:
    kiosk, code = await client.server.app[KIOSKS].create(CLI, name=name, **kw)
    return kiosk.id, code


class Device:
    """A kiosk's browser: its cookies (the client's jar) and its key."""

    def __init__(self, client: Client) -> None:
        self.client, self.key, self.csrf = client, DeviceKey(), ""

    async def page(self) -> str:
        resp = await self.client.get("/kiosk", allow_redirects=False)
        text = await resp.text()
        if resp.status == 200:
            self.csrf = csrf_of(text)
        return text

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.client.post(path, json=body or {}, allow_redirects=False,
                                      headers={"X-CSRF-Token": self.csrf,
                                               "Accept": "application/json"})

    async def pair(self, code: str) -> Any:
        await self.page()
        return await self.post("/kiosk/pair", {"code": code, "public_key": self.key.public})

    async def proof(self) -> dict[str, str]:
        resp = await self.post("/kiosk/challenge")
        assert resp.status == 200, await resp.text()
        challenge = (await resp.json())["challenge"]
        return {"challenge": challenge, "signature": self.key.sign(challenge)}

    async def proven(self, path: str, **extra: Any) -> Any:
        return await self.post(path, {**await self.proof(), **extra})


def cookie(client: Client, name: str) -> str | None:
    found = [c.value for c in client.session.cookie_jar if c.key == name]
    return found[0] if found else None


async def test_pair_start_sign_in_and_sign_out_on_a_shared_kiosk(client: Client) -> None:
    _, code = await new_kiosk(client)
    device = Device(client)
    resp = await device.pair(code)
    assert resp.status == 200, await resp.text()
    set_cookie = resp.headers.getall("Set-Cookie")
    assert any(DEVICE_COOKIE in c and "HttpOnly" in c and "SameSite=Lax" in c
               for c in set_cookie), set_cookie
    await device.page()
    resp = await device.proven("/kiosk/start")
    assert resp.status == 200 and (await resp.json())["next"] is None
    assert cookie(client, GRANT_COOKIE)
    # The person's password on the kiosk spends the grant; their session is the kiosk's.
    page = await device.page()
    assert 'action="/kiosk/login"' in page
    resp = await client.post("/kiosk/login", allow_redirects=False, data={
        "username": "alice", "password": PASSWORD, "_csrf": csrf_of(page)})
    assert resp.status == 303 and resp.headers["Location"] == "/login/totp"
    totp = await (await client.get("/login/totp")).text()
    code = pyotp.TOTP(secret_of(totp)).now()
    resp = await client.post("/login/totp", data={"code": code, "_csrf": csrf_of(totp)},
                             allow_redirects=False)
    assert resp.status == 303  # to the recovery codes (enrolment), which then go to /kiosk
    saved = await (await client.get("/login/recovery")).text()
    resp = await client.post("/login/recovery", data={"_csrf": csrf_of(saved)},
                             allow_redirects=False)
    assert resp.headers["Location"] == "/kiosk"
    store = client.server.app[STORE]
    sessions = [s for s in await store.get_web_sessions(await store.kiosk_web_sessions(1))]
    assert len(sessions) == 1
    resp = await client.get("/", allow_redirects=False)  # a kiosk keeps to its own pages
    assert resp.headers["Location"] == "/kiosk"
    for path in ("/login", "/login/oidc/any"):  # not around the kiosk's own sign-in either
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] in ("/kiosk", "/"), path
    page = await device.page()
    assert "Hello, alice" in page and 'id="kiosk-signout"' in page
    assert (await device.proven("/kiosk/heartbeat")).status == 200
    assert (await client.server.app[KIOSKS].get(1)).current_user == "alice"
    # Sign out: the session ends, every cookie but the device's goes.
    resp = await device.post("/kiosk/signout")
    assert resp.status == 200 and (await resp.json())["next"] == "/kiosk"
    assert not await store.kiosk_web_sessions(1)
    kiosk = await client.server.app[KIOSKS].get(1)
    assert kiosk.current_user == "" and kiosk.current_desktop == ""
    assert cookie(client, DEVICE_COOKIE)
    assert not cookie(client, "deskgate_session") and not cookie(client, GRANT_COOKIE)
    audit = [e.detail for e in await store.list_audit(limit=50)]
    assert "password on kiosk 'Front desk'" in audit
    # The ordinary sign-in cannot be used on an enrolled kiosk: no session unbound to it.
    page = await device.page()
    resp = await client.post("/login", allow_redirects=False, data={
        "username": "alice", "password": PASSWORD, "_csrf": csrf_of(page)})
    assert resp.status == 303 and resp.headers["Location"] == "/kiosk"
    resp = await client.get("/login/oidc/any", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/kiosk"
    assert not cookie(client, "deskgate_session")


async def test_a_grant_is_spent_once(client: Client) -> None:
    _, code = await new_kiosk(client)
    device = Device(client)
    await device.pair(code)
    await device.page()
    await device.proven("/kiosk/start")
    grant = cookie(client, GRANT_COOKIE)
    page = await device.page()
    form = {"username": "alice", "password": "wrong", "_csrf": csrf_of(page)}
    resp = await client.post("/kiosk/login", data=form, allow_redirects=False)
    assert resp.status == 401  # a wrong password, and the grant is gone with it
    client.session.cookie_jar.update_cookies({GRANT_COOKIE: grant or ""})
    resp = await client.post("/kiosk/login", data={**form, "password": PASSWORD},
                             allow_redirects=False)
    assert resp.headers["Location"] == "/kiosk?error=grant"
    assert "took too long" in await (await client.get("/kiosk?error=grant")).text()
    assert "evil" not in await (await client.get("/kiosk?error=evil")).text()


async def test_a_copied_cookie_a_replayed_challenge_and_another_key_are_refused(
        client: Client, settings: Settings) -> None:
    _, code = await new_kiosk(client)
    device = Device(client)
    await device.pair(code)
    await device.page()
    proof = await device.proof()
    assert (await device.post("/kiosk/heartbeat", proof)).status == 200
    assert (await device.post("/kiosk/heartbeat", proof)).status == 401  # spent
    stranger = Device(client)  # the same cookie jar, another key: a copied cookie
    stranger.csrf = device.csrf
    challenge = (await (await device.post("/kiosk/challenge")).json())["challenge"]
    resp = await device.post("/kiosk/start", {"challenge": challenge,
                                              "signature": stranger.key.sign(challenge)})
    assert resp.status == 401
    resp = await device.post("/kiosk/start", {"challenge": challenge,  # DER, not WebCrypto's
                                              "signature": device.key.der_signature(challenge)})
    assert resp.status == 401
    store = client.server.app[STORE]
    refused = [e for e in await store.list_audit(limit=50) if "proof refused" in e.detail]
    assert len(refused) >= 3
    # Without any credential: not enrolled.
    client.session.cookie_jar.clear()
    await device.page()
    assert (await device.post("/kiosk/challenge")).status == 401


@pytest.mark.parametrize("body", [None, [], {"code": 5}, {"code": "X", "public_key": 7},
                                  {"code": "X", "public_key": "x" * 2000},
                                  {"code": "ABCD-EFGH", "public_key": "not a key"}])
async def test_malformed_pairing_is_a_clear_400_and_spends_nothing(client: Client,
                                                                   body: Any) -> None:
    _, code = await new_kiosk(client)
    device = Device(client)
    await device.page()
    resp = await client.post("/kiosk/pair", data=b"{" if body is None else None,
                             json=None if body is None else body,
                             headers={"X-CSRF-Token": device.csrf, "Accept": "application/json",
                                      "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert "error" in await resp.json()
    assert (await device.pair(code)).status == 200  # the code still works


async def test_many_heartbeats_at_once(client: Client) -> None:
    kiosk_id, code = await new_kiosk(client)
    device = Device(client)
    await device.pair(code)
    await device.page()
    proofs = await asyncio.gather(*(device.proof() for _ in range(8)))
    answers = await asyncio.gather(*(device.post("/kiosk/heartbeat", p) for p in proofs))
    assert [a.status for a in answers] == [200] * 8
    kiosk = await client.server.app[KIOSKS].get(kiosk_id)
    assert kiosk.last_seen is not None and time.time() - kiosk.last_seen < 30


async def test_a_dedicated_kiosk_gets_its_own_session_and_desktop(client: Client) -> None:
    desktop = await client.server.app[CATALOG].add_desktop(CLI, "Lobby", "static",
                                                           host="127.0.0.1", port=5999)
    kiosk_id, code = await new_kiosk(client, "Lobby screen", mode=DEDICATED,
                                     desktop_id=desktop.id, input_allowed=False)
    device = Device(client)
    await device.pair(code)
    await device.page()
    resp = await device.proven("/kiosk/start")
    assert resp.status == 200
    assert (await resp.json())["next"] == f"/kiosk/desktops/{desktop.id}"
    resp = await client.get("/kiosk", allow_redirects=False)
    assert resp.headers["Location"] == f"/kiosk/desktops/{desktop.id}"
    page = await (await client.get(f"/kiosk/desktops/{desktop.id}")).text()
    assert 'data-kiosk="dedicated"' in page and 'data-view-only="true"' in page
    store = client.server.app[STORE]
    [ws_id] = await store.kiosk_web_sessions(kiosk_id)
    ws = (await store.get_web_sessions([ws_id]))[ws_id]
    assert ws.device and ws.kiosk_id == kiosk_id
    sessions = client.server.app[KIOSKS]._sessions  # noqa: SLF001 - the expiry rule itself
    assert sessions.expiry(ws, time.time() + 400 * 86400) is None  # no idle, no lifetime end
    # Started again: one session still, the new one.
    device.csrf = csrf_of(page)
    assert (await device.proven("/kiosk/start")).status == 200
    [again] = await store.kiosk_web_sessions(kiosk_id)
    assert again != ws_id
