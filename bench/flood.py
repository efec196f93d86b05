"""One session floods the gateway with input; how much does another session's round trip suffer?

Starts a fake RFB desktop for "victim" (bench/relay.py's fake server, which answers fences), a
real TigerVNC Xvnc for "flooder" (it takes input as fast as a real desktop does), and the real
gateway (``deskgate serve`` as a
subprocess, as in bench/relay.py). "victim" measures ClientFence -> ServerFence round trips
through the gateway and ``GET /healthz`` times, first alone, then while "flooder" sends 1 MiB
websocket messages of valid PointerEvents as fast as the gateway takes them (reconnecting each
time the gateway closes it). Prints p50/p99 of both, how many flood sessions the gateway closed
and why, the bytes it took from the flood, and the gateway's CPU use during the flood.

    .venv/bin/python bench/flood.py                 # about 30 s
    .venv/bin/python bench/flood.py --seconds 5     # shorter
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/flood.py   # A/B another gateway tree

Loopback only; every process is stopped by its PID; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay import HOST, Gateway, ProcStat, RfbClient, WsLink, cli, fake_server, free_port  # noqa: E402

MIB = 1 << 20
FLOOD_MESSAGE = struct.pack(">BBHH", 5, 0, 10, 10) * (MIB // 6)


async def sign_in(gw: Gateway, user: str, password: str) -> tuple[Any, str, str]:
    """(aiohttp session, CSRF token of the desktop page, session cookie) for ``user``."""
    import aiohttp
    import pyotp

    def hidden(html: str) -> str:
        match = re.search(r'name="_csrf" value="([^"]*)"', html)
        if match is None:
            raise RuntimeError("no _csrf field in the page")
        return match.group(1)

    jar = aiohttp.CookieJar(unsafe=True)
    http = aiohttp.ClientSession(gw.url, cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=20))
    async with http.get("/login") as resp:
        page = await resp.text()
    async with http.post("/login", data={"_csrf": hidden(page), "username": user,
                                         "password": password}) as resp:
        page = await resp.text()
    match = re.search(r'id="totp-secret"[^>]*>(.*?)</code>', page, re.S)
    if match is None:
        raise RuntimeError(f"no TOTP enrolment page for {user}")
    code = pyotp.TOTP(re.sub(r"<[^>]*>|\s", "", match.group(1))).now()
    async with http.post("/login/totp", data={"_csrf": hidden(page), "code": code}) as resp:
        page = await resp.text()
    match = re.search(r'data-csrf="([^"]+)"', page) or re.search(
        r'name="_csrf" value="([^"]*)"', page)
    if match is None:
        raise RuntimeError("no CSRF token after sign-in")
    cookie = next(c.value for c in jar if c.key == "deskgate_session")
    return http, match.group(1), cookie


async def open_ws(gw: Gateway, http: Any, csrf: str, cookie: str, desktop_id: int) -> WsLink:
    from websockets.asyncio.client import connect
    from websockets.typing import Origin, Subprotocol

    async with http.post(f"/desktops/{desktop_id}/connect",
                         headers={"X-CSRF-Token": csrf}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"connect: {resp.status} {await resp.text()}")
        ticket = await resp.json()
    ws = await connect(
        f"ws://{HOST}:{gw.port}{ticket['ws_url']}", origin=Origin(gw.url),
        additional_headers={"Cookie": f"deskgate_session={cookie}"},
        subprotocols=[Subprotocol("binary")], compression=None, max_size=None, proxy=None,
        ping_interval=None, open_timeout=10, close_timeout=2)
    return WsLink(ws)


async def healthz_times(gw: Gateway, http: Any, seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        async with http.get("/healthz") as resp:
            await resp.read()
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.05)
    return times


async def flood(gw: Gateway, http: Any, csrf: str, cookie: str, desktop_id: int,
                seconds: float, closes: dict[str, int], sent: list[int]) -> None:
    """Flood, reconnect when closed, until ``seconds`` have passed."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        link = await open_ws(gw, http, csrf, cookie, desktop_id)
        await RfbClient(link).handshake()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, deadline - time.perf_counter())):
                    while True:
                        await link.send(FLOOD_MESSAGE)
                        sent[0] += len(FLOOD_MESSAGE)
        except Exception:  # closed by the gateway: why?
            ws = link._ws
            reason = f"{ws.close_code} {ws.close_reason}" if ws.close_code else "no close frame"
            closes[reason] = closes.get(reason, 0) + 1
        await link.close()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 2 else 0.0


