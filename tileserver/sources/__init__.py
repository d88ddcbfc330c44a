"""Slide sources: one interface (``SlideSource``) over OpenSlide, tifffile and wsidicom.

``open_slide`` picks the backend (``backend=`` overrides it). DICOM files (and folders
holding a DICOM series) go to wsidicom first (``dicom.py``: the whole series, true colours).
Other non-TIFF files go to OpenSlide first. A TIFF file is routed on the vendor
OpenSlide's detector names for it (``detect_vendor``, header and metadata only):

- ``aperio`` (SVS) and ``generic-tiff``, and TIFFs OpenSlide does not claim (OME-TIFF,
  QPTIFF, plain or strip TIFF): **tifffile first**. tifffile reads these as their writers
  meant (SVS: baseline pyramid, label, macro, thumbnail, MPP from the description; OME:
  SubIFD pyramids OpenSlide does not see) and can hand out stored JPEG tiles for copying
  without re-encoding.
- every other vendor, OpenSlide first: tifffile would convert the wrong image or lose
  the geometry. Evidence, from ``sample_data.vendors`` files laid out as the vendors do
  (tifffile 2026.3, OpenSlide 4.0.1; tests/sources/test_routing.py):
  ``leica`` (SCN): tifffile's first series is the macro (1280x431 photo of the glass),
  so the macro would be converted as the slide, and the MPP is lost; OpenSlide gives the
  main image placed in the collection's frame, its MPP and the macro as associated.
  ``ventana`` (BIF): tifffile shows the stored mosaic of camera fields unstitched (with
  16-px overlaps, level 0 is off by a mean 28 grey levels from the third field on, where
  OpenSlide, placing fields by the ``EncodeInfo`` joints, is within JPEG error), reports
  level sizes that disagree with level 0 (1.58x for a 2x level), and loses the MPP
  (``ScanRes`` in the XMP). ``philips`` (Philips TIFF): tifffile reads the pixels
  but loses the MPP, which is only in the XML (``DICOM_PIXEL_SPACING``).
  ``hamamatsu`` (NDPI): OpenSlide synthesises more levels from the JPEG restart markers.
  ``trestle`` and any vendor OpenSlide adds later: its reader knows the layout, tifffile's
  generic one does not.
  tifffile stays the fallback for all of them (a file OpenSlide names but cannot open).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tileserver.errors import (
    CorruptSlide,
    SlideError,
    SlideNotFound,
    UnsupportedFeature,
    UnsupportedFormat,
)
from tileserver.sources.base import Level, RawTile, SlideInfo, SlideSource
from tileserver.sources.dicom_files import holds_dicom, is_dicom
from tileserver.sources.openslide import OpenSlideSource, detect_vendor
from tileserver.sources.tifffile import TiffSource, is_tiff


def _open_dicom(path: Path) -> SlideSource:
    # wsidicom and pydicom are imported only when a DICOM slide is opened (dicom_files.py).
    from tileserver.sources.dicom import DicomSource

    return DicomSource(path)


# Each backend opens a path, or raises UnsupportedFormat when the file is not its kind.
BACKENDS: dict[str, Callable[[Path], SlideSource]] = {
    "tifffile": TiffSource,
    "openslide": OpenSlideSource,
    "dicom": _open_dicom,
}

__all__ = ["BACKENDS", "Level", "RawTile", "SlideInfo", "SlideSource", "open_slide"]


# OpenSlide vendors whose TIFF files tifffile reads right (see the module docstring).
TIFFFILE_VENDORS = frozenset({"aperio", "generic-tiff"})


def _candidates(path: Path) -> tuple[str, ...]:
    if is_dicom(path):
        # wsidicom reads the whole series, decodes JPEG frames in their true colours and
        # reads what OpenSlide refuses; its refusals of VL WSI files are final (typed).
        return ("dicom", "openslide")
    if is_tiff(path):
        vendor = detect_vendor(path)
        if vendor is None or vendor in TIFFFILE_VENDORS:
            return ("tifffile", "openslide")
    return ("openslide", "tifffile")


def open_slide(path: str | Path, backend: str = "auto") -> SlideSource:
    """Open a slide file with the named backend, or the first that reads it (``auto``).
    A folder holding a DICOM series opens as that series."""
    path = Path(path)
    if not path.exists():
        raise SlideNotFound(f"{path.name}: no such file")
    if path.is_dir() and backend in ("auto", "dicom") and holds_dicom(path):
        return _open_dicom(path)
    if not path.is_file():
        raise UnsupportedFormat(f"{path.name}: not a regular file")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
        return BACKENDS[backend](path)
    errors: list[SlideError] = []
    for name in _candidates(path):
        try:
            return BACKENDS[name](path)
        except (UnsupportedFeature, CorruptSlide):
            raise
        except UnsupportedFormat as exc:
            errors.append(exc)
    reasons = "; ".join(str(e).removeprefix(f"{path.name}: ") for e in errors)
    raise UnsupportedFormat(f"{path.name}: unsupported slide format ({reasons})")
