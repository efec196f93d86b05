"""The bench's phases with many sessions: connect storm, idle sessions, shutdown; the summary.

Each phase starts a gateway of its own (``relay.Gateway``: a real ``deskgate serve`` in a temporary
data folder) in front of one fake RFB desktop process (``relay.py --fake-server``), creates a pool
of people with the CLI (``user add --password-stdin``, ``assign``), signs each in over HTTP
(password, TOTP enrolment) before anything is measured, and then opens sessions exactly as
``static/client.js`` does: ``POST /desktops/{id}/connect`` with the page's CSRF token, the relay
websocket (Origin, cookie, ticket, subprotocol ``binary``), the browser's side of the RFB
handshake. A held session keeps reading its websocket (aiohttp's client answers the gateway's
pings there, as a browser does) until the phase ends.

A connect counts as failed when the connect answer is not 200 (503 "the gateway is full" is
counted apart as refused), the websocket is refused or closed, or the RFB handshake does not
complete within its bound. Every loop is bounded in count and time; every process is stopped by
its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import html
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import relay as rb

HANDSHAKE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 60.0
# The gateway says it is full (503) this many times in one batch: it is, stop asking.
FULL_AFTER_REFUSALS = 100


# --- one held session ---------------------------------------------------------------------------
class Failed(Exception):
    """A connect that did not give a working session; ``kind`` groups them in the report."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


class Held:
    """A relayed session held open: a reader task drains the websocket (answering pings) and
    keeps the RFB bytes for whoever waits on them."""

    def __init__(self, ws: Any, session_id: str) -> None:
        self.ws, self.session_id = ws, session_id
        self.buf = bytearray()
        self.closed = False
        self.close_info = ""
        self._event = asyncio.Event()
        self.reader = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        import aiohttp

        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self.buf += msg.data
                    self._event.set()
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    self.close_info = f"websocket closed ({self.ws.close_code}: {msg.extra})"
                    break
        except Exception as exc:  # the bench keeps going; the session counts as gone
            self.close_info = f"{type(exc).__name__}: {exc}"
        finally:
            self.closed = True
            self._event.set()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.closed:
                raise Failed("websocket closed", self.close_info)
            self._event.clear()
            await self._event.wait()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def handshake(self) -> None:
        if await self.read(12) != b"RFB 003.008\n":
            raise Failed("RFB handshake", "not an RFB 3.8 server")
        await self.send(b"RFB 003.008\n")
        count = (await self.read(1))[0]
        if 1 not in await self.read(count):
            raise Failed("RFB handshake", "security type None not offered")
        await self.send(b"\x01")
        if await self.read(4) != b"\0\0\0\0":
            raise Failed("RFB handshake", "security result: failed")
        await self.send(b"\x01")  # ClientInit, shared
        head = await self.read(24)
        (name_len,) = struct.unpack_from(">I", head, 20)
        await self.read(name_len)

    async def fence(self, seq: int) -> None:
        """A ClientFence through the gateway to the desktop and its ServerFence back."""
        payload = struct.pack(">I", seq & 0xFFFFFFFF)
        await self.send(struct.pack(">BxxxIB", 248, rb.FENCE_REQUEST, 4) + payload)
        kind = await self.read(1)
        while kind == b"\0":  # FramebufferUpdates (answers to the gateway's liveness probes)
            (rects,) = struct.unpack(">xH", await self.read(3))
            for _ in range(rects):
                (w, h) = struct.unpack_from(">HH", await self.read(12), 4)
                await self.read(w * h * 4)  # raw, 32 bpp (the fake desktop's only encoding)
            kind = await self.read(1)
        reply = kind + await self.read(12)
        if reply[0] != 248 or reply[9:] != payload:
            raise Failed("fence", f"unexpected reply {reply!r}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


@dataclass
class Person:
    """A signed-in person: one browser (aiohttp session, cookie jar) and the page's CSRF token."""
    name: str
    http: Any
    csrf: str = ""


@dataclass
class Opened:
    held: list[Held] = field(default_factory=list)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    refused: int = 0  # 503: the gateway said it is full
    attempts: int = 0
    latencies: list[float] = field(default_factory=list)  # click -> RFB handshake done
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def failure_text(self) -> str:
        if not self.failed:
            return ""
        return "; ".join(f"{n} x {kind} (e.g. {self.examples[kind][:140]})"
                         for kind, n in self.failed.most_common(4))


def page_text(body: str) -> str:
    """What a person would read of an error page (or a JSON answer), on one line."""
    body = re.sub(r"(?is)<(head|script|style)\b.*?</\1>", " ", body[:20_000])
    body = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", html.unescape(body)).strip()[:200]


def log_size(gw: rb.Gateway) -> int:
    with contextlib.suppress(OSError):
        return (gw.data / "gateway.log").stat().st_size
    return 0


def log_problems(gw: rb.Gateway, since: int = 0, top: int = 3) -> list[str]:
    """The gateway log's commonest exceptions and errors after byte ``since``, with counts."""
    found: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError), open(gw.data / "gateway.log", "rb") as f:
        f.seek(since)
        for raw in f.read(50 * rb.MB).decode(errors="replace").splitlines():
            match = re.search(r"\b(\w+(?:\.\w+)*(?:Error|Exception)\b.*)", raw)
            if match is None and " ERROR " in raw:
                match = re.search(r" ERROR (.*)", raw)
            if match is not None:
                found[match.group(1).strip()[:160]] += 1
    return [f"{n} x {line}" for line, n in found.most_common(top)]


