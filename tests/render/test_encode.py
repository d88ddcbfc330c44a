"""Half-size JPEG decoding, the converter's source of level 1 when level 0 is copied."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tileserver.pyramid.reference import downsample_2x
from tileserver.render.encode import decode_jpeg_half


def _jpeg(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=90)
    return out.getvalue()


def _smooth(height: int, width: int) -> np.ndarray:
    """Gradients, so JPEG's error stays small and the comparison means something."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)


@pytest.mark.parametrize(("height", "width"), [(240, 240), (255, 241), (17, 30)])
def test_half_decode_is_a_2x2_mean_of_the_full_decode(height: int, width: int) -> None:
    data = _jpeg(_smooth(height, width).astype(np.uint8))
    with Image.open(io.BytesIO(data)) as image:
        full = np.asarray(image.convert("RGB"))
    expected = np.empty(((height + 1) // 2, (width + 1) // 2, 3), np.uint8)
    downsample_2x(full, expected)
    half = decode_jpeg_half(data)
    assert half.shape == expected.shape
    assert np.abs(half.astype(int) - expected).mean() < 1.0


def test_half_decode_equals_pillows_draft_mode() -> None:
    """Same libjpeg-turbo scaled IDCT as Pillow's draft mode, pixel for pixel."""
    data = _jpeg(np.random.default_rng(1).integers(0, 256, (240, 240, 3), np.uint8))
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (120, 120))
        pillow = np.asarray(image.convert("RGB"))
    assert np.array_equal(decode_jpeg_half(data), pillow)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_gray_and_cmyk_jpegs_come_out_rgb(mode: str) -> None:
    pixels = np.full((64, 48, 3), (200, 120, 40), np.uint8)
    half = decode_jpeg_half(_jpeg(pixels, mode))
    assert half.shape == (32, 24, 3)
    with Image.open(io.BytesIO(_jpeg(pixels, mode))) as image:
        expected = np.asarray(image.convert("RGB"))[0, 0]
    assert np.abs(half[16, 12].astype(int) - expected).max() <= 2


_NOISE = _jpeg(np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))


@pytest.mark.parametrize(
    "data",
    [b"", b"not a jpeg", _NOISE[:200], _NOISE[: len(_NOISE) // 2]],
    ids=["empty", "garbage", "truncated header", "truncated scan"],
)
def test_undecodable_data_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_jpeg_half(data)
