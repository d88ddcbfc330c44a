"""The composite kernel must match its NumPy twin byte for byte, and both the formula."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tileserver.render.composite import composite, composite_reference

# deadline=None: the first example of each dtype and layout pays for JIT compilation.
PROPERTY = settings(max_examples=150, deadline=None)


@st.composite
def cases(
    draw: st.DrawFn,
) -> tuple[np.ndarray, list[tuple[int, int, int]], list[tuple[float, float]]]:
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    top = int(np.iinfo(dtype).max)
    k = draw(st.integers(1, 8))
    shape = (k, draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    planes = draw(arrays(dtype, shape))
    if draw(st.booleans()):  # a strided view, as a region cut out of a bigger buffer
        planes = np.repeat(planes, 2, axis=2)[:, :, ::2]
    colors = [
        (draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
        for _ in range(k)
    ]
    windows = []
    for _ in range(k):
        start = draw(st.integers(0, top - 1))
        windows.append((float(start), float(draw(st.integers(start + 1, top)))))
    return planes, colors, windows


@PROPERTY
@given(case=cases())
def test_kernel_matches_twin(
    case: tuple[np.ndarray, list[tuple[int, int, int]], list[tuple[float, float]]],
) -> None:
    planes, colors, windows = case
    np.testing.assert_array_equal(
        composite(planes, colors, windows), composite_reference(planes, colors, windows)
    )


@pytest.mark.parametrize("fn", [composite, composite_reference], ids=["kernel", "twin"])
def test_hand_checked_values(fn: object) -> None:
    # Two uint16 channels: blue windowed 100-300, yellow 0-1000.
    planes = np.array([[[50, 200, 300, 65535]], [[0, 500, 1000, 65535]]], np.uint16)
    out = fn(planes, [(0, 0, 255), (255, 255, 0)], [(100.0, 300.0), (0.0, 1000.0)])  # type: ignore[operator]
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    # below start -> 0; half way -> 127.5 rounds up to 128; full -> 255; sums clip to 255.
    assert out[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 255, 255]]


def test_single_channel_gray_window_is_linear() -> None:
    planes = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    out = composite(planes, [(255, 255, 255)], [(0.0, 255.0)])
    np.testing.assert_array_equal(out[..., 0], planes[0])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_writes_into_out() -> None:
    planes = np.full((2, 4, 4), 10, np.uint8)
    out = np.zeros((4, 4, 3), np.uint8)
    assert composite(planes, [(255, 0, 0), (0, 255, 0)], [(0.0, 10.0), (0.0, 20.0)], out) is out
    assert out[0, 0].tolist() == [255, 128, 0]


@pytest.mark.parametrize("fn", [composite, composite_reference], ids=["kernel", "twin"])
@pytest.mark.parametrize(
    ("planes", "colors", "windows", "match"),
    [
        (np.zeros((1, 2, 2), np.float32), [(1, 2, 3)], [(0.0, 1.0)], "uint8 or uint16"),
        (np.zeros((2, 2), np.uint8), [(1, 2, 3)], [(0.0, 1.0)], "numpy array"),
        (np.zeros((2, 3, 3), np.uint8), [(1, 2, 3)], [(0.0, 1.0)], "2 colours"),
        (np.zeros((1, 2, 2), np.uint8), [(1, 2, 300)], [(0.0, 1.0)], "0..255"),
        (np.zeros((1, 2, 2), np.uint8), [(1, 2, 3)], [(5.0, 5.0)], "end > start"),
        (np.zeros((1, 2, 2), np.uint8), [(1, 2, 3)], [(0.0, float("nan"))], "finite"),
    ],
)
def test_bad_arguments_refused_alike(
    fn: object, planes: np.ndarray, colors: list, windows: list, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fn(planes, colors, windows)  # type: ignore[operator]
