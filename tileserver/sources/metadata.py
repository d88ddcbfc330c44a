"""Vendor metadata allowlist (security-requirements §5): keep geometry, optics and colour.

Names, dates, barcodes, operators, file names and free text never pass. A key passes only
when it matches one of the patterns below; everything else stays inside the source layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_ALLOWED = re.compile(
    "|".join(
        [
            r"openslide\.(vendor|mpp-x|mpp-y|objective-power|background-color|icc-size)",
            r"openslide\.bounds-(x|y|width|height)",
            r"openslide\.level-count",
            r"openslide\.level\[\d+\]\.(width|height|downsample|tile-width|tile-height)",
            r"openslide\.associated\.\w+\.(width|height)",
            r"aperio\.(AppMag|MPP|StripeWidth|Exposure Time|Exposure Scale|Gamma|Left|Top"
            r"|LineCameraSkew|LineAreaXOffset|LineAreaYOffset|Focus Offset|OriginalWidth"
            r"|OriginalHeight|DisplayColor)",
            r"hamamatsu\.(SourceLens|XOffsetFromSlideCentre|YOffsetFromSlideCentre)",
            r"tiff\.(ResolutionUnit|XResolution|YResolution)",
            r"ome\.(PhysicalSizeX|PhysicalSizeY|PhysicalSizeXUnit|PhysicalSizeYUnit)",
        ]
    )
)


def is_allowed(key: str) -> bool:
    return _ALLOWED.fullmatch(key) is not None


def allowlisted(properties: Mapping[str, str]) -> dict[str, str]:
    """The properties that may leave the source layer, sorted by key."""
    return {k: properties[k] for k in sorted(properties) if is_allowed(k)}


def parse_aperio_description(description: str) -> dict[str, str]:
    """``aperio.*`` properties from an Aperio ImageDescription (``header|key = value|...``)."""
    fields = description.split("|")[1:]
    parsed: dict[str, str] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if sep:
            parsed[f"aperio.{key.strip()}"] = value.strip()
    return parsed


def parse_float(value: str | None) -> float | None:
    """A positive finite float, or None for missing or nonsense values."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    if number is None or not (0 < number < float("inf")):
        return None
    return number
