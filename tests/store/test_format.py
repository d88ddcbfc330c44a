"""The on-disk format as a contract: golden stores of every version stay readable, version 1
migrates to version 2 in place (also when stopped half-way), and a plaintext lossless store
opens with nothing but stock zarr."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import cli
from tests.fixtures.make_golden_store import fixture, install_golden_kek, level_digests
from tests.stores import open_reader
from tileserver.geometry import Region
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.layout import COMPLETE_MARKER


def _golden_copy(version: int, tmp_path: Path) -> tuple[Path, Path, str]:
    """(home with the golden key, a copy of the golden stores, slide ID)."""
    home = tmp_path / "home"
    install_golden_kek(home, version)
    stores = tmp_path / "stores"
    shutil.copytree(fixture(version) / "store", stores)
    expected = json.loads((fixture(version) / "expected.json").read_text())
    return home, stores, expected["slide_id"]


@pytest.mark.parametrize("version", [1, 2])
def test_golden_stores_stay_readable(version: int, tmp_path: Path) -> None:
    keyring = install_golden_kek(tmp_path / "home", version)
    expected = json.loads((fixture(version) / "expected.json").read_text())
    reader = open_reader(fixture(version) / "store" / expected["slide_id"], keyring)
    assert reader.layout.format_version == version
    assert level_digests(reader) == expected["levels"]


def _v1_chunk_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and "/c/" in p.as_posix()]


def test_migrate_rewrites_version_1_in_place_with_the_same_pixels(tmp_path: Path) -> None:
    home, stores, slide_id = _golden_copy(1, tmp_path)
    expected = json.loads((fixture(1) / "expected.json").read_text())["levels"]
    store = stores / slide_id
    assert _v1_chunk_files(store)
    done = cli(home, "migrate", str(stores), "--quiet", "--shard", "2")
    assert done.returncode == 0, done.stderr
    assert f"{slide_id}: migrated to format 2" in done.stdout
    assert not _v1_chunk_files(store)  # every chunk now lives in a shard
    reader = open_reader(store, install_golden_kek(tmp_path / "fresh", 1))
    assert reader.layout.format_version == 2 and reader.layout.shard == 2
    assert level_digests(reader) == expected
    group = json.loads(reader.objects.get("zarr.json") or b"")
    assert group["attributes"]["tileserver"]["format_version"] == 2
    again = cli(home, "migrate", str(stores), "--quiet")
    assert again.returncode == 0 and f"{slide_id}: format 2 already" in again.stdout


def test_a_stopped_migration_is_finished_by_the_next_run(tmp_path: Path) -> None:
    """Stopped after the new marker was written: version-1 chunks and metadata are still
    there. The slide reads correctly meanwhile, and a re-run finishes the job."""
    home, stores, slide_id = _golden_copy(1, tmp_path)
    expected = json.loads((fixture(1) / "expected.json").read_text())["levels"]
    assert cli(home, "migrate", str(stores), "--quiet").returncode == 0
    golden = fixture(1) / "store" / slide_id
    for path in golden.rglob("*"):  # put back what a stopped migration had not yet removed
        if path.is_file() and path.name != COMPLETE_MARKER:
            target = stores / slide_id / path.relative_to(golden)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    keyring = install_golden_kek(tmp_path / "fresh", 1)
    assert level_digests(open_reader(stores / slide_id, keyring)) == expected
    finished = cli(home, "migrate", str(stores), "--quiet")
    assert finished.returncode == 0, finished.stderr
    assert "finished an interrupted migration" in finished.stdout
    assert not _v1_chunk_files(stores / slide_id)
    assert level_digests(open_reader(stores / slide_id, keyring)) == expected


def test_migrate_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    home, stores, slide_id = _golden_copy(1, tmp_path)
    shutil.rmtree(home / "keys" / "slides")  # the data key is gone: nothing can be verified
    (home / "keys" / "slides").mkdir(mode=0o700)
    proc = cli(home, "migrate", str(stores), "--quiet")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{slide_id}: failed:" in proc.stdout
    assert _v1_chunk_files(stores / slide_id)  # untouched


@pytest.fixture(scope="session")
def zarr_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with stock zarr and its dependencies, and nothing of ours."""
    venv = tmp_path_factory.mktemp("zarr-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    version = subprocess.run(
        [sys.executable, "-c", "import zarr; print(zarr.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"zarr=={version}"],
        check=True,
        timeout=600,
    )
    return venv / "bin" / "python"


def test_plaintext_lossless_store_opens_with_stock_zarr_alone(
    synthetic_tiff: Path, tmp_path: Path, zarr_only_python: Path
) -> None:
    slide_id = new_slide_id()
    store = tmp_path / slide_id
    options = ConvertOptions(codec="zstd", tile=128, shard=4, background_tolerance=0)
    from tileserver.store.local import LocalObjects

    with open_slide(synthetic_tiff) as source:
        convert(source, LocalObjects(store), slide_id, options, None)
        original = source.read_region(0, Region(0, 0, 1500, 1100))
    ours = open_reader(store).read_region(1, Region(0, 0, 750, 550))
    script = (
        "import sys, numpy, zarr\n"
        "g = zarr.open_group(sys.argv[1], mode='r')\n"
        "assert 'tileserver' not in sys.modules\n"
        "numpy.save(sys.argv[2], numpy.asarray(g['0'][:]))\n"
        "numpy.save(sys.argv[3], numpy.asarray(g['1'][:]))\n"
    )
    level0, level1 = tmp_path / "l0.npy", tmp_path / "l1.npy"
    run = subprocess.run(
        [str(zarr_only_python), "-c", script, str(store), str(level0), str(level1)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(level0).transpose(1, 2, 0), original)
    assert np.array_equal(np.load(level1).transpose(1, 2, 0), ours)


def test_a_format_1_journal_still_names_its_slides(synthetic_svs: Path, tmp_path: Path) -> None:
    """Output directories of format 1 kept one JSON map from fingerprint to slide ID: a
    re-run there finds the slide instead of converting it again under a new ID."""
    home, out = tmp_path / "home", tmp_path / "out"
    assert cli(home, "keys", "init").returncode == 0
    assert cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out)).returncode == 0
    (entry,) = (out / ".tileserver-journal").iterdir()
    legacy = {entry.name: entry.read_text()}
    shutil.rmtree(out / ".tileserver-journal")
    (out / ".tileserver-journal.json").write_text(json.dumps(legacy))
    again = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"already converted as {legacy[entry.name]}" in again.stdout
    (out / ".tileserver-journal.json").write_text("{not json")
    broken = cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out))
    assert broken.returncode == 1 and "journal.json is malformed" in broken.stderr


