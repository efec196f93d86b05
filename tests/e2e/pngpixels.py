"""Looking at browser screenshots: Pillow decodes them; these helpers count pixels by colour."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

from PIL import Image as PILImage

Image = PILImage.Image
Pixel = tuple[int, int, int]
Box = tuple[int, int, int, int]


def decode(png: bytes) -> Image:
    return PILImage.open(io.BytesIO(png)).convert("RGB")


def _sample(img: Image, box: Box | None, step: int) -> Iterator[tuple[int, int, Pixel]]:
    """(x, y, rgb) of every ``step``-th pixel in ``box`` = (left, top, right, bottom)."""
    left, top, right, bottom = box or (0, 0, img.width, img.height)
    px = img.load()
    assert px is not None
    for y in range(max(0, top), min(img.height, bottom), step):
        for x in range(max(0, left), min(img.width, right), step):
            yield x, y, px[x, y]  # type: ignore[misc]


def count(img: Image, pred: Callable[[Pixel], bool], box: Box | None = None, step: int = 2) -> int:
    """How many sampled pixels match ``pred`` (each counts for step*step pixels)."""
    return sum(1 for _, _, p in _sample(img, box, step) if pred(p)) * step * step


def distinct_colours(img: Image, box: Box | None = None, step: int = 2) -> int:
    """Distinct colours, quantised to 32 levels per channel, among sampled pixels."""
    return len({(r >> 3, g >> 3, b >> 3) for _, _, (r, g, b) in _sample(img, box, step)})


def is_green(p: Pixel) -> bool:
    r, g, b = p
    return g > 140 and r < 90 and b < 90


def is_ansi_green(p: Pixel) -> bool:
    """The xterm's ANSI green background (stricter than is_green)."""
    r, g, b = p
    return g > 150 and r < 90 and b < 90


def is_ansi_blue(p: Pixel) -> bool:
    """The xterm's ANSI blue background."""
    r, g, b = p
    return b > 170 and r < 80 and g < 80


def is_white(p: Pixel) -> bool:
    return min(p) > 235


def is_dark(p: Pixel) -> bool:
    return max(p) < 60


def bounding_box(img: Image, pred: Callable[[Pixel], bool], box: Box | None = None,
                 step: int = 4) -> Box | None:
    """(left, top, right, bottom) around the sampled pixels in ``box`` matching ``pred``."""
    hits = [(x, y) for x, y, p in _sample(img, box, step) if pred(p)]
    if not hits:
        return None
    xs, ys = [x for x, _ in hits], [y for _, y in hits]
    return min(xs), min(ys), max(xs) + step, max(ys) + step


def near(colour: Pixel, slack: int = 16) -> Callable[[Pixel], bool]:
    return lambda p: all(abs(a - b) <= slack for a, b in zip(p, colour, strict=True))


def is_ansi_magenta(p: Pixel) -> bool:
    """xterm's ANSI magenta background (205, 0, 205)."""
    r, g, b = p
    return r > 170 and b > 170 and g < 60
