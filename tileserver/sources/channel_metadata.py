"""Channel and focal-plane metadata of fluorescence files: OME-XML and PerkinElmer QPTIFF.

Pure functions over the XML text the TIFF carries, so they are tested without files. The
XML is parsed with the standard library (tifffile parses the same OME-XML the same way);
nothing here trusts a number it did not check.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from tileserver.sources.base import Channel

# Micrometres per OME length unit (OME's UnitsLength symbols we meet in practice).
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "pm": 1e-6, "Å": 1e-4, "cm": 1e4}
# Default display colours for channels the file gives none for, in the order most
# fluorescence panels use (DAPI blue first); 8 distinct hues, then repeated.
PALETTE = ("0000ff", "00ff00", "ff0000", "ff00ff", "00ffff", "ffff00", "ff8000", "ffffff")
_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


@dataclass(frozen=True)
class OmePixels:
    """What the first OME Image's Pixels element says about channels and planes."""

    channels: tuple[Channel, ...]  # as declared, one per Channel element
    samples: tuple[int, ...]  # each Channel element's SamplesPerPixel
    z_spacing_um: float | None  # PhysicalSizeZ in micrometres, when given and positive


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(xml: str) -> ET.Element:
    # A str with an encoding declaration (QPTIFF says utf-16 of text already decoded):
    # the declaration is meaningless here, drop it.
    return ET.fromstring(_DECLARATION.sub("", xml, count=1))


def _positive(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _length_um(value: str | None, unit: str | None) -> float | None:
    number = _positive(value)
    scale = _UM_PER_UNIT.get(unit or "µm")
    return number * scale if number is not None and scale is not None else None


def ome_color(value: str | None) -> str | None:
    """ "RRGGBB" from OME's Color attribute: a signed 32-bit RGBA integer."""
    if value is None:
        return None
    try:
        rgba = int(value) & 0xFFFFFFFF
    except ValueError:
        return None
    return f"{rgba >> 8:06x}"


def parse_ome(xml: str) -> OmePixels:
    """Channels (name, colour, emission) and z spacing of the first Image in OME-XML."""
    root = _parse(xml)
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return OmePixels((), (), None)
    channels: list[Channel] = []
    samples: list[int] = []
    for element in pixels:
        if _local(element.tag) != "Channel":
            continue
        index = len(channels)
        emission = _length_um(
            element.get("EmissionWavelength"), element.get("EmissionWavelengthUnit", "nm")
        )
        channels.append(
            Channel(
                name=element.get("Name") or element.get("Fluor") or f"Channel {index}",
                color=ome_color(element.get("Color")),
                emission_nm=round(emission * 1000, 3) if emission is not None else None,
            )
        )
        count = _positive(element.get("SamplesPerPixel", "1"))
        samples.append(int(count) if count is not None and count.is_integer() else 1)
    z = _length_um(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"))
    return OmePixels(tuple(channels), tuple(samples), z)


@dataclass(frozen=True)
class QpiPage:
    """One QPTIFF page's description: its channel, and the scan's resolution."""

    channel: Channel
    mpp: float | None  # ScanResolution's PixelSizeMicrons
    magnification: float | None  # ScanResolution's Magnification


def parse_qpi(description: str, index: int) -> QpiPage:
    """The channel a PerkinElmer/Akoya QPTIFF page holds (name, "r,g,b" colour)."""
    root = _parse(description)
    name = (root.findtext("Name") or "").strip() or f"Channel {index}"
    color = None
    parts = (root.findtext("Color") or "").split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        color = "".join(f"{int(p):02x}" for p in parts)
    scan = next((e for e in root.iter() if e.tag == "ScanResolution"), None)
    mpp = _positive(scan.findtext("PixelSizeMicrons")) if scan is not None else None
    magnification = _positive(scan.findtext("Magnification")) if scan is not None else None
    return QpiPage(Channel(name, color, None), mpp, magnification)


def default_names(count: int, rgb: bool) -> tuple[Channel, ...]:
    """Channels of a file that names none: R, G, B for RGB samples, else numbered."""
    if rgb and count == 3:
        return (Channel("Red", "ff0000"), Channel("Green", "00ff00"), Channel("Blue", "0000ff"))
    return tuple(Channel(f"Channel {i}") for i in range(count))


def display_colors(channels: tuple[Channel, ...]) -> tuple[str, ...]:
    """A colour for every channel: the file's, else white for a single channel, else the
    palette in order (skipping nothing: a file naming some colours keeps them)."""
    if len(channels) == 1:
        return (channels[0].color or "ffffff",)
    return tuple(c.color or PALETTE[i % len(PALETTE)] for i, c in enumerate(channels))
