"""``serve --sources``: the library of slide files. Issue 14: evicted slides close their files
(once no request is reading them), and a file that cannot be used keeps its error type."""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tileserver.errors import CorruptSlide, SlideNotFound
from tileserver.library import SlideLibrary

_SLIDES: list[Path] = []  # the directory of the running test's slides


def _open_fds() -> int:
    """Descriptors open on this test's slide files (other threads of a long test run open and
    close descriptors of their own at any moment)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += any(target.startswith(f"{folder}/") for folder in _SLIDES)
    return count


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    _SLIDES[:] = [tmp_path]
    for i in range(8):
        pixels = np.full((300, 300, 3), 40 + 20 * i, np.uint8)
        tifffile.imwrite(tmp_path / f"slide-{i}.tif", pixels, tile=(256, 256), photometric="rgb")
    return tmp_path


def test_evicted_slides_close_their_files(slides: Path) -> None:
    library = SlideLibrary(slides, sources=True, keyring=None, max_open=2)
    ids = library.slide_ids()
    gc.collect()
    before = _open_fds()
    library.get(ids[0]).read_chunk(0, 0, 0)
    per_slide = _open_fds() - before
    assert per_slide >= 1
    for slide_id in ids:
        pixels = library.get(slide_id).read_chunk(0, 0, 0)
        assert pixels.shape == (256, 256, 3)
    gc.collect()
    assert _open_fds() - before <= 2 * per_slide  # max_open slides, not all eight


def test_a_slide_in_use_stays_open_after_eviction(slides: Path) -> None:
    library = SlideLibrary(slides, sources=True, keyring=None, max_open=1)
    ids = library.slide_ids()
    gc.collect()
    before = _open_fds()
    held = library.get(ids[0])  # a request still reading it
    expected = held.read_chunk(0, 0, 0)
    per_slide = _open_fds() - before
    for slide_id in ids[1:]:
        library.get(slide_id).read_chunk(0, 0, 0)
    assert library.peek(ids[0]) is None  # evicted...
    assert np.array_equal(held.read_chunk(0, 0, 0), expected)  # ...yet still readable
    assert _open_fds() - before == 2 * per_slide  # the held slide and the one open slide
    del held
    gc.collect()
    assert _open_fds() - before == per_slide


def _slide_id(name: str) -> str:
    """The ID the library gives a file: from its path inside the directory."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def test_open_errors_keep_their_type(slides: Path) -> None:
    whole = (slides / "slide-0.tif").read_bytes()
    (slides / "broken.tif").write_bytes(whole[: len(whole) - 100])  # the last tile cut short
    library = SlideLibrary(slides, sources=True, keyring=None)
    library.slide_ids()
    broken = _slide_id("broken.tif")
    with pytest.raises(CorruptSlide, match=f"{broken}: broken.tif: .*truncated"):
        library.get(broken)
    (slides / "slide-3.tif").unlink()
    with pytest.raises(SlideNotFound):
        library.get(_slide_id("slide-3.tif"))
