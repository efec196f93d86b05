"""What is drawn on an X display, per second: X DAMAGE on the root window, counted as
**full screens/s** = damaged pixels per second / screen area.

ctypes against libX11 and libXdamage (no headers, no python-xlib): ``XDamageCreate(dpy, root,
XDamageReportRawRectangles)``, then the ``area`` of every XDamageNotify is summed over a window
of seconds. Raw rectangles count each drawing request: two requests that paint the same pixel
count it twice (overdraw shows as more than one screen), a request that paints nothing new
still counts (the server reports what was drawn, not what changed).

    python bench/xdamage.py :5 --seconds 5                 # one line per second, then the mean
    XAUTHORITY=/home/u/.Xauthority python bench/xdamage.py :10

As a library: ``DamageCounter(":5").measure(seconds)`` -> ``Rate``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import select
import sys
import time
from dataclasses import dataclass

_X11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
_XD = ctypes.CDLL(ctypes.util.find_library("Xdamage") or "libXdamage.so.1")
_XF = ctypes.CDLL(ctypes.util.find_library("Xfixes") or "libXfixes.so.3")

X_DAMAGE_REPORT_RAW_RECTANGLES = 0
X_DAMAGE_REPORT_NON_EMPTY = 3
X_DAMAGE_NOTIFY = 0


class XRectangle(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_short),
        ("y", ctypes.c_short),
        ("width", ctypes.c_ushort),
        ("height", ctypes.c_ushort),
    ]


class XDamageNotifyEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("serial", ctypes.c_ulong),
        ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("drawable", ctypes.c_ulong),
        ("damage", ctypes.c_ulong),
        ("level", ctypes.c_int),
        ("more", ctypes.c_int),
        ("timestamp", ctypes.c_ulong),
        ("area", XRectangle),
        ("geometry", XRectangle),
    ]


class XEvent(ctypes.Union):
    _fields_ = [("type", ctypes.c_int), ("damage", XDamageNotifyEvent), ("pad", ctypes.c_long * 24)]


_X11.XOpenDisplay.restype = ctypes.c_void_p
_X11.XOpenDisplay.argtypes = [ctypes.c_char_p]
_X11.XDefaultRootWindow.restype = ctypes.c_ulong
_X11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
_X11.XDefaultScreen.argtypes = [ctypes.c_void_p]
_X11.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
_X11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
_X11.XPending.argtypes = [ctypes.c_void_p]
_X11.XNextEvent.argtypes = [ctypes.c_void_p, ctypes.POINTER(XEvent)]
_X11.XConnectionNumber.argtypes = [ctypes.c_void_p]
_X11.XFlush.argtypes = [ctypes.c_void_p]
_X11.XCloseDisplay.argtypes = [ctypes.c_void_p]
_XD.XDamageQueryExtension.argtypes = [
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_int),
]
_XD.XDamageCreate.restype = ctypes.c_ulong
_XD.XDamageCreate.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
_XD.XDamageDestroy.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
_XD.XDamageSubtract.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_XF.XFixesCreateRegion.restype = ctypes.c_ulong
_XF.XFixesCreateRegion.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_XF.XFixesDestroyRegion.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
_XF.XFixesFetchRegion.restype = ctypes.POINTER(XRectangle)
_XF.XFixesFetchRegion.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_int)]
_XF.XFixesQueryExtension.argtypes = [
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_int),
]
_X11.XFree.argtypes = [ctypes.c_void_p]


@dataclass
class Rate:
    seconds: float
    pixels: int  # changed pixels (union per poll) or drawn pixels (raw rectangles summed)
    rects: int  # rectangles counted
    width: int
    height: int
    mode: str = "union"

    @property
    def screens_per_s(self) -> float:
        return self.pixels / (self.width * self.height) / self.seconds if self.seconds else 0.0

    @property
    def rects_per_s(self) -> float:
        return self.rects / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.screens_per_s:7.1f} full screens/s  ({self.mode}, {self.rects_per_s:7.0f} rects/s, "
            f"{self.width}x{self.height}, {self.seconds:.1f} s)"
        )


class DamageCounter:
    """A DAMAGE object on the root window of ``display``.

    ``mode="union"`` (default): the server accumulates the damaged region; every 1/``hz`` s it
    is fetched and emptied (``XDamageSubtract`` into an XFixes region), and the area of that
    region (no overlap, clipped to the screen) is added. A pixel changed twice between two polls
    counts once, so the figure is "how much of the screen a viewer polling at ``hz`` would see
    change" and is capped at ``hz`` screens/s. ``mode="raw"``: every XDamageNotify of
    ``XDamageReportRawRectangles`` is added (overdraw counts each time; costs the counter CPU
    when a client draws tens of thousands of rectangles a second).
    """

    def __init__(self, display: str, mode: str = "union", hz: float = 200.0) -> None:
        if mode not in ("union", "raw"):
            raise ValueError(mode)
        self.mode, self.hz = mode, hz
        self.dpy = _X11.XOpenDisplay(display.encode())
        if not self.dpy:
            raise RuntimeError(f"cannot open X display {display} (XAUTHORITY?)")
        ev_base, err_base = ctypes.c_int(), ctypes.c_int()
        if not _XD.XDamageQueryExtension(self.dpy, ctypes.byref(ev_base), ctypes.byref(err_base)):
            raise RuntimeError(f"{display} has no DAMAGE extension")
        _XF.XFixesQueryExtension(self.dpy, ctypes.byref(ctypes.c_int()), ctypes.byref(ctypes.c_int()))
        self.notify = ev_base.value + X_DAMAGE_NOTIFY
        screen = _X11.XDefaultScreen(self.dpy)
        self.width = _X11.XDisplayWidth(self.dpy, screen)
        self.height = _X11.XDisplayHeight(self.dpy, screen)
        level = X_DAMAGE_REPORT_RAW_RECTANGLES if mode == "raw" else X_DAMAGE_REPORT_NON_EMPTY
        self.damage = _XD.XDamageCreate(self.dpy, _X11.XDefaultRootWindow(self.dpy), level)
        self.region = _XF.XFixesCreateRegion(self.dpy, None, 0)
        _X11.XFlush(self.dpy)
        self.fd = _X11.XConnectionNumber(self.dpy)
        self._event = XEvent()

    def _events(self) -> tuple[int, int]:
        """(pixels, rectangles) of the raw events queued now (union mode: dropped)."""
        pixels = rects = 0
        ev = self._event
        while _X11.XPending(self.dpy):
            _X11.XNextEvent(self.dpy, ctypes.byref(ev))
            if ev.type == self.notify:
                a = ev.damage.area
                pixels += a.width * a.height
                rects += 1
        return pixels, rects

    def _fetch(self) -> tuple[int, int]:
        """Union mode: (pixels, rectangles) of the damage since the last fetch, emptied."""
        self._events()
        _XD.XDamageSubtract(self.dpy, self.damage, 0, self.region)
        n = ctypes.c_int()
        rects = _XF.XFixesFetchRegion(self.dpy, self.region, ctypes.byref(n))
        pixels = 0
        for i in range(n.value):
            r = rects[i]
            x0, y0 = max(r.x, 0), max(r.y, 0)
            x1, y1 = min(r.x + r.width, self.width), min(r.y + r.height, self.height)
            if x1 > x0 and y1 > y0:
                pixels += (x1 - x0) * (y1 - y0)
        if rects:
            _X11.XFree(rects)
        return pixels, n.value

    def poll(self) -> tuple[int, int]:
        return self._fetch() if self.mode == "union" else self._events()

    def measure(self, seconds: float, each: float | None = None) -> Rate:
        """Count for ``seconds`` (what was drawn before the start is dropped); with ``each``,
        print a line per ``each`` seconds to stderr."""
        self.poll()
        start = time.monotonic()
        end = start + seconds
        period = 1.0 / self.hz
        pixels = rects = 0
        tick_at, tick_px, tick_rects = start, 0, 0
        next_poll = start
        while (now := time.monotonic()) < end:
            if self.mode == "raw":
                select.select([self.fd], [], [], min(0.05, end - now))
            else:
                next_poll += period
                if next_poll > now:
                    time.sleep(min(next_poll, end) - now)
                else:
                    next_poll = now  # fell behind: do not burst
            p, r = self.poll()
            pixels, rects, tick_px, tick_rects = pixels + p, rects + r, tick_px + p, tick_rects + r
            if each and now - tick_at >= each:
                print(
                    Rate(now - tick_at, tick_px, tick_rects, self.width, self.height, self.mode),
                    file=sys.stderr,
                )
                tick_at, tick_px, tick_rects = now, 0, 0
        return Rate(time.monotonic() - start, pixels, rects, self.width, self.height, self.mode)

    def close(self) -> None:
        if self.dpy:
            _XD.XDamageDestroy(self.dpy, self.damage)
            _XF.XFixesDestroyRegion(self.dpy, self.region)
            _X11.XCloseDisplay(self.dpy)
            self.dpy = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("display", nargs="?", default=os.environ.get("DISPLAY", ":0"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--each", type=float, default=1.0, help="print a line every N s (0: none)")
    ap.add_argument("--raw", action="store_true", help="sum raw rectangles (overdraw counts)")
    ap.add_argument("--hz", type=float, default=200.0, help="union mode: polls per second")
    args = ap.parse_args()
    counter = DamageCounter(args.display, "raw" if args.raw else "union", args.hz)
    try:
        print(counter.measure(args.seconds, args.each or None))
    finally:
        counter.close()


if __name__ == "__main__":
    main()
