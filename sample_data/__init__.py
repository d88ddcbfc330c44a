"""Deterministic synthetic whole-slide images for tests, demos and benchmarks."""

from __future__ import annotations

from sample_data.synthetic import (
    APERIO_HEADER,
    CANARY_BARCODE,
    CANARY_PATIENT,
    render_tile,
    svs_levels,
    tiff_levels,
    write_svs,
    write_tiff,
)

__all__ = [
    "APERIO_HEADER",
    "CANARY_BARCODE",
    "CANARY_PATIENT",
    "render_tile",
    "svs_levels",
    "tiff_levels",
    "write_svs",
    "write_tiff",
]
