"""Slide source over wsidicom: a DICOM VL Whole Slide Microscopy series as one slide.

The only module that imports ``wsidicom``. A slide is every VL WSI instance of one Series
Instance UID in one folder: the pyramid levels (VOLUME), the label and the overview
("macro"). It opens from the folder or from any of its files.

JPEG frames are decoded, and handed out for copying, in the colours their own markers give
them, not always those the dataset declares (``dicom_rules.py``, docs/dicom.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from wsidicom import WsiDicom  # type: ignore[import-untyped]
from wsidicom.config import Settings  # type: ignore[import-untyped]
from wsidicom.errors import (  # type: ignore[import-untyped]
    WsiDicomNotSupportedError,
)
from wsidicom.file.io import WsiDicomReader  # type: ignore[import-untyped]
from wsidicom.file.wsidicom_stream_opener import (  # type: ignore[import-untyped]
    WsiDicomStreamOpener,
)
from wsidicom.geometry import Point  # type: ignore[import-untyped]
from wsidicom.tags import SOPInstanceUIDTag  # type: ignore[import-untyped]

from tileserver.errors import CorruptSlide, SlideError, UnsupportedFeature, UnsupportedFormat
from tileserver.geometry import Region, Size
from tileserver.lru import WeightedLRU
from tileserver.render.encode import decode
from tileserver.sources.base import (
    MAX_DECODE_PIXELS,
    Level,
    RawTile,
    SlideInfo,
    SlideSource,
    to_rgb,
)
from tileserver.sources.codestreams import (
    j2k_declared,
    jpeg_declared,
)
from tileserver.sources.dicom_files import is_dicom
from tileserver.sources.dicom_rules import (
    Instance,
    check_series,
    copyable_jpeg,
    frame_colour,
    jpeg_ls_declared,
)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG_2000 = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_HTJ2K = frozenset(
    {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
)
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
# Non-uniform tile sizes across levels are normal (converters write small levels whole).
# Caches are per open series (a server holds dozens): frames are decoded here, not by
# wsidicom, and a few MiB of stored frames serve the neighbouring tiles of a view.
_DECODED_CACHE_BYTES = 16 << 20
_HEADERS: WeightedLRU[Instance] = WeightedLRU(4096, lambda _: 1)  # a few hundred bytes each
_SETTINGS = Settings(
    strict_tile_size_check=False, decoded_frame_cache_size=0, encoded_frame_cache_size=4 << 20
)


def _nbytes(pixels: np.ndarray) -> int:
    return pixels.nbytes


def read_instance(path: Path) -> Instance:
    """The header of one VL WSI file. UnsupportedFormat for a file that is not DICOM or not a
    VL WSI image; UnsupportedFeature, naming what is missing, for one wsidicom cannot read.
    Remembered per file version: listing a folder, then opening its series, reads it once."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UnsupportedFormat(f"{path.name}: cannot be read: {exc.strerror}") from exc
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    instance = _HEADERS.get(key)
    if instance is None:
        instance = _read_instance(path)
        _HEADERS.put(key, instance)
    return instance


def _read_instance(path: Path) -> Instance:
    opened = list(WsiDicomStreamOpener().open(path))
    if not opened:
        raise UnsupportedFormat(f"{path.name}: not a DICOM file")
    stream = opened[0]
    try:
        sop_class = str(stream.media_storage_sop_class_uid)
        if sop_class != WSI_SOP_CLASS:
            raise UnsupportedFormat(
                f"{path.name}: DICOM, but not a VL Whole Slide Microscopy image "
                f"(SOP class {sop_class})"
            )
        try:
            reader = WsiDicomReader(stream)
        except WsiDicomNotSupportedError as exc:
            raise UnsupportedFeature(f"{path.name}: {_refusal(stream, exc)}") from exc
        dataset = reader.dataset
        spacing = dataset.pixel_spacing
        return Instance(
            path=path,
            series_uid=str(dataset.uids.slide.series_instance),
            image_type=reader.image_type.name,
            size=Size(dataset.image_size.width, dataset.image_size.height),
            tile=Size(dataset.tile_size.width, dataset.tile_size.height),
            spacing_mm=(float(spacing.width), float(spacing.height)) if spacing else None,
        )
    except SlideError:
        raise
    except Exception as exc:  # the parsers raise many types; all mean a broken header here
        raise CorruptSlide(f"{path.name}: broken DICOM header: {exc}") from exc
    finally:
        stream.close()


