"""Slide sources: one interface (``SlideSource``) over OpenSlide and tifffile.

``open_slide`` picks the backend: tifffile first for TIFF files (it can hand out stored
JPEG tiles for copying), OpenSlide for everything else and for NDPI (it synthesises more
levels). ``backend=`` overrides the choice.
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
from tileserver.sources.openslide import OpenSlideSource
from tileserver.sources.tifffile import TiffSource, is_tiff

# Each backend opens a path, or raises UnsupportedFormat when the file is not its kind.
BACKENDS: dict[str, Callable[[Path], SlideSource]] = {
    "tifffile": TiffSource,
    "openslide": OpenSlideSource,
}

__all__ = ["BACKENDS", "Level", "RawTile", "SlideInfo", "SlideSource", "open_slide"]


def _candidates(path: Path) -> tuple[str, ...]:
    if is_tiff(path) and path.suffix.lower() != ".ndpi":
        return ("tifffile", "openslide")
    return ("openslide", "tifffile")


def open_slide(path: str | Path, backend: str = "auto") -> SlideSource:
    """Open a slide file with the named backend, or the first that reads it (``auto``)."""
    path = Path(path)
    if not path.exists():
        raise SlideNotFound(f"{path.name}: no such file")
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
