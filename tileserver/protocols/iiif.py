"""IIIF Image API 3.0 at compliance level 2: request parsing, info.json, pass-through.

Spec: https://iiif.io/api/image/3.0/ and its compliance and implementation notes. Beyond
level 2 we support mirroring (``!n``), upscaling (``^``, up to ``max_upscale`` times the
region), the ``bitonal`` quality and the ``webp`` format; arbitrary rotation is refused.
Arithmetic is exact (``Fraction``) and rounds half up, so a request always maps to the same
pixels on every platform.

Status codes follow the sections that name one: an unsupported rotation, quality or format,
a size over the caps and a region outside the image are 400 (spec 4.1-4.5, though the table
in 7.3 suggests 404 or 501 for some); upscaling is supported, so the 501 of 4.2 never
arises. HTTP features beyond level 2: the profile ``Link`` header (``PROFILE_LINK``, sent by
the routes on info.json and images). Not claimed: ``canonicalLinkHeader`` (it would cost a
second parse of every tile request) and ``rotationArbitrary``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from tileserver.errors import TileserverError
from tileserver.geometry import Region, Size, aligned_chunk

CONTEXT = "http://iiif.io/api/image/3/context.json"
PROTOCOL = "http://iiif.io/api/image"
LEVEL2_PROFILE = "http://iiif.io/api/image/3/level2.json"  # the profile document (spec 6)
PROFILE_LINK = f'<{LEVEL2_PROFILE}>;rel="profile"'
JSON_LD = f'application/ld+json;profile="{CONTEXT}"'
QUALITIES = ("default", "color", "gray", "bitonal")
FORMATS = ("jpg", "png", "webp")
# Level 2 requires only jpg and png; every quality except ``default`` must be listed.
EXTRA_FORMATS = ("webp",)
EXTRA_QUALITIES = ("color", "gray", "bitonal")
EXTRA_FEATURES = ("mirroring", "sizeUpscaling", "profileLinkHeader")

Parameter = Literal["region", "size", "rotation", "quality", "format"]

# Pixel values are non-negative integers; percentages and angles are decimals made only of
# digits and "." (spec section 4.7). Length caps keep huge strings away from int().
_INT = r"[0-9]{1,15}"
_DECIMAL = r"(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})"
_PX_REGION = re.compile(rf"({_INT}),({_INT}),({_INT}),({_INT})")
_PCT_REGION = re.compile(rf"pct:({_DECIMAL}),({_DECIMAL}),({_DECIMAL}),({_DECIMAL})")
_PCT_SIZE = re.compile(rf"pct:({_DECIMAL})")
_WH_SIZE = re.compile(rf"(!?)({_INT})?,({_INT})?")
_ROTATION = re.compile(rf"(!?)({_DECIMAL})")


class IIIFError(TileserverError, ValueError):
    """A request parameter the service cannot honour (the server answers 400)."""

    def __init__(self, parameter: Parameter, message: str) -> None:
        super().__init__(f"IIIF {parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class ImageRequest:
    """A parsed image request: crop ``l0_region``, scale to ``out_size``, mirror, rotate."""

    l0_region: Region  # clipped to the image, never empty
    out_size: Size  # after scaling, before rotation
    rotation: int  # clockwise degrees: 0, 90, 180 or 270
    mirror: bool  # reflect on the vertical axis before rotating
    quality: str
    format: str

    @property
    def final_size(self) -> Size:
        """The returned image's size, once rotation has swapped the axes."""
        if self.rotation in (90, 270):
            return Size(self.out_size.height, self.out_size.width)
        return self.out_size


@dataclass(frozen=True)
class _Limits:
    width: int
    height: int
    area: int
    upscale: Fraction  # output edge over region edge, at most


def _round(value: Fraction) -> int:
    """Round half up (values here are never negative)."""
    return math.floor(value + Fraction(1, 2))


