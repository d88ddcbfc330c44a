"""How a TIFF's pages map onto an RGB slide or a channel slide: levels, focal planes,
channels, and their names; and which sample formats and axes are refused.

Works on the tifffile objects ``sources/tifffile.py`` opens (typed ``Any`` here: that module
is the only tifffile importer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tileserver.errors import UnsupportedFeature, UnsupportedFormat
from tileserver.sources.base import CHANNEL_DTYPES, Channel
from tileserver.sources.channel_metadata import default_names, parse_ome, parse_qpi

_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_YCBCR = 6
# Axes a slide may have beyond Y, X and samples (S): channels (C; tifffile calls a generic
# stack of same-sized pages I or Q) and focal planes (Z). Others are refused by name.
_CHANNEL_AXES = frozenset("CIQ")
_AXIS_NAMES = {
    "T": "time points",
    "A": "angles",
    "P": "phases",
    "H": "lifetime bins",
    "E": "wavelength bins",
    "L": "exposures",
    "V": "views",
    "R": "tiles",
    "M": "mosaic positions",
}


@dataclass(frozen=True)
class Layout:
    """How the file's pages map onto levels, focal planes and channels."""

    rgb: bool
    dtype: np.dtype[Any]
    planes: int  # Z
    page_axes: str  # the axes indexing pages (channel axes and Z), outermost first
    page_shape: tuple[int, ...]
    samples: int  # samples per pixel in each page
    planar: bool  # samples stored one plane after another (PlanarConfiguration 2)

    def _channel_dims(self) -> list[int]:
        return [n for a, n in zip(self.page_axes, self.page_shape, strict=True) if a != "Z"]

    @property
    def channel_pages(self) -> int:
        return int(np.prod(self._channel_dims()))

    def page_index(self, channel_page: int, z: int) -> int:
        """Index into a level's page list of one channel page (outer axes first) at plane z."""
        dims = self._channel_dims()
        position = [int(i) for i in np.unravel_index(channel_page, dims)] if dims else []
        if "Z" in self.page_axes:
            position.insert(self.page_axes.index("Z"), z)
        if not position:
            return 0
        return int(np.ravel_multi_index(position, self.page_shape))


def _sample_problem(dtype: np.dtype[Any]) -> str | None:
    """Why samples of this type are refused, or None for uint8 / uint16."""
    if dtype.name in CHANNEL_DTYPES:
        return None
    bits = dtype.itemsize * 8
    kinds = {"f": "floating-point", "c": "complex", "i": "signed integer", "u": "unsigned integer"}
    if dtype.kind == "b":
        return "1-bit bilevel samples"
    return f"{bits}-bit {kinds.get(dtype.kind, dtype.kind)} samples ({dtype.name})"


def layout_of(tif: Any, series: Any, path: Path) -> Layout:
    """Classify the first series: an RGB slide (8-bit RGB or gray, as always) or a channel
    slide, refusing sample formats and axes no reader here renders faithfully."""
    dtype, axes, shape = np.dtype(series.dtype), str(series.axes), tuple(series.shape)
    page0 = series.levels[0].keyframe
    problems = [
        f"{n} {_AXIS_NAMES.get(a, f'planes along axis {a}')} ({a})"
        for a, n in zip(axes, shape, strict=True)
        if a not in "YXSCZIQ" and n > 1
    ]
    sample = _sample_problem(dtype)
    if sample:
        problems.append(sample)
    if problems or not (axes.endswith("YX") or axes.endswith("YXS")):
        # A vendor TIFF may still be OpenSlide's to read: let open_slide try it.
        vendor = tif.is_scn or tif.is_philips or tif.is_bif or tif.is_svs or tif.is_ndpi
        error = UnsupportedFormat if vendor else UnsupportedFeature
        what = " and ".join(problems) or f"an image with axes {axes}"
        raise error(f"{path.name}: {what} are not supported (axes {axes}, {dtype})")
    contig = axes.endswith("S")
    lead = axes[:-3] if contig else axes[:-2]
    lead_shape = shape[: len(lead)]
    planar = "S" in lead
    page_axes = lead.replace("S", "")
    page_shape = tuple(n for a, n in zip(lead, lead_shape, strict=True) if a != "S")
    samples = int(page0.samplesperpixel)
    planes = page_shape[page_axes.index("Z")] if "Z" in page_axes else 1
    colour = int(page0.photometric) in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR) and samples >= 3
    microscopy = tif.is_ome or tif.is_qpi  # declare channels: even one 8-bit gray is a channel
    rgb = (
        dtype == np.uint8
        and not _CHANNEL_AXES & set(page_axes)
        and (colour or (samples <= 2 and not microscopy))
    )
    if rgb and planar:
        raise UnsupportedFormat(f"{path.name}: planar (separate) samples")
    return Layout(rgb, dtype, planes, page_axes, page_shape, samples, planar)


def channels_of(
    tif: Any, series: Any, layout: Layout
) -> tuple[tuple[Channel, ...], float | None, float | None]:
    """The channels' names and colours (OME-XML, QPTIFF page XML, else numbered), and
    QPTIFF's pixel size and magnification."""
    count = layout.channel_pages * layout.samples
    colour = int(series.levels[0].keyframe.photometric) in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR)
    if tif.is_ome and tif.ome_metadata:
        declared = parse_ome(tif.ome_metadata).channels
        if len(declared) == count:
            return declared, None, None
    if tif.is_qpi and layout.samples == 1:
        pages = series.levels[0].pages
        qpi = [parse_qpi(pages[layout.page_index(c, 0)].description, c) for c in range(count)]
        return tuple(q.channel for q in qpi), qpi[0].mpp, qpi[0].magnification
    return default_names(count, colour), None, None