async def run(args: argparse.Namespace) -> None:
    from gateway.xdisplay.numbers import free_tcp_port
    from gateway.xdisplay.xvnc import start_display

    desktop = await start_display(rfbport=free_tcp_port(), name="flood", geometry="640x480",
                                  window_manager=False, xterm=False)
    port_b = desktop.rfbport
    with fake_server() as (_, port_a), \
            tempfile.TemporaryDirectory(prefix="deskgate-flood-") as tmp:
        gw = Gateway(Path(tmp) / "data", free_port())
        gw.start(port_a)
        try:
            flooder_pw = secrets.token_urlsafe(18)
            cli(gw.config, "user", "add", "flooder", "--password-stdin", stdin=flooder_pw + "\n")
            out = cli(gw.config, "desktop", "add", "flood-desk", "--provider", "static",
                      "--vnc", f"{HOST}:{port_b}")
            match = re.search(r"Desktop (\d+)", out)
            assert match is not None
            cli(gw.config, "assign", "flood-desk", "flooder")
            victim_http, victim_csrf, victim_cookie = await sign_in(gw, "bench", gw.password)
            flood_http, flood_csrf, flood_cookie = await sign_in(gw, "flooder", flooder_pw)
            try:
                victim = RfbClient(await open_ws(gw, victim_http, victim_csrf, victim_cookie,
                                                 gw.desktop_id))
                await victim.handshake()
                assert gw.proc is not None
                quiet = await victim.fences(args.fences, args.seconds)
                quiet_health = await healthz_times(gw, victim_http, 2)
                closes: dict[str, int] = {}
                sent = [0]
                before = ProcStat.of(gw.proc.pid)
                started = time.perf_counter()
                flooding = asyncio.ensure_future(flood(
                    gw, flood_http, flood_csrf, flood_cookie, int(match.group(1)),
                    args.seconds + 4, closes, sent))
                await asyncio.sleep(1)
                loud = await victim.fences(args.fences, args.seconds)
                loud_health = await healthz_times(gw, victim_http, 2)
                await flooding
                cpu = (ProcStat.of(gw.proc.pid).cpu - before.cpu) / (
                    time.perf_counter() - started)
            finally:
                await victim_http.close()
                await flood_http.close()
        except Exception:
            print(gw.log_tail(), file=sys.stderr)
            raise
        finally:
            gw.stop()
            await desktop.stop()
    print(f"victim fence round trip, quiet:    p50 {pct(quiet, 50):7.2f} ms  "
          f"p99 {pct(quiet, 99):7.2f} ms  ({len(quiet)} fences)")
    print(f"victim fence round trip, flooded:  p50 {pct(loud, 50):7.2f} ms  "
          f"p99 {pct(loud, 99):7.2f} ms  ({len(loud)} fences)")
    print(f"/healthz, quiet:   p50 {pct(quiet_health, 50):7.2f} ms  p99 {pct(quiet_health, 99):7.2f} ms")
    print(f"/healthz, flooded: p50 {pct(loud_health, 50):7.2f} ms  p99 {pct(loud_health, 99):7.2f} ms")
    print(f"flood: {sent[0] / MIB:.0f} MiB written by the flooder; gateway CPU {cpu * 100:.0f} % of a"
          f" core during the flood; flood sessions closed: {closes or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--fences", type=int, default=2000, help="at most this many per phase")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
