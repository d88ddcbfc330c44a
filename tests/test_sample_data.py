"""Tests for the deterministic synthetic slide generator in ``sample_data``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from sample_data import (
    CANARY_BARCODE,
    CANARY_PATIENT,
    render_tile,
    svs_levels,
    tiff_levels,
    write_svs,
    write_tiff,
)
from sample_data.__main__ import main

SVS_SIZE = (3000, 2000)
TIFF_SIZE = (1500, 1100)
MPP = 0.25


def _tissue(img: np.ndarray) -> np.ndarray:
    return img.min(axis=-1) < 230


def _tissue_point(seed: int = 0, ds: float = 20.0) -> tuple[int, int]:
    """Level-0 (x, y) of a pixel deep inside tissue in the top-left 4000 x 4000 region."""
    overview = render_tile(0, 0, 200, 200, ds, seed)
    inside = _tissue(overview)
    inside[:3] = inside[-3:] = False
    inside[:, :3] = inside[:, -3:] = False
    for dy in (-2, 2):  # require a margin of tissue around the point
        inside &= np.roll(_tissue(overview), dy, axis=0)
        inside &= np.roll(_tissue(overview), dy, axis=1)
    ys, xs = np.nonzero(inside)
    assert ys.size, "no tissue in the top-left region"
    return int(xs[ys.size // 2] * ds), int(ys[ys.size // 2] * ds)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _read(slide: openslide.OpenSlide, x: int, y: int, level: int, size: tuple[int, int]):
    return np.asarray(slide.read_region((x, y), level, size).convert("RGB"))


# --------------------------------------------------------------------------- render_tile


def test_render_tile_shape_and_determinism() -> None:
    a = render_tile(100, 200, 64, 48, 1.0, seed=3)
    b = render_tile(100, 200, 64, 48, 1.0, seed=3)
    assert a.shape == (48, 64, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a, b)
    x, y = _tissue_point(seed=3)
    tile = render_tile(x, y, 128, 128, seed=3)
    assert not np.array_equal(tile, render_tile(x, y, 128, 128, seed=4))
    with pytest.raises(ValueError):
        render_tile(0, 0, 0, 10)
    with pytest.raises(ValueError):
        render_tile(0, 0, 10, 10, downsample=0)


@pytest.mark.parametrize("downsample", [1.0, 4.0, 16.0])
def test_render_tile_is_seamless(downsample: float) -> None:
    x, y = _tissue_point()
    x, y = int(x / downsample) - 100, int(y / downsample) - 80
    union = render_tile(x, y, 200, 160, downsample)
    left = render_tile(x, y, 100, 160, downsample)
    right = render_tile(x + 100, y, 100, 160, downsample)
    assert np.array_equal(np.hstack([left, right]), union)
    top = render_tile(x, y, 200, 80, downsample)
    bottom = render_tile(x, y + 80, 200, 80, downsample)
    assert np.array_equal(np.vstack([top, bottom]), union)
    assert _tissue(union).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_fraction_and_white_background(seed: int) -> None:
    overview = render_tile(0, 0, 500, 500, 100.0, seed)  # a 50k x 50k slide at 1/100
    tissue = _tissue(overview).mean()
    assert 0.25 <= tissue <= 0.55
    white = (overview == 255).all(axis=-1).mean()
    assert white > 0.3
    # H&E colours: tissue is pink/purple (red and blue above green)
    px = overview[_tissue(overview)].astype(int)
    assert (px[:, 0] > px[:, 1]).mean() > 0.95
    assert (px[:, 2] > px[:, 1]).mean() > 0.95


def test_uniform_white_tiles_and_nuclei_exist() -> None:
    overview = render_tile(0, 0, 200, 200, 20.0, 0)
    blank = np.argwhere((overview == 255).all(axis=-1))
    by, bx = blank[len(blank) // 2]
    tile = render_tile(int(bx * 20) - 32, int(by * 20) - 32, 64, 64)
    # a white overview pixel may still be near an edge; search a few candidates
    candidates = [tile] + [
        render_tile(int(x * 20) - 32, int(y * 20) - 32, 64, 64) for y, x in blank[::97][:20]
    ]
    assert any((t == 255).all() for t in candidates)
    region = render_tile(0, 0, 2000, 2000).astype(int)
    dark = (region.sum(axis=-1) < 350) & (region[..., 2] > region[..., 1] + 30)
    ratio = dark.sum() / _tissue(region).sum()
    assert 0.03 < ratio < 0.4  # hematoxylin nuclei scattered in the stroma


# --------------------------------------------------------------------------- SVS


@pytest.fixture(scope="module")
def svs_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svs") / "synthetic.svs"
    assert write_svs(path, *SVS_SIZE, mpp=MPP, seed=0) == path
    return path


def test_svs_opens_as_aperio(svs_path: Path) -> None:
    with openslide.OpenSlide(svs_path) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert props["aperio.Filename"] == CANARY_PATIENT
        assert props["aperio.Barcode"] == CANARY_BARCODE
        assert slide.dimensions == SVS_SIZE
        levels = svs_levels(*SVS_SIZE)
        assert len(levels) == 2
        assert slide.level_count == len(levels)
        assert slide.level_dimensions == tuple((w, h) for w, h, _ in levels)
        assert slide.level_downsamples == pytest.approx([4.0**i for i in range(len(levels))])
        assoc = slide.associated_images
        assert {"thumbnail", "label", "macro"} <= set(assoc)
        assert max(assoc["thumbnail"].size) == 1024
        assert assoc["label"].size == (387, 463)
        assert assoc["macro"].size == (1280, 431)
        label = np.asarray(assoc["label"].convert("RGB"))
        assert (label.min(axis=-1) < 60).mean() > 0.03  # black text and stripes
        assert (label == 255).all(axis=-1).mean() > 0.5  # on white


def test_svs_pixels_match_render_tile(svs_path: Path) -> None:
    x, y = _tissue_point()
    x, y = min(x, SVS_SIZE[0] - 400), min(y, SVS_SIZE[1] - 300)
    with openslide.OpenSlide(svs_path) as slide:
        got = _read(slide, x, y, 0, (400, 300))
        want = render_tile(x, y, 400, 300)
        assert _tissue(want).mean() > 0.5
        # JPEG Q=80 with 2x2 chroma subsampling on dense nuclei: a few grey levels off
        assert _mean_abs_diff(got, want) < 6.0
        whole = _read(slide, 0, 0, 0, SVS_SIZE)
        assert _mean_abs_diff(whole, render_tile(0, 0, *SVS_SIZE)) < 3.0
        low = _read(slide, 0, 0, 1, slide.level_dimensions[1])
        assert _mean_abs_diff(low, render_tile(0, 0, *slide.level_dimensions[1], 4.0)) < 3.0
        thumb = np.asarray(slide.associated_images["thumbnail"].convert("RGB"))
        ds = max(SVS_SIZE) / 1024
        assert _mean_abs_diff(thumb, render_tile(0, 0, thumb.shape[1], thumb.shape[0], ds)) < 3


def test_svs_tifffile_layout(svs_path: Path) -> None:
    with tifffile.TiffFile(svs_path) as tif:
        assert tif.is_svs
        pages = tif.pages
        assert pages[0].is_tiled and pages[0].tilewidth == 240
        assert not pages[1].is_tiled  # thumbnail
        assert pages[2].is_tiled and pages[2].shape[:2] == (500, 750)
        assert pages[-2].description.endswith("label 387x463")
        assert pages[-2].subfiletype == 1
        assert pages[-1].description.endswith("macro 1280x431")
        assert pages[-1].subfiletype == 9
        desc = pages[0].description
        assert desc.startswith("Aperio Image Library")
        assert "MPP = 0.25" in desc and "AppMag = 40" in desc
    data = svs_path.read_bytes()
    assert CANARY_PATIENT.encode() in data
    assert CANARY_BARCODE.encode() in data


def test_svs_is_reproducible(svs_path: Path, tmp_path: Path) -> None:
    again = write_svs(tmp_path / "again.svs", *SVS_SIZE, mpp=MPP, seed=0)
    assert again.read_bytes() == svs_path.read_bytes()


# --------------------------------------------------------------------------- TIFF / OME-TIFF


def test_generic_tiff_lossless(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "g.tif", *TIFF_SIZE, mpp=MPP, compression="zlib")
    levels = tiff_levels(*TIFF_SIZE)
    assert [ds for _, _, ds in levels] == [1, 2, 4]
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)
        assert slide.level_dimensions == tuple((w, h) for w, h, _ in levels)
        for level, (w, h, ds) in enumerate(levels):
            assert np.array_equal(_read(slide, 0, 0, level, (w, h)), render_tile(0, 0, w, h, ds))
    with tifffile.TiffFile(path) as tif:
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1]
        assert all(p.is_tiled for p in tif.pages)


def test_generic_tiff_jpeg(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "j.tif", *TIFF_SIZE, mpp=0.5, tile=128, quality=90)
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert slide.level_count == len(tiff_levels(*TIFF_SIZE, tile=128))
        got = _read(slide, 0, 0, 0, TIFF_SIZE)
        assert _mean_abs_diff(got, render_tile(0, 0, *TIFF_SIZE)) < 3.0


def test_ome_tiff(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "o.ome.tif", *TIFF_SIZE, mpp=MPP, ome=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert len(tif.pages) == 1  # pyramid lives in SubIFDs
        series = tif.series[0]
        levels = tiff_levels(*TIFF_SIZE)
        assert [lv.shape for lv in series.levels] == [(h, w, 3) for w, h, _ in levels]
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
        assert 'PhysicalSizeXUnit="µm"' in tif.ome_metadata
        low = series.levels[1].asarray()
        w, h, ds = levels[1]
        assert _mean_abs_diff(low, render_tile(0, 0, w, h, ds)) < 3.0


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_svs(tmp_path / "x.svs", 100, 100, tile=100)
    with pytest.raises(ValueError):
        write_tiff(tmp_path / "x.tif", 0, 100)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_and_prints_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.svs"
    assert main(["svs", str(out), "--size", "1200x900", "--seed", "5", "--quality", "70"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with openslide.OpenSlide(out) as slide:
        assert slide.dimensions == (1200, 900)
        assert "Q=70" in slide.properties["tiff.ImageDescription"]
    out = tmp_path / "cli.ome.tif"
    assert main(["ome-tiff", str(out), "--size", "700x500", "--tile", "128"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].tilewidth == 128
    with pytest.raises(SystemExit):
        main(["svs", str(out), "--size", "12x"])


# --------------------------------------------------------------------------- memory bound


def test_large_svs_has_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS of a child writing a 20k x 20k SVS. VmHWM, not ru_maxrss: ru_maxrss survives
    fork+exec, so a child of a big pytest process would report its parent's size."""
    path = tmp_path / "big.svs"
    code = textwrap.dedent(
        f"""
        import re
        from sample_data import write_svs
        write_svs({str(path)!r}, 20000, 20000)
        status = open("/proc/self/status").read()
        print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    child_peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert child_peak_mb < 600
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (20000, 20000)
        assert slide.level_count == 4


# --------------------------------------------------------------------------- vendor-like TIFFs


@pytest.mark.parametrize(
    ("fmt", "vendor", "barcode_property"),
    [
        ("scn", "leica", "openslide.barcode"),
        ("bif", "ventana", "ventana.BarCode1D"),
        ("philips", "philips", "openslide.barcode"),
    ],
)
def test_vendor_files_open_in_openslide_as_that_vendor(
    tmp_path: Path, fmt: str, vendor: str, barcode_property: str
) -> None:
    from sample_data.vendors import write_vendor

    path = write_vendor(fmt, tmp_path / f"a.{fmt}", 1100, 600, mpp=0.5, seed=3)
    again = write_vendor(fmt, tmp_path / f"b.{fmt}", 1100, 600, mpp=0.5, seed=3)
    assert path.read_bytes() == again.read_bytes()  # deterministic
    assert openslide.OpenSlide.detect_format(str(path)) == vendor
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == vendor
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert slide.properties[barcode_property] == CANARY_BARCODE
        assert "macro" in slide.associated_images
        w, h = slide.dimensions
        assert w >= 1100 and h >= 600
        assert slide.level_count >= 2
        # the main image has tissue texture, the lowest level decodes
        smallest = _read(slide, 0, 0, slide.level_count - 1, slide.level_dimensions[-1])
        assert _tissue(smallest).any()


def test_cli_writes_vendor_files(tmp_path: Path) -> None:
    out = tmp_path / "cli.philips"
    assert main(["philips", str(out), "--size", "600x500", "--seed", "2"]) == 0
    assert openslide.OpenSlide.detect_format(str(out)) == "philips"
    assert main(["scn", str(tmp_path / "x.scn"), "--size", "600x500", "--icc"]) == 2
    # SCN's XML holds whole nanometres per pixel
    assert main(["scn", str(tmp_path / "y.scn"), "--size", "600x500", "--mpp", "0.2505"]) == 2
