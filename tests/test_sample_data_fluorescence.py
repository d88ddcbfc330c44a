"""Tests for the synthetic fluorescence and z-stack generators (sample_data/fluorescence.py),
read back through tifffile itself and through the project's tifffile source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from sample_data import render_tile
from sample_data.__main__ import main
from sample_data.fluorescence import (
    PANEL,
    panel,
    render_channel,
    write_fluorescence,
    write_rgb_z_stack,
)
from tileserver.geometry import Region
from tileserver.sources import open_slide
from tileserver.sources.base import Channel


def test_render_channel_is_deterministic_and_seamless() -> None:
    def render(x: int, y: int, w: int, h: int, z: int = 1, seed: int = 4) -> np.ndarray:
        return render_channel(0, x, y, w, h, 4.0, z=z, planes=3, seed=seed)

    whole = render(40, 60, 700, 500)
    assert whole.max() > 0.3 * 65535  # there are nuclei in the region
    assert np.array_equal(whole[50:130, 150:250], render(190, 110, 100, 80))
    assert np.array_equal(whole, render(40, 60, 700, 500))
    assert not np.array_equal(whole, render(40, 60, 700, 500, seed=5))
    assert not np.array_equal(whole, render(40, 60, 700, 500, z=0))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_sparse_bright_nuclei_on_a_dark_background(dtype: str) -> None:
    top = np.iinfo(dtype).max
    dapi = render_channel(0, 0, 0, 2048, 2048, 1.0, dtype=dtype, seed=1)
    assert dapi.dtype == dtype
    bright = (dapi > 0.3 * top).mean()
    assert 0.01 < bright < 0.4  # nuclei cover a part of the field, not all of it
    assert np.median(dapi) < 0.02 * top  # the background is dark
    assert dapi.max() > 0.6 * top  # and the nuclei are bright
    marker = render_channel(2, 0, 0, 2048, 2048, 1.0, dtype=dtype, seed=1)
    assert 0 < (marker > 0.3 * top).mean() < bright  # a subset of cells carries each marker


def test_panel_names_colours_and_wavelengths() -> None:
    assert panel(3) == PANEL[:3]
    twelve = panel(12)
    assert len(twelve) == 12 and len({c.name for c in twelve}) == 12
    with pytest.raises(ValueError, match="at least one"):
        panel(0)


def test_pyramidal_fluorescence_ome_tiff_reads_back(tmp_path: Path) -> None:
    path = write_fluorescence(
        tmp_path / "if.ome.tif", 600, 500, channels=3, planes=2, tile=128, z_step=0.7, seed=2
    )
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert series.axes == "CZYX" and series.dtype == np.uint16
        assert [lv.shape for lv in series.levels] == [
            (3, 2, 500, 600),
            (3, 2, 250, 300),
            (3, 2, 125, 150),
        ]
    with open_slide(path) as source:
        info = source.info
        assert info.channels == tuple(Channel(c.name, c.color, c.emission_nm) for c in PANEL[:3])
        assert info.dtype == "uint16" and info.planes == (0.0, 0.7) and info.mpp == (0.5, 0.5)
        for level, ds in ((0, 1.0), (1, 2.0)):
            for z in range(2):
                pixels = source.read_channels(level, Region(128, 0, 128, 128), z)
                for c in range(3):
                    expected = render_channel(c, 128, 0, 128, 128, ds, z=z, planes=2, seed=2)
                    assert np.array_equal(pixels[:, :, c], expected), (level, z, c)


def test_flat_8_bit_fluorescence(tmp_path: Path) -> None:
    path = write_fluorescence(
        tmp_path / "flat.ome.tif", 300, 200, channels=9, dtype="uint8", tile=64, pyramid=False
    )
    with open_slide(path) as source:
        assert len(source.info.levels) == 1 and source.info.planes == ()
        assert source.info.dtype == "uint8" and len(source.info.channels) == 9
        pixels = source.read_channels(0, Region(0, 0, 300, 200))
        assert np.array_equal(pixels[:, :, 8], render_channel(8, 0, 0, 300, 200, dtype="uint8"))


def test_rgb_z_stack(tmp_path: Path) -> None:
    # Seed 3 puts tissue (texture that defocus changes) in the top-left corner.
    path = write_rgb_z_stack(
        tmp_path / "z.ome.tif", 400, 300, planes=3, tile=128, z_step=0.5, seed=3
    )
    with open_slide(path) as source:
        info = source.info
        assert info.channels == () and info.planes == (0.0, 0.5, 1.0)
        assert info.default_plane == 1
        region = Region(0, 0, 400, 300)
        focused = source.read_region(0, region, 1)
        assert np.array_equal(focused, render_tile(0, 0, 400, 300, seed=3))
        blurred = source.read_region(0, region, 0)
        assert not np.array_equal(blurred, focused)
        assert np.array_equal(blurred, source.read_region(0, region, 2))  # symmetric defocus


def test_cli_writes_fluorescence_and_z_stacks(tmp_path: Path) -> None:
    out = tmp_path / "cli.ome.tif"
    args = ["fluorescence", str(out), "--size", "200x150", "--channels", "4", "--bits", "8"]
    assert main([*args, "--planes", "2", "--tile", "64", "--seed", "9"]) == 0
    with open_slide(out) as source:
        assert len(source.info.channels) == 4 and source.info.dtype == "uint8"
        assert source.info.planes == (0.0, 1.0)
        pixels = source.read_channels(0, Region(0, 0, 64, 64), 1)
        expected = render_channel(3, 0, 0, 64, 64, dtype="uint8", z=1, planes=2, seed=9)
        assert np.array_equal(pixels[:, :, 3], expected)
    stack = tmp_path / "z.ome.tif"
    assert main(["z-stack", str(stack), "--size", "100x80", "--planes", "5"]) == 0
    with open_slide(stack) as source:
        assert len(source.info.planes) == 5 and source.info.channels == ()
    assert main(["fluorescence", str(out), "--size", "10x10", "--channels", "0"]) == 2
    assert main(["z-stack", str(stack), "--size", "100x80", "--icc"]) == 2
