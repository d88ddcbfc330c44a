"""What a request shows of a slide, decided before a pixel is read (pure functions).

The render plan (level, region in that level, output size, estimated memory), the display
(a stored RGB plane as it is, or a composite of channels) and the colour handling (ICC:
none, converted to sRGB, or the profile embedded), with the cache keys each one adds to.
SlideService (service.py) and DicomService act on these decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tileserver.geometry import Region, Size, best_level, level_region
from tileserver.library import Pyramid
from tileserver.protocols.display import Display
from tileserver.render import colour
from tileserver.render.admission import estimate_bytes


@dataclass(frozen=True)
class Plan:
    """A render decided before it starts: what it reads and makes, and what that costs."""

    level: int
    l_region: Region  # in ``level``
    out: Size
    nbytes: int  # estimated peak memory


def plan_at(level: int, l_region: Region, out: Size, sample_bytes: int = 0) -> Plan:
    """``sample_bytes``: channel samples per pixel read (bytes), held beside the RGB
    composite; counted in RGB pixels' worth, the unit of ``estimate_bytes``."""
    source = l_region.size.pixels
    source += -(-source * sample_bytes // 3)
    return Plan(level, l_region, out, estimate_bytes(source, out.pixels))


def plan_for(p: Pyramid, l0_region: Region, out: Size, sample_bytes: int = 0) -> Plan:
    level = best_level(l0_region, out, len(p.levels))
    return plan_at(level, level_region(l0_region, level, p.levels[0]), out, sample_bytes)


def channel_sample_bytes(p: Pyramid, display: Display) -> int:
    return len(display.channels) * np.dtype(p.display.dtype).itemsize


def plain(p: Pyramid, display: Display) -> bool:
    """An RGB single-plane view: what stored chunks hold as they are (pass-through)."""
    return not display.channels and p.display.plane_count == 1


def keyed(key: tuple[Any, ...], p: Pyramid, d: Display) -> tuple[Any, ...]:
    """``key`` with the display in canonical form; an RGB single-plane slide's keys (and so
    its ETags) are as they were before channels and planes existed."""
    return key if plain(p, d) else (*key, d.key)


def icc_mode(p: Pyramid, d: Display, choice: str | None, *, tile: bool) -> str:
    """The colour choice a request gets (render/colour.py: effective). Channel composites
    are made in sRGB display colours: the slide's profile does not describe them."""
    if d.channels:
        return colour.NONE
    return colour.effective(choice, p.icc_profile, tile=tile)


def icc_keyed(key: tuple[Any, ...], mode: str) -> tuple[Any, ...]:
    """``key`` with the colour choice; raw pixels keep the keys (and ETags) they had."""
    return key if mode == colour.NONE else (*key, "icc", mode)


def to_srgb(p: Pyramid, pixels: np.ndarray, icc: str) -> np.ndarray:
    """``pixels`` converted from the slide's profile when the choice is srgb, else as they are."""
    if icc != colour.SRGB or p.icc_profile is None:
        return pixels
    return colour.to_srgb(pixels, p.icc_profile)


def embedded(p: Pyramid, icc: str) -> bytes | None:
    """The profile an encoded image carries: the slide's, when the choice is embed."""
    return p.icc_profile if icc == colour.EMBED else None
