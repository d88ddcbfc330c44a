"""Declared sizes read from codestream headers: what real encoders write, and never anything
but a size or a ValueError for arbitrary bytes."""

from __future__ import annotations

import io
from collections.abc import Callable

import imagecodecs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from sample_data.bombs import bomb_j2k, bomb_jpeg
from tileserver.geometry import Size
from tileserver.sources.codestreams import (
    Declared,
    j2k_declared,
    jpeg_declared,
    png_declared,
    webp_declared,
)


def _pillow(mode: str, size: tuple[int, int], fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "white" if mode != "CMYK" else (0, 0, 0, 0)).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "components", "options"),
    [
        ("RGB", 3, {}),
        ("L", 1, {}),
        ("CMYK", 4, {}),
        ("RGB", 3, {"progressive": True, "optimize": True}),
        ("RGB", 3, {"icc_profile": b"\0" * 3000, "comment": b"x" * 100}),
    ],
)
def test_jpeg_frames(mode: str, components: int, options: dict[str, object]) -> None:
    data = _pillow(mode, (301, 77), "JPEG", **options)
    assert jpeg_declared(data) == Declared(301, 77, components)


def test_jpeg_fill_bytes_between_markers() -> None:
    data = _pillow("RGB", (16, 8), "JPEG")
    assert jpeg_declared(data[:2] + b"\xff\xff\xff" + data[2:]) == Declared(16, 8, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"GIF89a....",
        b"\xff\xd8\xff\xda\x00\x02",  # a scan before any frame header
        b"\xff\xd8\xff\xd9",  # tables only (TIFF JPEGTables)
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x01\x00\x03",  # height 0: DNL
        b"\xff\xd8\xff\xe0\x00\x01",  # a segment length below 2
        b"\xff\xd8\x00\x00\x00\x00",
    ],
)
def test_jpeg_without_a_usable_frame_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        jpeg_declared(data)


def test_bombs_declare_what_they_claim() -> None:
    assert jpeg_declared(bomb_jpeg()) == Declared(65500, 65500, 3)
    assert j2k_declared(bomb_j2k()) == Declared(65500, 65500, 3)
    assert not Declared(65500, 65500, 3).fits(Size(256, 256))
    assert Declared(256, 200, 3).fits(Size(256, 256))
    assert not Declared(256, 256, 5).fits(Size(256, 256))


@pytest.mark.parametrize("codecformat", ["j2k", "jp2"])
@pytest.mark.parametrize("shape", [(77, 301, 3), (64, 48)])
def test_jpeg2000_images(codecformat: str, shape: tuple[int, ...]) -> None:
    pixels = np.zeros(shape, np.uint8)
    data = imagecodecs.jpeg2k_encode(pixels, level=0, codecformat=codecformat)
    components = shape[2] if len(shape) == 3 else 1
    assert j2k_declared(data) == Declared(shape[1], shape[0], components)


@pytest.mark.parametrize(("mode", "components"), [("RGB", 3), ("L", 1), ("RGBA", 4), ("P", 1)])
def test_png_images(mode: str, components: int) -> None:
    assert png_declared(_pillow(mode, (301, 77), "PNG")) == Declared(301, 77, components)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("RGB", {"quality": 80}), ("RGB", {"lossless": True}), ("RGBA", {"quality": 80})],
)
def test_webp_images(mode: str, options: dict[str, object]) -> None:
    declared = webp_declared(_pillow(mode, (301, 77), "WEBP", **options))
    assert (declared.width, declared.height) == (301, 77)


_PARSERS: dict[str, tuple[Callable[[bytes], Declared], bytes]] = {
    "jpeg": (jpeg_declared, b"\xff\xd8"),
    "j2k": (j2k_declared, b"\xff\x4f\xff\x51"),
    "jp2": (j2k_declared, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    "png": (png_declared, b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"),
    "webp": (webp_declared, b"RIFF\x00\x00\x00\x00WEBP"),
}


@pytest.mark.parametrize("kind", sorted(_PARSERS))
@given(tail=st.binary(max_size=200))
def test_arbitrary_bytes_give_a_size_or_a_value_error(kind: str, tail: bytes) -> None:
    parse, magic = _PARSERS[kind]
    for data in (tail, magic + tail):
        try:
            declared = parse(data)
        except ValueError:
            continue
        assert declared.width >= 0 and declared.height >= 0
