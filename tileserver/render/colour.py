"""Colour management: what a slide's ICC profile says, and its pixels converted to sRGB.

The only importer of Pillow's ImageCms (LittleCMS). Scanners tag their images with a profile
describing their camera's colour; a browser shows untagged pixels as sRGB, so without a
conversion a wide-gamut scan looks dull or shifted. Three choices per rendered image
(``?icc=``): ``none`` (the stored pixels), ``embed`` (stored pixels, the profile embedded in
the image for a colour-managed client) and ``srgb`` (converted here).

Pure functions over bytes and arrays; the transforms built from profiles are cached by the
profile's bytes (bounded), so a slide's transform is built once per process, whatever
object holds its profile.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageCms

from tileserver.errors import UnsupportedFeature

NONE, EMBED, SRGB = "none", "embed", "srgb"
ICC_CHOICES = (NONE, EMBED, SRGB)

# Perceptual, as Pillow and most viewers default to; for the matrix-shaper profiles scanners
# usually carry it is the same as relative colorimetric (LittleCMS falls back).
INTENT = ImageCms.Intent.PERCEPTUAL
TRANSFORM_CACHE = 64  # profiles whose transforms stay built (tens of KB each)
USABLE_CACHE = 4096  # profiles whose kind (profile_kind) is remembered: a word each
MAX_PROFILE_BYTES = 4 << 20  # a profile is kilobytes (LUT profiles a few hundred); refuse more

_APP2_ICC = b"ICC_PROFILE\x00"
_APP2_CHUNK = 65519 - len(_APP2_ICC) - 2  # segment length field covers itself and the header


@dataclass(frozen=True)
class ProfileInfo:
    """What the describe endpoint says about a profile (never its bytes)."""

    description: str
    colour_space: str  # "RGB", "GRAY", ...
    version: str  # ICC version, e.g. "2.1"
    size: int  # bytes
    digest: str  # sha256 of the bytes, hex: tells profiles apart
    usable: bool  # LittleCMS can build an sRGB transform from it
    srgb: bool  # equivalent to sRGB: converting moves no value by more than one level

    def as_dict(self) -> dict[str, object]:
        return {
            "description": self.description,
            "colour_space": self.colour_space,
            "version": self.version,
            "size": self.size,
            "sha256": self.digest,
            "usable": self.usable,
            "srgb_equivalent": self.srgb,
        }


def digest(profile: bytes) -> str:
    return hashlib.sha256(profile).hexdigest()


def _open(profile: bytes) -> ImageCms.ImageCmsProfile:
    if len(profile) > MAX_PROFILE_BYTES:
        raise UnsupportedFeature(f"ICC profile of {len(profile)} bytes is over the cap")
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ValueError, TypeError) as exc:  # Pillow's word for unparseable
        raise UnsupportedFeature(f"ICC profile is not readable: {exc}") from exc


def profile_info(profile: bytes) -> ProfileInfo:
    """A profile described; an unreadable one is described as such (``usable`` False),
    never raised: a slide with a damaged profile still serves its raw pixels."""
    try:
        core = _open(profile).profile
        description = (core.profile_description or "").strip()
        space = core.xcolor_space.strip()
        version = f"{core.version:.1f}"
    except UnsupportedFeature:
        return ProfileInfo("", "", "", len(profile), digest(profile), False, False)
    kind = profile_kind(profile)
    return ProfileInfo(
        description,
        space,
        version,
        len(profile),
        digest(profile),
        kind != UNUSABLE,
        kind == IDENTITY,
    )


class _Transforms:
    """Built transforms by profile (None: the profile cannot make one), bounded LRU.
    LittleCMS transforms are safe to apply from several threads at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Keyed by the bytes themselves: a bytes object caches its hash, so a request on the
        # event loop finds its slide's transform without re-hashing the profile.
        self._items: OrderedDict[bytes, ImageCms.ImageCmsTransform | None] = OrderedDict()
        self._lock = threading.Lock()
        self.built = 0  # transforms built, for tests

    def get(self, profile: bytes) -> ImageCms.ImageCmsTransform | None:
        key = bytes(profile)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        transform = _build(profile)  # outside the lock: building takes milliseconds
        with self._lock:
            self.built += 1
            self._items[key] = transform
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return transform

    def __len__(self) -> int:
        return len(self._items)


def _build(profile: bytes) -> ImageCms.ImageCmsTransform | None:
    try:
        source = _open(profile)
        if source.profile.xcolor_space.strip() != "RGB":
            return None
        return ImageCms.buildTransform(source, _srgb(), "RGB", "RGB", renderingIntent=INTENT)
    except (UnsupportedFeature, ImageCms.PyCMSError, OSError, ValueError):
        return None  # e.g. a profile LittleCMS parses but cannot make a transform from


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


TRANSFORMS = _Transforms(TRANSFORM_CACHE)


