"""Just enough PNG decoding to look at browser screenshots (no Pillow needed).

Chromium writes 8-bit RGB or RGBA, non-interlaced. ``decode`` returns an ``Image`` whose
``pixel(x, y)`` is an (r, g, b) tuple; the helpers below count pixels by colour.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {2: 3, 6: 4}  # colour type -> bytes per pixel at bit depth 8


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    data: bytes  # rows of width * channels bytes, filters removed

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * self.channels
        return self.data[i], self.data[i + 1], self.data[i + 2]

    def pixels(
        self, box: tuple[int, int, int, int] | None = None, step: int = 1
    ) -> list[tuple[int, int, int]]:
        """RGB tuples in ``box`` = (left, top, right, bottom), every ``step``-th pixel."""
        left, top, right, bottom = box or (0, 0, self.width, self.height)
        out = []
        c = self.channels
        for y in range(max(0, top), min(self.height, bottom), step):
            row = y * self.width * c
            for x in range(max(0, left), min(self.width, right), step):
                i = row + x * c
                out.append((self.data[i], self.data[i + 1], self.data[i + 2]))
        return out


def decode(png: bytes) -> Image:
    if not png.startswith(_SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(_SIGNATURE)
    idat = []
    width = height = channels = 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        body = png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in _CHANNELS or interlace:
                raise ValueError(f"unsupported PNG: depth {depth} colour {colour} interlace {interlace}")
            channels = _CHANNELS[colour]
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(stride * height)
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if ftype == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                if pa <= pb and pa <= pc:
                    pred = a
                elif pb <= pc:
                    pred = b
                else:
                    pred = c
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"bad PNG filter {ftype}")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return Image(width, height, channels, bytes(out))


def count(
    img: Image,
    pred: Callable[[tuple[int, int, int]], bool],
    box: tuple[int, int, int, int] | None = None,
    step: int = 2,
) -> int:
    """How many sampled pixels match ``pred`` (each counts for step*step pixels)."""
    return sum(1 for p in img.pixels(box, step) if pred(p)) * step * step


def distinct_colours(img: Image, box: tuple[int, int, int, int] | None = None, step: int = 2) -> int:
    """Distinct colours, quantised to 32 levels per channel, among sampled pixels."""
    return len({(r >> 3, g >> 3, b >> 3) for r, g, b in img.pixels(box, step)})


def is_green(p: tuple[int, int, int]) -> bool:
    r, g, b = p
    return g > 140 and r < 90 and b < 90


def is_white(p: tuple[int, int, int]) -> bool:
    return min(p) > 235


def is_dark(p: tuple[int, int, int]) -> bool:
    return max(p) < 60


def bounding_box(
    img: Image,
    pred: Callable[[tuple[int, int, int]], bool],
    box: tuple[int, int, int, int] | None = None,
    step: int = 4,
) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) around the sampled pixels in ``box`` matching ``pred``."""
    left, top, right, bottom = box or (0, 0, img.width, img.height)
    xs, ys = [], []
    c = img.channels
    for y in range(max(0, top), min(img.height, bottom), step):
        row = y * img.width * c
        for x in range(max(0, left), min(img.width, right), step):
            i = row + x * c
            if pred((img.data[i], img.data[i + 1], img.data[i + 2])):
                xs.append(x)
                ys.append(y)
    if not xs:
        return None
    return min(xs), min(ys), max(xs) + step, max(ys) + step
