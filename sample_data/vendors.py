"""Small vendor-like TIFF slides: Leica SCN, Ventana BIF and Philips TIFF.

The corpus has no file of these formats, so routing (``tileserver.sources._candidates``) is
tested on files written here. Each writer lays out its IFDs and metadata the way the
vendor does, as far as OpenSlide's detector and reader look (openslide
``src/openslide-vendor-{leica,ventana,philips-tiff}.c``, 4.0.x), and where the vendor keeps
what a generic TIFF reader misses:

- **SCN**: directory 0 is the *macro* (photo of the glass slide); the main image's levels
  follow at 4x steps. Geometry is in nanometres in the ``<scn>`` XML of directory 0; the
  main image sits inside the macro's frame at an offset, so OpenSlide's level 0 is the
  collection's extent (the margin around the scanned area is transparent).
- **BIF**: directory 0 is the ``Label_Image`` (macro) carrying the ``<iScan>`` XMP with
  the magnification and ``ScanRes`` (µm per pixel); then a ``Thumbnail``; then levels
  described ``level=N mag=M quality=Q``, level 0 with an ``<EncodeInfo>`` XMP for one
  area of interest: a grid of camera fields and how they join (with ``overlap`` > 0 they
  share pixels, and every stored level is the unstitched mosaic). Levels are whole tiles.
- **Philips TIFF**: directory 0 is level 0 with a ``<DataObject ObjectType="DPUfsImport">``
  description; the pixel spacing (mm) lives only in that XML (no resolution tags); levels
  at 2x steps are reduced-resolution pages; label and macro are strip pages described
  ``Label`` and ``Macro``.

All are tiled JPEG, deterministic (``render_tile``), and carry the canary identifiers on
their label/macro and in their barcodes, for de-identification tests.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sample_data._associated import make_label
from sample_data.synthetic import (
    CANARY_BARCODE,
    CANARY_PATIENT,
    _check,
    _levels,
    _macro,
    _thumbnail,
    _tiles,
    _workers,
    render_tile,
)

__all__ = ["VENDORS", "write_bif", "write_philips", "write_scn", "write_vendor"]

_XMP = 700  # TIFF tag XMLPacket
_SCN_NS = "http://www.leica-microsystems.com/scn/2010/10/01"
_SCN_MARGIN = 32  # level-0 pixels of empty glass around the SCN main image
# untiled JPEG pages (label, macro, thumbnail); read-only, spread into tifffile's write()
_STRIP: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg", "metadata": None}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def _tiled(tile: int, quality: int) -> dict[str, Any]:
    return {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "dtype": np.uint8,
        "tile": (tile, tile),
        "maxworkers": _workers(),
        "metadata": None,
    }


def _scn_xml(
    width: int, height: int, mpp: float, levels: list[tuple[int, int, int]], macro: np.ndarray
) -> str:
    nm = round(mpp * 1000)  # the XML holds integers: nanometres per level-0 pixel
    coll_w, coll_h = (width + 2 * _SCN_MARGIN) * nm, (height + 2 * _SCN_MARGIN) * nm
    mh, mw = macro.shape[:2]
    dims = "".join(
        f'<dimension sizeX="{w}" sizeY="{h}" sizeZ="1" sizeC="1" r="{i}" ifd="{i + 1}"/>'
        for i, (w, h, _) in enumerate(levels)
    )
    settings = (
        "<scanSettings><objectiveSettings><objective>{obj}</objective></objectiveSettings>"
        "<illuminationSettings><numericalAperture>{na}</numericalAperture>"
        "<illuminationSource>brightfield</illuminationSource></illuminationSettings>"
        "</scanSettings>"
    )
    device = '<device model="Leica SCN400;Leica SCN" version="1.5.1.10864"/>'
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<scn xmlns="{_SCN_NS}">'
        f'<collection name="{CANARY_PATIENT}" uuid="00000000-0000-0000-0000-000000000001" '
        f'sizeX="{coll_w}" sizeY="{coll_h}">'
        f"<barcode>{_b64(CANARY_BARCODE)}</barcode>"
        '<image name="" uuid="00000000-0000-0000-0000-000000000002">'
        f"<creationDate>2024-03-14T09:26:53.00Z</creationDate>{device}"
        f'<pixels sizeX="{mw}" sizeY="{mh}">'
        f'<dimension sizeX="{mw}" sizeY="{mh}" r="0" ifd="0"/></pixels>'
        f'<view sizeX="{coll_w}" sizeY="{coll_h}" offsetX="0" offsetY="0" spacingZ="0"/>'
        + settings.format(obj=1, na="0.02")
        + "</image>"
        '<image name="" uuid="00000000-0000-0000-0000-000000000003">'
        f"<creationDate>2024-03-14T09:26:53.00Z</creationDate>{device}"
        f'<pixels sizeX="{width}" sizeY="{height}">{dims}</pixels>'
        f'<view sizeX="{width * nm}" sizeY="{height * nm}" offsetX="{_SCN_MARGIN * nm}" '
        f'offsetY="{_SCN_MARGIN * nm}" spacingZ="0"/>'
        + settings.format(obj=40, na="0.7")
        + "</image></collection></scn>"
    )


def write_scn(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    tile: int = 256,
    quality: int = 80,
    seed: int = 0,
    mpp: float = 0.25,
) -> Path:
    """Write a Leica-SCN-like slide: macro first, then the main image's 4x pyramid.

    ``mpp * 1000`` must be a whole number of nanometres (the SCN XML holds integers).
    """
    _check(width, height, tile, quality, mpp)
    if abs(mpp * 1000 - round(mpp * 1000)) > 1e-9:
        raise ValueError(f"SCN needs a whole number of nanometres per pixel, not mpp={mpp}")
    path = Path(path)
    levels = _levels(width, height, tile, 4)
    macro = _macro(width, height, seed)
    opts = _tiled(tile, quality)
    res_cm = 1e4 / mpp
    render_tile(0, 0, 16, 16, 1.0, seed)  # compile the kernel before the pool starts
    with tifffile.TiffWriter(path, bigtiff=True) as tif:  # SCN files are BigTIFF
        tif.write(
            macro,
            description=_scn_xml(width, height, mpp, levels, macro),
            software="Leica SCN",
            **opts,
        )
        for w, h, ds in levels:
            tif.write(
                _tiles(w, h, tile, float(ds), seed, None),
                shape=(h, w, 3),
                resolution=(res_cm / ds, res_cm / ds),
                resolutionunit="CENTIMETER",
                **opts,
            )
    return path


def _bif_joints(cols: int, rows: int, overlap: int) -> str:
    """TileJointInfo for a serpentine-numbered grid, each joint overlapping ``overlap`` px."""

    def number(col: int, row: int) -> int:  # Ventana numbers tiles from the bottom row up
        brow = rows - 1 - row
        return brow * cols + (col if brow % 2 == 0 else cols - 1 - col) + 1

    joints = []
    for row in range(rows):
        for col in range(cols):
            for direction, ocol, orow, ox, oy in (
                ("RIGHT", col + 1, row, overlap, 0),
                ("UP", col, row - 1, 0, overlap),
            ):
                if 0 <= ocol < cols and 0 <= orow < rows:
                    joints.append(
                        f'<TileJointInfo FlagJoined="1" Confidence="100" '
                        f'Direction="{direction}" Tile1="{number(col, row)}" '
                        f'Tile2="{number(ocol, orow)}" OverlapX="{ox}" OverlapY="{oy}"/>'
                    )
    return "".join(joints)


def _bif_fields(
    cols: int, rows: int, tile: int, ds: int, step: int, seed: int
) -> Iterator[np.ndarray]:
    """Tiles of the stored level with downsample ``ds``: each is ``ds`` x ``ds`` level-0
    fields (field (c, r) shows the slide from (c * step, r * step)) averaged down."""
    for row in range(rows):
        for col in range(cols):
            block = np.empty((tile * ds, tile * ds, 3), np.uint8)
            for b in range(ds):
                for a in range(ds):
                    x, y = (col * ds + a) * step, (row * ds + b) * step
                    block[b * tile : (b + 1) * tile, a * tile : (a + 1) * tile] = render_tile(
                        x, y, tile, tile, 1.0, seed
                    )
            mean = block.reshape(tile, ds, tile, ds, 3).mean(axis=(1, 3))
            yield np.round(mean).astype(np.uint8)


def write_bif(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    tile: int = 256,
    quality: int = 80,
    seed: int = 0,
    mpp: float = 0.25,
    magnification: int = 40,
    overlap: int = 0,
) -> Path:
    """Write a Ventana-BIF-like slide (label/macro, thumbnail, then ``level=N`` pages).

    Level 0 is a grid of camera fields, at least 2x2 (OpenSlide averages the tile joints,
    so it needs one of each direction): with ``overlap`` > 0 neighbouring fields share that
    many pixels, as a scanner's do, and the stored levels are the unstitched mosaic (the
    reader must place each field by the ``EncodeInfo`` joints). Stitched, the slide covers
    at least ``width`` x ``height``. ``overlap`` > 0 renders every level from level-0
    fields: meant for small files.
    """
    _check(width, height, tile, quality, mpp)
    if not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap must be 0..{tile // 2 - 1} pixels, not {overlap}")
    path = Path(path)
    step = tile - overlap  # level-0 pixels between the origins of neighbouring fields
    cols = max(2, -(-(width - overlap) // step))
    rows = max(2, -(-(height - overlap) // step))
    width, height = cols * tile, rows * tile  # the mosaic as stored
    iscan = (
        '<?xml version="1.0" encoding="utf-8"?><Metadata>'
        f'<iScan BuildVersion="3.3.1.1" UnitNumber="BI10N0000" ScannerModel="VENTANA DP 200" '
        f'Magnification="{magnification}" ScanRes="{mpp}" '
        f'BarCode1D="{CANARY_BARCODE}" SlideAnnotation="{CANARY_PATIENT}" '
        'ScanMode="Normal" FocusMode="Auto" ScanDate="03/14/2024" ScanTime="09:26:53"/>'
        "</Metadata>"
    ).encode("ascii")
    encode_info = (
        '<?xml version="1.0" encoding="utf-8"?><EncodeInfo Ver="2">'
        '<SlideInfo><AoiInfo XIMAGESIZE="0" YIMAGESIZE="0" NumRows="0" NumCols="0" '
        'Pos-X="0" Pos-Y="0"/></SlideInfo>'
        "<SlideStitchInfo>"
        f'<ImageInfo AOIScanned="1" AOIIndex="0" Width="{tile}" Height="{tile}" '
        f'NumRows="{rows}" NumCols="{cols}" Pos-X="0" Pos-Y="0">{_bif_joints(cols, rows, overlap)}'
        "</ImageInfo></SlideStitchInfo>"
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin></EncodeInfo>'
    ).encode("ascii")
    opts = _tiled(tile, quality)
    software = "ScanOutputManager 1.1.0.15854"
    render_tile(0, 0, 16, 16, 1.0, seed)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            _macro(width, height, seed),
            description="Label_Image",
            software=software,
            extratags=[(_XMP, "B", len(iscan), iscan, True)],
            **_STRIP,
        )
        tif.write(_thumbnail(width, height, seed, 1024), description="Thumbnail", **_STRIP)
        # Ventana pads every level to whole tiles
        level = 0
        ds = 1
        while True:
            lcols, lrows = -(-cols // ds), -(-rows // ds)
            extra = [(_XMP, "B", len(encode_info), encode_info, True)] if level == 0 else []
            fields = (
                _bif_fields(lcols, lrows, tile, ds, step, seed)
                if overlap
                else _tiles(lcols * tile, lrows * tile, tile, float(ds), seed, None)
            )
            tif.write(
                fields,
                shape=(lrows * tile, lcols * tile, 3),
                description=f"level={level} mag={magnification / ds:g} quality={quality}",
                extratags=extra,
                **opts,
            )
            if lcols == 1 and lrows == 1:
                break
            level, ds = level + 1, ds * 2
    return path


def _philips_xml(mpp: float, levels: list[tuple[int, int, int]]) -> str:
    def attr(name: str, value: str, pmsvr: str = "IString") -> str:
        return f'<Attribute Name="{name}" PMSVR="{pmsvr}">{value}</Attribute>'

    def spacing(ds: int) -> str:
        mm = f"{mpp * ds / 1000:.9g}"
        return f'"{mm}" "{mm}"'

    reps = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        + attr("DICOM_PIXEL_SPACING", spacing(ds), "IDoubleArray")
        + attr("PIIM_PIXEL_DATA_REPRESENTATION_COLUMNS", str(w), "IUInt32")
        + attr("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", str(i), "IUInt32")
        + attr("PIIM_PIXEL_DATA_REPRESENTATION_ROWS", str(h), "IUInt32")
        + "</DataObject>"
        for i, (w, h, ds) in enumerate(levels)
    )
    derivation = "tiff-useBigTIFF=1-useRgb=0-levels=40,10002,10000,10001-processing=0-q80=-1"
    wsi = (
        '<DataObject ObjectType="DPScannedImage">'
        + attr("DICOM_DERIVATION_DESCRIPTION", derivation)
        + attr("DICOM_PIXEL_SPACING", spacing(1), "IDoubleArray")
        + attr("PIM_DP_IMAGE_TYPE", "WSI")
        + '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        f"<Array>{reps}</Array></Attribute>"
        "</DataObject>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>'
        '<DataObject ObjectType="DPUfsImport">'
        + attr("DICOM_MANUFACTURER", "PHILIPS")
        + attr("DICOM_PATIENT_NAME", CANARY_PATIENT)
        + attr("PIM_DP_UFS_BARCODE", _b64(CANARY_BARCODE))
        + '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray">'
        f"<Array>{wsi}</Array></Attribute>"
        "</DataObject>"
    )


def write_philips(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    tile: int = 256,
    quality: int = 80,
    seed: int = 0,
    mpp: float = 0.25,
) -> Path:
    """Write a Philips-TIFF-like slide: XML on level 0, 2x levels, label and macro pages."""
    _check(width, height, tile, quality, mpp)
    path = Path(path)
    levels = _levels(width, height, tile, 2)
    opts = _tiled(tile, quality)
    render_tile(0, 0, 16, 16, 1.0, seed)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, (w, h, ds) in enumerate(levels):
            first: dict[str, Any] = (
                {"description": _philips_xml(mpp, levels), "software": "Philips DP v1.0"}
                if i == 0
                else {"subfiletype": 1, "description": f"level={i}"}
            )
            tif.write(_tiles(w, h, tile, float(ds), seed, None), shape=(h, w, 3), **first, **opts)
        tif.write(make_label(CANARY_PATIENT, CANARY_BARCODE), description="Label", **_STRIP)
        tif.write(_macro(width, height, seed), description="Macro", **_STRIP)
    return path


# CLI format name -> writer; every writer takes (path, width, height, tile=, quality=,
# seed=, mpp=).
VENDORS = {"scn": write_scn, "bif": write_bif, "philips": write_philips}


def write_vendor(
    fmt: str, path: str | os.PathLike[str], width: int, height: int, **kwargs: Any
) -> Path:
    """Write the vendor-like slide ``fmt`` (a key of ``VENDORS``)."""
    if fmt not in VENDORS:
        raise ValueError(f"unknown vendor format {fmt!r}; choose from {sorted(VENDORS)}")
    return VENDORS[fmt](path, width, height, **kwargs)
