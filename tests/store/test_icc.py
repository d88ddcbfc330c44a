"""The ICC profile in a store: sealed in an object of its own, listed in the completion
marker with its digest, read back exactly; a missing or swapped profile is an integrity
error. Converted from synthetic slides tagged with a wide-gamut profile and from the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sample_data.icc import DESCRIPTION, wide_gamut_profile, write_icc
from tests.corpus import require_corpus
from tests.stores import open_reader
from tileserver.errors import IntegrityError
from tileserver.library import StorePyramid
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.render.colour import profile_info
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.icc import ICC_OBJECT
from tileserver.store.layout import COMPLETE_MARKER
from tileserver.store.local import LocalObjects


def _convert(slide: Path, out: Path, keyring: KeyRing | None) -> Path:
    slide_id = new_slide_id()
    with open_slide(slide) as source:
        convert(source, LocalObjects(out / slide_id), slide_id, ConvertOptions(), keyring)
    return out / slide_id


@pytest.fixture(scope="module")
def icc_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_icc(tmp_path_factory.mktemp("icc") / "icc.tif", 700, 500, tile=256)


def test_profile_is_sealed_and_read_back(icc_tiff: Path, tmp_path: Path, keyring: KeyRing) -> None:
    store = _convert(icc_tiff, tmp_path, keyring)
    profile = wide_gamut_profile()
    raw = (store / ICC_OBJECT).read_bytes()
    # sealed: neither the profile nor any recognisable part of it is in the object
    assert profile not in raw and DESCRIPTION.encode() not in raw and b"acsp" not in raw
    assert len(raw) > len(profile)
    reader = open_reader(store, keyring)
    assert reader.icc_profile() == profile
    pyramid = StorePyramid(LocalObjects(store), store.name, keyring)
    assert pyramid.icc_profile == profile


def test_plaintext_export_keeps_the_profile(icc_tiff: Path, tmp_path: Path) -> None:
    store = _convert(icc_tiff, tmp_path, None)
    assert (store / ICC_OBJECT).read_bytes() == wide_gamut_profile()
    marker = json.loads((store / COMPLETE_MARKER).read_bytes())
    assert marker["icc_profile"]["object"] == ICC_OBJECT


def test_missing_or_swapped_profile_is_an_integrity_error(
    icc_tiff: Path, synthetic_tiff: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    store = _convert(icc_tiff, tmp_path, keyring)
    other = _convert(icc_tiff, tmp_path, keyring)
    sealed = (store / ICC_OBJECT).read_bytes()
    # another slide's sealed profile (same bytes inside) is bound to that slide: refused
    (store / ICC_OBJECT).write_bytes((other / ICC_OBJECT).read_bytes())
    with pytest.raises(IntegrityError):
        open_reader(store, keyring).icc_profile()
    (store / ICC_OBJECT).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        open_reader(store, keyring).icc_profile()
    (store / ICC_OBJECT).write_bytes(sealed)
    assert open_reader(store, keyring).icc_profile() == wide_gamut_profile()


def test_replaced_plaintext_profile_fails_its_digest(icc_tiff: Path, tmp_path: Path) -> None:
    store = _convert(icc_tiff, tmp_path, None)
    (store / ICC_OBJECT).write_bytes(wide_gamut_profile()[:-4] + b"abcd")
    with pytest.raises(IntegrityError, match="not the one"):
        open_reader(store).icc_profile()


def test_slide_without_profile_has_none(synthetic_tiff: Path, tmp_path: Path) -> None:
    store = _convert(synthetic_tiff, tmp_path, None)
    assert not (store / ICC_OBJECT).exists()
    assert open_reader(store).icc_profile() is None
    assert "icc_profile" not in json.loads((store / COMPLETE_MARKER).read_bytes())


@pytest.mark.parametrize("name", ["generic-tiff/boxes.tiff", "svs/tcga-cr-7395-01a-01-ts1.svs"])
def test_corpus_profiles_are_kept(name: str, tmp_path: Path) -> None:
    """The corpus's tagged slides (both sRGB profiles) keep their exact bytes."""
    slide = require_corpus() / name
    with open_slide(slide) as source:
        expected = source.info.icc_profile
    assert expected is not None
    store = _convert(slide, tmp_path, None)
    assert open_reader(store).icc_profile() == expected
    info = profile_info(expected)
    assert info.description.startswith("sRGB") and info.usable
    assert info.srgb  # equivalent to sRGB: rendered images need no conversion


def test_dicom_export_carries_the_stored_profile(icc_tiff: Path, tmp_path: Path) -> None:
    """Exported frames are the stored pixels, so their optical path names the slide's own
    profile (not sRGB)."""
    import pydicom

    from tileserver.export import export_dicom, level_file

    store = _convert(icc_tiff, tmp_path / "stores", None)
    pyramid = StorePyramid(LocalObjects(store), store.name, None)
    export_dicom(pyramid, tmp_path / "series")
    ds = pydicom.dcmread(tmp_path / "series" / level_file(0), stop_before_pixels=True)
    path = ds.OpticalPathSequence[0]
    assert path.ICCProfile == wide_gamut_profile() and "ColorSpace" not in path
