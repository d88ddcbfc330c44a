"""DOS-06, issue 14 finding 1: decompression bombs. A tile, strip or associated image whose
codestream (or whose TIFF tags) declare far more pixels than the slide's geometry has room
for is refused before anything is allocated: a typed one-line error, in milliseconds, with
memory bounded, through the sources, the decode helpers, `tileserver info` and
`serve --sources` (which keeps serving the other slides).

The bombs are generated (sample_data/bombs.py). Decodes that could allocate run in a child
process: under an address-space limit where a library call is tested, and under an RSS
watchdog where a whole command is (a limit would hide the very allocation under test)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from sample_data.bombs import (
    bomb_jpeg,
    write_j2k_bomb,
    write_jpeg_bomb,
    write_label_bomb,
)
from tests.server.conftest import Server
from tileserver.errors import CorruptSlide, TileserverError
from tileserver.geometry import Region
from tileserver.pyramid.isolation import Limits, run_limited
from tileserver.render.encode import decode, decode_jpeg_half
from tileserver.sources import open_slide

GIB = 1 << 30
CLAIM = "65500x65500"


# -- running things that might explode -------------------------------------------------------
def _vm_size() -> int:
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize:"))
    return int(kib) << 10


def _limited(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child allowed 1 GiB of address space more than this process."""
    return run_limited(work, Limits(memory_bytes=_vm_size() + GIB, seconds=30), "bomb")


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) << 10
    return total


class Watchdog(threading.Thread):
    """Kills a process (and its children) as soon as their resident memory passes ``max_rss``:
    polled every 10 ms from a thread, so a request that blocks cannot outrun it."""

    def __init__(self, proc: subprocess.Popen[str], max_rss: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.max_rss, self.peak = proc, max_rss, 0
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _tree_rss(self.proc.pid))
            if self.peak > self.max_rss:
                self.kill()
                return

    def stop(self) -> None:
        self._done.set()
        self.join()

    def check(self) -> None:
        """A test fails here once the cap was passed."""
        if self.peak > self.max_rss:
            pytest.fail(f"resident memory reached {self.peak >> 20} MiB (cap {self.max_rss >> 20})")

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
                for child in task.read_text().split():
                    os.kill(int(child), signal.SIGKILL)
        self.proc.kill()


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss: int  # bytes, the process and its children, sampled every 10 ms


def _run_watched(args: list[str], max_rss: int = GIB, timeout: float = 30) -> Finished:
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        watchdog = Watchdog(proc, max_rss)
        try:
            # Not wait4's ru_maxrss: Linux carries the peak of the address space a process
            # was spawned from across exec, and subprocess spawns with vfork, so it reports
            # the test runner's own peak. The watchdog's samples are of the child alone.
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            while not pid and time.monotonic() - started < timeout:
                time.sleep(0.01)
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if not pid:
                watchdog.kill()
                proc.wait()
                pytest.fail(f"{args[3:]} still running after {timeout} s")
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            watchdog.stop()
        watchdog.check()
        out.seek(0)
        err.seek(0)
        return Finished(
            proc.returncode,
            out.read(),
            err.read(),
            time.monotonic() - started,
            watchdog.peak,
        )


# -- the bombs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    return {
        "jpeg": write_jpeg_bomb(root / "jpeg-bomb.tif"),
        "j2k": write_j2k_bomb(root / "j2k-bomb.svs"),
        "label": write_label_bomb(root / "label-bomb.svs"),
        "label-tags": write_label_bomb(root / "label-tags-bomb.svs", declared=65500),
    }


def test_the_bombs_are_tiny(bombs: dict[str, Path]) -> None:
    for name in ("jpeg", "j2k"):
        assert bombs[name].stat().st_size < 1024
    assert all(path.stat().st_size < 8192 for path in bombs.values())


def _read_tile(path: Path, backend: str) -> None:
    with open_slide(path, backend) as source:
        source.read_region(0, Region(0, 0, 256, 256))


@pytest.mark.parametrize("bomb", ["jpeg", "j2k"])
def test_tifffile_refuses_a_tile_that_declares_more_than_the_tile(
    bombs: dict[str, Path], bomb: str
) -> None:
    started = time.monotonic()
    with pytest.raises(CorruptSlide, match=rf"tile \(0, 0\) declares {CLAIM} .*256x256"):
        _limited(lambda: _read_tile(bombs[bomb], "tifffile"))
    assert time.monotonic() - started < 2


def test_stored_bomb_tiles_are_not_handed_out_for_copying(bombs: dict[str, Path]) -> None:
    """The converter copies raw tiles and decodes them itself (half size): refuse them too."""

    def raw() -> None:
        with open_slide(bombs["jpeg"], "tifffile") as source:
            source.raw_tile(0, 0, 0)

    with pytest.raises(CorruptSlide, match=rf"declares {CLAIM}"):
        _limited(raw)


@pytest.mark.parametrize("bomb", ["jpeg", "j2k"])
def test_openslide_refuses_the_same_tiles(bombs: dict[str, Path], bomb: str) -> None:
    """OpenSlide checks tile sizes itself; this keeps that true of the version we ship."""
    with pytest.raises(CorruptSlide, match="Dimensional mismatch"):
        _limited(lambda: _read_tile(bombs[bomb], "openslide"))


def _read_label(path: Path, backend: str) -> None:
    with open_slide(path, backend) as source:
        source.read_associated("label")


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_an_associated_image_strip_bomb_is_refused(bombs: dict[str, Path], backend: str) -> None:
    with pytest.raises(CorruptSlide, match=r"label.*65500x65500|65500x65500.*label"):
        _limited(lambda: _read_label(bombs["label"], backend))


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_an_associated_image_whose_tags_claim_a_bomb_is_refused(
    bombs: dict[str, Path], backend: str
) -> None:
    """The tags themselves say 65500 x 65500: OpenSlide would allocate 16 GiB for it."""
    with pytest.raises(CorruptSlide, match=r"associated image label is 65500x65500"):
        _limited(lambda: _read_label(bombs["label-tags"], backend))