async def open_one(gw: rb.Gateway, person: Person) -> tuple[Held, float]:
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with person.http.post(
                f"/desktops/{gw.desktop_id}/connect", json={"width": 1280, "height": 800},
                headers={"X-CSRF-Token": person.csrf}) as resp:
            if resp.status != 200:
                raise Failed(f"connect HTTP {resp.status}", page_text(await resp.text()))
            ticket = await resp.json()
        ws = await person.http.ws_connect(
            ticket["ws_url"], origin=gw.url, protocols=("binary",), autoping=True,
            heartbeat=None, compress=0, max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5))
    except Failed:
        raise
    except aiohttp.WSServerHandshakeError as exc:
        raise Failed("websocket refused", f"{exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Failed(f"connect {type(exc).__name__}", str(exc)) from exc
    held = Held(ws, str(ticket.get("session_id", "")))
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await held.handshake()
    except TimeoutError as exc:
        await held.close()
        raise Failed("RFB handshake timed out", f"{HANDSHAKE_TIMEOUT:g} s") from exc
    except BaseException:
        await held.close()
        raise
    return held, time.perf_counter() - t0


async def open_many(gw: rb.Gateway, people: list[Person], target: int, in_flight: int,
                    max_attempts: int, time_limit: float, into: Opened | None = None) -> Opened:
    """Open sessions ``in_flight`` at a time until ``target`` are held (or the attempts or the
    time run out); people take turns."""
    out = into or Opened()
    goal = len(out.held) + target
    attempts_left = max_attempts
    deadline = time.monotonic() + time_limit
    t0 = time.perf_counter()

    pending = 0  # attempts under way: never more than the goal still needs
    refused_before = out.refused

    async def worker() -> None:
        nonlocal attempts_left, pending
        while (len(out.held) + pending < goal and attempts_left > 0
               and time.monotonic() < deadline
               and out.refused - refused_before < FULL_AFTER_REFUSALS):
            attempts_left -= 1
            person = people[out.attempts % len(people)]
            out.attempts += 1
            pending += 1
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    held, seconds = await open_one(gw, person)
            except Failed as exc:
                if exc.kind == "connect HTTP 503":
                    out.refused += 1
                out.failed[exc.kind] += 1
                out.examples.setdefault(exc.kind, exc.detail)
                continue
            except TimeoutError:
                out.failed["connect timed out"] += 1
                out.examples.setdefault("connect timed out", f"{CONNECT_TIMEOUT:g} s")
                continue
            finally:
                pending -= 1
            out.held.append(held)
            out.latencies.append(seconds)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    out.seconds += time.perf_counter() - t0
    return out


async def close_all(held: list[Held], in_flight: int = 200) -> None:
    sem = asyncio.Semaphore(in_flight)

    async def one(h: Held) -> None:
        async with sem:
            await h.close()

    await asyncio.gather(*(one(h) for h in held))


async def check_all(held: list[Held], in_flight: int = 200, timeout: float = 60) -> tuple[int, str]:
    """Every held session sends a ClientFence through the gateway to the desktop; how many got
    their ServerFence back (within ``timeout`` overall), and one example of a failure."""
    sem = asyncio.Semaphore(in_flight)
    example = ""

    async def one(i: int, h: Held) -> bool:
        nonlocal example
        async with sem:
            try:
                async with asyncio.timeout(20):
                    await h.fence(i)
                return True
            except Exception as exc:
                example = example or f"{type(exc).__name__}: {exc}"
                return False

    try:
        async with asyncio.timeout(timeout):
            answered = await asyncio.gather(*(one(i, h) for i, h in enumerate(held)))
    except TimeoutError:
        return 0, f"the check did not finish within {timeout:g} s"
    return sum(answered), example


# --- a gateway with a pool of signed-in people --------------------------------------------------
@contextlib.asynccontextmanager
async def gateway_with_people(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import aiohttp

    with rb.fake_server() as (_server, fake_port), \
            tempfile.TemporaryDirectory(prefix="deskgate-bench-") as tmp:
        gw = rb.Gateway(Path(tmp) / "data", rb.free_port())
        people: list[Person] = []
        try:
            gw.start(fake_port)
            names = ["bench", *gw.add_users(max(0, args.users - 1))]
            for name in names:
                http = aiohttp.ClientSession(
                    gw.url, cookie_jar=aiohttp.CookieJar(unsafe=True),
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT))
                people.append(Person(name, http))
                person = people[-1]
                person.csrf = await gw.sign_in(http, name)
            yield gw, people
        except Exception:
            print(gw.log_tail(), file=sys.stderr)
            raise
        finally:
            for person in people:
                await person.http.close()
            gw.stop()


def gateway_pid(gw: rb.Gateway) -> int:
    assert gw.proc is not None
    return gw.proc.pid


# --- storm ---------------------------------------------------------------------------------------
async def storm_phase(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"\n== connect storm: {args.storm} connects at each concurrency, {args.users} people "
          "signed in beforehand, sessions held until the storm ends ==")
    head = (f"{'in flight':>9s} {'opened':>7s} {'failed':>7s} {'refused 503':>11s} "
            f"{'click->RFB p50 ms':>17s} {'p99 ms':>8s} {'connects/s':>10s}")
    print(head)
    print("-" * len(head))
    async with gateway_with_people(args) as (gw, people):
        for in_flight in args.in_flight:
            since = log_size(gw)
            opened = await open_many(gw, people, args.storm, in_flight, max_attempts=args.storm,
                                     time_limit=600)
            lat = opened.latencies
            print(f"{in_flight:>9d} {len(opened.held):>7d} {opened.failures:>7d} "
                  f"{opened.refused:>11d} "
                  f"{rb.fmt(rb.pct(lat, 0.5) * 1e3 if lat else None, '17.1f')} "
                  f"{rb.fmt(rb.pct(lat, 0.99) * 1e3 if lat else None, '8.1f')} "
                  f"{opened.attempts / opened.seconds if opened.seconds else 0:>10.1f}",
                  flush=True)
            if opened.failed:
                print(f"          failures: {opened.failure_text()}")
            for line in log_problems(gw, since):
                print(f"          gateway log: {line}")
            results[str(in_flight)] = {"attempts": opened.attempts, "opened": len(opened.held),
                                       "failed": opened.failures, "refused": opened.refused,
                                       "why": opened.failure_text()}
            await close_all(opened.held)
            await asyncio.sleep(1.0 if args.quick else 3.0)  # the gateway closes its side
    return results


# --- idle ----------------------------------------------------------------------------------------
async def idle_phase(args: argparse.Namespace) -> dict[str, Any]:
    levels: list[dict[str, Any]] = []
    print(f"\n== idle sessions: {', '.join(map(str, args.sessions))} opened 16 at a time and "
          f"held (reading, answering pings); gateway CPU over {args.idle_window:g} s each ==")
    async with gateway_with_people(args) as (gw, people):
        pid = gateway_pid(gw)
        await asyncio.sleep(1.0)
        base_uss, base_fds = rb.uss_bytes(pid), rb.open_fds(pid)
        print(f"gateway PID {pid}: fd limit {rb.fd_limit(pid)}, baseline USS "
              f"{base_uss / rb.MB:.1f} MiB, {base_fds} fds")
        head = (f"{'target':>7s} {'open':>6s} {'failed':>7s} {'refused':>7s} {'USS MiB':>8s} "
                f"{'KB/session':>10s} {'fds':>6s} {'CPU % core':>10s} {'% core/1000':>11s}")
        print(head)
        print("-" * len(head))
        opened = Opened()
        try:
            for target in args.sessions:
                want = target - len(opened.held)
                if want > 0:
                    await open_many(gw, people, want, 16, max_attempts=2 * want + 50,
                                    time_limit=300, into=opened)
                if gw.proc is not None and gw.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited ({gw.proc.returncode}) at "
                                       f"{len(opened.held)} sessions")
                alive = [h for h in opened.held if not h.closed]
                await asyncio.sleep(2.0)
                uss, fds = rb.uss_bytes(pid), rb.open_fds(pid)
                per = (uss - base_uss) / 1024 / len(alive) if alive else None
                c0, t0 = rb.ProcStat.tree(pid).cpu, time.monotonic()
                await asyncio.sleep(args.idle_window)
                cpu = (rb.ProcStat.tree(pid).cpu - c0) / (time.monotonic() - t0) * 100
                per_k = cpu / (len(alive) / 1000) if alive else None
                alive_now = sum(1 for h in opened.held if not h.closed)
                print(f"{target:>7d} {alive_now:>6d} {opened.failures:>7d} {opened.refused:>7d} "
                      f"{uss / rb.MB:>8.1f} {rb.fmt(per, '10.1f')} {fds:>6d} {cpu:>10.2f} "
                      f"{rb.fmt(per_k, '11.2f')}", flush=True)
                levels.append({"target": target, "open": alive_now, "kb_per_session": per,
                               "cpu_pct": cpu, "pct_core_per_1000": per_k, "fds": fds})
                if len(alive) < target:
                    print(f"          only {len(alive)} of {target} open: "
                          f"{opened.failure_text() or 'sessions closed by the gateway'}")
            answered, example = await check_all(opened.held)
            total = len(opened.held)
            print(f"end-to-end check: {answered} of {total} held sessions answered a ClientFence "
                  f"through the gateway{'; e.g. ' + example if example else ''}")
            for line in log_problems(gw):
                print(f"gateway log: {line}")
        finally:
            await close_all(opened.held)
    return {"levels": levels, "answered": answered, "held": total,
            "failed": opened.failures, "refused": opened.refused,
            "why": opened.failure_text()}


