"""Colour management: profiles described, pixels converted to sRGB exactly as LittleCMS does
it on its own, and profiles embedded in images (re-encoded or spliced into stored JPEGs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from sample_data.icc import DESCRIPTION, wide_gamut_profile
from tileserver.errors import UnsupportedFeature
from tileserver.render import colour
from tileserver.render.encode import encode

RNG = np.random.default_rng(15)


def _reference(pixels: np.ndarray, profile: bytes) -> np.ndarray:
    """The conversion built independently of the module (its own profiles and transform)."""
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        "RGB",
        "RGB",
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
    )
    return np.asarray(ImageCms.applyTransform(Image.fromarray(pixels), transform))


def test_to_srgb_matches_a_reference_transform() -> None:
    pixels = RNG.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    profile = wide_gamut_profile()
    converted = colour.to_srgb(pixels, profile)
    assert converted.shape == pixels.shape and converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, _reference(pixels, profile))
    # a wide gamut really changes the pixels (mid-grey alone: gamma 2.2 vs the sRGB curve)
    assert np.abs(converted.astype(int) - pixels).max() > 10


def test_srgb_profile_is_near_identity() -> None:
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    srgb = colour.srgb_icc_profile()
    converted = colour.to_srgb(pixels, srgb)
    assert np.abs(converted.astype(int) - pixels).max() <= 1
    # so it is not worth converting: srgb is none; embed still embeds
    assert colour.profile_kind(srgb) == colour.IDENTITY and colour.profile_info(srgb).srgb
    assert colour.effective("srgb", srgb, tile=False) == "none"
    assert colour.effective(None, srgb, tile=False) == "none"
    assert colour.effective("embed", srgb, tile=False) == "embed"
    wide = wide_gamut_profile()
    assert colour.profile_kind(wide) == colour.CONVERTS and not colour.profile_info(wide).srgb


def test_transforms_are_cached_per_profile_and_bounded() -> None:
    cache = colour._Transforms(capacity=2)
    profile = wide_gamut_profile()
    first = cache.get(profile)
    assert cache.get(bytes(profile)) is first and cache.built == 1  # same digest, one build
    cache.get(colour.srgb_icc_profile())
    cache.get(b"not a profile")
    assert len(cache) == 2
    cache.get(profile)
    assert cache.built == 4  # evicted, built again


def test_profile_info() -> None:
    profile = wide_gamut_profile()
    info = colour.profile_info(profile)
    assert info.description == DESCRIPTION
    assert info.colour_space == "RGB" and info.version == "2.1" and info.usable
    assert info.size == len(profile) and info.digest == colour.digest(profile)
    assert "bytes" not in info.as_dict() and info.as_dict()["sha256"] == info.digest


def test_unreadable_profile_is_described_not_raised() -> None:
    info = colour.profile_info(b"\0" * 200)
    assert not info.usable and info.size == 200 and info.description == ""
    with pytest.raises(UnsupportedFeature):
        colour.to_srgb(np.zeros((2, 2, 3), np.uint8), b"\0" * 200)
    assert not colour.can_convert(b"\0" * 200)
    assert colour.effective("embed", b"\0" * 200, tile=False) == "none"  # never embedded


def test_gray_profile_cannot_convert_rgb() -> None:
    gray = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    assert not colour.profile_info(gray).usable
    assert colour.effective("srgb", gray, tile=False) == "none"


@pytest.mark.parametrize(
    ("choice", "tile", "expected"),
    [
        (None, False, "srgb"),  # rendered images are converted by default
        (None, True, "none"),  # a viewer's tiles stay raw unless asked
        ("srgb", True, "srgb"),
        ("embed", True, "embed"),
        ("none", False, "none"),
        ("embed", False, "embed"),
    ],
)
def test_effective_choice(choice: str | None, tile: bool, expected: str) -> None:
    assert colour.effective(choice, wide_gamut_profile(), tile=tile) == expected
    # without a profile the pixels are sRGB already: one response whatever was asked
    assert colour.effective(choice, None, tile=tile) == "none"


def test_parse_choice() -> None:
    assert colour.parse_choice(None) is None
    assert colour.parse_choice("SRGB") == "srgb"
    with pytest.raises(ValueError, match="icc"):
        colour.parse_choice("adobe")


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encode_embeds_the_profile(fmt: str) -> None:
    pixels = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    profile = wide_gamut_profile()
    with Image.open(io.BytesIO(encode(pixels, fmt, icc_profile=profile))) as image:
        assert image.info.get("icc_profile") == profile
    with Image.open(io.BytesIO(encode(pixels, fmt))) as image:
        assert not image.info.get("icc_profile")
    with Image.open(io.BytesIO(encode(pixels[..., 0], fmt, icc_profile=profile))) as image:
        assert not image.info.get("icc_profile")  # an RGB profile does not describe gray


@pytest.mark.parametrize("size", [568, 200_000])  # one APP2 segment, and several
def test_embed_in_jpeg_keeps_the_scan(size: int) -> None:
    pixels = RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    stored = encode(pixels, "jpeg")
    profile = wide_gamut_profile()
    profile = profile + bytes(size - len(profile))  # padding: only its bytes are compared
    spliced = colour.embed_in_jpeg(stored, profile)
    with Image.open(io.BytesIO(spliced)) as image:
        assert image.info.get("icc_profile") == profile
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(stored))))
    assert spliced.endswith(stored[stored.index(b"\xff\xdb") :])  # tables and scan as stored
    with pytest.raises(ValueError):
        colour.embed_in_jpeg(b"\x89PNG", profile)


def test_usability_is_remembered_past_transform_eviction(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first check, whether a profile converts is a lookup (the event loop asks):
    no transform is built again for it even when its transform was evicted."""
    cache = colour._Transforms(capacity=1)
    monkeypatch.setattr(colour, "TRANSFORMS", cache)
    monkeypatch.setattr(colour, "_kinds", {})
    profile = wide_gamut_profile()
    assert colour.can_convert(profile) and not colour.can_convert(b"junk")
    assert len(cache) == 1 and cache.built == 2  # the profile's transform was evicted
    assert colour.can_convert(profile) and not colour.can_convert(b"junk")
    assert cache.built == 2
