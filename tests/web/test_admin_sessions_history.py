"""The sessions dashboard's history through the real app: pages beyond the newest 25, a search
across user, desktop, address, client address, browser and session id, failed attempts kept
apart from sessions, ids to link names to their pages, and a readable browser and OS."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from websupport import app_client, base_url, sign_in

from gateway.config import Settings
from gateway.model import Session, SessionState
from gateway.store.sqlite import SQLiteStore
from gateway.web.admin_sessions import browser_and_os

FIREFOX_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101"
                   " Firefox/121.0")
SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML,"
              " like Gecko) Version/17.2 Safari/605.1.15")
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like"
                  " Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36")


def test_browser_and_os_are_readable() -> None:
    assert browser_and_os(FIREFOX_WINDOWS) == "Firefox 121 on Windows 10"
    assert browser_and_os(SAFARI_MAC) == "Safari 17 on Mac OS X 10"
    assert browser_and_os(CHROME_ANDROID) == "Chrome Mobile 120 on Android 14"
    assert browser_and_os("curl/8.1.2") == "curl 8"
    assert browser_and_os("") == "" and browser_and_os("\x00???") == ""


async def first_snapshot(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url) as stream:
        assert stream.status == 200, await stream.text()
        while True:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if line.startswith("data: "):
                data: dict[str, object] = json.loads(line[6:])
                return data


async def test_history_pages_search_and_failed_attempts(settings: Settings) -> None:
    async with await app_client(settings, {"alice": False, "boss": True}) as client:
        base = base_url(client)
        store = SQLiteStore(settings.database_path)
        await store.open()
        try:
            alice = await store.get_user_by_name("alice")
            assert alice is not None
            vm = await store.create_desktop("Lab VM", "static", "10.1.2.3", 5901, None)
            local = await store.create_desktop("Local one", "local", "", 0, None)
            rows = [Session(f"closed-{i:02d}-{'x' * 20}", alice.id,
                            vm.id if i % 2 else local.id, "ws", SessionState.CLOSED,
                            1000.0 + i, 1100.0 + i, "closed by the user", False, i, 10 * i,
                            f"192.0.2.{i}", FIREFOX_WINDOWS if i % 2 else SAFARI_MAC)
                    for i in range(60)]
            rows += [Session(f"failed-{i}", alice.id, vm.id, "ws", SessionState("failed"),
                             2000.0 + i, 2000.5 + i, "the desktop is not answering", True, 0, 0,
                             "198.51.100.7", CHROME_ANDROID) for i in range(3)]
            await asyncio.gather(*(store.create_session(s) for s in rows))
        finally:
            await store.close()

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await sign_in(http, "boss", base=base)
            url = f"{base}/admin/sessions/events"
            first = await first_snapshot(http, url)
            recent, failed = first["recent"], first["failed"]
            assert isinstance(recent, list) and isinstance(failed, list)
            assert [r["id"][:9] for r in recent] == [f"closed-{i:02d}" for i in range(59, 34, -1)]
            assert first["has_older"] is True and first["page"] == 1
            assert [f["id"] for f in failed] == ["failed-2", "failed-1", "failed-0"]
            assert not any(r["id"].startswith("failed") for r in recent)
            newest = recent[0]
            assert newest["user"] == "alice" and newest["user_id"] == alice.id
            assert newest["desktop"] == "Lab VM" and newest["desktop_id"] == vm.id
            assert newest["address"] == "10.1.2.3:5901"
            assert newest["browser"] == "Firefox 121 on Windows 10"
            assert recent[1]["address"] == "local, this host"
            assert recent[1]["browser"] == "Safari 17 on Mac OS X 10"
            assert failed[0]["browser"] == "Chrome Mobile 120 on Android 14"

            third = await first_snapshot(http, url + "?page=3")
            assert [r["id"][:9] for r in third["recent"]] == [  # type: ignore[union-attr]
                f"closed-{i:02d}" for i in range(9, -1, -1)]
            assert third["has_older"] is False

            for q, expected in (("192.0.2.7", {"closed-07"}), ("LAB vm", None),
                                ("safari", None), ("closed-42", {"closed-42"}),
                                ("10.1.2.3", None), ("%", set()),
                                ("_", None)):  # a literal "_": only in the Safari UA (10_15_7)
                snap = await first_snapshot(http, f"{url}?q={aiohttp.helpers.quote(q)}")
                ids = {r["id"][:9] for r in snap["recent"]}  # type: ignore[union-attr]
                if expected is not None:
                    assert ids == expected, (q, ids)
                elif q in ("LAB vm", "10.1.2.3"):
                    assert ids and all(int(i[7:9]) % 2 for i in ids), (q, ids)
                else:
                    assert ids and not any(int(i[7:9]) % 2 for i in ids), (q, ids)
            snap = await first_snapshot(http, f"{url}?q=198.51.100")
            assert snap["recent"] == [] and len(snap["failed"]) == 3  # type: ignore[arg-type]

            for bad in ("0", "-1", "x", "99999999999999999999999", "1e3"):
                async with http.get(f"{url}?page={bad}") as resp:
                    assert resp.status == 400, bad