# --- shutdown ------------------------------------------------------------------------------------
async def shutdown_phase(args: argparse.Namespace) -> dict[str, Any]:
    n = args.shutdown_sessions
    print(f"\n== shutdown: SIGTERM to the gateway with {n} live sessions ==")
    async with gateway_with_people(args) as (gw, people):
        opened = await open_many(gw, people, n, 16, max_attempts=2 * n + 50, time_limit=300)
        ids = {h.session_id for h in opened.held if not h.closed}
        print(f"{len(ids)} sessions live ({opened.failures} failed connects"
              f"{': ' + opened.failure_text() if opened.failed else ''})")
        assert gw.proc is not None
        t0 = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(gw.proc.wait, 60)
        except subprocess.TimeoutExpired:
            code = None
            rb.stop(gw.proc, 1)
        took = time.monotonic() - t0
        await close_all(opened.held)
        db = gw.data / "deskgate.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute("SELECT id, ended_at FROM sessions").fetchall()
            closed = sum(1 for sid, ended in rows if sid in ids and ended is not None)
            details = [d for (d,) in con.execute(
                "SELECT detail FROM audit WHERE kind = 'session.disconnect'")]
        audited = set()
        for detail in details:
            match = re.match(r"session (\S+):", detail)
            if match and match.group(1) in ids:
                audited.add(match.group(1))
        verify = subprocess.run([rb.deskgate_exe(), "--config", str(gw.config), "audit", "verify"],
                                capture_output=True, text=True, timeout=120, cwd=rb.REPO)
        problems = log_problems(gw)
    exited = "did not exit within 60 s (killed)" if code is None else f"exited {code}"
    print(f"gateway {exited} {took:.1f} s after SIGTERM")
    print(f"session rows closed: {closed} of {len(ids)}; session.disconnect audit rows: "
          f"{len(audited)} of {len(ids)}")
    print(f"deskgate audit verify: exit {verify.returncode}: "
          f"{(verify.stdout + verify.stderr).strip()[:200]}")
    for line in problems:
        print(f"  gateway log: {line}")
    return {"live": len(ids), "closed": closed, "audited": len(audited),
            "verify_rc": verify.returncode, "exit": exited, "seconds": took}


