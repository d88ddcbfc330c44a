"""Slide source over OpenSlide: every format it reads (SVS, NDPI, MRXS, DICOM, SCN, ...).

The only module that imports ``openslide``. OpenSlide handles are thread-safe, so one
handle serves every thread.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import openslide
from openslide import lowlevel

from tileserver.errors import CorruptSlide, UnsupportedFeature, UnsupportedFormat
from tileserver.geometry import Region, Size
from tileserver.sources.base import (
    MAX_DECODE_PIXELS,
    Level,
    SlideInfo,
    SlideSource,
    composite_on_white,
)
from tileserver.sources.metadata import allowlisted, parse_float


def detect_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format ("aperio", "leica", ...), None if it reads none.

    Reads only the file's header and metadata (no pixels), so routing can ask cheaply.
    """
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError, UnicodeError):
        return None


class OpenSlideSource(SlideSource):
    """A slide read through OpenSlide. Thread-safe: OpenSlide locks its own caches."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            raise UnsupportedFormat(f"{path.name}: not a format OpenSlide reads")
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise UnsupportedFormat(f"{path.name}: not a format OpenSlide reads") from exc
        except openslide.OpenSlideError as exc:
            reason = str(exc).removeprefix(f"Reading {path}: ")
            if "nsupported" in reason or "flavor" in reason or "concatenation" in reason:
                msg = f"{path.name}: OpenSlide cannot read it: {reason}"
                raise UnsupportedFeature(msg) from exc
            raise CorruptSlide(f"{path.name}: OpenSlide cannot open it: {reason}") from exc
        try:
            info = self._parse()
        except openslide.OpenSlideError as exc:
            self._slide.close()
            raise CorruptSlide(f"{path.name}: OpenSlide cannot read its metadata: {exc}") from exc
        self._all_properties = dict(self._slide.properties)
        self._closed = False
        super().__init__(path, info)

    def _parse(self) -> SlideInfo:
        slide = self._slide
        props = slide.properties
        levels = []
        for i, (width, height) in enumerate(slide.level_dimensions):
            if width <= 0 or height <= 0:
                raise CorruptSlide(f"level {i} has a zero dimension {width}x{height}")
            tw = props.get(f"openslide.level[{i}].tile-width")
            th = props.get(f"openslide.level[{i}].tile-height")
            tile = Size(int(tw), int(th)) if tw and th else None
            levels.append(Level(Size(width, height), float(slide.level_downsamples[i]), tile))
        mpp_x = parse_float(props.get(openslide.PROPERTY_NAME_MPP_X))
        mpp_y = parse_float(props.get(openslide.PROPERTY_NAME_MPP_Y))
        icc = lowlevel.read_icc_profile(slide._osr) if props.get("openslide.icc-size") else None
        return SlideInfo(
            backend=self.backend,
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown",
            levels=tuple(levels),
            mpp=(mpp_x, mpp_y) if mpp_x and mpp_y else None,
            objective_power=parse_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            associated=tuple(sorted(slide.associated_images)),
            icc_profile=icc,
            properties=MappingProxyType(allowlisted(props)),
        )

    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        self.check_region(level, l_region, z)
        downsample = self.info.levels[level].downsample
        # OpenSlide takes the top-left corner in level-0 pixels and the size in level pixels.
        l0_x = round(l_region.x * downsample)
        l0_y = round(l_region.y * downsample)
        try:
            image = self._slide.read_region((l0_x, l0_y), level, (l_region.width, l_region.height))
        except openslide.OpenSlideError as exc:
            raise CorruptSlide(
                f"{self.name}: cannot read level {level} region {tuple(l_region)}: {exc}"
            ) from exc
        return composite_on_white(np.asarray(image))

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self.info.associated:
            raise KeyError(name)
        try:
            # OpenSlide allocates what the file's tags claim, before reading a byte of it.
            width, height = lowlevel.get_associated_image_dimensions(self._slide._osr, name)
            if width * height > MAX_DECODE_PIXELS:
                raise CorruptSlide(f"{self.name}: associated image {name} is {width}x{height}")
            image = self._slide.associated_images[name]
        except openslide.OpenSlideError as exc:
            raise CorruptSlide(f"{self.name}: cannot read associated image {name}: {exc}") from exc
        return composite_on_white(np.asarray(image))

    def identifying_properties(self) -> dict[str, str]:
        return dict(self._all_properties)

    def close(self) -> None:
        if not self._closed:  # OpenSlide must not free its handle twice
            self._closed = True
            self._slide.close()