def _refusal(stream: Any, exc: Exception) -> str:
    """Why wsidicom turned an instance away, as precisely as its first elements tell."""
    elements: dict[Any, Any] = {}
    try:
        stream.read_elements_until(SOPInstanceUIDTag, elements)
    except Exception:  # a header too broken to say more: wsidicom's own words will do
        return str(exc)
    image_type = elements.get(0x00080008)
    if image_type is None:
        return (
            "lacks Image Type (0008,0008), which the VL Whole Slide Microscopy IOD requires: "
            "it cannot tell a pyramid level from a label or an overview"
        )
    return (
        "a VL Whole Slide Microscopy image wsidicom cannot read: an attribute it needs is "
        "missing, or its image type or pixel format is not supported"
    )


def _dicom_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and is_dicom(p))


def _instances(files: Iterable[Path]) -> tuple[list[Instance], list[SlideError]]:
    """The readable VL WSI instances among ``files``, and why the others were not read
    (annotations, other modalities, broken files: skipped, as not part of a slide)."""
    found: list[Instance] = []
    refusals: list[SlideError] = []
    for path in files:
        try:
            found.append(read_instance(path))
        except (UnsupportedFormat, CorruptSlide) as exc:
            refusals.append(exc)
    return found, refusals


def series_uid(path: Path) -> str | None:
    """The Series Instance UID of a VL WSI file, for listing; None for any other file. A VL
    WSI file that cannot be read gets a key of its own, so that it is listed and opening it
    says why (a listing must not fail on one bad file)."""
    if not is_dicom(path):
        return None
    try:
        return read_instance(path).series_uid
    except (UnsupportedFeature, CorruptSlide):
        return f"unreadable:{path.name}"
    except UnsupportedFormat:
        return None


def series_instances(path: Path) -> list[Instance]:
    """The instances of the series ``path`` names: a folder holding one series, or any file
    of a series (its folder's files with the same Series Instance UID)."""
    if path.is_dir():
        instances, refusals = _instances(_dicom_files(path))
        if not instances:
            if refusals:  # e.g. a one-file "series" wsidicom cannot read: say why
                raise refusals[0]
            raise UnsupportedFormat(f"{path.name}: no DICOM whole-slide image in the folder")
        first = instances[0]
        for other in instances[1:]:
            if other.series_uid != first.series_uid:
                raise UnsupportedFeature(
                    f"{other.path.name}: belongs to another DICOM series than "
                    f"{first.path.name} in {path.name}: open one of the files instead"
                )
        return instances
    if not is_dicom(path):
        raise UnsupportedFormat(f"{path.name}: not a DICOM file")
    own = read_instance(path)
    others, _ = _instances(p for p in _dicom_files(path.parent) if p != path)
    return [own] + [i for i in others if i.series_uid == own.series_uid]


@dataclass(frozen=True)
class _Image:
    """One image the slide reads tile by tile: a level or an associated image."""

    where: str  # "level 2", "associated image label": for messages
    group: Any  # wsidicom's level/label/overview group
    size: Size
    tile: Size
    transfer_syntax: str
    declared_rgb: bool  # PhotometricInterpretation RGB
    components: int
    optical_path: str
    mismatch: bool  # JPEG frames' markers contradict the PhotometricInterpretation


