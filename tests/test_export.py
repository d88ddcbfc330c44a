"""``tileserver export --dicom``: the series reopened by real readers (wsidicom, OpenSlide,
pydicom), its pixels compared with the store's, de-identification, the round trip through
``convert``, and bad input."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from pydicom.encaps import get_frame
from wsidicom import WsiDicom

from tests.cli import cli
from tests.corpus import require_corpus
from tileserver.export import export_dicom, level_file
from tileserver.geometry import Region, Size
from tileserver.library import SlideLibrary, StorePyramid
from tileserver.protocols.dicom import (
    DEIDENTIFIED_EMPTY,
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    jpeg_photometric,
)
from tileserver.render.encode import encode_jpeg_as
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id
from tileserver.sources.codestreams import jpeg_declared
from tileserver.store.layout import StoreLayout, pyramid_sizes
from tileserver.store.local import LocalObjects
from tileserver.store.writer import StoreWriter

CASE = "CASE-77"
ORG_ROOT = "1.2.826.0.1.3680043.10.999"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    assert cli(home, "keys", "init").returncode == 0
    return home


def convert(home: Path, slide: Path, out: Path, *flags: str) -> str:
    proc = cli(home, "convert", "--quiet", str(slide), "--out", str(out), *flags)
    assert proc.returncode == 0, proc.stderr
    slide_id = proc.stdout.split(":")[1].split()[0]
    assert is_slide_id(slide_id), proc.stdout
    return slide_id


def export(home: Path, store: Path, slide_id: str, out: Path, *flags: str) -> str:
    proc = cli(home, "export", slide_id, "--store", str(store), "--dicom", str(out), *flags)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def open_store(home: Path, store: Path, slide_id: str) -> StorePyramid:
    pyramid = SlideLibrary(store, sources=False, keyring=KeyRing(home)).get(slide_id)
    assert isinstance(pyramid, StorePyramid)
    return pyramid


def whole_level(pyramid: StorePyramid, level: int) -> np.ndarray:
    size = pyramid.levels[level]
    return pyramid.reader.read_region(level, Region(0, 0, size.width, size.height))


@pytest.fixture(scope="module")
def jpeg_store(
    home: Path, synthetic_svs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("jpeg-stores")
    slide_id = convert(home, synthetic_svs, store)
    proc = cli(home, "slides", "assign", CASE, slide_id)
    assert proc.returncode == 0, proc.stderr
    return store, slide_id


@pytest.fixture(scope="module")
def exported(
    home: Path, jpeg_store: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    store, slide_id = jpeg_store
    out = tmp_path_factory.mktemp("export") / "series"
    stdout = export(home, store, slide_id, out, "--quiet")
    assert "de-identified" in stdout
    return out


def test_jpeg_export_reads_back_in_wsidicom(
    home: Path, jpeg_store: tuple[Path, str], exported: Path
) -> None:
    pyramid = open_store(home, *jpeg_store)
    with WsiDicom.open(exported) as wsi:
        assert len(wsi.levels) == len(pyramid.levels)
        assert (wsi.size.width, wsi.size.height) == pyramid.levels[0]
        assert wsi.mpp.width == pytest.approx(0.25)
        for level in (0, 2):
            size = pyramid.levels[level]
            image = wsi.read_region((0, 0), level, (size.width, size.height))
            # Frames are the stored JPEG bytes: the same decoder gives the same pixels.
            assert np.array_equal(np.asarray(image.convert("RGB")), whole_level(pyramid, level))


def test_jpeg_export_reads_back_in_openslide(
    home: Path, jpeg_store: tuple[Path, str], exported: Path
) -> None:
    pyramid = open_store(home, *jpeg_store)
    with openslide.OpenSlide(exported / level_file(0)) as slide:
        assert slide.properties["openslide.vendor"] == "dicom"
        assert slide.level_dimensions == tuple(tuple(s) for s in pyramid.levels)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        for level, size in enumerate(slide.level_dimensions):
            pixels = np.asarray(slide.read_region((0, 0), level, size).convert("RGB"))
            assert np.array_equal(pixels, whole_level(pyramid, level)), level


def test_frames_are_the_stored_chunks(
    home: Path, jpeg_store: tuple[Path, str], exported: Path
) -> None:
    """Copied, not re-encoded: every stored chunk is its frame byte for byte (background
    chunks, never stored, are a full-size white frame)."""
    pyramid = open_store(home, *jpeg_store)
    stored = background = 0
    for level in range(len(pyramid.levels)):
        ds = pydicom.dcmread(exported / level_file(level))
        assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
        grid = pyramid.reader.layout.grid(level)
        assert ds.NumberOfFrames == grid.pixels
        tables = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        lengths = struct.unpack(f"<{grid.pixels}Q", ds.ExtendedOffsetTableLengths)
        raw = grid.pixels * pyramid.tile**2 * 3
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(raw / sum(lengths), 0.01)
        for i in range(grid.pixels):
            frame = get_frame(
                ds.PixelData, i, number_of_frames=grid.pixels, extended_offsets=tables
            )
            chunk = pyramid.chunk_bytes(level, i % grid.width, i // grid.width)
            declared = jpeg_declared(frame)
            assert (declared.width, declared.height) == (pyramid.tile, pyramid.tile)
            assert jpeg_photometric(frame) == ds.PhotometricInterpretation
            if chunk is None:
                background += 1
                assert np.asarray(pyramid.reader.decode(level, 0, 0, frame)).min() >= 250
            else:
                stored += 1
                assert frame.rstrip(b"\x00") == chunk.rstrip(b"\x00")
    assert stored > 0 and background > 0  # white corners: both kinds were checked


def test_files_are_private(exported: Path) -> None:
    assert stat.S_IMODE(exported.stat().st_mode) == 0o700
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(level_file(level) for level in range(len(names)))
    for path in exported.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_deidentified_by_default(exported: Path) -> None:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(exported.iterdir())]
    for ds in datasets:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        for name in DEIDENTIFIED_EMPTY:
            assert ds[name].value in ("", None), name
        assert CASE.encode() not in (exported / level_file(ds.InstanceNumber - 1)).read_bytes()
    # One study, one series, one frame of reference; an instance per level, in order.
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[name].value for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(datasets) + 1))


def test_identified_export_carries_the_case(
    home: Path, jpeg_store: tuple[Path, str], tmp_path: Path, exported: Path
) -> None:
    store, slide_id = jpeg_store
    out = tmp_path / "identified"
    assert "identified" in export(home, store, slide_id, out, "--identified", "--quiet")
    ds = pydicom.dcmread(out / level_file(0), stop_before_pixels=True)
    assert ds.AccessionNumber == CASE
    assert "PatientIdentityRemoved" not in ds
    # The same UIDs as the de-identified export: derived from the slide ID alone.
    plain = pydicom.dcmread(exported / level_file(0), stop_before_pixels=True)
    assert (ds.StudyInstanceUID, ds.SOPInstanceUID) == (
        plain.StudyInstanceUID,
        plain.SOPInstanceUID,
    )


def test_exports_are_audited(home: Path, jpeg_store: tuple[Path, str], exported: Path) -> None:
    records = [
        json.loads(line) for line in (home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    exports = [r for r in records if r["event_id"] == 110106 and r["object"] == jpeg_store[1]]
    assert exports, records[-3:]
    first = exports[0]
    assert first["outcome"] == 0 and first["detail"]["format"] == "dicom"
    assert first["detail"]["to"] == str(exported.resolve())


def test_uid_root(
    home: Path, jpeg_store: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, slide_id = jpeg_store
    export(home, store, slide_id, tmp_path / "org", "--uid-root", ORG_ROOT, "--quiet")
    studies = set()
    for path in (tmp_path / "org").iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies.add(ds.StudyInstanceUID)
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith(ORG_ROOT + ".") and len(uid) <= 64
    # The server's setting is the default, so served and exported UIDs agree.
    monkeypatch.setenv("TILESERVER_DICOM_UID_ROOT", ORG_ROOT)
    export(home, store, slide_id, tmp_path / "env", "--quiet")
    ds = pydicom.dcmread(tmp_path / "env" / level_file(0), stop_before_pixels=True)
    assert studies == {ds.StudyInstanceUID}


def test_round_trip_through_convert(
    home: Path, jpeg_store: tuple[Path, str], exported: Path, tmp_path: Path
) -> None:
    """The exported series converts back (OpenSlide reads the whole series from the
    folder); lossless chunks keep the pixels the original store serves."""
    original = open_store(home, *jpeg_store)
    slide_id = convert(home, exported / level_file(0), tmp_path, "--codec", "zstd")
    again = open_store(home, tmp_path, slide_id)
    assert again.levels[0] == original.levels[0]
    assert again.metadata["mpp"] == pytest.approx([0.25, 0.25])
    assert np.array_equal(whole_level(again, 0), whole_level(original, 0))


def test_zstd_store_exports_native_frames(home: Path, synthetic_tiff: Path, tmp_path: Path) -> None:
    store = tmp_path / "stores"
    slide_id = convert(home, synthetic_tiff, store, "--codec", "zstd")
    pyramid = open_store(home, store, slide_id)
    out = tmp_path / "series"
    export(home, store, slide_id, out)
    ds = pydicom.dcmread(out / level_file(0), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert (ds.PhotometricInterpretation, ds.LossyImageCompression) == ("RGB", "00")
    with WsiDicom.open(out) as wsi:
        for level in (0, 1):
            size = pyramid.levels[level]
            image = wsi.read_region((0, 0), level, (size.width, size.height))
            assert np.array_equal(np.asarray(image.convert("RGB")), whole_level(pyramid, level))
    with openslide.OpenSlide(out / level_file(0)) as slide:
        for level, dims in enumerate(slide.level_dimensions):
            pixels = np.asarray(slide.read_region((0, 0), level, dims).convert("RGB"))
            assert np.array_equal(pixels, whole_level(pyramid, level)), level


def test_chunks_in_another_colour_model_are_reencoded(tmp_path: Path) -> None:
    """A level whose chunks mix RGB and YCbCr JPEGs (copied source tiles next to chunks the
    converter encoded) declares its first chunk's model; the others are re-encoded to it,
    so OpenSlide shows every frame in its true colours."""
    slide_id = secrets.token_hex(16)
    tile = 32
    layout = StoreLayout(slide_id, pyramid_sizes(Size(64, 64), tile), tile, "jpeg", 90)
    objects = LocalObjects(tmp_path / "stores" / slide_id)
    writer = StoreWriter.create(objects, layout, {"mpp": [0.5, 0.5]}, None)
    rng = np.random.default_rng(4)
    colours = [(200, 30, 60), (20, 160, 90), (40, 60, 210)]
    models = ["RGB", "YBR_FULL_422", "YBR_FULL"]
    expected = np.full((64, 64, 3), 255, np.uint8)
    for i, (colour, model) in enumerate(zip(colours, models, strict=True)):
        t_col, t_row = i % 2, i // 2  # chunk (1, 1) stays background
        pixels = np.clip(rng.normal(colour, 6, (tile, tile, 3)), 0, 255).astype(np.uint8)
        writer.write_chunk(0, t_col, t_row, encode_jpeg_as(pixels, model, 95))
        expected[t_row * tile : (t_row + 1) * tile, t_col * tile : (t_col + 1) * tile] = pixels
    writer.end_row(0, 0)
    writer.end_row(0, 1)
    small = expected.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    writer.write_chunk(1, 0, 0, encode_jpeg_as(small, "YBR_FULL_422", 95))
    writer.end_row(1, 0)
    assert writer.finish({"slide_id": slide_id})
    pyramid = StorePyramid(objects, slide_id, None)
    counts = export_dicom(pyramid, tmp_path / "series")
    assert counts == {"files": 2, "frames": 5, "copied": 2}  # RGB chunk and level 1's
    ds = pydicom.dcmread(tmp_path / "series" / level_file(0), stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "RGB"
    with openslide.OpenSlide(tmp_path / "series" / level_file(0)) as slide:
        pixels = np.asarray(slide.read_region((0, 0), 0, (64, 64)).convert("RGB"))
    assert np.abs(pixels.astype(int) - expected).mean() < 4
    for i, colour in enumerate(colours):  # a false-colour frame would miss by ~100
        t_col, t_row = i % 2, i // 2
        block = pixels[t_row * tile : (t_row + 1) * tile, t_col * tile : (t_col + 1) * tile]
        assert np.abs(block.reshape(-1, 3).mean(axis=0) - colour).max() < 6


# -- bad input ----------------------------------------------------------------------------


def test_unknown_slide_is_one_line(
    home: Path, jpeg_store: tuple[Path, str], tmp_path: Path
) -> None:
    store, _ = jpeg_store
    for slide_id in ("f" * 32, "../../etc", "not-a-slide"):
        out = tmp_path / "never"
        proc = cli(home, "export", slide_id, "--store", str(store), "--dicom", str(out))
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "no such slide" in proc.stderr, proc.stderr
        assert not out.exists()


def test_non_empty_directory_is_refused(
    home: Path, jpeg_store: tuple[Path, str], tmp_path: Path
) -> None:
    store, slide_id = jpeg_store
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli(home, "export", slide_id, "--store", str(store), "--dicom", str(out))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not an empty directory" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    proc = cli(home, "export", slide_id, "--store", str(store), "--dicom", str(tmp_path / "file"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def test_bad_uid_root_is_one_line(home: Path, jpeg_store: tuple[Path, str], tmp_path: Path) -> None:
    store, slide_id = jpeg_store
    for root in ("1.02.3", "abc", "1." * 25 + "1"):
        out = tmp_path / "never"
        proc = cli(
            home, "export", slide_id, "--store", str(store), "--dicom", str(out), "--uid-root", root
        )
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "--uid-root" in proc.stderr, proc.stderr
        assert not out.exists()


# -- the real-slide corpus ------------------------------------------------------------------


@pytest.mark.slides
def test_aperio_rgb_jpeg_tiles_keep_their_colours(home: Path, tmp_path: Path) -> None:
    """CMU-1-Small-Region's tiles are RGB JPEGs (Adobe transform 0): declared YCbCr they
    would show in false colours (issue 15). OpenSlide shows the store's pixels exactly."""
    slide = require_corpus() / "svs" / "CMU-1-Small-Region.svs"
    store = tmp_path / "stores"
    slide_id = convert(home, slide, store)
    pyramid = open_store(home, store, slide_id)
    out = tmp_path / "series"
    export(home, store, slide_id, out)
    level0 = pydicom.dcmread(out / level_file(0), stop_before_pixels=True)
    assert level0.PhotometricInterpretation == "RGB"
    with openslide.OpenSlide(out / level_file(0)) as converted:
        for level, size in enumerate(converted.level_dimensions):
            pixels = np.asarray(converted.read_region((0, 0), level, size).convert("RGB"))
            assert np.array_equal(pixels, whole_level(pyramid, level)), level
    with openslide.OpenSlide(slide) as source:  # and they are the slide's own colours
        region = np.asarray(source.read_region((0, 0), 0, (480, 480)).convert("RGB"))
    assert np.abs(region.astype(int) - whole_level(pyramid, 0)[:480, :480]).max() <= 2


