"""Conformance over the real-slide corpus: metadata as the manifest records, backends agree,
and every broken or odd file gives a typed error instead of a crash."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from tests.corpus import SLIDES, Expected, bad_files, openable, require_corpus
from tileserver.errors import SlideError
from tileserver.geometry import Region
from tileserver.sources import open_slide

OPENABLE = openable()


def _id(e: Expected) -> str:
    return str(e.path.relative_to(SLIDES))


@pytest.mark.parametrize("expected", OPENABLE, ids=[_id(e) for e in OPENABLE])
@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_opens_with_recorded_metadata(expected: Expected, backend: str) -> None:
    require_corpus()
    with open_slide(expected.path, backend=backend) as source:
        info = source.info
        assert tuple(info.dimensions) == expected.dimensions
        assert info.vendor == expected.vendor
        assert info.associated == expected.associated
        if backend == "openslide":
            assert len(info.levels) == expected.level_count
        if expected.mpp is None:
            assert info.mpp is None
        else:
            assert info.mpp is not None
            assert info.mpp[0] == pytest.approx(expected.mpp, rel=2e-3)
        assert info.objective_power == expected.objective
        # The smallest level decodes.
        level = len(info.levels) - 1
        size = info.levels[level].size
        pixels = source.read_region(
            level, Region(0, 0, min(size.width, 512), min(size.height, 512))
        )
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3


def _both_backends() -> list[Expected]:
    return [e for e in OPENABLE if e.path.suffix.lower() in (".svs", ".tif", ".tiff", ".ndpi")]


@pytest.mark.parametrize("expected", _both_backends(), ids=[_id(e) for e in _both_backends()])
def test_backends_agree_on_pixels(expected: Expected) -> None:
    require_corpus()
    rng = random.Random(7)
    with (
        open_slide(expected.path, "tifffile") as tiff,
        open_slide(expected.path, "openslide") as osl,
    ):
        for level, tiff_level in enumerate(tiff.info.levels):
            if tiff_level.size != osl.info.levels[level].size or tiff_level.downsample % 1:
                continue  # OpenSlide interpolates at fractional level-0 offsets
            size = tiff_level.size
            for _ in range(3):
                width, height = min(size.width, 300), min(size.height, 300)
                x = rng.randrange(0, size.width - width + 1)
                y = rng.randrange(0, size.height - height + 1)
                region = Region(x, y, width, height)
                a = tiff.read_region(level, region).astype(np.int16)
                b = osl.read_region(level, region).astype(np.int16)
                diff = np.abs(a - b)
                # Same libjpeg-turbo underneath: identical, or off by decoder rounding.
                assert diff.mean() < 1.0, (level, region)
                assert np.percentile(diff, 99.9) <= 8, (level, region)


BAD = bad_files()


@pytest.mark.parametrize("path", BAD, ids=[str(p.relative_to(SLIDES)) for p in BAD])
def test_bad_files_give_typed_errors(path) -> None:  # type: ignore[no-untyped-def]
    require_corpus()
    try:
        with open_slide(path) as source:
            for level, lv in enumerate(source.info.levels):
                w, h = min(lv.size.width, 2048), min(lv.size.height, 2048)
                source.read_region(level, Region(0, 0, w, h))
            for name in source.info.associated:
                source.read_associated(name)
    except SlideError as exc:
        assert path.name in str(exc)
        assert "\n" not in str(exc)
    else:
        assert path.parent.name != "broken", "a deliberately broken file read cleanly"


@pytest.mark.parametrize("path", BAD, ids=[str(p.relative_to(SLIDES)) for p in BAD])
def test_info_cli_on_bad_files(path) -> None:  # type: ignore[no-untyped-def]
    """One line on stderr and a non-zero exit, or a clean report; never a traceback or a hang.

    The child runs under a 3 GiB address-space limit so a giant allocation fails loudly."""
    require_corpus()
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
    code = limit + "import sys; from tileserver.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr
    if proc.returncode:
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tileserver: error: ")
        assert path.name in lines[0]
    else:
        assert path.parent.name != "broken"
        assert "dimensions:" in proc.stdout
