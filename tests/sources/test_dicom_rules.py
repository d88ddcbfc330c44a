"""The pure rules of DICOM series: a JPEG frame's colour model from its own markers, and the
geometry that refuses a series."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tileserver.errors import CorruptSlide, UnsupportedFeature
from tileserver.geometry import Size
from tileserver.sources.dicom_rules import Instance, check_series, copyable_jpeg, frame_colour


def test_silent_frames_follow_the_declared_photometric() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buffer, "JPEG")
    jfif = buffer.getvalue()
    assert frame_colour(jfif) == "YBR"
    assert copyable_jpeg(jfif, declared_rgb=True) == jfif  # its marker wins
    # The same stream without its JFIF marker says nothing about its colours.
    length = int.from_bytes(jfif[4:6], "big")
    silent = jfif[:2] + jfif[4 + length :]
    assert frame_colour(silent) is None
    assert copyable_jpeg(silent, declared_rgb=False) == silent
    flagged = copyable_jpeg(silent, declared_rgb=True)
    assert frame_colour(flagged) == "RGB"
    with pytest.raises(ValueError):
        frame_colour(b"not a jpeg")


def test_check_series_refuses_levels_larger_than_level_0() -> None:
    def instance(name: str, size: tuple[int, int], spacing: float) -> Instance:
        return Instance(Path(name), "1.2.3", "VOLUME", Size(*size), Size(256, 256), (spacing,) * 2)

    check_series([instance("a", (1000, 800), 0.001), instance("b", (500, 400), 0.002)])
    with pytest.raises(CorruptSlide, match=r"^c: level 1200x500 is wider"):
        check_series([instance("a", (1000, 800), 0.001), instance("c", (1200, 500), 0.001)])


def test_check_series_needs_a_pyramid_level() -> None:
    label = Instance(Path("l.dcm"), "1.2.3", "LABEL", Size(100, 50), Size(100, 50), None)
    with pytest.raises(UnsupportedFeature, match=r"^l.dcm: .*no pyramid level.*only: label"):
        check_series([label])
