"""sample_data.icc: the wide-gamut profile made in code is the colorimetry it claims (checked
with plain matrix arithmetic, not LittleCMS), and tagged slides carry it where readers look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sample_data.__main__ import main
from sample_data.icc import D50, GAMMA, colorants, wide_gamut_profile, write_icc
from tileserver.render.colour import profile_info, to_srgb
from tileserver.sources import open_slide

# sRGB's primaries Bradford-adapted to D50 (IEC 61966-2-1 as published in ICC profiles).
SRGB_D50 = np.array(
    [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
     [0.0139322, 0.0971045, 0.7141733]]
)  # fmt: skip


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def test_profile_is_adobe_rgb_colorimetry() -> None:
    matrix = colorants()
    # the published D50 colorants of Adobe RGB (1998)
    np.testing.assert_allclose(matrix[:, 0], [0.6097, 0.3111, 0.0195], atol=2e-4)
    np.testing.assert_allclose(matrix[:, 1], [0.2053, 0.6257, 0.0609], atol=2e-4)
    np.testing.assert_allclose(matrix[:, 2], [0.1492, 0.0632, 0.7446], atol=2e-4)
    np.testing.assert_allclose(matrix.sum(axis=1), D50, atol=2e-4)  # white maps to D50
    assert wide_gamut_profile() == wide_gamut_profile()  # deterministic bytes


def test_conversion_agrees_with_matrix_arithmetic() -> None:
    """In-gamut colours converted by LittleCMS match linearise -> XYZ -> sRGB by hand."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(40, 216, (1, 400, 3), dtype=np.uint8)
    linear = (pixels[0] / 255.0) ** GAMMA
    xyz = linear @ colorants().T
    srgb_linear = xyz @ np.linalg.inv(SRGB_D50).T
    inside = np.all((srgb_linear > 0.001) & (srgb_linear < 0.999), axis=1)
    expected = _srgb_encode(srgb_linear) * 255
    converted = to_srgb(pixels, wide_gamut_profile())[0]
    assert inside.sum() > 100
    assert np.abs(converted[inside] - expected[inside]).max() <= 2.5


@pytest.mark.parametrize("fmt", ["tiff", "ome-tiff", "svs"])
def test_tagged_slides_carry_the_profile(tmp_path: Path, fmt: str) -> None:
    path = write_icc(tmp_path / f"icc.{fmt}", 300, 200, tile=64 if fmt != "svs" else 240)
    with open_slide(path) as source:
        assert source.info.icc_profile == wide_gamut_profile()
    assert profile_info(wide_gamut_profile()).usable


def test_cli_icc_flag(tmp_path: Path) -> None:
    out = tmp_path / "cli.tiff"
    assert main(["tiff", str(out), "--size", "300x200", "--tile", "64", "--icc"]) == 0
    with open_slide(out) as source:
        assert source.info.icc_profile == wide_gamut_profile()


def test_info_describes_the_profile(tmp_path: Path) -> None:
    """``tileserver info`` names the tagged slide's profile, in text and JSON (not its bytes)."""
    import json

    from sample_data.icc import DESCRIPTION
    from tests.cli import cli

    path = write_icc(tmp_path / "icc.tif", 300, 200, tile=64)
    text = cli(tmp_path / "home", "info", str(path))
    assert text.returncode == 0 and f"ICC profile:     {DESCRIPTION} (RGB)" in text.stdout
    doc = json.loads(cli(tmp_path / "home", "info", "--json", str(path)).stdout)
    assert doc["icc_profile"] is True and doc["icc"]["description"] == DESCRIPTION
    assert doc["icc"]["size"] == len(wide_gamut_profile())
