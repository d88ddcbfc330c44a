"""Trace math: viewports against brute force, DeepZoom and IIIF URLs, random determinism."""

from __future__ import annotations

from fractions import Fraction

import pytest
from openslide import ImageSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from tileserver.bench.traces import (
    Group,
    Pyramid,
    Rect,
    Tile,
    best_level,
    deepzoom_pyramid,
    deepzoom_url,
    first_requests,
    iiif_pyramid,
    iiif_tile_params,
    iiif_url,
    limit_requests,
    pan_trace,
    parse_dzi,
    parse_iiif_info,
    random_trace,
    zoom_trace,
)

PYRAMIDS = [
    deepzoom_pyramid(20000, 15000, 254),
    deepzoom_pyramid(2000, 1500, 254),
    deepzoom_pyramid(1000, 1, 256),
    deepzoom_pyramid(54321, 12345, 510),
    iiif_pyramid(20000, 15000, 512, 512, [1, 2, 4, 8, 16, 32, 64]),
    iiif_pyramid(7000, 9000, 256, 384, [1, 4, 16]),
]


def brute_force(pyramid: Pyramid, rect: Rect, zoom: Fraction) -> set[Tile]:
    """Every tile of the level a viewer would pick whose area overlaps the viewport."""
    sharp = [lv for lv in pyramid.levels if lv.scale * zoom <= 1] or [pyramid.levels[0]]
    level = max(sharp, key=lambda lv: lv.scale)
    out = set()
    for row in range(level.rows):
        for col in range(level.cols):
            tw, th = level.tile_width * level.scale, level.tile_height * level.scale
            x0, y0 = col * tw, row * th
            x1, y1 = min(x0 + tw, pyramid.width), min(y0 + th, pyramid.height)
            if x0 < rect.x1 and x1 > rect.x0 and y0 < rect.y1 and y1 > rect.y0:
                out.add(Tile(level.key, col, row))
    return out


@pytest.mark.parametrize(("w", "h", "tile"), [(2000, 1500, 254), (3001, 1999, 256), (1000, 1, 254)])
def test_deepzoom_levels_match_openslide(w: int, h: int, tile: int) -> None:
    dz = DeepZoomGenerator(ImageSlide(Image.new("RGB", (w, h))), tile_size=tile, overlap=1)
    pyramid = deepzoom_pyramid(w, h, tile)
    assert len(pyramid.levels) == dz.level_count
    for lv in pyramid.levels:
        assert (lv.width, lv.height) == dz.level_dimensions[lv.key]
        assert (lv.cols, lv.rows) == dz.level_tiles[lv.key]


@pytest.mark.parametrize("pyramid", PYRAMIDS, ids=lambda p: f"{p.width}x{p.height}")
def test_pan_viewports_are_exactly_the_intersecting_tiles(pyramid: Pyramid) -> None:
    trace = pan_trace(pyramid, centres=[(pyramid.width / 3, pyramid.height / 2)])
    assert trace.viewports and trace.groups
    for group in trace.groups:
        assert group.rect is not None and group.zoom is not None
        assert len(set(group.tiles)) == len(group.tiles)
        assert set(group.tiles) == brute_force(pyramid, group.rect, group.zoom)
        # The viewport is 1920x1080 screen pixels, inside the image where it fits.
        assert (group.rect.x1 - group.rect.x0) * group.zoom == 1920
        if group.rect.x1 - group.rect.x0 <= pyramid.width:
            assert group.rect.x0 >= 0 and group.rect.x1 <= pyramid.width


def test_pan_zooms_from_fit_to_full_resolution_then_pans() -> None:
    pyramid = deepzoom_pyramid(20000, 15000, 254)
    zooms = [g.zoom for g in pan_trace(pyramid).groups]
    fit = Fraction(1080, 15000)
    assert zooms[:5] == [fit, fit * 2, fit * 4, fit * 8, 1]
    assert zooms[5:] == [1] * 21  # the serpentine: 20 half-viewport steps after its start
    levels = [g.tiles[0].level for g in pan_trace(pyramid).groups]
    # 1/zoom = 13.9, 6.9, 3.5, 1.7, 1: scales 8, 4, 2, 1, 1 (the coarsest still sharp)
    assert levels[:5] == [12, 13, 14, 15, 15]
    assert best_level(pyramid, fit).scale == 8


def test_zoom_trace_goes_in_and_out() -> None:
    pyramid = iiif_pyramid(20000, 15000, 512, 512, [1, 2, 4, 8, 16, 32, 64])
    scales = [pyramid.level(g.tiles[0].level).scale for g in zoom_trace(pyramid, cycles=2).groups]
    assert scales == [8, 4, 2, 1, 1, 1, 2, 4] * 2 + [8]


