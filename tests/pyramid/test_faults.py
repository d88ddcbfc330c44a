"""Conversion under faults, driven through the real CLI in child processes: kills, corrupt
tiles, full and read-only disks. Nothing is mocked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sample_data import write_svs
from tests.stores import complete_stores, level_pixels
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id

CLI = [sys.executable, "-m", "tileserver.cli", "convert", "--quiet"]


def run_convert(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def big_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_svs(tmp_path_factory.mktemp("big") / "big.svs", 7200, 4800, seed=11)


def _count_objects(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file())


def _killed_midway(big_svs: Path, tmp_path: Path, kill_after_objects: int) -> Path:
    """A store whose conversion was killed once it held ``kill_after_objects`` objects and
    before it was complete. On a loaded machine the poll can wake after the converter has
    written its marker (or exited); then the kill missed its moment, and a fresh attempt is
    made (three at most)."""
    for attempt in range(3):
        out = tmp_path / f"killed-{attempt}"
        proc = subprocess.Popen(
            [*CLI, str(big_svs), "--out", str(out), "--shard", "4"], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _count_objects(out) < kill_after_objects and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL and not complete_stores(out):
            return out
    pytest.fail(f"three conversions completed before the kill at {kill_after_objects} objects")


@pytest.mark.parametrize("kill_after_objects", [3, 20, 40])
def test_killed_conversion_resumes_to_the_same_pixels(
    big_svs: Path, tmp_path: Path, kill_after_objects: int, keyring: KeyRing
) -> None:
    """Killed mid-store (shards of 4 x 4 chunks: about 60 objects in all), a conversion
    resumes: the shards it finished are kept, not encoded again, and the pixels are the same
    as an uninterrupted conversion's."""
    clean = tmp_path / "clean"
    assert run_convert(big_svs, "--out", clean, "--shard", "4").returncode == 0
    out = _killed_midway(big_svs, tmp_path, kill_after_objects)
    assert complete_stores(out) == []  # never listed as ready

    rerun = run_convert(big_svs, "--out", out, "--shard", "4")
    assert rerun.returncode == 0, rerun.stderr
    kept = int(rerun.stdout.split(" kept from an earlier run")[0].rsplit(" ", 1)[1])
    assert (kept > 0) == (kill_after_objects > 12), rerun.stdout  # > metadata + journal
    (slide_id,) = complete_stores(out)
    assert len([p for p in out.iterdir() if is_slide_id(p.name)]) == 1  # resumed, not duplicated
    assert not list(out.rglob(".tmp-*"))
    resumed = level_pixels(out / slide_id, keyring)
    uninterrupted = level_pixels(clean / complete_stores(clean)[0], keyring)
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert np.array_equal(a, b)
    again = run_convert(big_svs, "--out", out)
    assert again.returncode == 0 and "already converted" in again.stdout


def test_a_slide_over_its_time_limit_is_stopped_and_resumes_later(
    big_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    """CFG-07: the wall-clock limit stops a slide's converter (here a slow one stands in for
    a hung one); the batch goes on, and a later run completes the same store."""
    out = tmp_path / "out"
    proc = run_convert(big_svs, big_svs, "--out", out, "--timeout", "0.2")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tileserver: error:")]
    assert errors == ["tileserver: error: big.svs: stopped after 0.2 s (wall-clock limit)"] * 2
    assert complete_stores(out) == []
    assert run_convert(big_svs, "--out", out).returncode == 0
    assert len(complete_stores(out)) == 1
    refused = run_convert(big_svs, "--out", out, "--max-memory", "1")
    assert refused.returncode == 1 and "at least 2" in refused.stderr


def _corrupt_copy(svs: Path, dest: Path) -> tuple[int, int]:
    """Zero one tissue tile's bytes in level 0 of a copy; returns its (col, row)."""
    shutil.copy(svs, dest)
    with tifffile.TiffFile(dest) as tif:
        page = tif.pages[0]
        counts = list(page.databytecounts)
        index = counts.index(max(counts))  # the busiest tissue tile
        offset, count = page.dataoffsets[index], counts[index]
        columns = -(-page.imagewidth // page.tilewidth)
    with open(dest, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    return index % columns, index // columns


def test_corrupt_tile_fails_that_slide_only(
    synthetic_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    bad = tmp_path / "damaged.svs"
    col, row = _corrupt_copy(synthetic_svs, bad)
    out = tmp_path / "out"
    proc = run_convert(bad, synthetic_svs, bad, "--out", out)
    assert proc.returncode == 2  # two slides failed
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tileserver: error:")]
    assert len(errors) == 2
    assert f"damaged.svs: level 0 tile ({col}, {row})" in errors[0]
    assert "2 of 3 slides failed" in proc.stderr
    assert len(complete_stores(out)) == 1


def _in_own_mount(options: str, out: Path, slide: Path) -> subprocess.CompletedProcess[str]:
    """Convert into a fresh tmpfs mounted (in a private mount namespace) with ``options``."""
    out.mkdir()
    script = f'mount -t tmpfs -o {options} tmpfs "$1" || exit 99; shift; exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(out), *CLI, str(slide), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _require_mounts() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private tmpfs")


def test_full_disk_gives_a_clear_error(
    synthetic_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    _require_mounts()
    proc = _in_own_mount("size=200k", tmp_path / "full", synthetic_svs)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "out of disk space" in proc.stderr.splitlines()[0]


def test_read_only_output_gives_a_clear_error(
    synthetic_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    _require_mounts()
    proc = _in_own_mount("ro", tmp_path / "ro", synthetic_svs)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Read-only file system" in proc.stderr.splitlines()[0]


def test_output_path_that_is_a_file(synthetic_svs: Path, tmp_path: Path, keyring: KeyRing) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("")
    proc = run_convert(synthetic_svs, "--out", target)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not-a-dir: Not a directory" in proc.stderr


def test_two_converters_racing_on_one_slide_make_one_store(
    big_svs: Path, tmp_path: Path, keyring: KeyRing
) -> None:
    """Both finish without error; they share one slide ID and one data key, exactly one
    writes the completion marker, and the store reads back whole."""
    out = tmp_path / "out"
    racers = [
        subprocess.Popen(
            [*CLI, str(big_svs), "--out", str(out), "--shard", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for racer in racers:
            said, err = racer.communicate(timeout=300)
            assert racer.returncode == 0, err
            outputs.append(said)
    finally:  # a failed racer must not leave the other running into later tests
        for racer in racers:
            racer.kill()
            racer.communicate()
    (slide_id,) = complete_stores(out)
    assert all(slide_id in said for said in outputs)  # the same slide ID for both
    assert [p.name for p in (keyring.root / "slides").iterdir()] == [f"{slide_id}.json"]
    clean = tmp_path / "clean"
    assert run_convert(big_svs, "--out", clean, "--shard", "4").returncode == 0
    raced = level_pixels(out / slide_id, KeyRing(keyring.root.parent))
    for a, b in zip(raced, level_pixels(clean / complete_stores(clean)[0], keyring), strict=True):
        assert np.array_equal(a, b)
