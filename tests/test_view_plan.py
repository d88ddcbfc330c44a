"""view_plan: the pure decisions a render is planned and keyed by (the rest is exercised
through SlideService in tests/test_service.py, tests/server/test_channels.py, test_icc.py)."""

from __future__ import annotations

from tileserver.geometry import Region, Size
from tileserver.render import colour
from tileserver.render.admission import estimate_bytes
from tileserver.view_plan import icc_keyed, plan_at


def test_plan_counts_channel_samples_in_rgb_pixels_worth() -> None:
    region, out = Region(0, 0, 300, 200), Size(150, 100)
    rgb = plan_at(2, region, out)
    assert (rgb.level, rgb.l_region, rgb.out) == (2, region, out)
    assert rgb.nbytes == estimate_bytes(60_000, 15_000)
    # 3 channels of uint16: 6 bytes a pixel, i.e. two RGB pixels' worth more per pixel read
    assert plan_at(2, region, out, 6).nbytes == estimate_bytes(3 * 60_000, 15_000)
    # a part of an RGB pixel's worth still counts (rounded up)
    assert plan_at(2, region, out, 1).nbytes == estimate_bytes(80_000, 15_000)


def test_icc_keyed_leaves_raw_keys_as_they_were() -> None:
    key = ("iiif", "request")
    assert icc_keyed(key, colour.NONE) == key
    assert icc_keyed(key, colour.SRGB) == (*key, "icc", colour.SRGB)
    assert icc_keyed(key, colour.EMBED) != icc_keyed(key, colour.SRGB)