def to_srgb(pixels: np.ndarray, profile: bytes) -> np.ndarray:
    """(h, w, 3) uint8 pixels in ``profile``'s colour space converted to sRGB.
    UnsupportedFeature when the profile cannot be used (not RGB, unreadable)."""
    transform = TRANSFORMS.get(profile)
    if transform is None:
        raise UnsupportedFeature("the slide's ICC profile cannot be converted to sRGB")
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    return np.asarray(transform.apply(image))


UNUSABLE, IDENTITY, CONVERTS = "unusable", "identity", "converts"
_kinds: dict[bytes, str] = {}


def profile_kind(profile: bytes) -> str:
    """``unusable`` (no sRGB transform), ``identity`` (an sRGB profile in all but bytes:
    converting moves no sampled value by more than one level) or ``converts``. Remembered
    apart from the transforms, so after the first call (the service makes it in its pool
    when a slide opens) this is a dictionary lookup, safe on the event loop even once the
    transform has been evicted."""
    known = _kinds.get(profile)
    if known is None:
        transform = TRANSFORMS.get(profile)
        if transform is None:
            known = UNUSABLE
        else:
            known = IDENTITY if _moves_at_most_one_level(transform) else CONVERTS
        if len(_kinds) >= USABLE_CACHE:
            _kinds.clear()  # rare: thousands of distinct profiles; found again on demand
        _kinds[profile] = known
    return known


def _moves_at_most_one_level(transform: ImageCms.ImageCmsTransform) -> bool:
    """Every grey level, every primary and secondary ramp, and an 18-level colour cube
    (6,600 colours) converted: the curves and the matrix both show in them."""
    levels = np.arange(256, dtype=np.uint8)
    zero = np.zeros(256, np.uint8)
    ramps = [
        np.stack([r, g, b], axis=1)
        for r, g, b in [
            (levels, levels, levels),
            (levels, zero, zero),
            (zero, levels, zero),
            (zero, zero, levels),
            (levels, levels, zero),
            (zero, levels, levels),
            (levels, zero, levels),
        ]
    ]
    grid = np.linspace(0, 255, 18).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    sample = np.concatenate([*ramps, cube])[np.newaxis]
    out = np.asarray(transform.apply(Image.fromarray(sample, "RGB")))
    return int(np.abs(out.astype(np.int16) - sample).max()) <= 1


def can_convert(profile: bytes | None) -> bool:
    """Whether ``profile`` makes an sRGB transform (a dictionary lookup after the first)."""
    return profile is not None and profile_kind(profile) != UNUSABLE


def effective(choice: str | None, profile: bytes | None, *, tile: bool) -> str:
    """What a request gets: ``choice`` (None: the default) resolved against the slide. No
    profile, or one LittleCMS cannot use: the pixels are taken as sRGB, so every choice is
    ``none`` (one cached response, one ETag). An sRGB-equivalent profile: ``srgb`` is
    ``none`` (no conversion to pay for). Default: ``srgb`` for rendered images; ``none``
    for a viewer's tiles (DeepZoom, IIIF grid tiles): stored ones pass through with no
    decode, and the rendered ones beside them (edges, small levels) must match them."""
    if profile is None or profile_kind(profile) == UNUSABLE:
        return NONE
    if choice is None:
        choice = NONE if tile else SRGB
    if choice == SRGB and profile_kind(profile) == IDENTITY:
        return NONE
    return choice


def parse_choice(value: str | None) -> str | None:
    """The ``icc`` query parameter: None when absent; ValueError naming it when not one of
    the choices (the route turns it into a 400)."""
    if value is None:
        return None
    if value.lower() not in ICC_CHOICES:
        raise ValueError(f"icc must be one of {', '.join(ICC_CHOICES)}, not {value[:20]!r}")
    return value.lower()


def embed_in_jpeg(data: bytes, profile: bytes) -> bytes:
    """A JPEG with ``profile`` spliced in as APP2 ICC_PROFILE segments right after its SOI
    (after a JFIF APP0 when there is one), the scan left untouched: what a stored tile with
    ``icc=embed`` returns without a decode. ValueError when ``data`` is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    at = 2
    if data[2:4] == b"\xff\xe0" and len(data) >= 6:  # APP0 (JFIF) must stay first
        at = 4 + struct.unpack(">H", data[4:6])[0]
    chunks = [profile[i : i + _APP2_CHUNK] for i in range(0, len(profile), _APP2_CHUNK)] or [b""]
    if len(chunks) > 255:
        raise ValueError("ICC profile too large to embed in a JPEG")
    segments = b"".join(
        b"\xff\xe2"
        + struct.pack(">H", 2 + len(_APP2_ICC) + 2 + len(chunk))
        + _APP2_ICC
        + bytes([n, len(chunks)])
        + chunk
        for n, chunk in enumerate(chunks, 1)
    )
    return data[:at] + segments + data[at:]


@cache
def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile (LittleCMS's, through Pillow): what a colour image's pixels mean
    when the source gave no profile (DICOM WSI requires one for colour images). The header's
    creation date is fixed so the bytes are the same in every process (ETags, digests)."""
    profile = bytearray(_srgb().tobytes())
    profile[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    profile[84:100] = bytes(16)  # a profile ID (MD5) would cover the date: zero is "none"
    return bytes(profile)
