"""Kernels must match their NumPy twins exactly, and both must match hand-checked values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tileserver.pyramid import kernels, reference

Downsample = Callable[[np.ndarray, np.ndarray], None]

DOWNSAMPLERS: list[Downsample] = [kernels.downsample_2x, reference.downsample_2x]
KERNELS: list[Downsample] = [kernels.downsample_2x]
IS_UNIFORM = [kernels.is_uniform, reference.is_uniform]

# deadline=None: the first example of each array layout pays for JIT compilation.
PROPERTY = settings(max_examples=150, deadline=None)

dims = st.integers(min_value=1, max_value=67)
channels = st.sampled_from([1, 3, 4])


def _out_for(src: np.ndarray) -> np.ndarray:
    h, w, c = src.shape
    return np.zeros(((h + 1) // 2, (w + 1) // 2, c), dtype=np.uint8)


def _run(fn: Downsample, src: np.ndarray) -> np.ndarray:
    out = _out_for(src)
    fn(src, out)
    return out


@st.composite
def images(draw: st.DrawFn) -> np.ndarray:
    shape = (draw(dims), draw(dims), draw(channels))
    return draw(arrays(np.uint8, shape))


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
@PROPERTY
@given(src=images())
def test_kernel_matches_reference(kernel: Downsample, src: np.ndarray) -> None:
    np.testing.assert_array_equal(_run(kernel, src), _run(reference.downsample_2x, src))


@st.composite
def strided_views(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """A src view cut out of a bigger array, plus a strided out view of the right shape."""
    h, w, c = draw(dims), draw(dims), draw(channels)
    ystep, xstep = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    y0, x0, c0 = draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.integers(0, 1))
    big_shape = (y0 + h * ystep, x0 + w * xstep, c0 + c + 1)
    big = draw(arrays(np.uint8, big_shape))
    src = big[y0::ystep, x0::xstep, c0 : c0 + c]
    assert src.shape == (h, w, c)
    out_shape = ((h + 1) // 2, (w + 1) // 2, c)
    return src, big, out_shape


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
@PROPERTY
@given(case=strided_views())
def test_kernel_matches_reference_on_views(
    kernel: Downsample, case: tuple[np.ndarray, np.ndarray, tuple[int, int, int]]
) -> None:
    src, big, (oh, ow, c) = case
    before = big.copy()
    # out is a strided window inside a larger buffer; the rest of that buffer must stay intact.
    out_buf = np.full((oh + 1, 2 * ow, c + 2), 7, dtype=np.uint8)
    out = out_buf[1:, ::2, 1 : 1 + c]
    assert not out.flags.c_contiguous or out.size <= c
    kernel(src, out)

    expected = _out_for(src)
    reference.downsample_2x(np.ascontiguousarray(src), expected)
    np.testing.assert_array_equal(out, expected)
    untouched = np.ones(out_buf.shape, dtype=bool)
    untouched[1:, ::2, 1 : 1 + c] = False
    assert (out_buf[untouched] == 7).all()
    np.testing.assert_array_equal(big, before)


def _img(rows: list[list[int]]) -> np.ndarray:
    """Single-channel image from a nested list, shape (h, w, 1)."""
    return np.array(rows, dtype=np.uint8)[:, :, None]


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        # (1+2+2+2+2)//4 = 9//4 = 2: round half up, not truncation (7//4 = 1).
        ([[1, 2], [2, 2]], [[2]]),
        # (0+1+1+1+2)//4 = 5//4 = 1.
        ([[0, 1], [1, 1]], [[1]]),
        # Exactly .5 rounds up: (0+0+1+1+2)//4 = 1.
        ([[0, 0], [1, 1]], [[1]]),
        # Below .5 rounds down: (0+0+0+1+2)//4 = 0.
        ([[0, 0], [0, 1]], [[0]]),
        ([[255, 255], [255, 255]], [[255]]),
        # 1x1: the lone corner pixel is copied.
        ([[37]], [[37]]),
        # Odd width: last column is the mean of its 2 vertical pixels, (3+4+1)//2 = 4.
        ([[0, 4, 3], [0, 4, 4]], [[2, 4]]),
        # Odd height: last row is the mean of its 2 horizontal pixels, (10+13+1)//2 = 12.
        ([[0, 0], [8, 8], [10, 13]], [[4], [12]]),
        # Odd both: block, column pair, row pair and the copied corner.
        ([[1, 2, 9], [3, 4, 10], [5, 6, 200]], [[3, 10], [6, 200]]),
        # 1xN and Nx1 strips only ever average pairs.
        ([[0, 1, 254, 255, 9]], [[1, 255, 9]]),
        ([[0], [1], [100]], [[1], [100]]),
    ],
)
def test_hand_checked(fn: Downsample, src: list[list[int]], expected: list[list[int]]) -> None:
    np.testing.assert_array_equal(_run(fn, _img(src)), _img(expected))


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 4), (64, 64, 3), (67, 3, 1)])
def test_all_white_stays_white(fn: Downsample, shape: tuple[int, int, int]) -> None:
    src = np.full(shape, 255, dtype=np.uint8)
    assert (_run(fn, src) == 255).all()


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_channels_are_independent(fn: Downsample) -> None:
    src = np.zeros((2, 2, 3), dtype=np.uint8)
    src[..., 0], src[..., 1], src[..., 2] = 255, 0, 128
    np.testing.assert_array_equal(_run(fn, src), [[[255, 0, 128]]])


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@pytest.mark.parametrize(
    ("src", "out", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 3, 3), np.uint8), "shape"),
        (np.zeros((5, 5, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 4), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2), np.uint8), "shape"),
        (np.zeros((4, 4), np.uint8), np.zeros((2, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint16), "dtype"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((2, 2, 3), np.uint8), "dtype"),
        ([[[0]]], np.zeros((1, 1, 1), np.uint8), "ndarray"),
    ],
)
def test_rejects_bad_arguments(fn: Downsample, src: object, out: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(src, out)  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
def test_rejects_overlapping_and_readonly_out(kernel: Downsample) -> None:
    buf = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        kernel(buf, buf[:2, :2])
    out = np.zeros((2, 2, 3), np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        kernel(buf, out)


@pytest.mark.parametrize("fn", IS_UNIFORM, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_is_uniform_cases(fn: Callable[[np.ndarray, int, int], bool]) -> None:
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    assert fn(white, 255, 0)
    assert not fn(white, 254, 0)
    assert fn(white, 250, 5)
    assert not fn(white, 250, 4)

    tile = white.copy()
    tile[15, 15, 2] = 241  # the last sample is the only outlier
    assert fn(tile, 255, 14)  # |241 - 255| == 14: on the boundary is still uniform
    assert not fn(tile, 255, 13)
    assert fn(tile, 248, 7)  # both 241 and 255 are exactly 7 away
    assert not fn(tile, 248, 6)

    tile[0, 0, 0] = 0  # first sample is an outlier: early exit path
    assert not fn(tile, 255, 20)
    assert fn(tile, 128, 128)
    # value outside the uint8 range is allowed and just widens the gap.
    assert fn(np.zeros((2, 2, 1), np.uint8), -3, 3)
    assert not fn(np.zeros((2, 2, 1), np.uint8), -3, 2)
    # An empty tile has no outlier.
    assert fn(np.zeros((0, 4, 3), np.uint8), 255, 0)


@pytest.mark.parametrize("fn", IS_UNIFORM, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_is_uniform_on_views_and_bad_arguments(fn: Callable[[np.ndarray, int, int], bool]) -> None:
    big = np.full((8, 8, 4), 255, dtype=np.uint8)
    big[:, :, 3] = 0  # alpha channel outside the view
    big[::2] = 0  # rows outside the view
    assert fn(big[1::2, :, :3], 255, 0)
    assert not fn(big[:, :, :3], 255, 0)
    with pytest.raises(ValueError, match="tolerance"):
        fn(big, 255, -1)
    with pytest.raises(ValueError, match="dtype"):
        fn(big.astype(np.float32), 255, 0)
    with pytest.raises(ValueError, match="shape"):
        fn(big[:, :, 0], 255, 0)


@PROPERTY
@given(
    tile=images(),
    value=st.integers(0, 255),
    tolerance=st.integers(0, 255),
)
def test_is_uniform_matches_reference(tile: np.ndarray, value: int, tolerance: int) -> None:
    assert kernels.is_uniform(tile, value, tolerance) == reference.is_uniform(
        tile, value, tolerance
    )


@PROPERTY
@given(
    case=strided_views(),
    as_view=st.booleans(),
    value=st.integers(0, 255),
    tolerance=st.integers(0, 10),
    offset=st.integers(-12, 12),
    data=st.data(),
)
def test_is_uniform_near_boundary(
    case: tuple[np.ndarray, np.ndarray, tuple[int, int, int]],
    as_view: bool,
    value: int,
    tolerance: int,
    offset: int,
    data: st.DataObject,
) -> None:
    """Random tiles rarely sit near the boundary, so plant one outlier at a chosen distance.

    Strided views exercise the 3-D fallback, contiguous tiles the merged-row fast path.
    """
    view = case[0]
    tile = view if as_view else np.empty(view.shape, dtype=np.uint8)
    tile[...] = value
    y, x, k = (data.draw(st.integers(0, n - 1)) for n in tile.shape)
    tile[y, x, k] = np.clip(value + offset, 0, 255)
    want = abs(int(tile[y, x, k]) - value) <= tolerance
    assert kernels.is_uniform(tile, value, tolerance) is want
    assert reference.is_uniform(tile, value, tolerance) is want


# -- 16-bit and many-channel samples (fluorescence) ---------------------------------------------

wide_channels = st.integers(min_value=1, max_value=9)
sample_dtypes = st.sampled_from([np.uint8, np.uint16])


@st.composite
def channel_images(draw: st.DrawFn) -> np.ndarray:
    """uint8 or uint16 samples, 1..9 channels, odd and even edges, biased to the extremes."""
    dtype = draw(sample_dtypes)
    top = int(np.iinfo(dtype).max)
    shape = (draw(dims), draw(dims), draw(wide_channels))
    values = st.one_of(st.integers(0, top), st.sampled_from([0, 1, top - 1, top]))
    return draw(arrays(dtype, shape, elements=values))


def _out_like(src: np.ndarray) -> np.ndarray:
    h, w, c = src.shape
    return np.zeros(((h + 1) // 2, (w + 1) // 2, c), dtype=src.dtype)


@PROPERTY
@given(src=channel_images(), view=st.booleans())
def test_kernel_matches_reference_for_channels(src: np.ndarray, view: bool) -> None:
    if view:  # a channel band cut out of a wider one: strided in every axis
        big = np.zeros((src.shape[0], src.shape[1] * 2, src.shape[2] + 1), src.dtype)
        big[:, ::2, 1:] = src
        src = big[:, ::2, 1:]
    got, want = _out_like(src), _out_like(src)
    kernels.downsample_2x(src, got)
    reference.downsample_2x(np.ascontiguousarray(src), want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_uint16_hand_checked(fn: Downsample) -> None:
    src = np.array([[65535, 65535, 1], [65535, 65535, 2], [0, 3, 40000]], np.uint16)[
        :, :, None
    ].repeat(5, axis=2)
    src[:, :, 4] = 0
    out = np.zeros((2, 2, 5), np.uint16)
    fn(src, out)
    # Full block of 65535 stays 65535 (no uint16 overflow); (1+2+1)//2 = 2; (0+3+1)//2 = 2.
    np.testing.assert_array_equal(out[:, :, 0], [[65535, 2], [2, 40000]])
    assert not out[:, :, 4].any()


@pytest.mark.parametrize("fn", DOWNSAMPLERS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_uint16_needs_a_uint16_out(fn: Downsample) -> None:
    with pytest.raises(ValueError, match="dtype"):
        fn(np.zeros((4, 4, 8), np.uint16), np.zeros((2, 2, 8), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        fn(np.zeros((4, 4, 8), np.int16), np.zeros((2, 2, 8), np.int16))


HISTOGRAMS = [kernels.histogram, reference.histogram]


@PROPERTY
@given(samples=channel_images(), view=st.booleans())
def test_histogram_matches_reference(samples: np.ndarray, view: bool) -> None:
    if view:
        samples = samples[::2, 1:]
    bins = 1 << (8 * samples.dtype.itemsize)
    got = np.ones((samples.shape[2], bins), np.int64)  # counts accumulate onto what is there
    want = got.copy()
    kernels.histogram(samples, got)
    reference.histogram(np.ascontiguousarray(samples), want)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == want.shape[0] * bins + samples.size


@pytest.mark.parametrize("fn", HISTOGRAMS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_histogram_hand_checked_and_bad_arguments(
    fn: Callable[[np.ndarray, np.ndarray], None],
) -> None:
    samples = np.array([[[0, 65535], [7, 7]], [[7, 0], [65535, 1]]], np.uint16)
    counts = np.zeros((2, 65536), np.int64)
    fn(samples, counts)
    assert counts[0, 0] == 1 and counts[0, 7] == 2 and counts[0, 65535] == 1
    assert counts[1, 65535] == 1 and counts[1, 7] == 1 and counts[1, 0] == 1 and counts[1, 1] == 1
    with pytest.raises(ValueError, match="shape"):
        fn(samples, np.zeros((2, 256), np.int64))
    with pytest.raises(ValueError, match="int64"):
        fn(samples, np.zeros((2, 65536), np.int32))
    with pytest.raises(ValueError, match="dtype"):
        fn(samples.astype(np.float32), counts)