def test_deepzoom_url() -> None:
    build = deepzoom_url("https://127.0.0.1:8443/slides/abc/slide.dzi", "jpeg")
    assert build(Tile(12, 3, 4)) == "https://127.0.0.1:8443/slides/abc/slide_files/12/3_4.jpeg"
    with pytest.raises(ValueError):
        deepzoom_url("http://x/info.json", "jpg")


def spec_tile(width: int, height: int, tw: int, th: int, s: int, n: int, m: int) -> str:
    """IIIF Image API 3.0 implementation notes, section 3, transcribed literally."""
    xr, yr = n * tw * s, m * th * s
    wr, hr = tw * s, th * s
    if xr + wr > width:
        wr = width - xr
    if yr + hr > height:
        hr = height - yr
    ws = tw
    if xr + tw * s > width:
        ws = (width - xr + s - 1) // s  # +s-1 in numerator to round up
    hs = th
    if yr + th * s > height:
        hs = (height - yr + s - 1) // s
    return f"{xr},{yr},{wr},{hr}/{ws},{hs}"


def test_iiif_tile_math_matches_the_spec() -> None:
    pyramid = iiif_pyramid(1000, 750, 512, 512, [1, 2, 4])
    build = iiif_url("http://127.0.0.1/iiif/abc", pyramid)
    # Hand-checked: edge tiles are clipped, sizes round up.
    assert build(Tile(1, 1, 1)) == "http://127.0.0.1/iiif/abc/512,512,488,238/488,/0/default.jpg"
    assert build(Tile(1, 0, 0)) == "http://127.0.0.1/iiif/abc/0,0,512,512/512,/0/default.jpg"
    assert build(Tile(2, 0, 0)) == "http://127.0.0.1/iiif/abc/0,0,1000,750/500,/0/default.jpg"
    assert build(Tile(4, 0, 0)) == "http://127.0.0.1/iiif/abc/0,0,1000,750/250,/0/default.jpg"
    for pyr in (pyramid, PYRAMIDS[4], PYRAMIDS[5]):
        lv0 = pyr.levels[0]
        for lv in pyr.levels:
            for row in range(lv.rows):
                for col in range(lv.cols):
                    xr, yr, wr, hr, ws, hs = iiif_tile_params(pyr, Tile(lv.key, col, row))
                    expected = spec_tile(
                        pyr.width, pyr.height, lv0.tile_width, lv0.tile_height, lv.scale, col, row
                    )
                    assert f"{xr},{yr},{wr},{hr}/{ws},{hs}" == expected


def test_parse_descriptors() -> None:
    dz = DeepZoomGenerator(ImageSlide(Image.new("RGB", (300, 200))), tile_size=254, overlap=1)
    info = parse_dzi(dz.get_dzi("jpeg"))
    assert (info.width, info.height, info.tile_size, info.overlap, info.format) == (
        300,
        200,
        254,
        1,
        "jpeg",
    )
    image_id, pyramid = parse_iiif_info(
        '{"id": "http://127.0.0.1:1/iiif/x/", "width": 1000, "height": 750,'
        ' "tiles": [{"width": 512, "scaleFactors": [4, 1, 2]}]}'
    )
    assert image_id == "http://127.0.0.1:1/iiif/x"
    assert [lv.scale for lv in pyramid.levels] == [1, 2, 4]
    assert pyramid.levels[2].tile_height == 512


def test_random_trace_is_seeded_distinct_and_from_the_two_finest_levels() -> None:
    pyramid = deepzoom_pyramid(20000, 15000, 254)
    a = random_trace(pyramid, count=500, seed=7)
    assert a == random_trace(pyramid, count=500, seed=7)
    assert a != random_trace(pyramid, count=500, seed=8)
    tiles = [t for g in a.groups for t in g.tiles]
    assert len(tiles) == len(set(tiles)) == 500
    assert {t.level for t in tiles} == {15, 14}
    assert not a.viewports
    small = deepzoom_pyramid(600, 500, 254)  # 3x2 + 2x1 tiles: all of them, shuffled
    assert len(random_trace(small, count=100).groups) == 8


def test_first_requests_and_limit() -> None:
    t = [Tile(0, i, 0) for i in range(4)]
    groups = [Group((t[0], t[1])), Group((t[1], t[0])), Group((t[2], t[1], t[3]))]
    assert first_requests(groups) == (Group((t[0], t[1])), Group((t[2], t[3])))
    assert limit_requests(first_requests(groups), 3) == (Group((t[0], t[1])), Group((t[2],)))
