"""Recovery codes after enrolment, through the real app: POST, redirect, GET; the page can be
loaded many times at once and shows the same codes; they are kept (encrypted) for that web
session only until the person says they saved them; the shown codes are the ones that work."""

from __future__ import annotations

import asyncio
import re

import pyotp
from websupport import app_client, csrf_of, password_step, secret_of

from gateway.config import Settings
from gateway.store.sqlite import SQLiteStore


def codes_of(html: str) -> list[str]:
    return re.findall(r'class="recovery-code">([^<]+)<', html)


async def test_recovery_codes_page_is_safe_to_reload_and_to_confirm_at_once(
        settings: Settings) -> None:
    async with await app_client(settings, users={"alice": False, "bob": False}) as client:
        assert (await password_step(client, "alice")).status == 303
        page = await (await client.get("/login/totp")).text()
        resp = await client.post("/login/totp", allow_redirects=False, data={
            "code": pyotp.TOTP(secret_of(page)).now(), "_csrf": csrf_of(page)})
        assert resp.status == 303 and resp.headers["Location"] == "/login/recovery"
        assert "recovery-code" not in await resp.text()  # nothing shown by the POST itself

        pages = await asyncio.gather(*(client.get("/login/recovery") for _ in range(100)))
        htmls = [await r.text() for r in pages]
        assert {r.status for r in pages} == {200}
        codes = codes_of(htmls[0])
        assert len(codes) == 10 and all(codes_of(h) == codes for h in htmls)
        downloads = await asyncio.gather(*(client.get("/login/recovery.txt") for _ in range(50)))
        for d in downloads:
            assert d.status == 200 and d.content_type == "text/plain"
            assert "attachment" in d.headers["Content-Disposition"]
            assert "no-store" in d.headers["Cache-Control"]
            assert (await d.text()).split()[-10:] == codes

        # Stored encrypted, never in clear text.
        store = SQLiteStore(settings.database_path)
        await store.open()
        try:
            async with store.db.execute("SELECT recovery_codes_enc FROM web_sessions"
                                        " WHERE recovery_codes_enc IS NOT NULL") as cur:
                rows = await cur.fetchall()
            assert len(rows) == 1 and codes[0] not in rows[0][0]
        finally:
            await store.close()

        csrf = csrf_of(htmls[0])
        saved = await asyncio.gather(*(client.post("/login/recovery", allow_redirects=False,
                                                   data={"_csrf": csrf}) for _ in range(50)))
        assert {(r.status, r.headers["Location"]) for r in saved} == {(303, "/")}
        forgotten = await client.get("/login/recovery", allow_redirects=False)
        assert forgotten.status == 303 and forgotten.headers["Location"] == "/"
        gone = await client.get("/login/recovery.txt", allow_redirects=False)
        assert gone.status == 303
        bad = await client.post("/login/recovery", data={"_csrf": "forged"},
                                allow_redirects=False)
        assert bad.status == 403

        # The codes shown are the account's: one signs alice in at her next sign-in.
        await client.post("/logout", data={"_csrf": csrf})
        assert (await password_step(client, "alice")).status == 303
        page = await (await client.get("/login/totp")).text()
        resp = await client.post("/login/totp", data={"code": codes[3], "_csrf": csrf_of(page)},
                                 allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/"

    # Someone else's or a half signed-in session sees no codes.
    async with await app_client(settings, users={"carol": False}) as client:
        assert (await client.get("/login/recovery", allow_redirects=False)).headers[
            "Location"] == "/login"
        await password_step(client, "carol")
        assert (await client.get("/login/recovery", allow_redirects=False)).headers[
            "Location"] == "/login"