def parse_request(
    region: str,
    size: str,
    rotation: str,
    quality: str,
    fmt: str,
    l0_size: Size,
    *,
    max_width: int,
    max_height: int,
    max_area: int,
    max_upscale: float,
) -> ImageRequest:
    """Parse the five path parameters against an ``l0_size`` image and the size caps.

    ``max_upscale`` bounds ``^`` sizes: an output edge is at most that many times the
    region's. Like the caps, it bounds ``^max`` and ``^!w,h`` and refuses explicit sizes.
    Parameters are checked in URL order, so the first bad one is the one reported.
    """
    if min(l0_size) < 1:
        raise ValueError(f"image size must be at least 1x1, got {tuple(l0_size)}")
    if min(max_width, max_height, max_area) < 1:
        raise ValueError("max_width, max_height and max_area must be positive")
    if not max_upscale >= 1:
        raise ValueError("max_upscale must be at least 1")
    limits = _Limits(max_width, max_height, max_area, Fraction(max_upscale))
    l0_region = _parse_region(region, l0_size)
    out_size = _parse_size(size, l0_region.size, limits)
    degrees, mirror = _parse_rotation(rotation)
    if quality not in QUALITIES:
        raise IIIFError("quality", f"{quality!r} is not one of {', '.join(QUALITIES)}")
    if fmt not in FORMATS:
        raise IIIFError("format", f"{fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    return ImageRequest(l0_region, out_size, degrees, mirror, quality, fmt)


def _parse_region(text: str, l0_size: Size) -> Region:
    width, height = l0_size
    if text == "full":
        return Region(0, 0, width, height)
    if text == "square":
        # The spec leaves the position to the server; centred is its suggested default.
        side = min(width, height)
        return Region((width - side) // 2, (height - side) // 2, side, side)
    if match := _PX_REGION.fullmatch(text):
        x, y, w, h = (int(group) for group in match.groups())
        if w == 0 or h == 0:
            raise IIIFError("region", f"{text!r} has zero width or height")
        requested = Region(x, y, w, h)
    elif match := _PCT_REGION.fullmatch(text):
        px, py, pw, ph = (Fraction(group) for group in match.groups())
        if pw == 0 or ph == 0:
            raise IIIFError("region", f"{text!r} has zero width or height")
        if px >= 100 or py >= 100:
            raise IIIFError("region", f"{text!r} lies outside the {width}x{height} image")
        x0, x1 = _pct_span(px, pw, width)
        y0, y1 = _pct_span(py, ph, height)
        requested = Region(x0, y0, x1 - x0, y1 - y0)
    else:
        raise IIIFError("region", f"{text!r} is not full, square, x,y,w,h or pct:x,y,w,h")
    clipped = requested.intersect(l0_size)
    # Spec 4.1: crop at the image edge, but a region wholly outside is an error.
    if clipped.width == 0 or clipped.height == 0:
        raise IIIFError("region", f"{text!r} lies outside the {width}x{height} image")
    return clipped


def _pct_span(start: Fraction, length: Fraction, limit: int) -> tuple[int, int]:
    # Round the two edges rather than start and length, so abutting percentage regions
    # share edges with no gap or overlap. A non-empty request starting inside the image
    # keeps at least one pixel instead of rounding away to an error.
    first = min(_round(start * limit / 100), limit - 1)
    end = max(_round((start + length) * limit / 100), first + 1)
    return first, end


def _parse_size(text: str, region: Size, limits: _Limits) -> Size:
    upscale = text.startswith("^")
    body = text[1:] if upscale else text
    if body == "max":
        # max never upscales but shrinks to the caps; ^max grows or shrinks to the caps.
        return _fit(region, limits, limits.width, limits.height, upscale=upscale)
    if match := _PCT_SIZE.fullmatch(body):
        percent = Fraction(match.group(1))
        if percent == 0:
            raise IIIFError("size", f"{text!r} scales the region to nothing")
        if percent > 100 and not upscale:
            raise IIIFError("size", f"{text!r} is over 100%; prefix it with ^ to upscale")
        scale = percent / 100
        out = Size(max(1, _round(region.width * scale)), max(1, _round(region.height * scale)))
        return _check_caps(text, out, region, limits)
    match = _WH_SIZE.fullmatch(body)
    if match is None:
        raise IIIFError(
            "size", f"{text!r} is not max, w,, ,h, pct:n, w,h or !w,h (optionally after ^)"
        )
    confined = match.group(1) == "!"
    w = int(match.group(2)) if match.group(2) is not None else None
    h = int(match.group(3)) if match.group(3) is not None else None
    if w is None and h is None:
        raise IIIFError("size", f"{text!r} gives neither a width nor a height")
    if w == 0 or h == 0:
        raise IIIFError("size", f"{text!r} asks for a zero width or height")
    if confined:
        if w is None or h is None:
            raise IIIFError("size", f"{text!r} needs both a width and a height after !")
        # The spec makes caps one more bound of the box here, not an error.
        return _fit(region, limits, min(w, limits.width), min(h, limits.height), upscale=upscale)
    if w is None:
        assert h is not None
        w = max(1, _round(Fraction(region.width * h, region.height)))
    elif h is None:
        h = max(1, _round(Fraction(region.height * w, region.width)))
    out = Size(w, h)
    if not upscale and (out.width > region.width or out.height > region.height):
        raise IIIFError(
            "size",
            f"{text!r} gives {out.width}x{out.height}, larger than the "
            f"{region.width}x{region.height} region; prefix it with ^ to upscale",
        )
    return _check_caps(text, out, region, limits)


def _check_caps(text: str, out: Size, region: Size, limits: _Limits) -> Size:
    if out.width > limits.width:
        raise IIIFError(
            "size", f"{text!r} gives width {out.width}, over the maxWidth of {limits.width}"
        )
    if out.height > limits.height:
        raise IIIFError(
            "size", f"{text!r} gives height {out.height}, over the maxHeight of {limits.height}"
        )
    if out.pixels > limits.area:
        raise IIIFError(
            "size",
            f"{text!r} gives {out.width}x{out.height} = {out.pixels} pixels, "
            f"over the maxArea of {limits.area}",
        )
    if out.width > region.width * limits.upscale or out.height > region.height * limits.upscale:
        raise IIIFError(
            "size",
            f"{text!r} gives {out.width}x{out.height}, over the maximum upscaling of "
            f"{float(limits.upscale):g}x the {region.width}x{region.height} region",
        )
    return out


def _fit(region: Size, limits: _Limits, width: int, height: int, *, upscale: bool) -> Size:
    """The largest size with the region's aspect ratio inside ``width`` x ``height`` and
    the area cap, and inside the region itself (``upscale``: that many times the region,
    give or take the rounding of the bounded side); at least 1x1."""
    area = limits.area
    scale = min(Fraction(width, region.width), Fraction(height, region.height))
    scale = min(scale, limits.upscale if upscale else Fraction(1))
    # The bounding side is exact; rounding the other one cannot pass its own bound, as
    # region * scale <= bound with an integer bound.
    w = max(1, _round(region.width * scale))
    h = max(1, _round(region.height * scale))
    if w * h <= area:
        return Size(w, h)
    # The area bound needs a square root, so start from the float estimate and repair any
    # excess on the longer side, which costs the least aspect error per pixel removed.
    root = math.sqrt(area / region.pixels)
    w = max(1, min(w, math.floor(region.width * root)))
    h = max(1, min(h, math.floor(region.height * root)))
    if w * h > area:
        if w >= h:
            w = max(1, area // h)
        else:
            h = max(1, area // w)
    return Size(w, h)


def _parse_rotation(text: str) -> tuple[int, bool]:
    match = _ROTATION.fullmatch(text)
    if match is None:
        raise IIIFError("rotation", f"{text!r} is not a number of degrees, optionally after !")
    degrees = Fraction(match.group(2))
    if degrees > 360:
        raise IIIFError("rotation", f"{text!r} is outside 0 to 360 degrees")
    if degrees % 90 != 0:
        raise IIIFError(
            "rotation", f"{text!r} is not supported; only 0, 90, 180 and 270 degrees are"
        )
    return int(degrees) % 360, match.group(1) == "!"


def info_json(
    base_id: str,
    l0_size: Size,
    tile: int,
    scale_factors: Sequence[int],
    *,
    max_width: int,
    max_height: int,
    max_area: int,
    sizes: Sequence[Size],
    extra_features: Sequence[str] = (),
) -> dict[str, Any]:
    """The image information document (spec section 5), ready for ``json.dumps``.

    ``extra_features`` adds HTTP features the server itself provides (e.g. ``cors`` is
    already in level 2, but ``canonicalLinkHeader`` or ``profileLinkHeader`` are not).
    """
    if min(l0_size) < 1 or tile < 1 or min(max_width, max_height, max_area) < 1:
        raise ValueError("image size, tile and caps must be positive")
    if not scale_factors or any(f < 1 for f in scale_factors):
        raise ValueError(f"scale factors must be positive integers, got {list(scale_factors)}")
    if len(set(scale_factors)) != len(scale_factors):
        raise ValueError(f"scale factors must be unique, got {list(scale_factors)}")
    # Spec 5.2: advertised tiles and sizes MUST lie within the advertised caps.
    for advertised in (Size(tile, tile), *sizes):
        if (
            min(advertised) < 1
            or advertised.width > max_width
            or advertised.height > max_height
            or advertised.pixels > max_area
        ):
            raise ValueError(
                f"advertised size {advertised.width}x{advertised.height} is empty or over "
                f"the caps {max_width}x{max_height}, area {max_area}"
            )
    return {
        "@context": CONTEXT,
        "id": base_id.rstrip("/"),
        "type": "ImageService3",
        "protocol": PROTOCOL,
        "profile": "level2",
        "width": l0_size.width,
        "height": l0_size.height,
        "maxWidth": max_width,
        "maxHeight": max_height,
        "maxArea": max_area,
        "tiles": [{"width": tile, "height": tile, "scaleFactors": list(scale_factors)}],
        "sizes": [{"width": s.width, "height": s.height} for s in sizes],
        "extraQualities": list(EXTRA_QUALITIES),
        "extraFormats": list(EXTRA_FORMATS),
        "extraFeatures": [*EXTRA_FEATURES, *(f for f in extra_features if f not in EXTRA_FEATURES)],
    }


def info_media_type(accept: str | None) -> str:
    """info.json's Content-Type for a request's ``Accept`` header (spec 5.1): JSON-LD with the
    context as its profile when there is no header or it ranks ``application/ld+json`` at
    least as high as ``application/json``; plain JSON otherwise (a browser's ``*/*``)."""
    if accept is None or not accept.strip():
        return JSON_LD
    ranks = {"application/ld+json": 0.0, "application/json": 0.0}
    for item in accept.split(",")[:32]:  # more is not a real client
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() not in ranks:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if 0.0 < q <= 1.0:
            ranks[media.lower()] = max(ranks[media.lower()], q)
    ld, plain = ranks["application/ld+json"], ranks["application/json"]
    return JSON_LD if ld > 0 and ld >= plain else "application/json"


def passthrough_chunk(
    request: ImageRequest, l0_size: Size, chunk: int, store_levels: int
) -> tuple[int, int, int] | None:
    """``(store level, chunk col, chunk row)`` when the reply is exactly one stored chunk.

    The reply must be ``chunk`` x ``chunk`` pixels with no rotation, mirror or quality
    change, of a region that is one unpadded stored chunk (``geometry.aligned_chunk``).
    Whether the stored encoding matches ``request.format`` is the caller's decision.
    """
    if request.rotation or request.mirror or request.quality not in ("default", "color"):
        return None
    if request.out_size != Size(chunk, chunk):
        return None
    return aligned_chunk(request.l0_region, l0_size, chunk, store_levels)
