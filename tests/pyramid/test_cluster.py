"""Conversion on a Dask cluster, for real: a LocalCluster, and a `dask scheduler` with two
`dask worker` processes on loopback, one of them killed mid-slide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sample_data import write_svs
from tests.corpus import require_corpus
from tests.stores import complete_stores, level_pixels, open_reader
from tileserver.geometry import Region
from tileserver.security.keys import KeyRing
from tileserver.sources import open_slide

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "tileserver.cli", "convert", "--quiet"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cluster-slides")
    return [write_svs(folder / f"s{seed}.svs", 9600, 6400, seed=seed) for seed in (31, 32)]


def test_local_cluster_converts_reports_and_skips(
    slides: list[Path], tmp_path: Path, keyring: KeyRing
) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "missing.svs"
    args = [*CLI, *map(str, slides), str(missing), "--out", str(out), "--scheduler", "local:2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stderr  # the exit status counts failed slides
    assert "tileserver: 2 converted, 0 skipped (already complete), 1 failed" in first.stderr
    assert "tileserver: error: missing.svs: no such file" in first.stderr
    assert "Traceback" not in first.stderr
    assert len(complete_stores(out)) == 2
    rerun = [*CLI, *map(str, slides), "--out", str(out), "--scheduler", "local:2"]
    again = subprocess.run(rerun, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 converted, 2 skipped (already complete), 0 failed" in again.stderr


def test_local_cluster_converts_a_channel_slide(tmp_path: Path, keyring: KeyRing) -> None:
    """A fluorescence slide takes the same path on a cluster: a channel store, exact."""
    qptiff = require_corpus() / "qptiff" / "small_vectra.qptiff"
    out = tmp_path / "out"
    args = [*CLI, str(qptiff), "--out", str(out), "--scheduler", "local:1"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (slide_id,) = complete_stores(out)
    reader = open_reader(out / slide_id, keyring)
    assert reader.layout.kind == "channels" and reader.layout.channels == 3
    with open_slide(qptiff) as source:
        want = source.read_channels(0, Region(0, 0, 1920, 1440))
    np.testing.assert_array_equal(reader.read_channels(0, Region(0, 0, 1920, 1440), range(3)), want)


def test_unreachable_scheduler_is_a_one_line_error(
    slides: list[Path], tmp_path: Path, keyring: KeyRing
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    args = [*CLI, str(slides[0]), "--out", str(tmp_path), "--scheduler", f"tcp://127.0.0.1:{port}"]
    args += ["--scheduler-timeout", "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the Dask scheduler" in proc.stderr.splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(
    tmp_path: Path, keyring: KeyRing
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two workers (no nanny: killing one kills that worker), on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "TILESERVER_HOME": str(keyring.root.parent)}
    log = (tmp_path / "dask.log").open("wb")
    common = {"stdout": log, "stderr": log, "env": env, "cwd": tmp_path}
    scheduler = subprocess.Popen(
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            "127.0.0.1:0",
        ],
        **common,  # type: ignore[call-overload]
    )
    workers = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            **common,  # type: ignore[call-overload]
        )
        for i in range(2)
    ]
    try:
        yield address, workers
    finally:
        for proc in [*workers, scheduler]:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def test_a_worker_killed_mid_slide_loses_nothing(
    slides: list[Path],
    tmp_path: Path,
    keyring: KeyRing,
    cluster: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, workers = cluster
    out = tmp_path / "out"
    args = [*CLI, *map(str, slides), "--out", str(out), "--shard", "4", "--workers", "1"]
    run = subprocess.Popen(
        [*args, "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*/0/c.*")) and run.poll() is None:  # a shard is on disk
        assert time.monotonic() < deadline, "no conversion started"
        time.sleep(0.05)
    workers[0].send_signal(signal.SIGKILL)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "2 converted, 0 skipped (already complete), 0 failed" in err
    assert len(complete_stores(out)) == 2
    clean = tmp_path / "clean"
    for slide in slides:
        done = subprocess.run(
            [*CLI, str(slide), "--out", str(clean)], capture_output=True, timeout=300
        )
        assert done.returncode == 0
    for slide_id in complete_stores(clean):  # the same slides, the same pixels
        assert _matches_any(level_pixels(clean / slide_id, keyring), out, keyring)


def _matches_any(expected: list[np.ndarray], out: Path, keyring: KeyRing) -> bool:
    return any(
        all(
            np.array_equal(a, b)
            for a, b in zip(expected, level_pixels(out / i, keyring), strict=True)
        )
        for i in complete_stores(out)
    )