def test_dciodvfy_finds_no_errors(
    home: Path, exported: Path, synthetic_tiff: Path, tmp_path: Path
) -> None:
    """dicom3tools' IOD validator (an independent reading of PS3.3) on a JPEG series and a
    native identified one: no errors. Its warnings are DICOMDIR hints (patient ID, study date:
    empty on purpose) and the Extended Offset Table's OV, which this version predates."""
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        raise RuntimeError("dciodvfy not found: run scripts/setup-services.sh")
    store = tmp_path / "stores"
    slide_id = convert(home, synthetic_tiff, store, "--codec", "zstd")
    native = tmp_path / "native"
    export(home, store, slide_id, native, "--identified", "--uid-root", ORG_ROOT)
    files = sorted(exported.iterdir()) + sorted(native.iterdir())
    for path in files:
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        assert "VLWholeSlideMicroscopyImage" in report, report
        assert "Error" not in report, report


def test_a_failed_export_leaves_nothing(
    home: Path, jpeg_store: tuple[Path, str], tmp_path: Path
) -> None:
    """A chunk that fails authentication half-way through level 0: one line, exit 1, no
    files and no directory left, and the audit trail records the failure."""
    store, slide_id = jpeg_store
    copy = tmp_path / "stores"
    shutil.copytree(store / slide_id, copy / slide_id)
    shard = copy / slide_id / "0" / "c.0.0.0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x01  # inside the last chunk's seal
    shard.write_bytes(bytes(data))
    out = tmp_path / "series"
    proc = cli(home, "export", slide_id, "--store", str(copy), "--dicom", str(out), "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and slide_id in proc.stderr, proc.stderr
    assert not out.exists()
    records = [
        json.loads(line) for line in (home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    last = [r for r in records if r["event_id"] == 110106][-1]
    assert (last["object"], last["outcome"]) == (slide_id, 4)
    assert last["detail"]["to"] == str(out.resolve())


def test_export_from_an_s3_store(
    home: Path, synthetic_svs: Path, s3_env: str, tmp_path: Path
) -> None:
    """A store on S3 (a real SeaweedFS) exports like a local one: chunks are ranged reads."""
    proc = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", s3_env)
    assert proc.returncode == 0, proc.stderr
    slide_id = proc.stdout.split(":")[1].split()[0]
    out = tmp_path / "series"
    proc = cli(home, "export", slide_id, "--store", s3_env, "--dicom", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    pyramid = SlideLibrary(s3_env, sources=False, keyring=KeyRing(home)).get(slide_id)
    assert isinstance(pyramid, StorePyramid)
    with openslide.OpenSlide(out / level_file(0)) as slide:
        for level in (0, len(pyramid.levels) - 1):
            dims = slide.level_dimensions[level]
            pixels = np.asarray(slide.read_region((0, 0), level, dims).convert("RGB"))
            assert np.array_equal(pixels, whole_level(pyramid, level)), level


def test_channel_slides_and_z_stacks_are_refused_in_one_line(home: Path, tmp_path: Path) -> None:
    from tests.channel_stores import write_store
    from tileserver.store.layout import ChannelInfo

    stores = tmp_path / "stores"
    samples = np.full((2, 1, 64, 64), 9, np.uint16)
    info = (ChannelInfo("a", "00FF00", None, (0.0, 10.0)), ChannelInfo("b", "FF0000"))
    write_store(stores, "c" * 32, samples, tile=32, channels=info)
    z_stack = np.full((3, 2, 64, 64), 9, np.uint8)
    write_store(stores, "d" * 32, z_stack, tile=32, plane_offsets=(0.0, 1.0))
    for slide_id, kind in (("c" * 32, "channel"), ("d" * 32, "z-stack")):
        out = tmp_path / slide_id
        proc = cli(home, "export", slide_id, "--store", str(stores), "--dicom", str(out))
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and kind in proc.stderr, proc.stderr
        assert not out.exists()
