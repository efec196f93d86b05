"""The RDP bridge's clipboard go-between (``gateway.rdp.clipboard``) on a real Xvnc with an X
cookie, as a bridge runs it, between real X clients: xclip on CLIPBOARD (where Xvnc keeps the
browser's text) and a client owning or reading ``DESKGATE_RDP`` (where xfreerdp keeps the remote
desktop's). xfreerdp3 against xrdp itself: tests/proxy/test_rdp_bridge.py and the browser tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from x_selection import own, read

from gateway.rdp.freerdp import RDP_SELECTION
from gateway.xdisplay.numbers import free_display
from gateway.xdisplay.xvnc import XvncDisplay, start_display

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def xvnc(tmp_path: Path) -> AsyncIterator[XvncDisplay]:
    d = await start_display(display=free_display(700), unix_path=tmp_path / "vnc.sock", password="clip-pw",
                            state_dir=tmp_path, xauth=True, window_manager=False, xterm=False)  # fmt: skip
    try:
        yield d
    finally:
        await d.stop()


Keeper = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def keeper(xvnc: XvncDisplay) -> Iterator[Keeper]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        env = xvnc.env() | {"PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "gateway.rdp.clipboard", "--selection", RDP_SELECTION, *args]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        time.sleep(0.5)  # connected and watching (a later owner change is seen as it happens)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.communicate(timeout=5)


def xclip_out(env: dict[str, str], *args: str) -> str | None:
    r = subprocess.run(["xclip", "-o", "-selection", "clipboard", *args], env=env, capture_output=True,
                       timeout=10)  # fmt: skip
    return r.stdout.decode(errors="replace") if r.returncode == 0 else None


def xclip_in(env: dict[str, str], text: str) -> subprocess.Popen[bytes]:
    """xclip owning CLIPBOARD with ``text`` until stopped (as Xvnc owns it after a paste from
    the browser)."""
    argv = ["xclip", "-quiet", "-i", "-selection", "clipboard"]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(text.encode())
    proc.stdin.close()
    proc.stdin = None
    return proc


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.communicate(timeout=5)


def test_remote_text_reaches_the_browser_whole_when_the_first_answer_is_cut(
    xvnc: XvncDisplay, keeper: Keeper
) -> None:
    """FreeRDP 3.8-3.16 answer the first request for a new remote clipboard with its first
    character: the go-between asks again and passes on the second answer."""
    env = xvnc.env()
    text = f"Kopie vom entfernten Desktop, ünïcode ✓ {time.time_ns()}"
    k = keeper()
    owner = own(env, RDP_SELECTION, [text[0], text])
    try:
        assert wait_for(lambda: xclip_out(env) == text, 10, "the whole remote text on CLIPBOARD")
        assert xclip_out(env, "-t", "TARGETS") is not None
        assert "UTF8_STRING" in (xclip_out(env, "-t", "TARGETS") or "")
        # Older requestors: STRING (Latin-1, with "?" for what it cannot carry).
        assert xclip_out(env, "-t", "STRING") is not None
    finally:
        stop(owner)
    k.terminate()
    _, err = k.communicate(timeout=5)
    assert f"clipboard from the remote desktop: {len(text.encode())} bytes" in err
    assert text not in err and text[:12] not in err  # sizes only, never the content


def test_browser_text_reaches_the_remote_side(xvnc: XvncDisplay, keeper: Keeper) -> None:
    env = xvnc.env()
    keeper()
    text = f"to the remote desktop, Ünïcode {time.time_ns()}"
    paste = xclip_in(env, text)
    try:
        got = wait_for(lambda: read(env, RDP_SELECTION), 10, "the browser's text on the RDP selection")
        assert got == text.encode()
        assert "UTF8_STRING" in (read(env, RDP_SELECTION, "TARGETS") or b"").decode()
    finally:
        stop(paste)


def test_a_side_that_copied_before_the_start_is_passed_on(xvnc: XvncDisplay, keeper: Keeper) -> None:
    env = xvnc.env()
    text = f"copied before the go-between ran {time.time_ns()}"
    owner = own(env, RDP_SELECTION, [text])
    try:
        keeper()
        assert wait_for(lambda: xclip_out(env) == text, 10, "the earlier remote text on CLIPBOARD")
    finally:
        stop(owner)


def test_large_text_goes_both_ways_in_parts(xvnc: XvncDisplay, keeper: Keeper) -> None:
    """Larger than one X request can carry: received in parts from xclip (INCR), and served in
    parts; nothing lost or reordered."""
    env = xvnc.env()
    keeper("--max-bytes", str(2 << 20))
    big = "".join(f"line {i:06d} of the browser's paste ✓\n" for i in range(20_000))  # ~0.8 MB
    paste = xclip_in(env, big)
    try:
        got = wait_for(lambda: read(env, RDP_SELECTION, timeout=30), 20, "the large paste on the RDP side")
        assert got == b"INCR:" + big.encode()
    finally:
        stop(paste)
    remote = "".join(f"remote line {i:06d}\n" for i in range(12_000))  # ~240 KB: one request from the owner
    owner = own(env, RDP_SELECTION, [remote])
    try:
        assert wait_for(lambda: xclip_out(env) == remote, 20, "the large remote text on CLIPBOARD")
    finally:
        stop(owner)


def test_text_over_the_limit_is_not_passed_on_and_the_older_text_is_withdrawn(
    xvnc: XvncDisplay, keeper: Keeper
) -> None:
    env = xvnc.env()
    k = keeper("--max-bytes", "1000")
    small = "a short remote text"
    first = own(env, RDP_SELECTION, [small])
    assert wait_for(lambda: xclip_out(env) == small, 10, "the short remote text on CLIPBOARD")
    stop(first)
    second = own(env, RDP_SELECTION, ["x" * 5000])
    try:
        # The browser must not go on pasting the older text as if it were the new one.
        wait_for(lambda: xclip_out(env) is None, 10, "CLIPBOARD to have no text")
    finally:
        stop(second)
    k.terminate()
    _, err = k.communicate(timeout=5)
    assert "clipboard from the remote desktop: 5000 bytes, over the limit of 1000; not passed on" in err


def test_many_readers_at_once_all_get_the_whole_text(xvnc: XvncDisplay, keeper: Keeper) -> None:
    env = xvnc.env()
    keeper()
    text = "read by many at the same moment " * 100
    owner = own(env, RDP_SELECTION, [text[:1], text])
    try:
        wait_for(lambda: xclip_out(env) == text, 10, "the remote text on CLIPBOARD")
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: xclip_out(env), range(24)))
        assert results == [text] * 24
    finally:
        stop(owner)


async def test_it_ends_with_its_display(xvnc: XvncDisplay, keeper: Keeper) -> None:
    k = keeper()
    await xvnc.stop()
    assert k.wait(10) == 0
    k.communicate(timeout=5)
