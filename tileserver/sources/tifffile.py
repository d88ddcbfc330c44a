"""Slide source over tifffile: tiled pyramidal TIFF, OME-TIFF, QPTIFF, SVS and NDPI.

8-bit RGB and gray images are RGB slides (``read_region``); OME-TIFF, QPTIFF and TIFF with
other samples (more channels, 16 bits, a page per channel) are channel slides
(``read_channels``), with focal planes where the file has Z (tiff_layout.py classifies them).

The only module that imports ``tifffile``. Reads use ``os.pread`` on a private file
descriptor plus tifffile's pure per-segment decoder, so any number of threads read at once
without sharing a file position. This backend can also hand out the stored JPEG tiles as
standalone JPEG files (tables merged in) for copying without decode/re-encode.

Every segment's decoded size is bounded before it is decoded: by tifffile itself for byte
codecs (it decodes into a buffer of the segment's size), by reading the codestream header
for image codecs (which allocate what their header declares). Other codecs are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tifffile

from tileserver.errors import CorruptSlide, UnsupportedFeature, UnsupportedFormat
from tileserver.geometry import Region, Size
from tileserver.sources.base import (
    MAX_DECODE_PIXELS,
    Channel,
    Level,
    RawTile,
    SlideInfo,
    SlideSource,
    to_rgb,
)
from tileserver.sources.channel_metadata import parse_ome
from tileserver.sources.codestreams import (
    Declared,
    j2k_declared,
    jpeg_declared,
    png_declared,
    webp_declared,
)
from tileserver.sources.metadata import allowlisted, parse_aperio_description, parse_float
from tileserver.sources.segment_cache import SegmentCache
from tileserver.sources.tiff_layout import Layout, channels_of, layout_of

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG = 7
_PHOTOMETRIC_RGB = 2
_ASSOCIATED = {"Thumbnail": "thumbnail", "Label": "label", "Macro": "macro"}
# Adobe APP14 marker with transform 0: tells decoders the 3 components are RGB, not YCbCr.
_APP14_RGB = bytes.fromhex("ffee000e41646f626500640000000000")
_KNOWN_COMPRESSION = frozenset(int(c) for c in tifffile.COMPRESSION)
# None, LZW, deflate, PackBits, LZMA, zstd: tifffile decodes them into a segment-sized buffer.
_BOUNDED_COMPRESSION = frozenset({1, 5, 8, 32773, 32946, 34925, 34926, 50000})
# Image codecs, whose decoders allocate what the codestream declares: read that first.
_DECLARED_SIZE: dict[int, Callable[[bytes], Declared]] = {
    _JPEG: jpeg_declared,
    34892: jpeg_declared,  # lossy JPEG (DNG)
    33003: j2k_declared,  # Aperio JPEG 2000, YCbCr
    33004: j2k_declared,
    33005: j2k_declared,  # Aperio JPEG 2000, RGB
    34712: j2k_declared,
    34933: png_declared,
    50001: webp_declared,
}
_MAX_SEGMENT_CACHE = 192 << 20  # bytes of decoded segments one channel slide may keep
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit inch, centimetre


def is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


@dataclass(frozen=True)
class _LevelPage:
    """What reading one level needs: the decoder and the segment table, fixed at open."""

    where: str  # "level 2", "associated image label": for messages
    decode: Any  # tifffile's per-segment decode closure
    declared: Callable[[bytes], Declared] | None  # reads a segment's declared size
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]
    segment: Size  # tile or strip size in level pixels
    grid: Size  # segments across and down
    jpegtables: bytes | None
    jpegheader: bytes | None  # NDPI: the header each restart-marker segment needs
    whole_jpeg: bool  # each segment is a complete JPEG stream (not NDPI restart pieces)
    raw_jpeg: bool  # stored tiles are baseline JPEG we can copy
    rgb_jpeg: bool  # JPEG data in RGB colour space (Aperio), needs an APP14 marker
    rgb: bool = True  # decoded to uint8 RGB; else to (h, w, samples) of the file's dtype
    samples: int = 3  # channels one decode yields (channel pages only)
    first_segment: int = 0  # planar samples: this sample plane's first segment index


class TiffSource(SlideSource):
    """A slide read through tifffile. Thread-safe: reads use pread, decoding is pure."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        if not is_tiff(path):
            raise UnsupportedFormat(f"{path.name}: not a TIFF file")
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
            raise CorruptSlide(f"{path.name}: broken TIFF structure: {exc}") from exc
        try:
            info, self._stack, self._assoc, self._all = self._parse(tif, path)
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, TypeError) as exc:
            tif.close()
            raise CorruptSlide(f"{path.name}: broken TIFF structure: {exc}") from exc
        except Exception:
            tif.close()
            raise
        # Plane 0 of each level of an RGB slide: what raw tiles are copied from.
        self._pages = tuple(planes[0][0] for planes in self._stack)
        self._tif = tif
        self._file_size = path.stat().st_size
        self._segments = SegmentCache(_segment_budget(self._stack, info))
        self._fd = os.open(path, os.O_RDONLY)
        super().__init__(path, info)

    def _parse(
        self, tif: tifffile.TiffFile, path: Path
    ) -> tuple[
        SlideInfo, tuple[tuple[tuple[_LevelPage, ...], ...], ...], dict[str, Any], dict[str, str]
    ]:
        if not tif.series:
            raise UnsupportedFormat(f"{path.name}: TIFF without images")
        series = tif.series[0]
        layout = layout_of(tif, series, path)
        orientation = series.levels[0].keyframe.tags.valueof(274, 1)
        if orientation not in (0, 1):  # 0 is invalid; readers treat it as the default, 1
            # libtiff (under OpenSlide) flips each tile on its own: refuse rather than mislead.
            msg = f"{path.name}: TIFF Orientation {int(orientation)} is not supported"
            raise UnsupportedFeature(msg)
        file_size = path.stat().st_size
        stack, levels = [], []
        l0_width = l0_height = 0
        for i, level in enumerate(series.levels):
            height, width = int(level.keyframe.imagelength), int(level.keyframe.imagewidth)
            if width <= 0 or height <= 0:
                raise CorruptSlide(f"{path.name}: level {i} has a zero dimension {width}x{height}")
            if i == 0:
                l0_width, l0_height = width, height
            stack.append(self._level_planes(level, layout, path, f"level {i}", file_size))
            downsample = (l0_width / width + l0_height / height) / 2
            levels.append(Level(Size(width, height), downsample, stack[-1][0][0].segment))
        page0 = series.levels[0].keyframe
        props = _properties(tif, page0)
        vendor = (
            "aperio"
            if tif.is_svs
            else "hamamatsu"
            if tif.is_ndpi
            else "ome"
            if tif.is_ome
            else ("qptiff" if tif.is_qpi else "generic-tiff")
        )
        assoc = {_ASSOCIATED[s.name]: s for s in tif.series[1:] if s.name in _ASSOCIATED}
        mpp = _mpp(tif, page0, props)
        objective = parse_float(props.get("aperio.AppMag") or props.get("hamamatsu.SourceLens"))
        channels: tuple[Channel, ...] = ()
        planes: tuple[float, ...] = ()
        z_spacing = None
        if tif.is_ome and tif.ome_metadata:
            z_spacing = parse_ome(tif.ome_metadata).z_spacing_um
        if not layout.rgb:
            channels, qpi_mpp, qpi_mag = channels_of(tif, series, layout)
            mpp = (qpi_mpp, qpi_mpp) if qpi_mpp else mpp
            objective = qpi_mag or objective
        if layout.planes > 1:
            # Unknown spacing: nominal 1 um steps, so the planes stay ordered and distinct.
            planes = tuple(round(z * (z_spacing or 1.0), 6) for z in range(layout.planes))
        icc_tag = page0.tags.get(34675)
        info = SlideInfo(
            backend=self.backend,
            vendor=vendor,
            levels=tuple(levels),
            mpp=mpp,
            objective_power=objective,
            associated=tuple(sorted(assoc)),
            icc_profile=bytes(icc_tag.value) if icc_tag is not None else None,
            properties=MappingProxyType(allowlisted(props)),
            channels=channels,
            dtype=layout.dtype.name,
            planes=planes,
        )
        return info, tuple(stack), assoc, props

    def _level_planes(
        self, level: Any, layout: Layout, path: Path, where: str, file_size: int
    ) -> tuple[tuple[_LevelPage, ...], ...]:
        """Per focal plane, the segment tables that fill the level's samples in order."""
        pages = level.pages
        planes = []
        for z in range(layout.planes):
            parts: list[_LevelPage] = []
            for c in range(layout.channel_pages):
                page = pages[layout.page_index(c, z)]
                label = where if layout.rgb and layout.planes == 1 else f"{where} page ({c}, z {z})"
                if page is None:
                    raise CorruptSlide(f"{path.name}: {label} is missing")
                page = page.aspage() if hasattr(page, "aspage") else page
                if np.dtype(page.dtype) != layout.dtype or page.samplesperpixel != layout.samples:
                    raise CorruptSlide(
                        f"{path.name}: {label} holds {page.samplesperpixel} x {page.dtype} "
                        f"samples, level 0 {layout.samples} x {layout.dtype}"
                    )
                parts.extend(self._page_parts(page, path, label, file_size, layout))
            planes.append(tuple(parts))
        return tuple(planes)

    @classmethod
    def _page_parts(
        cls, page: Any, path: Path, where: str, file_size: int, layout: Layout
    ) -> list[_LevelPage]:
        lp = cls._level_page(page, path, where, file_size, rgb=layout.rgb)
        if layout.rgb:
            return [lp]
        if not layout.planar:
            return [replace(lp, samples=layout.samples)]
        per_plane = lp.grid.pixels
        if len(lp.offsets) != per_plane * layout.samples:
            msg = f"{path.name}: {where} has {len(lp.offsets)} segments, not {per_plane} per sample"
            raise CorruptSlide(msg)
        return [replace(lp, samples=1, first_segment=s * per_plane) for s in range(layout.samples)]

    @staticmethod
    def _level_page(
        page: Any, path: Path, where: str, file_size: int, rgb: bool = True
    ) -> _LevelPage:
        compression = int(page.compression)
        if compression not in _KNOWN_COMPRESSION:
            msg = f"{path.name}: {where} uses unknown TIFF compression {compression}"
            raise UnsupportedFeature(msg)
        if compression not in _BOUNDED_COMPRESSION and compression not in _DECLARED_SIZE:
            raise UnsupportedFormat(
                f"{path.name}: {where} uses TIFF compression {page.compression.name}, whose "
                "decoded size cannot be checked before decoding"
            )
        planar = page.planarconfig != 1 and page.samplesperpixel > 1
        if planar and rgb:
            raise UnsupportedFormat(f"{path.name}: planar (separate) samples")
        if int(getattr(page, "imagedepth", 1) or 1) > 1:
            raise UnsupportedFeature(f"{path.name}: {where} is a volume (ImageDepth > 1)")
        offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
        for offset, count in zip(offsets, counts, strict=True):
            if count and offset + count > file_size:
                raise CorruptSlide(
                    f"{path.name}: {where} data at {offset}+{count} lies past the end of "
                    f"the file ({file_size} bytes): truncated?"
                )
        chunks, chunked = page.chunks, page.chunked
        segment = Size(int(chunks[1]), int(chunks[0]))
        # tifffile counts planar segments as (samples, rows, columns), contiguous (rows, ...).
        grid = (
            Size(int(chunked[-1]), int(chunked[-2]))
            if planar
            else Size(int(chunked[1]), int(chunked[0]))
        )
        if segment.pixels > MAX_DECODE_PIXELS:
            raise UnsupportedFormat(
                f"{path.name}: {where} is stored in {segment.width}x{segment.height} segments, "
                f"over the cap of {MAX_DECODE_PIXELS} pixels for one decode"
            )
        raw_jpeg = (
            rgb
            and page.is_tiled
            and page.compression == _JPEG
            and page.samplesperpixel == 3
            and not page.is_ndpi
        )
        return _LevelPage(
            where=where,
            decode=page.decode,
            declared=_DECLARED_SIZE.get(compression),
            offsets=offsets,
            bytecounts=counts,
            segment=segment,
            grid=grid,
            jpegtables=page.jpegtables,
            jpegheader=page.jpegheader,
            whole_jpeg=page.compression == _JPEG and not page.is_ndpi,
            raw_jpeg=raw_jpeg,
            rgb_jpeg=raw_jpeg and page.photometric == _PHOTOMETRIC_RGB,
            rgb=rgb,
        )

    def _segment_bytes(self, lp: _LevelPage, t_col: int, t_row: int) -> bytes | None:
        """The segment's bytes, checked to declare no more pixels than the segment holds."""
        index = lp.first_segment + t_row * lp.grid.width + t_col
        count = lp.bytecounts[index]
        if count == 0:
            return None
        data = os.pread(self._fd, count, lp.offsets[index])
        if len(data) != count:
            raise CorruptSlide(f"{self.name}: {lp.where} segment {index} is truncated")
        if lp.declared is None:
            return data
        what = f"{self.name}: {lp.where} tile ({t_col}, {t_row})"
        try:
            # NDPI: the frame header is shared, the segments are bare restart intervals.
            declared = lp.declared(lp.jpegheader if lp.jpegheader is not None else data)
        except ValueError as exc:
            raise CorruptSlide(f"{what} cannot be decoded: {exc}") from exc
        if not declared.fits(lp.segment):
            raise CorruptSlide(
                f"{what} declares {declared} in a {lp.segment.width}x{lp.segment.height} "
                "segment: refused before decoding"
            )
        return data

    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        self.check_region(level, l_region, z)
        if self.info.channels:
            raise UnsupportedFeature(
                f"{self.name}: a slide of {len(self.info.channels)} {self.info.dtype} channels "
                "has no RGB pixels: read it with read_channels"
            )
        return self._read(self._stack[level][z][0], self.info.levels[level].size, l_region)

    def read_channels(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        if not self.info.channels:
            return super().read_channels(level, l_region, z)
        self.check_region(level, l_region, z)
        size = self.info.levels[level].size
        out = np.zeros((l_region.height, l_region.width, len(self.info.channels)), self.info.dtype)
        first = 0
        for part, lp in enumerate(self._stack[level][z]):
            view = out[:, :, first : first + lp.samples]
            self._paint(lp, size, l_region, view, cache=(level, z, part))
            first += lp.samples
        return out

    def _read(self, lp: _LevelPage, size: Size, l_region: Region) -> np.ndarray:
        out = np.full((l_region.height, l_region.width, 3), 255, dtype=np.uint8)
        self._paint(lp, size, l_region, out)
        return out

    def _paint(
        self,
        lp: _LevelPage,
        size: Size,
        l_region: Region,
        out: np.ndarray,
        cache: tuple[int, int, int] | None = None,
    ) -> None:
        """Decode the segments under ``l_region`` into ``out`` (the region's pixels); with
        ``cache`` (level, plane, part), through the decoded-segment cache."""
        inside = l_region.intersect(size)
        if inside.width == 0 or inside.height == 0:
            return
        seg = lp.segment
        t_col0, t_row0 = inside.x // seg.width, inside.y // seg.height
        t_col1 = (inside.x + inside.width - 1) // seg.width
        t_row1 = (inside.y + inside.height - 1) // seg.height
        for t_row in range(t_row0, t_row1 + 1):
            for t_col in range(t_col0, t_col1 + 1):
                if cache is None:
                    pixels = self._decode_segment(lp, t_col, t_row)
                else:
                    load = partial(self._decode_segment, lp, t_col, t_row)
                    pixels = self._segments.get_or_load((*cache, t_col, t_row), load)
                if pixels is None:
                    continue  # an empty segment is background
                l_x, l_y = t_col * seg.width, t_row * seg.height
                part = Region(l_x, l_y, pixels.shape[1], pixels.shape[0]).intersect(
                    Size(inside.x + inside.width, inside.y + inside.height)
                )
                x0, y0 = max(part.x, inside.x), max(part.y, inside.y)
                x1, y1 = part.x + part.width, part.y + part.height
                if x1 <= x0 or y1 <= y0:
                    continue
                out[y0 - l_region.y : y1 - l_region.y, x0 - l_region.x : x1 - l_region.x] = pixels[
                    y0 - l_y : y1 - l_y, x0 - l_x : x1 - l_x
                ]

    def _decode_segment(self, lp: _LevelPage, t_col: int, t_row: int) -> np.ndarray | None:
        index = lp.first_segment + t_row * lp.grid.width + t_col
        data = self._segment_bytes(lp, t_col, t_row)
        if data is None:
            return None
        try:
            if lp.whole_jpeg:  # libjpeg decodes truncated data without complaint: check first
                standalone_jpeg(data, None, rgb=False)
            segment, _, _ = lp.decode(
                data, index, jpegtables=lp.jpegtables, jpegheader=lp.jpegheader
            )
        except Exception as exc:  # codecs raise many types; all mean broken data here
            raise CorruptSlide(
                f"{self.name}: {lp.where} tile ({t_col}, {t_row}) cannot be decoded: {exc}"
            ) from exc
        if segment is None:
            return None
        pixels = np.asarray(segment).reshape(segment.shape[-3:])
        return to_rgb(pixels) if lp.rgb else pixels

    def read_associated(self, name: str) -> np.ndarray:
        # Read like a level, segment by segment, so each segment is checked before decoding.
        page = self._assoc[name].keyframe
        size = Size(int(page.imagewidth), int(page.imagelength))
        if size.pixels > MAX_DECODE_PIXELS:
            msg = f"{self.name}: associated image {name} is {size.width}x{size.height}"
            raise CorruptSlide(msg)
        if page.dtype != np.uint8:
            raise UnsupportedFormat(f"{self.name}: associated image {name} is not 8-bit")
        lp = self._level_page(page, self.path, f"associated image {name}", self._file_size)
        return self._read(lp, size, Region(0, 0, size.width, size.height))

    def raw_tile_codec(self, level: int) -> str | None:
        # A z-stack's planes are read with read_region(z): plane 0's tiles alone would mislead.
        if self.info.planes:
            return None
        return "jpeg" if self._pages[level].raw_jpeg else None

    def raw_tile(self, level: int, t_col: int, t_row: int) -> RawTile | None:
        lp = self._pages[level]
        if not lp.raw_jpeg or self.info.planes:
            return None
        if not (0 <= t_col < lp.grid.width and 0 <= t_row < lp.grid.height):
            raise IndexError(f"tile ({t_col}, {t_row}) outside the {lp.grid} grid")
        data = self._segment_bytes(lp, t_col, t_row)
        if data is None:
            return None
        try:
            jpeg = standalone_jpeg(data, lp.jpegtables, lp.rgb_jpeg)
        except ValueError as exc:
            msg = f"{self.name}: level {level} tile ({t_col}, {t_row}) is corrupt: {exc}"
            raise CorruptSlide(msg) from exc
        return RawTile(jpeg, "jpeg", lp.segment)

    def identifying_properties(self) -> dict[str, str]:
        return dict(self._all)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:  # closing twice must not close a descriptor someone else now owns
            os.close(fd)
            self._tif.close()
            self._segments.clear()


def _segment_budget(stack: tuple[tuple[tuple[_LevelPage, ...], ...], ...], info: SlideInfo) -> int:
    """Bytes of decoded segments to keep for a channel slide: one row of level-0 segments of
    every channel, so a reader going chunk row by chunk row decodes each segment once
    (capped: a server may hold several sources open). RGB slides keep none."""
    if not info.channels:
        return 0
    itemsize = np.dtype(info.dtype).itemsize
    row = sum(lp.grid.width * lp.segment.pixels * lp.samples * itemsize for lp in stack[0][0])
    return min(row + row // 4, _MAX_SEGMENT_CACHE)


def standalone_jpeg(data: bytes, tables: bytes | None, rgb: bool) -> bytes:
    """A complete JPEG file from a TIFF JPEG tile: tables merged in, RGB colour flagged."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("JPEG data does not start with an SOI marker")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("JPEG data does not end with an EOI marker (truncated?)")
    body = data[2:]
    head = b"\xff\xd8"
    if rgb:
        head += _APP14_RGB
    if tables:
        # tables are an abbreviated JPEG: SOI, DQT/DHT..., EOI; keep what lies between.
        head += tables[2:-2]
    return head + body


def _properties(tif: tifffile.TiffFile, page: Any) -> dict[str, str]:
    props: dict[str, str] = {}
    for name in ("ResolutionUnit", "XResolution", "YResolution"):
        tag = page.tags.get(name)
        if tag is not None:
            value = tag.value
            if isinstance(value, tuple) and len(value) == 2 and value[1]:
                value = value[0] / value[1]
            props[f"tiff.{name}"] = str(int(value) if name == "ResolutionUnit" else value)
    if tif.is_svs:
        props.update(parse_aperio_description(page.description))
    if tif.is_ndpi:
        for key, value in (page.ndpi_tags or {}).items():
            props[f"hamamatsu.{key}"] = str(value)
        if "hamamatsu.Magnification" in props:
            props["hamamatsu.SourceLens"] = props["hamamatsu.Magnification"]
    if tif.is_ome and tif.ome_metadata:
        for key in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeXUnit", "PhysicalSizeYUnit"):
            match = re.search(rf'\b{key}="([^"]+)"', tif.ome_metadata)
            if match:
                props[f"ome.{key}"] = match.group(1)
    return props


def _mpp(tif: tifffile.TiffFile, page: Any, props: dict[str, str]) -> tuple[float, float] | None:
    if tif.is_svs:
        mpp = parse_float(props.get("aperio.MPP"))
        return (mpp, mpp) if mpp else None
    if tif.is_ome:
        x = parse_float(props.get("ome.PhysicalSizeX"))
        y = parse_float(props.get("ome.PhysicalSizeY"))
        units = {props.get("ome.PhysicalSizeXUnit", "µm"), props.get("ome.PhysicalSizeYUnit", "µm")}
        if x and y and units <= {"µm", "um"}:
            return (x, y)
    unit = _UM_PER_UNIT.get(int(props.get("tiff.ResolutionUnit", "0") or 0))
    x_res = parse_float(props.get("tiff.XResolution"))
    y_res = parse_float(props.get("tiff.YResolution"))
    if unit and x_res and y_res:
        return (unit / x_res, unit / y_res)
    return None
