"""IIIF Image API 3.0 parsing, mostly on the spec's own 300x200 example image."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tileserver.errors import TileserverError
from tileserver.geometry import Region, Size
from tileserver.protocols.iiif import (
    EXTRA_FEATURES,
    EXTRA_FORMATS,
    EXTRA_QUALITIES,
    JSON_LD,
    PROFILE_LINK,
    IIIFError,
    ImageRequest,
    info_json,
    info_media_type,
    parse_request,
    passthrough_chunk,
)

SPEC_IMAGE = Size(300, 200)  # the image behind the examples in spec sections 4.1 and 4.2
NO_CAPS = {"max_width": 100_000, "max_height": 100_000, "max_area": 10**10, "max_upscale": 10**6}


def parse(
    region: str = "full",
    size: str = "max",
    rotation: str = "0",
    quality: str = "default",
    fmt: str = "jpg",
    l0_size: Size = SPEC_IMAGE,
    **caps: int,
) -> ImageRequest:
    return parse_request(region, size, rotation, quality, fmt, l0_size, **{**NO_CAPS, **caps})


def error(**kwargs: object) -> IIIFError:
    with pytest.raises(IIIFError) as info:
        parse(**kwargs)  # type: ignore[arg-type]
    return info.value


# Region (spec 4.1) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("full", Region(0, 0, 300, 200)),
        ("square", Region(50, 0, 200, 200)),  # centred in the longer dimension
        ("125,15,120,140", Region(125, 15, 120, 140)),  # spec example 3
        ("pct:41.6,7.5,40,70", Region(125, 15, 120, 140)),  # spec example 4
        ("125,15,200,200", Region(125, 15, 175, 185)),  # spec example 5: cropped
        ("pct:41.6,7.5,66.6,100", Region(125, 15, 175, 185)),  # spec example 6
        ("0,0,1,1", Region(0, 0, 1, 1)),
        ("299,199,5,5", Region(299, 199, 1, 1)),
        ("pct:0,0,100,100", Region(0, 0, 300, 200)),
        ("pct:0,0,200,200", Region(0, 0, 300, 200)),
        ("pct:50,50,50,50", Region(150, 100, 150, 100)),
        ("pct:0.5,0,0.1,10", Region(2, 0, 1, 20)),  # 1.5..1.8 rounds to 2..2: kept 1 wide
        ("pct:99.9,0,0.1,100", Region(299, 0, 1, 200)),  # starts inside: never rounded out
        ("pct:.5,0,1.,100", Region(2, 0, 3, 200)),  # lenient decimals: 1.5..4.5
    ],
)
def test_region_forms(region: str, expected: Region) -> None:
    assert parse(region=region).l0_region == expected


def test_square_on_tall_and_square_images() -> None:
    assert parse(region="square", l0_size=Size(200, 301)).l0_region == Region(0, 50, 200, 200)
    assert parse(region="square", l0_size=Size(7, 7)).l0_region == Region(0, 0, 7, 7)


def test_pct_regions_tile_without_gaps() -> None:
    # Edges are rounded, not starts and lengths, so neighbours share their boundary.
    size = Size(1001, 997)
    spans = [parse(region=f"pct:{i * 12.5},0,12.5,100", l0_size=size).l0_region for i in range(8)]
    assert spans[0].x == 0
    for left, right in itertools.pairwise(spans):
        assert left.x + left.width == right.x
    assert spans[-1].x + spans[-1].width == 1001


# Wholly outside, zero-sized, negative, non-integer, wrong arity, non-decimal, 2.0 syntax.
BAD_REGIONS = [
    *["300,0,10,10", "0,200,10,10", "1000,1000,5,5", "0,0,0,10", "0,0,10,0", "pct:100,0,10,10"],
    *["pct:0,100,10,10", "pct:0,0,0,10", "-1,0,10,10", "1.5,0,10,10", "0,0,10", "0,0,10,10,10"],
    *["pct:0,0,10", "pct:-1,0,10,10", "pct:+1,0,10,10", "pct:1e2,0,10,10", "Full"],
    "",
    "1" * 40 + ",0,1,1",
]


@pytest.mark.parametrize("region", BAD_REGIONS)
def test_region_errors(region: str) -> None:
    err = error(region=region)
    assert err.parameter == "region"
    assert "region" in str(err)


# Size (spec 4.2) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("max", Size(300, 200)),
        ("150,", Size(150, 100)),  # spec example 2
        (",150", Size(225, 150)),  # spec example 3
        ("pct:50", Size(150, 100)),  # spec example 4
        ("225,100", Size(225, 100)),  # spec example 5: distorted
        ("!225,100", Size(150, 100)),  # spec example 6
        ("^360,", Size(360, 240)),
        ("^,240", Size(360, 240)),
        ("^pct:120", Size(360, 240)),
        ("^360,360", Size(360, 360)),
        ("^!360,360", Size(360, 240)),  # spec example 6, upscaled
        ("!1000,1000", Size(300, 200)),  # confined, but never above the region
        ("^150,", Size(150, 100)),  # ^ allows but does not require upscaling
        ("300,200", Size(300, 200)),
        ("1,", Size(1, 1)),  # 0.67 rounds to 1
        ("pct:0.1", Size(1, 1)),  # 0.3 x 0.2: each side kept at one pixel
        ("pct:33.3", Size(100, 67)),  # 99.9 x 66.6, rounded half up
        (",1", Size(2, 1)),  # 1.5 rounds half up
    ],
)
def test_size_forms(size: str, expected: Size) -> None:
    assert parse(size=size).out_size == expected


def test_size_applies_to_the_cropped_region() -> None:
    request = parse(region="125,15,200,200", size="!100,100")
    assert request.l0_region.size == Size(175, 185)
    assert request.out_size == Size(95, 100)  # 175 * 100/185 = 94.6


def test_max_shrinks_to_caps() -> None:
    # Spec 4.2 example 1: maxWidth 200 gives 200 x 133.
    assert parse(size="max", max_width=200).out_size == Size(200, 133)
    assert parse(size="max", max_height=50).out_size == Size(75, 50)
    assert parse(size="max", max_area=6000).out_size == Size(94, 63)  # sqrt(0.1) = 0.316
    assert parse(size="^max", max_width=360, max_height=360).out_size == Size(360, 240)
    assert parse(size="^max", max_width=1000, max_height=1000, max_area=60_000).out_size == (
        Size(300, 200)
    )
    # The caps bound !w,h too, rather than being an error (spec: "or server-imposed limits").
    assert parse(size="!250,250", max_width=100).out_size == Size(100, 67)
    assert parse(size="^!1000,1000", max_area=2400).out_size == Size(60, 40)


def test_max_of_extreme_aspect_keeps_one_pixel() -> None:
    request = parse(size="max", l0_size=Size(100_000, 1), max_width=1000)
    assert request.out_size == Size(1000, 1)
    request = parse(size="max", l0_size=Size(1, 100_000), max_width=5000, max_area=10)
    assert request.out_size == Size(1, 10)


@pytest.mark.parametrize(
    ("sizes", "names"),
    [
        (["301,", ",201", "301,200", "300,201"], "prefix it with ^ to upscale"),
        (["pct:100.5"], "over 100%"),
        (["0,", ",0", "0,10", "!0,10"], "zero"),
        (["pct:0"], "nothing"),
        (["!100,", "!,100"], "both"),
        ([",", "^,"], "neither"),
        # "full" is Image API 2 syntax, gone in 3.0.
        (["full", "^^max", "pct:-5", "10.5,", "-1,", ""], "not max"),
    ],
)
def test_size_errors(sizes: list[str], names: str) -> None:
    for size in sizes:
        err = error(size=size)
        assert err.parameter == "size"
        assert str(err).startswith("IIIF size: ")
        assert names in str(err)
    assert "larger than the 300x200 region" in str(error(size="301,"))


@pytest.mark.parametrize(
    ("size", "caps", "names"),
    [
        ("200,", {"max_width": 199}, "maxWidth of 199"),
        (",150", {"max_height": 149}, "maxHeight of 149"),
        ("200,100", {"max_area": 19_999}, "maxArea of 19999"),
        ("pct:50", {"max_area": 14_999}, "maxArea of 14999"),
        ("^1000,", {"max_width": 999}, "maxWidth of 999"),
    ],
)
def test_size_over_caps_names_the_cap(size: str, caps: dict[str, int], names: str) -> None:
    err = error(size=size, **caps)
    assert err.parameter == "size"
    assert names in str(err)


def test_upscaling_is_capped() -> None:
    # Issue 14, finding 3: 0,0,100,100/^max made an 8192 x 8192 image from 10,000 pixels.
    caps = {"max_width": 8192, "max_height": 8192, "max_area": 8192 * 8192, "max_upscale": 2}
    assert parse(region="0,0,100,100", size="^max", **caps).out_size == Size(200, 200)
    assert parse(region="0,0,100,50", size="^!1000,1000", **caps).out_size == Size(200, 100)
    assert parse(region="0,0,100,100", size="^200,", **caps).out_size == Size(200, 200)
    assert parse(region="0,0,100,100", size="^pct:200", **caps).out_size == Size(200, 200)
    for size in ["^201,", "^,201", "^201,100", "^pct:201", "^8192,8192"]:
        err = error(region="0,0,100,100", size=size, **caps)
        assert err.parameter == "size"
        assert "over the maximum upscaling of 2x the 100x100 region" in str(err), size
    # The factor need not be whole; without ^, nothing changes.
    assert parse(size="^max", max_upscale=1.5).out_size == Size(450, 300)
    assert parse(size="max", max_upscale=1).out_size == Size(300, 200)
    with pytest.raises(ValueError):
        parse(max_upscale=0.5)


# Rotation, quality, format (spec 4.3-4.5) ------------------------------------------


ROTATIONS = {"0": 0, "90": 90, "180": 180, "270": 270, "360": 0, "90.0": 90, ".0": 0}


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize(("text", "degrees"), ROTATIONS.items())
def test_rotation(text: str, degrees: int, mirror: bool) -> None:
    request = parse(rotation=f"!{text}" if mirror else text)
    assert (request.rotation, request.mirror) == (degrees, mirror)


def test_final_size_swaps_for_quarter_turns() -> None:
    assert parse(size="150,", rotation="90").final_size == Size(100, 150)
    assert parse(size="150,", rotation="!270").final_size == Size(100, 150)
    assert parse(size="150,", rotation="180").final_size == Size(150, 100)


@pytest.mark.parametrize(
    ("rotations", "names"),
    [
        (["22.5", "45", "!1", "359.9"], "only 0, 90, 180 and 270"),
        (["450", "360.5", "!1000"], "outside 0 to 360"),
        (["-90", "!!90", "90!", "+90", "1e2", "ninety", ""], "not a number"),
    ],
)
def test_rotation_errors(rotations: list[str], names: str) -> None:
    for rotation in rotations:
        err = error(rotation=rotation)
        assert err.parameter == "rotation"
        assert names in str(err)


@pytest.mark.parametrize("quality", ["default", "color", "gray", "bitonal"])
def test_qualities(quality: str) -> None:
    assert parse(quality=quality).quality == quality


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_formats(fmt: str) -> None:
    assert parse(fmt=fmt).format == fmt


@pytest.mark.parametrize("quality", ["grey", "native", "Default", ""])
def test_quality_errors(quality: str) -> None:
    err = error(quality=quality)
    assert err.parameter == "quality"
    assert "quality" in str(err)


@pytest.mark.parametrize("fmt", ["tif", "gif", "jp2", "pdf", "jpeg", "JPG", ""])
def test_format_errors(fmt: str) -> None:
    err = error(fmt=fmt)
    assert err.parameter == "format"
    assert "not supported" in str(err)


def test_errors_are_value_errors_and_report_in_url_order() -> None:
    assert issubclass(IIIFError, ValueError)
    assert issubclass(IIIFError, TileserverError)
    err = error(region="0,0,0,0", size="bad", rotation="bad", quality="bad", fmt="bad")
    assert err.parameter == "region"
    assert error(size="bad", rotation="bad", quality="bad", fmt="bad").parameter == "size"
    assert error(rotation="bad", quality="bad", fmt="bad").parameter == "rotation"
    assert error(quality="bad", fmt="bad").parameter == "quality"


def test_invalid_server_arguments_are_plain_value_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse(l0_size=Size(0, 10))
    assert not isinstance(info.value, IIIFError)
    with pytest.raises(ValueError) as info:
        parse(max_area=0)
    assert not isinstance(info.value, IIIFError)


pixel_regions = st.tuples(
    st.integers(0, 3100), st.integers(0, 2100), st.integers(1, 5000), st.integers(1, 5000)
)
pct_regions = st.tuples(
    *[st.decimals("0", "120", places=2)] * 2, *[st.decimals("0.01", "150", places=2)] * 2
)
regions = st.one_of(
    st.sampled_from([("full", False), ("square", False)]),
    pixel_regions.map(lambda r: (f"{r[0]},{r[1]},{r[2]},{r[3]}", None)),
    pct_regions.map(lambda r: (f"pct:{r[0]},{r[1]},{r[2]},{r[3]}", r[0] >= 100 or r[1] >= 100)),
)
sizes = st.one_of(
    st.sampled_from(["max", "^max"]),
    st.builds(lambda w, h: f"^!{w},{h}", st.integers(1, 10_000), st.integers(1, 10_000)),
    st.builds(lambda w, h: f"!{w},{h}", st.integers(1, 10_000), st.integers(1, 10_000)),
)


caps_strategy = st.fixed_dictionaries(
    {"max_width": st.integers(1, 4000), "max_height": st.integers(1, 4000)},
    optional={"max_area": st.integers(1, 4000 * 4000), "max_upscale": st.integers(1, 8)},
)


@settings(max_examples=300, deadline=None)
@given(
    region=regions,
    size=sizes,
    image=st.builds(Size, st.integers(1, 3000), st.integers(1, 2000)),
    caps=caps_strategy,
)
def test_fitted_sizes_respect_caps(
    region: tuple[str, bool | None], size: str, image: Size, caps: dict[str, int]
) -> None:
    text, outside = region
    if outside is None:  # pixel region: outside when it starts past an edge
        x, y = (int(v) for v in text.split(",")[:2])
        outside = x >= image.width or y >= image.height
    if outside:
        assert error(region=text, size=size, l0_size=image, **caps).parameter == "region"
        return
    request = parse(region=text, size=size, l0_size=image, **caps)
    max_width, max_height = caps["max_width"], caps["max_height"]
    max_area = caps.get("max_area", NO_CAPS["max_area"])
    out, l0_region = request.out_size, request.l0_region
    assert out.width >= 1 and out.height >= 1
    assert out.width <= max_width and out.height <= max_height and out.pixels <= max_area
    assert l0_region.intersect(image) == l0_region
    assert l0_region.width >= 1 and l0_region.height >= 1
    if not size.startswith("^"):
        assert out.width <= l0_region.width and out.height <= l0_region.height
    limit = caps.get("max_upscale", NO_CAPS["max_upscale"])
    assert out.width <= l0_region.width * limit and out.height <= l0_region.height * limit


@settings(max_examples=300, deadline=None)
@given(
    region_w=st.integers(1, 5000),
    region_h=st.integers(1, 5000),
    size=st.one_of(
        st.builds(lambda w: f"{w},", st.integers(1, 6000)),
        st.builds(lambda h: f",{h}", st.integers(1, 6000)),
        st.builds(lambda w, h: f"{w},{h}", st.integers(1, 6000), st.integers(1, 6000)),
        st.builds(lambda n: f"pct:{n}", st.decimals("0.01", "120", places=2)),
    ),
    upscale=st.booleans(),
)
def test_explicit_sizes_are_exact_or_refused(
    region_w: int, region_h: int, size: str, upscale: bool
) -> None:
    caps = {"max_width": 4000, "max_height": 4000, "max_area": 8_000_000}
    text = f"^{size}" if upscale else size
    try:
        request = parse(size=text, l0_size=Size(region_w, region_h), **caps)
    except IIIFError as err:
        assert err.parameter == "size"
        assert "prefix it with ^" in str(err) or "over the max" in str(err)
        return
    out = request.out_size
    assert 1 <= out.width <= 4000 and 1 <= out.height <= 4000 and out.pixels <= 8_000_000
    if not upscale:
        assert out.width <= region_w and out.height <= region_h
    if size.endswith(","):
        assert out.width == int(size[:-1])
    elif size.startswith(","):
        assert out.height == int(size[1:])


# info.json (spec 5) -------------------------------------------------------------------


def test_info_json() -> None:
    doc = info_json(
        "https://example.org/iiif/abc/",
        Size(6000, 4000),
        256,
        [1, 2, 4, 8, 16],
        max_width=3000,
        max_height=2000,
        max_area=4_000_000,
        sizes=[Size(188, 125), Size(375, 250)],
    )
    assert next(iter(doc)) == "@context"  # SHOULD be the first key
    assert doc == {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": "https://example.org/iiif/abc",
        "type": "ImageService3",
        "protocol": "http://iiif.io/api/image",
        "profile": "level2",
        "width": 6000,
        "height": 4000,
        "maxWidth": 3000,
        "maxHeight": 2000,
        "maxArea": 4_000_000,
        "tiles": [{"width": 256, "height": 256, "scaleFactors": [1, 2, 4, 8, 16]}],
        "sizes": [{"width": 188, "height": 125}, {"width": 375, "height": 250}],
        "extraQualities": ["color", "gray", "bitonal"],
        "extraFormats": ["webp"],
        "extraFeatures": ["mirroring", "sizeUpscaling", "profileLinkHeader"],
    }
    json.dumps(doc)


def test_info_json_extra_features_and_validation() -> None:
    def build(**overrides: object) -> dict[str, object]:
        caps = {"max_width": 100, "max_height": 100, "max_area": 10_000, "sizes": [Size(50, 50)]}
        args = {"tile": 64, "scale_factors": [1, 2], **caps, **overrides}
        return info_json("x", Size(100, 100), **args)  # type: ignore[arg-type]

    features = build(extra_features=["canonicalLinkHeader", "mirroring"])["extraFeatures"]
    assert features == ["mirroring", "sizeUpscaling", "profileLinkHeader", "canonicalLinkHeader"]
    for bad in (
        {"scale_factors": []},
        {"scale_factors": [1, 1]},
        {"scale_factors": [0, 1]},
        {"tile": 101},
        {"tile": 80, "max_area": 6000},
        {"sizes": [Size(101, 1)]},
        {"sizes": [Size(0, 1)]},
        {"max_area": 0},
    ):
        with pytest.raises(ValueError):
            build(**bad)


# Pass-through ------------------------------------------------------------------------


def iiif_tile(l0_size: Size, chunk: int, scale: int, col: int, row: int, **kw: str) -> ImageRequest:
    # The tile request a viewer builds (spec implementation notes, section 3).
    x, y = col * chunk * scale, row * chunk * scale
    w, h = min(chunk * scale, l0_size.width - x), min(chunk * scale, l0_size.height - y)
    size = f"{-(-w // scale)},{-(-h // scale)}"
    return parse(region=f"{x},{y},{w},{h}", size=size, l0_size=l0_size, **kw)


def test_passthrough_chunk() -> None:
    l0_size = Size(1000, 600)  # store levels 1000x600, 500x300, 250x150 with 256 chunks
    assert passthrough_chunk(iiif_tile(l0_size, 256, 1, 0, 0), l0_size, 256, 3) == (0, 0, 0)
    assert passthrough_chunk(iiif_tile(l0_size, 256, 1, 2, 1), l0_size, 256, 3) == (0, 2, 1)
    assert passthrough_chunk(iiif_tile(l0_size, 256, 2, 0, 0), l0_size, 256, 3) == (1, 0, 0)
    # Cropped edge tiles are padded chunks in the store.
    assert passthrough_chunk(iiif_tile(l0_size, 256, 1, 3, 0), l0_size, 256, 3) is None
    assert passthrough_chunk(iiif_tile(l0_size, 256, 2, 1, 0), l0_size, 256, 3) is None
    # A scale factor beyond the store's levels, and transformed replies, are re-encoded.
    assert passthrough_chunk(iiif_tile(l0_size, 256, 4, 0, 0), l0_size, 256, 2) is None
    for kw in ({"rotation": "90"}, {"rotation": "!0"}, {"quality": "gray"}):
        assert passthrough_chunk(iiif_tile(l0_size, 256, 1, 0, 0, **kw), l0_size, 256, 3) is None
    assert passthrough_chunk(iiif_tile(l0_size, 256, 1, 0, 0), l0_size, 240, 3) is None
    # Misaligned regions of chunk size are not chunks.
    misaligned = parse(region="1,0,256,256", size="256,256", l0_size=l0_size)
    assert passthrough_chunk(misaligned, l0_size, 256, 3) is None


def test_passthrough_of_a_full_chunk_clipped_at_level_0() -> None:
    # 1021 wide: level 2 is ceil(1021/4) = 256 wide, one unpadded chunk, while the
    # level-0 region it covers is clipped to 1021.
    l0_size = Size(1021, 1024)
    request = iiif_tile(l0_size, 256, 4, 0, 0)
    assert request.l0_region == Region(0, 0, 1021, 1024)
    assert request.out_size == Size(256, 256)
    assert passthrough_chunk(request, l0_size, 256, 3) == (2, 0, 0)


# Compliance (the compliance document, sections 3-4) ---------------------------------------

# Every feature level 2 requires, and each extra one info.json claims, with a request that
# uses it on the spec's 300x200 image and what it must give.
LEVEL2_FEATURES = {
    "full": ({"region": "full"}, Region(0, 0, 300, 200), Size(300, 200)),
    "regionByPx": ({"region": "125,15,120,140"}, Region(125, 15, 120, 140), Size(120, 140)),
    "regionByPct": ({"region": "pct:41.6,7.5,40,70"}, Region(125, 15, 120, 140), Size(120, 140)),
    "regionSquare": ({"region": "square"}, Region(50, 0, 200, 200), Size(200, 200)),
    "max": ({"size": "max"}, Region(0, 0, 300, 200), Size(300, 200)),
    "sizeByW": ({"size": "150,"}, Region(0, 0, 300, 200), Size(150, 100)),
    "sizeByH": ({"size": ",150"}, Region(0, 0, 300, 200), Size(225, 150)),
    "sizeByPct": ({"size": "pct:50"}, Region(0, 0, 300, 200), Size(150, 100)),
    "sizeByConfinedWh": ({"size": "!225,100"}, Region(0, 0, 300, 200), Size(150, 100)),
    "sizeByWh": ({"size": "225,100"}, Region(0, 0, 300, 200), Size(225, 100)),
    "sizeUpscaling": ({"size": "^!360,360"}, Region(0, 0, 300, 200), Size(360, 240)),
    "rotationBy90s": ({"rotation": "270"}, Region(0, 0, 300, 200), Size(300, 200)),
    "mirroring": ({"rotation": "!90"}, Region(0, 0, 300, 200), Size(300, 200)),
}


@pytest.mark.parametrize("feature", LEVEL2_FEATURES)
def test_every_level_2_feature_and_claimed_extra_is_served(feature: str) -> None:
    params, region, out = LEVEL2_FEATURES[feature]
    request = parse(**params)  # type: ignore[arg-type]
    assert (request.l0_region, request.out_size) == (region, out)


def test_claims_match_what_is_served() -> None:
    # Image features claimed beyond level 2 are the ones the table above serves; the HTTP
    # one is the profile Link header (routes), which points at the level-2 document.
    assert {f for f in EXTRA_FEATURES if f != "profileLinkHeader"} <= set(LEVEL2_FEATURES)
    assert PROFILE_LINK == '<http://iiif.io/api/image/3/level2.json>;rel="profile"'
    for quality in ("default", *EXTRA_QUALITIES):  # color and gray are required at level 2
        assert parse(quality=quality).quality == quality
    for fmt in ("jpg", "png", *EXTRA_FORMATS):
        assert parse(fmt=fmt).format == fmt
    assert {"color", "gray"} <= set(EXTRA_QUALITIES)
    assert parse(rotation="!180").mirror and parse(rotation="!180").rotation == 180


@pytest.mark.parametrize("l0_size", [Size(300, 200), Size(1021, 1024), Size(4097, 3001)])
def test_every_tile_and_size_info_json_advertises_is_served(l0_size: Size) -> None:
    # "must support requests for the sizes implicit in tiles" and "for the sizes listed":
    # every tile of every scale factor, in the w,h and w, forms clients use.
    tile, factors = 256, [1, 2, 4, 8, 16]
    for factor in factors:
        span = tile * factor
        for x in range(0, l0_size.width, span):
            for y in range(0, l0_size.height, span):
                w, h = min(span, l0_size.width - x), min(span, l0_size.height - y)
                out = Size(-(-w // factor), -(-h // factor))
                region = f"{x},{y},{w},{h}"
                exact = parse(region=region, size=f"{out.width},{out.height}", l0_size=l0_size)
                assert exact.out_size == out
                assert parse(region=region, size=f"{out.width},", l0_size=l0_size).out_size.width
    for factor in factors:  # the sizes list: each level of the full image
        out = Size(-(-l0_size.width // factor), -(-l0_size.height // factor))
        assert parse(size=f"{out.width},{out.height}", l0_size=l0_size).out_size == out


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, JSON_LD),  # spec 5.1: no Accept header, JSON-LD
        ("", JSON_LD),
        ("application/ld+json", JSON_LD),
        (f"{JSON_LD}", JSON_LD),
        ("application/ld+json;q=0.9, application/json;q=0.9", JSON_LD),
        ("application/json, application/ld+json;q=0.5", "application/json"),
        ("APPLICATION/LD+JSON", JSON_LD),
        ("application/ld+json;q=0", "application/json"),
        ("application/ld+json;q=nan", "application/json"),
        ("*/*", "application/json"),  # browsers and OpenSeadragon
        ("application/json", "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),
    ],
)
def test_info_media_type_negotiates_json_ld(accept: str | None, expected: str) -> None:
    assert info_media_type(accept) == expected
    assert JSON_LD == 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