@pytest.fixture
def plaintext_store(synthetic_svs: Path, tmp_path: Path) -> Path:
    from tileserver.store.local import LocalObjects

    slide_id = new_slide_id()
    with open_slide(synthetic_svs) as source:
        convert(source, LocalObjects(tmp_path / slide_id), slide_id, ConvertOptions(shard=4), None)
    return tmp_path / slide_id


def _read_everything(store: Path) -> None:
    reader = open_reader(store)
    for level, size in enumerate(reader.layout.levels):
        reader.read_region(level, Region(0, 0, size.width, size.height))


@pytest.mark.parametrize("damage", ["delete", "truncate", "swap", "other level"])
def test_plaintext_shards_are_checked_against_the_marker_too(
    plaintext_store: Path, damage: str
) -> None:
    """No seals in a research export, but the marker's digests still catch a shard that is
    gone, cut short or moved: an IntegrityError, never a white tile."""
    from tileserver.errors import IntegrityError

    _read_everything(plaintext_store)
    level0 = plaintext_store / "0"
    victim = level0 / "c.0.0.1"
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-50])
    elif damage == "swap":
        shutil.copy(level0 / "c.0.0.0", victim)
    else:
        shutil.copy(plaintext_store / "1" / "c.0.0.0", level0 / "c.0.0.0")
    with pytest.raises(IntegrityError, match=plaintext_store.name):
        _read_everything(plaintext_store)


def test_stores_and_the_journal_are_not_readable_by_others(
    synthetic_svs: Path, tmp_path: Path
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    assert cli(home, "keys", "init").returncode == 0
    assert cli(home, "convert", "--quiet", str(synthetic_svs), "--out", str(out)).returncode == 0
    made = list(out.rglob("*"))
    assert any(p.parent.name == ".tileserver-journal" for p in made) and len(made) > 10
    for path in made:
        assert path.stat().st_mode & 0o007 == 0, path


def test_a_jpeg_chunk_claiming_a_huge_frame_is_refused_before_decoding() -> None:
    """Chunks of a plaintext export carry no seal: one whose JPEG frame header claims
    65500 x 65500 pixels must not be decoded (about 12 GB)."""
    import io

    from PIL import Image

    from tileserver.errors import StoreError
    from tileserver.store.chunks import decode_chunk

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (65500).to_bytes(2, "big") * 2  # height, width
    with pytest.raises(StoreError, match="65500x65500"):
        decode_chunk(bytes(data), "jpeg", 64)
    assert decode_chunk(buffer.getvalue(), "jpeg", 64).shape == (64, 64, 3)
