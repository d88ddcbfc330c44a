"""The DICOM backend on the real corpus: a multi-file series is one slide in its true colours,
VL WSI files OpenSlide refuses open or fail with the precise reason, and bad series folders
fail in one line naming the file."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.corpus import require_corpus
from tests.stores import open_reader
from tileserver.errors import (
    CorruptSlide,
    RegionError,
    SlideError,
    UnsupportedFeature,
    UnsupportedFormat,
)
from tileserver.geometry import Region, Size
from tileserver.library import SlideLibrary
from tileserver.pyramid.jobs import convert_file, fingerprint, source_fingerprint
from tileserver.pyramid.plan import ConvertOptions
from tileserver.sources import open_slide
from tileserver.sources.dicom import DicomSource
from tileserver.sources.dicom_rules import frame_colour

SERIES = "dicom/jcupitt-cmu-1-small-region"
SVS = "svs/CMU-1-Small-Region.svs"
# The series' level sizes, as OpenSlide and the converter that wrote it report them.
LEVELS = [
    (2220, 2967), (1110, 1483), (555, 741), (277, 370), (138, 185), (69, 92),
    (34, 46), (17, 23), (8, 11), (4, 5), (2, 2), (1, 1),
]  # fmt: skip


def _series() -> Path:
    return require_corpus() / SERIES


@pytest.mark.parametrize("name", ["", "level-0-frames-0-30.dcm", "level-7-frames-0-1.dcm"])
def test_the_series_opens_as_one_slide_from_its_folder_or_any_file(name: str) -> None:
    with open_slide(_series() / name) as source:
        assert isinstance(source, DicomSource)
        assert source.info.backend == "dicom"
        assert [tuple(lv.size) for lv in source.info.levels] == LEVELS
        assert len(source.files) == 12
        assert source.info.mpp == pytest.approx((0.499, 0.499))
        assert source.info.associated == ()


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(0, 1)))


def test_the_series_has_the_colours_of_the_svs_it_was_made_from() -> None:
    corpus = require_corpus()
    region = Region(800, 1000, 512, 512)  # tissue, across four frames
    with DicomSource(_series()) as dicom, open_slide(corpus / SVS) as svs:
        assert isinstance(dicom, DicomSource)
        assert dicom.jpeg_colour_mismatch(0)  # JFIF (YCbCr) frames in a series declared RGB
        ours = dicom.read_region(0, region)
        reference = svs.read_region(0, region)
        # Re-encoded once more at quality 80, 4:2:0: a few levels off on average, per channel.
        assert (_mean_abs_diff(ours, reference) < 10).all()
        # The false colour OpenSlide shows (YCbCr samples taken as RGB) is far off.
        with open_slide(_series() / "level-0-frames-0-30.dcm", backend="openslide") as osl:
            assert _mean_abs_diff(osl.read_region(0, region), reference).max() > 40
        # Upper levels too (the converter's own filter: compare colour, not detail).
        small = dicom.read_region(2, Region(200, 250, 128, 128)).mean(axis=(0, 1))
        assert np.abs(small - reference.mean(axis=(0, 1))) == pytest.approx(0, abs=3)


def test_raw_tiles_are_the_frames_and_decode_to_the_region() -> None:
    with open_slide(_series()) as source:
        assert source.raw_tile_codec(0) == "jpeg"
        raw = source.raw_tile(0, 1, 2)
        assert raw is not None and raw.size == Size(500, 500)
        assert frame_colour(raw.data) == "YBR"  # copied as it is: its JFIF marker is right
        decoded = np.asarray(Image.open(io.BytesIO(raw.data)).convert("RGB"))
        assert np.array_equal(decoded, source.read_region(0, Region(500, 1000, 500, 500)))
        with pytest.raises(IndexError):
            source.raw_tile(0, 5, 0)


@pytest.mark.parametrize(
    "name",
    ["highdicom-sm_image_jpegls/sm_image_jpegls.dcm", "highdicom-sm_image/sm_image.dcm"],
)
def test_jpeg_ls_opens_and_matches_the_uncompressed_copy(name: str) -> None:
    corpus = require_corpus() / "dicom"
    with open_slide(corpus / name) as source:
        assert source.info.backend == "dicom" and source.info.icc_profile is not None
        pixels = source.read_region(0, Region(0, 0, 50, 50))
    with open_slide(corpus / "highdicom-sm_image/sm_image.dcm") as raw:
        assert np.array_equal(pixels, raw.read_region(0, Region(0, 0, 50, 50)))  # lossless


def test_openslide_refusals_fail_with_the_precise_reason() -> None:
    corpus = require_corpus() / "dicom"
    with pytest.raises(UnsupportedFeature, match=r"small_dicom.dcm: lacks Image Type \(0008"):
        open_slide(corpus / "pathml-small_dicom/small_dicom.dcm")
    with pytest.raises(UnsupportedFeature, match=r"test_wsi.dcm: .*no pyramid level.*label"):
        open_slide(corpus / "google-test_wsi")


def test_the_thumbnail_instance_is_an_associated_image() -> None:
    with open_slide(require_corpus() / "dicom/openslide-python-boxes/boxes_1.dcm") as source:
        assert source.info.associated == ("thumbnail",)
        assert source.info.objective_power == 20
        thumbnail = source.read_associated("thumbnail")
        assert thumbnail.shape == (16, 16, 3)
        with pytest.raises(KeyError):
            source.read_associated("label")


def _copy_series(to: Path, names: list[str]) -> Path:
    to.mkdir()
    for name in names:
        shutil.copy(_series() / name, to / name)
    return to


def test_a_folder_with_two_series_names_the_file(tmp_path: Path) -> None:
    folder = _copy_series(tmp_path / "mixed", ["level-9-frames-0-1.dcm"])
    shutil.copy(require_corpus() / "dicom/w2d-jpeg/jpeg.dicom", folder / "other.dcm")
    with pytest.raises(UnsupportedFeature, match=r"^other.dcm: belongs to another DICOM series"):
        open_slide(folder)
    with open_slide(folder / "other.dcm") as source:  # a file opens its own series
        assert isinstance(source, DicomSource)
        assert source.files == (folder / "other.dcm",)


def test_conflicting_geometry_names_the_file(tmp_path: Path) -> None:
    folder = _copy_series(tmp_path / "bad", ["level-8-frames-0-1.dcm", "level-9-frames-0-1.dcm"])
    ds = pydicom.dcmread(folder / "level-9-frames-0-1.dcm")
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.9, 0.9]
    ds.save_as(folder / "level-9-frames-0-1.dcm")
    with pytest.raises(CorruptSlide, match=r"^level-9-frames-0-1.dcm: .*conflicting geometry"):
        open_slide(folder)


def test_sources_library_lists_the_series_once(tmp_path: Path) -> None:
    corpus = require_corpus()
    shutil.copytree(_series(), tmp_path / "series")
    shutil.copy(corpus / "dicom/w2d-jpeg/jpeg.dicom", tmp_path / "series" / "other.dcm")
    shutil.copy(corpus / SVS, tmp_path / "slide.svs")
    shutil.copy(corpus / "dicom/pathml-small_dicom/small_dicom.dcm", tmp_path / "bad.dcm")
    library = SlideLibrary(tmp_path, sources=True, keyring=None)
    ids = library.slide_ids()
    # The 12-file series, the other series in its folder, the SVS, and the unreadable VL WSI
    # file (listed so that opening it says why).
    assert len(ids) == 4
    assert SlideLibrary(tmp_path, sources=True, keyring=None).slide_ids() == ids  # stable
    sizes = []
    for slide_id in ids:
        try:
            sizes.append(tuple(library.get(slide_id).levels[0]))
        except UnsupportedFeature as exc:
            assert "bad.dcm: lacks Image Type" in str(exc)
    assert sorted(sizes) == [(957, 715), (2220, 2967), (2220, 2967)]


def test_a_convert_of_the_series_round_trips(tmp_path: Path) -> None:
    out = str(tmp_path / "stores")
    options = ConvertOptions()
    result = convert_file(_series(), out, options, keyring=None)
    assert not isinstance(result, str)
    assert result.chunks["copied"] > 0  # the frames, copied in their true colours
    # The same series named by any of its files is the same slide, already converted.
    again = convert_file(_series() / "level-3-frames-0-1.dcm", out, options, keyring=None)
    assert again == result.slide_id
    reader = open_reader(result.store)
    region = Region(700, 900, 400, 300)
    with open_slide(_series()) as source:
        diff = _mean_abs_diff(reader.read_region(0, region), source.read_region(0, region))
    assert diff.max() < 1.0
    # The fingerprint is of the content: the series copied under other names is the same.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, path in enumerate(sorted(_series().iterdir())):
        shutil.copy(path, renamed / f"{i:02d}.dcm")
    assert convert_file(renamed, out, options, keyring=None) == result.slide_id
    with open_slide(renamed) as copy:
        assert isinstance(copy, DicomSource)
        assert source_fingerprint(copy) != fingerprint(copy.files[0])


def test_a_non_dicom_folder_is_not_a_slide(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a slide")
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        open_slide(tmp_path)


def test_focal_planes_are_exposed_and_read(tmp_path: Path) -> None:
    # Two instances of one level at z 0 and 2 um (the second's pixels inverted): a z-stack.
    for z, name in ((0.0, "a.dcm"), (2.0, "b.dcm")):
        ds = pydicom.dcmread(require_corpus() / "dicom/w2d-raw/raw.dicom")
        origin = pydicom.Dataset()
        origin.XOffsetInSlideCoordinateSystem = 0
        origin.YOffsetInSlideCoordinateSystem = 0
        origin.ZOffsetInSlideCoordinateSystem = z
        ds.TotalPixelMatrixOriginSequence = pydicom.Sequence([origin])
        if z:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.PixelData = bytes(255 - np.frombuffer(ds.PixelData, np.uint8))
        ds.save_as(tmp_path / name)
    with open_slide(tmp_path) as source:
        assert source.info.planes == (0.0, 2.0)
        assert source.raw_tile_codec(0) is None  # copying one plane would drop the other
        region = Region(100, 100, 50, 50)
        first, second = source.read_region(0, region, 0), source.read_region(0, region, 1)
        assert np.array_equal(first, 255 - second)
        with pytest.raises(RegionError, match="plane 2 out of range"):
            source.read_region(0, region, 2)


@pytest.mark.parametrize("keep", [200, 800, 1500, 100_000, 350_000])
def test_a_truncated_instance_is_a_typed_error(keep: int, tmp_path: Path) -> None:
    data = (_series() / "level-1-frames-0-9.dcm").read_bytes()[:keep]
    (tmp_path / "cut.dcm").write_bytes(data)
    with pytest.raises(SlideError, match=r"^cut.dcm: "), open_slide(tmp_path / "cut.dcm") as s:
        size = s.info.levels[0].size
        s.read_region(0, Region(0, 0, size.width, size.height))


def test_unreadable_neighbours_do_not_stop_a_series(tmp_path: Path) -> None:
    corpus = require_corpus() / "dicom"
    shutil.copy(corpus / "w2d-jpeg/jpeg.dicom", tmp_path / "good.dcm")
    shutil.copy(corpus / "pathml-small_dicom/small_dicom.dcm", tmp_path / "no-type.dcm")
    (tmp_path / "cut.dcm").write_bytes((corpus / "w2d-raw/raw.dicom").read_bytes()[:900])
    for name in ("good.dcm", ""):  # the file, or the folder, whose one series it is
        with open_slide(tmp_path / name) as source:
            assert isinstance(source, DicomSource)
            assert source.files == (tmp_path / "good.dcm",)
    with pytest.raises(UnsupportedFeature, match=r"^no-type.dcm: lacks Image Type"):
        open_slide(tmp_path / "no-type.dcm")


@pytest.mark.parametrize(
    "name",
    [
        "google-camelyon-jpeg/multi_frame_jpeg_camelyon_challenge_image.dcm",
        "google-camelyon-jpeg2000/multi_frame_jpeg2000_camelyon_challenge_image.dcm",
        "openslide-python-boxes/boxes_0.dcm",
        "w2d-jpeg/jpeg.dicom",
        "w2d-raw/raw.dicom",
    ],
)
def test_where_the_colours_agree_the_pixels_equal_openslides(name: str) -> None:
    path = require_corpus() / "dicom" / name
    with open_slide(path) as ours, open_slide(path, backend="openslide") as osl:
        assert isinstance(ours, DicomSource) and not ours.jpeg_colour_mismatch(0)
        size = ours.info.levels[0].size
        region = Region(0, 0, min(size.width, 600), min(size.height, 600))
        assert np.array_equal(ours.read_region(0, region), osl.read_region(0, region))


def test_a_label_instance_of_the_series_is_the_label(tmp_path: Path) -> None:
    corpus = require_corpus() / "dicom"
    shutil.copy(corpus / "w2d-jpeg/jpeg.dicom", tmp_path / "slide.dcm")
    slide = pydicom.dcmread(tmp_path / "slide.dcm", stop_before_pixels=True)
    label = pydicom.dcmread(corpus / "google-test_wsi/test_wsi.dcm")  # a LABEL instance
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        setattr(label, uid, getattr(slide, uid))
    label.save_as(tmp_path / "label.dcm")
    with open_slide(tmp_path / "slide.dcm") as source:
        assert source.info.associated == ("label",)
        assert source.read_associated("label").shape == (117, 234, 3)
        assert [tuple(lv.size) for lv in source.info.levels] == [(957, 715)]


def test_wsidicom_is_imported_only_when_a_dicom_slide_is_opened() -> None:
    """Importing wsidicom takes half a second: the CLI, the server and a listing of a folder
    without DICOM files must not pay it (dicom_files.py recognises the files)."""
    corpus = require_corpus()
    script = f"""
import sys
from pathlib import Path
import tileserver.cli, tileserver.library, tileserver.pyramid.jobs, tileserver.server.app
from tileserver.library import SlideLibrary
from tileserver.sources import open_slide
open_slide(Path({str(corpus / SVS)!r})).close()
assert SlideLibrary(Path({str(corpus / "svs")!r}), sources=True, keyring=None).slide_ids()
assert "wsidicom" not in sys.modules
open_slide(Path({str(_series())!r})).close()
assert "wsidicom" in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
