"""A full-screen change for the RDP bench: every pixel of the X display changes every frame.

It paints the root window with ``XPutImage`` ``--fps`` times a second: a colour pattern that
moves by 3 rows per frame, so no pixel keeps its value from one frame to the next (each channel
changes by a non-zero step per row). Nothing is copied on the screen (no scroll a VNC server
could send as CopyRect): each frame is new pixels, as a video or a redrawn page is.

Runs with the system's python3 (ctypes and libX11 only), inside a desktop session:

    DISPLAY=:5 python3 bench/screen_flood.py --fps 60
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import time

STEP = 3  # rows the pattern moves per frame


def pattern_rows(width: int) -> list[bytes]:
    """256 rows (B, G, R, X per pixel) whose every pixel differs from the same column STEP rows on."""
    rows = []
    for y in range(256):
        row = bytearray(width * 4)
        for x in range(width):
            row[4 * x] = (x * 2 + y * 5) & 255
            row[4 * x + 1] = (x + y * 3) & 255
            row[4 * x + 2] = ((x >> 2) + y * 7 + (x * y >> 6)) & 255
        rows.append(bytes(row))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fps", type=float, default=60.0)
    ap.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args = ap.parse_args()
    x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    for name in ("XDefaultScreen",):
        getattr(x11, name).argtypes = [ctypes.c_void_p]
    x11.XRootWindow.restype = ctypes.c_ulong
    x11.XRootWindow.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XDefaultVisual.restype = ctypes.c_void_p
    x11.XDefaultVisual.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XDefaultGC.restype = ctypes.c_void_p
    x11.XDefaultGC.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XDisplayWidth.argtypes = x11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XCreateImage.restype = ctypes.c_void_p
    x11.XCreateImage.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_int,
    ]
    x11.XPutImage.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
    ]
    x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]

    dpy = x11.XOpenDisplay(None)
    if not dpy:
        sys.exit("screen_flood: cannot open the display")
    screen = x11.XDefaultScreen(dpy)
    root = x11.XRootWindow(dpy, screen)
    width, height = x11.XDisplayWidth(dpy, screen), x11.XDisplayHeight(dpy, screen)
    rows = pattern_rows(width)
    # A strip of height + 256 rows: frame k shows rows (k * STEP) % 256 onwards.
    strip = b"".join(rows[y % 256] for y in range(height + 256))
    data = ctypes.create_string_buffer(strip, len(strip))
    image = x11.XCreateImage(dpy, x11.XDefaultVisual(dpy, screen), 24, 2, 0, data, width, height + 256, 32, 0)
    gc = x11.XDefaultGC(dpy, screen)
    period = 1.0 / args.fps
    start = next_at = time.monotonic()
    frame = 0
    while time.monotonic() - start < args.seconds:
        x11.XPutImage(dpy, root, gc, image, 0, (frame * STEP) % 256, 0, 0, width, height)
        x11.XSync(dpy, 0)
        frame += 1
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()  # behind: no burst


if __name__ == "__main__":
    main()
