"""Viewer traces: which tiles a slide viewer requests, in which order, as pure math.

A ``Pyramid`` describes any tiled image protocol by its levels: each has a scale (full-
resolution pixels per level pixel), a size and a tile size. DeepZoom (``.dzi``) and IIIF
Image API 3 (``info.json``) descriptors both map onto it, and a URL builder per protocol
turns a protocol-neutral ``Tile(level, col, row)`` into a request path.

A viewport is 1920x1080 screen pixels at a zoom (screen pixels per full-resolution pixel).
Like OpenSeadragon, a viewer draws it from the coarsest level that is still at least as sharp
as the screen (scale <= 1 / zoom; the finest level when zoomed past full resolution) and asks
for every tile of that level intersecting the viewport. Geometry is exact (``Fraction``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from xml.etree import ElementTree

VIEWPORT = (1920, 1080)
TRACES = ("pan", "random", "zoom")
# Each trace runs twice: cold (the server's first sight of its tiles), then warm (again).
PASSES = ("cold", "warm")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Level:
    """One pyramid level. ``key`` names it in URLs: the DZ level number or the IIIF scale."""

    key: int
    scale: int  # full-resolution pixels per level pixel
    width: int  # level pixels
    height: int
    tile_width: int  # level pixels, without DeepZoom overlap
    tile_height: int

    @property
    def cols(self) -> int:
        return _ceil_div(self.width, self.tile_width)

    @property
    def rows(self) -> int:
        return _ceil_div(self.height, self.tile_height)


@dataclass(frozen=True)
class Pyramid:
    width: int
    height: int
    levels: tuple[Level, ...]  # finest first

    def level(self, key: int) -> Level:
        for lv in self.levels:
            if lv.key == key:
                return lv
        raise KeyError(f"no level {key}")


@dataclass(frozen=True)
class Tile:
    level: int  # Level.key
    col: int
    row: int


@dataclass(frozen=True)
class Rect:
    """A half-open rectangle in full-resolution pixels."""

    x0: Fraction
    y0: Fraction
    x1: Fraction
    y1: Fraction


@dataclass(frozen=True)
class Group:
    """Tiles a viewer requests together (one viewport, or one random tile)."""

    tiles: tuple[Tile, ...]
    rect: Rect | None = None
    zoom: Fraction | None = None


@dataclass(frozen=True)
class Trace:
    name: str
    groups: tuple[Group, ...]
    viewports: bool  # groups are viewports: time until the whole group arrives is measured

    @property
    def tile_count(self) -> int:
        return sum(len(g.tiles) for g in self.groups)


# -- descriptors --------------------------------------------------------------------------
@dataclass(frozen=True)
class DziInfo:
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str


def parse_dzi(text: str) -> DziInfo:
    root = ElementTree.fromstring(text)
    size = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Size"), None)
    if size is None:
        raise ValueError("DZI descriptor has no <Size> element")
    return DziInfo(
        int(size.attrib["Width"]),
        int(size.attrib["Height"]),
        int(root.attrib["TileSize"]),
        int(root.attrib.get("Overlap", "0")),
        root.attrib["Format"],
    )


def parse_iiif_info(text: str) -> tuple[str, Pyramid]:
    """``(image id, pyramid)`` from an IIIF Image API 3 (or 2) ``info.json``."""
    info: dict[str, Any] = json.loads(text)
    image_id = info.get("id") or info.get("@id")
    if not isinstance(image_id, str) or not info.get("tiles"):
        raise ValueError("info.json needs an id and a tiles list")
    tiles = info["tiles"][0]
    tw = int(tiles["width"])
    th = int(tiles.get("height", tw))
    return image_id.rstrip("/"), iiif_pyramid(
        int(info["width"]), int(info["height"]), tw, th, tiles["scaleFactors"]
    )


def deepzoom_pyramid(width: int, height: int, tile_size: int) -> Pyramid:
    """DZI spec: ceil(log2(max(w, h))) + 1 levels; level L is ceil(w / 2**(max - L)) wide."""
    top = (max(width, height) - 1).bit_length()
    levels = []
    for key in range(top, -1, -1):
        s = 1 << (top - key)
        w, h = _ceil_div(width, s), _ceil_div(height, s)
        levels.append(Level(key, s, w, h, tile_size, tile_size))
    return Pyramid(width, height, tuple(levels))


def iiif_pyramid(
    width: int, height: int, tile_width: int, tile_height: int, scale_factors: Iterable[int]
) -> Pyramid:
    levels = [
        Level(s, s, _ceil_div(width, s), _ceil_div(height, s), tile_width, tile_height)
        for s in sorted({int(s) for s in scale_factors})
    ]
    return Pyramid(width, height, tuple(levels))


# -- URLs ---------------------------------------------------------------------------------
def deepzoom_url(dzi_url: str, fmt: str) -> Callable[[Tile], str]:
    """``{base}_files/{level}/{col}_{row}.{fmt}``, base being the .dzi URL minus ``.dzi``."""
    if not dzi_url.endswith(".dzi"):
        raise ValueError(f"not a .dzi URL: {dzi_url}")
    base = dzi_url[: -len(".dzi")]
    return lambda t: f"{base}_files/{t.level}/{t.col}_{t.row}.{fmt}"


def iiif_tile_params(pyramid: Pyramid, tile: Tile) -> tuple[int, int, int, int, int, int]:
    """``(xr, yr, wr, hr, ws, hs)`` per the IIIF Image API 3.0 implementation notes."""
    lv = pyramid.level(tile.level)
    s, tw, th = lv.scale, lv.tile_width, lv.tile_height
    xr, yr = tile.col * tw * s, tile.row * th * s
    wr = tw * s if xr + tw * s <= pyramid.width else pyramid.width - xr
    hr = th * s if yr + th * s <= pyramid.height else pyramid.height - yr
    ws = tw if xr + tw * s <= pyramid.width else (pyramid.width - xr + s - 1) // s
    hs = th if yr + th * s <= pyramid.height else (pyramid.height - yr + s - 1) // s
    return xr, yr, wr, hr, ws, hs


def iiif_url(image_id: str, pyramid: Pyramid, fmt: str = "jpg") -> Callable[[Tile], str]:
    """``{id}/{xr},{yr},{wr},{hr}/{ws},/0/default.{fmt}``."""

    def build(t: Tile) -> str:
        xr, yr, wr, hr, ws, _ = iiif_tile_params(pyramid, t)
        return f"{image_id}/{xr},{yr},{wr},{hr}/{ws},/0/default.{fmt}"

    return build


# -- viewports ----------------------------------------------------------------------------
def fit_zoom(pyramid: Pyramid, viewport: tuple[int, int] = VIEWPORT) -> Fraction:
    """The zoom at which the whole image fits the viewport."""
    return min(Fraction(viewport[0], pyramid.width), Fraction(viewport[1], pyramid.height))


def best_level(pyramid: Pyramid, zoom: Fraction) -> Level:
    """The coarsest level at least as sharp as the screen (the finest when zoomed past it)."""
    sharp = [lv for lv in pyramid.levels if lv.scale * zoom <= 1]
    return max(sharp, key=lambda lv: lv.scale) if sharp else pyramid.levels[0]


def viewport_rect(
    pyramid: Pyramid,
    centre: tuple[Fraction, Fraction],
    zoom: Fraction,
    viewport: tuple[int, int] = VIEWPORT,
) -> Rect:
    """The viewport around ``centre``, kept inside the image (centred where it is larger)."""
    w, h = Fraction(viewport[0]) / zoom, Fraction(viewport[1]) / zoom

    def start(c: Fraction, span: Fraction, limit: int) -> Fraction:
        if span >= limit:
            return (limit - span) / 2
        return min(max(c - span / 2, Fraction(0)), limit - span)

    x0, y0 = start(centre[0], w, pyramid.width), start(centre[1], h, pyramid.height)
    return Rect(x0, y0, x0 + w, y0 + h)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def _ceil(x: Fraction) -> int:
    return -(-x.numerator // x.denominator)


def tiles_in_rect(pyramid: Pyramid, level: Level, rect: Rect) -> tuple[Tile, ...]:
    """Tiles of ``level`` whose area overlaps ``rect`` (row by row, like a viewer's queue)."""
    x0, y0 = max(rect.x0, Fraction(0)), max(rect.y0, Fraction(0))
    x1, y1 = min(rect.x1, Fraction(pyramid.width)), min(rect.y1, Fraction(pyramid.height))
    if x0 >= x1 or y0 >= y1:
        return ()
    tw, th = level.tile_width * level.scale, level.tile_height * level.scale
    c0, c1 = _floor(x0 / tw), min(_ceil(x1 / tw), level.cols)
    r0, r1 = _floor(y0 / th), min(_ceil(y1 / th), level.rows)
    return tuple(Tile(level.key, c, r) for r in range(r0, r1) for c in range(c0, c1))


def viewport_group(
    pyramid: Pyramid,
    centre: tuple[Fraction, Fraction],
    zoom: Fraction,
    viewport: tuple[int, int] = VIEWPORT,
) -> Group:
    rect = viewport_rect(pyramid, centre, zoom, viewport)
    return Group(tiles_in_rect(pyramid, best_level(pyramid, zoom), rect), rect, zoom)


def zoom_steps(pyramid: Pyramid, viewport: tuple[int, int] = VIEWPORT) -> list[Fraction]:
    """Fit to the viewport, then 2x per step, ending at full resolution (zoom 1)."""
    zooms = [fit_zoom(pyramid, viewport)]
    while zooms[-1] < 1:
        zooms.append(min(zooms[-1] * 2, Fraction(1)))
    return zooms


def _centres(
    pyramid: Pyramid, centres: Sequence[tuple[float, float]] | None
) -> list[tuple[Fraction, Fraction]]:
    if not centres:
        return [(Fraction(pyramid.width, 2), Fraction(pyramid.height, 2))]
    return [(Fraction(x), Fraction(y)) for x, y in centres]


def serpentine(
    centre: tuple[Fraction, Fraction], step: tuple[Fraction, Fraction], steps: int, columns: int
) -> list[tuple[Fraction, Fraction]]:
    """``steps`` moves of one ``step`` along a serpentine ``columns`` positions wide."""
    points = [centre]
    x, y = centre
    direction, run = 1, 1
    for _ in range(steps):
        if run < columns:
            x += direction * step[0]
            run += 1
        else:
            y += step[1]
            direction, run = -direction, 1
        points.append((x, y))
    return points


def pan_trace(
    pyramid: Pyramid,
    *,
    centres: Sequence[tuple[float, float]] | None = None,
    viewport: tuple[int, int] = VIEWPORT,
    pan_steps: int = 20,
    columns: int = 5,
) -> Trace:
    """Per centre: zoom in from the whole slide 2x per step, then pan in half viewports."""
    groups: list[Group] = []
    step = (Fraction(viewport[0], 2), Fraction(viewport[1], 2))
    for centre in _centres(pyramid, centres):
        zooms = zoom_steps(pyramid, viewport)
        groups += [viewport_group(pyramid, centre, z, viewport) for z in zooms]
        # Start the serpentine so it sweeps around the centre rather than off one edge.
        rows = pan_steps // columns + 1
        origin = (centre[0] - step[0] * (columns - 1) / 2, centre[1] - step[1] * (rows - 1) / 2)
        for point in serpentine(origin, step, pan_steps, columns):
            groups.append(viewport_group(pyramid, point, Fraction(1), viewport))
    return Trace("pan", tuple(g for g in groups if g.tiles), viewports=True)


def zoom_trace(
    pyramid: Pyramid,
    *,
    centres: Sequence[tuple[float, float]] | None = None,
    viewport: tuple[int, int] = VIEWPORT,
    cycles: int = 3,
) -> Trace:
    """Zoom from the whole slide to full resolution and back out, ``cycles`` times."""
    centre = _centres(pyramid, centres)[0]
    zooms = zoom_steps(pyramid, viewport)
    cycle = zooms + zooms[-2:0:-1]
    sequence = cycle * cycles + zooms[:1]
    groups = (viewport_group(pyramid, centre, z, viewport) for z in sequence)
    return Trace("zoom", tuple(g for g in groups if g.tiles), viewports=True)


def random_trace(pyramid: Pyramid, *, count: int = 2000, seed: int = 0) -> Trace:
    """Distinct tiles drawn uniformly (seeded) from the two finest levels."""
    population = [
        (lv.key, c, r) for lv in pyramid.levels[:2] for r in range(lv.rows) for c in range(lv.cols)
    ]
    picks = random.Random(seed).sample(population, min(count, len(population)))
    return Trace("random", tuple(Group((Tile(*p),)) for p in picks), viewports=False)


def make_trace(
    name: str,
    pyramid: Pyramid,
    *,
    centres: Sequence[tuple[float, float]] | None = None,
    seed: int = 0,
    count: int = 2000,
) -> Trace:
    if name == "pan":
        return pan_trace(pyramid, centres=centres)
    if name == "zoom":
        return zoom_trace(pyramid, centres=centres)
    if name == "random":
        return random_trace(pyramid, count=count, seed=seed)
    raise ValueError(f"unknown trace {name!r}; choose from {', '.join(TRACES)}")


def first_requests(groups: Iterable[Group]) -> tuple[Group, ...]:
    """Drop tiles requested earlier in the sequence, as a viewer's tile cache would.

    Groups left empty are dropped. Running the result twice gives a cold pass (every tile
    requested for the first time) and a warm pass (every tile requested before).
    """
    seen: set[Tile] = set()
    out = []
    for g in groups:
        new = tuple(t for t in dict.fromkeys(g.tiles) if t not in seen)
        seen.update(new)
        if new:
            out.append(Group(new, g.rect, g.zoom))
    return tuple(out)


def limit_requests(groups: Sequence[Group], max_requests: int) -> tuple[Group, ...]:
    """The first ``max_requests`` tiles, the last group cut short if need be."""
    out, left = [], max_requests
    for g in groups:
        if left <= 0:
            break
        out.append(g if len(g.tiles) <= left else Group(g.tiles[:left], g.rect, g.zoom))
        left -= len(out[-1].tiles)
    return tuple(out)