class DicomSource(SlideSource):
    """A DICOM WSI series read through wsidicom. Thread-safe: wsidicom's file readers lock
    their streams, and frames are decoded here without shared state."""

    backend = "dicom"

    def __init__(self, path: Path) -> None:
        self.path = path  # messages name it while the series is parsed
        self._cache: WeightedLRU[np.ndarray] = WeightedLRU(_DECODED_CACHE_BYTES, _nbytes)
        instances = series_instances(path)
        check_series(instances)
        files = tuple(sorted(i.path for i in instances))
        try:
            self._wsi = WsiDicom.open(list(files), settings=_SETTINGS)
        except Exception as exc:  # the headers were read once already: broken past them
            raise CorruptSlide(f"{path.name}: wsidicom cannot open the series: {exc}") from exc
        try:
            info, self._levels, self._assoc = self._parse(path, instances)
        except Exception:
            self._wsi.close()
            raise
        super().__init__(path, info)
        self.files = files

    def _parse(
        self, path: Path, instances: list[Instance]
    ) -> tuple[SlideInfo, tuple[_Image, ...], dict[str, _Image]]:
        wsi = self._wsi
        if len(wsi.pyramids) > 1:
            raise UnsupportedFeature(
                f"{path.name}: the DICOM series holds {len(wsi.pyramids)} pyramids (different "
                "image origins or depth of field); one is supported"
            )
        volume_sizes = {i.size for i in instances if i.image_type == "VOLUME"}
        pyramid = wsi.pyramid
        self._planes = tuple(sorted(float(z) for z in pyramid.levels[0].focal_planes))
        read_sizes = {Size(lv.size.width, lv.size.height) for lv in pyramid.levels}
        for lost in sorted(volume_sizes - read_sizes, key=lambda s: -s.pixels):
            file = next(i.path.name for i in instances if i.size == lost)
            raise CorruptSlide(f"{file}: wsidicom left this level out of the pyramid")
        levels = tuple(self._image(lv, f"level {k}", path) for k, lv in enumerate(pyramid.levels))
        l0 = levels[0].size
        slide_levels = tuple(
            Level(im.size, (l0.width / im.size.width + l0.height / im.size.height) / 2, im.tile)
            for im in levels
        )
        assoc: dict[str, _Image] = {}
        series = (
            (wsi.labels, "label"),
            (wsi.overviews, "macro"),
            (pyramid.thumbnails, "thumbnail"),
        )
        for groups, kind in series:
            if groups is not None and len(groups) > 0:
                assoc[kind] = self._image(groups[0], f"associated image {kind}", path)
        for name, image in assoc.items():
            if image.size.pixels > MAX_DECODE_PIXELS:
                raise CorruptSlide(f"{path.name}: associated image {name} is {image.size}")
        base_dataset = pyramid.levels[0].default_instance.dataset.as_dataset()
        spacing = pyramid.levels[0].pixel_spacing
        mpp = (float(spacing.width) * 1000, float(spacing.height) * 1000) if spacing else None
        info = SlideInfo(
            backend=self.backend,
            vendor="dicom",
            levels=slide_levels,
            mpp=mpp,
            objective_power=_objective_power(base_dataset),
            associated=tuple(sorted(assoc)),
            icc_profile=_icc_profile(base_dataset),
            planes=self._planes if len(self._planes) > 1 else (),
            properties=MappingProxyType({}),
        )
        return info, levels, assoc

    def _image(self, group: Any, where: str, path: Path) -> _Image:
        instance = group.default_instance
        data = instance.image_data
        syntax = str(data.transfer_syntax)
        photometric = str(data.photometric_interpretation)
        samples = int(data.samples_per_pixel)
        if len(group.optical_paths) > 1:
            raise UnsupportedFeature(
                f"{path.name}: {where} has {len(group.optical_paths)} optical paths "
                "(multi-channel DICOM); one is supported"
            )
        if int(data.bits) != 8:
            raise UnsupportedFeature(
                f"{path.name}: {where} has {int(data.bits)}-bit samples; 8-bit is supported"
            )
        image = _Image(
            where=where,
            group=group,
            size=Size(group.size.width, group.size.height),
            tile=Size(data.tile_size.width, data.tile_size.height),
            transfer_syntax=syntax,
            declared_rgb=photometric == "RGB",
            components=samples,
            optical_path=str(group.optical_paths[0]),
            mismatch=False,
        )
        if syntax == JPEG_BASELINE and samples == 3:
            frame = self._frame(image, 0, 0, 0)
            if frame is not None:
                try:
                    said = frame_colour(frame)
                except ValueError as exc:
                    raise CorruptSlide(f"{path.name}: {where} frame 0 is corrupt: {exc}") from exc
                declared = "RGB" if image.declared_rgb else "YBR"
                if said is not None and said != declared:
                    image = _Image(**{**image.__dict__, "mismatch": True})
        return image

    def _frame(self, image: _Image, t_col: int, t_row: int, z: int) -> bytes | None:
        """The stored frame's bytes, or None for a tile a sparse image leaves out."""
        z_value, path = self._plane(image, z)
        point = Point(t_col, t_row)
        try:
            data = image.group.get_instance(z_value, path).image_data
            if data.is_sparse(point, z_value, path):
                return None
            return bytes(data.get_encoded_tile(point, z_value, path))
        except Exception as exc:  # wsidicom's errors, and the parsers' under it: broken data
            raise CorruptSlide(
                f"{self.name}: {image.where} frame ({t_col}, {t_row}) cannot be read: {exc}"
            ) from exc

    def _plane(self, image: _Image, z: int) -> tuple[float, str]:
        """The focal plane (z offset, um) and optical path to read plane ``z`` from: the
        image's plane nearest to level 0's ``z``-th (upper levels often hold one plane)."""
        want = self._planes[z]
        return min(image.group.focal_planes, key=lambda p: abs(p - want)), image.optical_path

    def _decoded(self, image: _Image, t_col: int, t_row: int, z: int) -> np.ndarray | None:
        """The frame's pixels, from a small cache: views read neighbouring tiles of one frame
        (a 500-pixel frame under four 256-pixel tiles)."""
        key = (image.where, z, t_col, t_row)
        pixels = self._cache.get(key)
        if pixels is None:
            pixels = self._decode(image, t_col, t_row, z)
            if pixels is not None:
                self._cache.put(key, pixels)
        return pixels

    def _decode(self, image: _Image, t_col: int, t_row: int, z: int) -> np.ndarray | None:
        frame = self._frame(image, t_col, t_row, z)
        if frame is None:
            return None
        what = f"{self.name}: {image.where} frame ({t_col}, {t_row})"
        syntax = image.transfer_syntax
        try:
            if syntax == JPEG_BASELINE or syntax in _JPEG_2000 or syntax in _HTJ2K:
                declared = (jpeg_declared if syntax == JPEG_BASELINE else j2k_declared)(frame)
                if not declared.fits(image.tile):
                    raise CorruptSlide(
                        f"{what} declares {declared} in a {image.tile.width}x"
                        f"{image.tile.height} tile: refused before decoding"
                    )
            elif syntax in _JPEG_LS:
                size = jpeg_ls_declared(frame)
                if size.width > image.tile.width or size.height > image.tile.height:
                    raise CorruptSlide(f"{what} declares {size} pixels: refused before decoding")
            elif syntax not in _UNCOMPRESSED:
                raise UnsupportedFeature(f"{what}: transfer syntax {syntax} is not supported")
            if syntax == JPEG_BASELINE and image.components == 3:
                return decode(copyable_jpeg(frame, image.declared_rgb))
            data = image.group.default_instance.image_data
            return to_rgb(np.asarray(data.decoder.decode(frame)))
        except (CorruptSlide, UnsupportedFeature):
            raise
        except Exception as exc:  # codecs raise many types; all mean broken data here
            raise CorruptSlide(f"{what} cannot be decoded: {exc}") from exc

    def _read(self, image: _Image, l_region: Region, z: int) -> np.ndarray:
        out = np.full((l_region.height, l_region.width, 3), 255, dtype=np.uint8)
        inside = l_region.intersect(image.size)
        if inside.width == 0 or inside.height == 0:
            return out
        tile = image.tile
        rows = range(inside.y // tile.height, (inside.y + inside.height - 1) // tile.height + 1)
        cols = range(inside.x // tile.width, (inside.x + inside.width - 1) // tile.width + 1)
        for t_row in rows:
            for t_col in cols:
                pixels = self._decoded(image, t_col, t_row, z)
                if pixels is None:
                    continue  # a tile a sparse image leaves out is background
                l_x, l_y = t_col * tile.width, t_row * tile.height
                x0, y0 = max(l_x, inside.x), max(l_y, inside.y)
                x1 = min(l_x + pixels.shape[1], inside.x + inside.width)
                y1 = min(l_y + pixels.shape[0], inside.y + inside.height)
                if x1 <= x0 or y1 <= y0:
                    continue
                out[y0 - l_region.y : y1 - l_region.y, x0 - l_region.x : x1 - l_region.x] = pixels[
                    y0 - l_y : y1 - l_y, x0 - l_x : x1 - l_x
                ]
        return out

    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        self.check_region(level, l_region, z)
        return self._read(self._levels[level], l_region, z)

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self._assoc:
            raise KeyError(name)
        image = self._assoc[name]
        return self._read(image, Region(0, 0, image.size.width, image.size.height), 0)

    def jpeg_colour_mismatch(self, level: int) -> bool:
        """Whether the level's JPEG frames contradict the declared PhotometricInterpretation
        (they are decoded and copied as their markers say)."""
        return self._levels[level].mismatch

    def raw_tile_codec(self, level: int) -> str | None:
        image = self._levels[level]
        copyable = image.transfer_syntax == JPEG_BASELINE and image.components == 3
        return "jpeg" if copyable and self.info.plane_count == 1 else None

    def raw_tile(self, level: int, t_col: int, t_row: int) -> RawTile | None:
        if self.raw_tile_codec(level) is None:
            return None
        image = self._levels[level]
        grid = Size(
            -(-image.size.width // image.tile.width), -(-image.size.height // image.tile.height)
        )
        if not (0 <= t_col < grid.width and 0 <= t_row < grid.height):
            raise IndexError(f"tile ({t_col}, {t_row}) outside the {grid} grid")
        frame = self._frame(image, t_col, t_row, 0)
        if frame is None:
            return None
        what = f"{self.name}: level {level} tile ({t_col}, {t_row})"
        try:
            declared = jpeg_declared(frame)
            if not frame.rstrip(b"\x00").endswith(b"\xff\xd9"):
                raise ValueError("JPEG data does not end with an EOI marker (truncated?)")
        except ValueError as exc:
            raise CorruptSlide(f"{what} is corrupt: {exc}") from exc
        if not declared.fits(image.tile):
            raise CorruptSlide(f"{what} declares {declared}: refused")
        return RawTile(copyable_jpeg(frame, image.declared_rgb), "jpeg", image.tile)

    def close(self) -> None:
        wsi, self._wsi = getattr(self, "_wsi", None), None
        if wsi is not None:
            wsi.close()


def _icc_profile(dataset: Any) -> bytes | None:
    """The first optical path's ICC profile (PS3.3 C.8.12.5), if the series has one."""
    for item in dataset.get("OpticalPathSequence", None) or ():
        icc = item.get("ICCProfile", None)
        if icc:
            return bytes(icc)
    return None


def _objective_power(dataset: Any) -> float | None:
    for item in dataset.get("OpticalPathSequence", None) or ():
        power = item.get("ObjectiveLensPower", None)
        try:
            if power is not None and float(power) > 0:
                return float(power)
        except (TypeError, ValueError):
            return None
    return None


__all__ = [
    "DicomSource",
    "Instance",
    "series_instances",
    "series_uid",
]