def test_untiled_levels_with_giant_strips_are_refused(tmp_path: Path) -> None:
    """One strip is one decode: a level stored as a single 20000 x 20000 strip is refused at
    open (the cap is per decode, whatever the codec)."""
    path = tmp_path / "one-strip.tif"

    def strip() -> Iterator[bytes]:
        yield bomb_jpeg(20000)

    tifffile.imwrite(
        path,
        strip(),
        shape=(20000, 20000, 3),
        dtype=np.uint8,
        rowsperstrip=20000,
        compression="jpeg",
        photometric="rgb",
        bigtiff=True,
    )
    with pytest.raises(TileserverError, match="20000x20000"):
        _limited(lambda: _read_tile(path, "tifffile"))


def test_half_size_decoding_refuses_a_bomb() -> None:
    data = bomb_jpeg()
    with pytest.raises(TileserverError, match=rf"{CLAIM}.*cap"):
        _limited(lambda: _as_tileserver_error(decode_jpeg_half, data))


@pytest.mark.parametrize("claim", [9000, 65500])
def test_whole_image_decoding_refuses_a_bomb(claim: int) -> None:
    """Ours is the lower cap (9000 x 9000 passes Pillow's); above Pillow's, either refuses."""
    data = bomb_jpeg(claim)
    pattern = f"{claim}x{claim} pixels, over the decode cap" if claim < 10000 else "decode cap"
    with pytest.raises(TileserverError, match=pattern):
        _limited(lambda: _as_tileserver_error(decode, data))


def _as_tileserver_error(decoder: Callable[[bytes], np.ndarray], data: bytes) -> None:
    """The decoders promise ValueError for undecodable data; bring it back from the child."""
    try:
        decoder(data)
    except ValueError as exc:
        raise TileserverError(f"ValueError: {exc}") from exc


# -- the commands ----------------------------------------------------------------------------
@pytest.mark.parametrize("bomb", ["jpeg", "j2k"])
def test_info_on_a_bomb_is_a_one_line_error_in_bounded_memory(
    bombs: dict[str, Path], bomb: str
) -> None:
    path = bombs[bomb]
    done = _run_watched([sys.executable, "-m", "tileserver.cli", "info", str(path)])
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tileserver: error: "), done.stderr
    assert path.name in lines[0] and CLAIM in lines[0]
    assert done.seconds < 5
    assert done.max_rss < GIB


def test_info_reads_pixels_in_a_limited_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever slips past the checks meets an address-space limit, not the machine."""
    from tileserver import cli

    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb")
    real_summary = cli.slide_summary

    def summary_with_process(source: Any) -> dict[str, Any]:
        limits = Path("/proc/self/limits").read_text().splitlines()
        address = next(line for line in limits if line.startswith("Max address space"))
        return {**real_summary(source), "pid": os.getpid(), "address_limit": address.split()[3]}

    monkeypatch.setattr(cli, "slide_summary", summary_with_process)
    assert cli.main(["info", "--json", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dimensions"] == [64, 64]
    assert summary["pid"] != os.getpid()
    assert summary["address_limit"] != "unlimited"


def _serve(directory: Path, home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    args = [sys.executable, "-m", "tileserver.cli", "serve", str(directory), "--sources"]
    args += ["--port", "0", "--insecure-http", "--no-auth", "--cache-mb", "0"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if "://" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line}")
    return proc, line.split(" at ")[-1].strip().rstrip("/")


def test_serve_sources_refuses_bombs_and_keeps_serving(
    bombs: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "slides"
    directory.mkdir()
    for name in ("jpeg", "j2k", "label"):
        (directory / bombs[name].name).write_bytes(bombs[name].read_bytes())
    pixels = np.random.default_rng(1).integers(0, 255, (512, 768, 3), np.uint8)
    tifffile.imwrite(
        directory / "good.tif", pixels, tile=(256, 256), compression="jpeg", photometric="rgb"
    )
    proc, base = _serve(directory, tmp_path / "home")
    watchdog = Watchdog(proc, GIB)
    srv = Server(base, tmp_path / "home", directory)
    slide_id = {  # as the library names slide files: by their path in the directory
        name: hashlib.sha256(name.encode()).hexdigest()[:32]
        for name in ("good.tif", *(bombs[b].name for b in ("jpeg", "j2k", "label")))
    }
    # (tile, label) statuses: 256 x 256 is DeepZoom level 8.
    expected = {bombs["jpeg"].name: (500, 404), bombs["j2k"].name: (500, 404)}
    expected[bombs["label"].name] = (200, 500)
    try:
        items = srv.get("/api/slides").json()["items"]
        assert sorted(s["id"] for s in items) == sorted(slide_id.values())
        assert all(s["available"] for s in items)  # opening reads no pixels
        for name, statuses in expected.items():
            started = time.monotonic()
            tile = srv.get(f"/deepzoom/{slide_id[name]}_files/8/0_0.jpeg")
            label = srv.get(f"/api/slides/{slide_id[name]}/associated/label")
            assert (tile.status, label.status) == statuses, name
            assert time.monotonic() - started < 5
            good = srv.get(f"/deepzoom/{slide_id['good.tif']}_files/10/1_1.jpeg")
            assert good.status == 200
        assert proc.poll() is None, "the server died"
    finally:
        watchdog.stop()
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        watchdog.check()  # a server killed for its memory fails here, whatever came first