PHASES = {"storm": storm_phase, "idle": idle_phase, "shutdown": shutdown_phase}


# --- the closing summary -------------------------------------------------------------------------
def final_summary(s: dict[str, Any], args: argparse.Namespace) -> None:
    """The issue's "Done when" figures, one line each, with the target beside the figure."""
    print("\n== summary (targets in brackets) ==")
    if args.quick:
        print("(--quick: a tiny scale that proves every phase runs; its figures judge nothing)")
    storm = s.get("storm")
    if storm:
        for level, r in storm.items():
            refused = f", {r['refused']} of them refused 503 (full)" if r["refused"] else ""
            print(f"connect storm, {level} in flight: {r['failed']} failed of {r['attempts']}"
                  f"{refused}   [0 failed]")
    idle = s.get("idle")
    if idle:
        top = idle["levels"][-1] if idle["levels"] else {"target": 0, "open": 0}
        print(f"idle: {top['open']} of {top['target']} sessions open; {idle['answered']} of "
              f"{idle['held']} answered at the end   [{args.sessions[-1]} open, all answer]")
        kb = ", ".join(f"{lv['target']}: {rb.fmt(lv['kb_per_session'], '.1f')}"
                       for lv in idle["levels"])
        print(f"idle memory, KB per session (USS): {kb}   [<= 20]")
        cpu = ", ".join(f"{lv['target']}: {rb.fmt(lv['pct_core_per_1000'], '.2f')}"
                        for lv in idle["levels"])
        print(f"idle CPU, % of a core per 1,000 sessions: {cpu}   [<= 1]")
    relay = s.get("relay")
    if relay:
        gw, so = relay.get("gateway", {}), relay.get("socat", {})
        print(f"relay CPU-s/GB (median): gateway {rb.fmt(gw.get('cpu_per_gb'), '.2f')}, socat "
              f"{rb.fmt(so.get('cpu_per_gb'), '.2f')}   [gateway <= 0.6]")
        print(f"relay throughput gateway/socat: "
              f"{rb.fmt(rb.ratio(gw.get('mbps'), so.get('mbps')), '.2f')}x "
              f"({rb.fmt(gw.get('mbps'), '.0f')} vs {rb.fmt(so.get('mbps'), '.0f')} MB/s)"
              f"   [>= 0.9x]")
    shut = s.get("shutdown")
    if shut:
        print(f"shutdown with {shut['live']} live: {shut['closed']} session rows closed, "
              f"{shut['audited']} session.disconnect rows, audit verify exit "
              f"{shut['verify_rc']}; gateway {shut['exit']}   [all of them, exit 0]")
    load = os.getloadavg()
    print(f"(load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
          f"{os.cpu_count()} CPUs)")
