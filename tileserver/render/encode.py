"""Pixels -> image bytes, resizing and pixel-level transforms. The only importer of Pillow
and simplejpeg in the package (the store's own chunk codec lives in store/chunks.py; colour
management, Pillow's ImageCms, in render/colour.py)."""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

from tileserver.geometry import Size

# Output formats by every name a URL may use for them.
FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode(
    pixels: np.ndarray, fmt: str, quality: int = 85, icc_profile: bytes | None = None
) -> bytes:
    """Encode (h, w, 3) RGB or (h, w) gray/bitonal uint8 pixels as ``fmt``, with
    ``icc_profile`` embedded (RGB only: an RGB profile does not describe gray pixels)."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    out = io.BytesIO()
    options: dict[str, object] = {}
    if icc_profile is not None and image.mode == "RGB":
        options["icc_profile"] = icc_profile
    if fmt == "jpeg":
        options["quality"] = quality
    elif fmt == "webp":
        options.update(quality=quality, method=2)
    elif fmt == "png":
        options["compress_level"] = 3  # speed over the last few percent of size
    image.save(out, _PIL_FORMATS[fmt], **options)
    return out.getvalue()


def resize(pixels: np.ndarray, size: Size) -> np.ndarray:
    """Resample to ``size``: area averaging when shrinking, bicubic when enlarging."""
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))
    shrinking = size.width <= pixels.shape[1] and size.height <= pixels.shape[0]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.asarray(image.resize((size.width, size.height), method))


def decode(data: bytes) -> np.ndarray:
    """(h, w, 3) RGB pixels of any image Pillow reads. ValueError for an image whose header
    declares more than ``MAX_DECODE_PIXELS`` (Pillow opens lazily: nothing is decoded yet)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own, higher cap
        raise ValueError(f"image over the decode cap: {exc}") from exc
    with image:
        _check_decode_size(image.width, image.height)
        return np.asarray(image.convert("RGB"))


def _check_decode_size(width: int, height: int) -> None:
    # Imported here: tileserver.sources (its DICOM reader) imports this module, and
    # sources.base would run the package's __init__ first, a cycle for whoever imports
    # render.encode before tileserver.sources.
    from tileserver.sources.base import MAX_DECODE_PIXELS

    if width * height > MAX_DECODE_PIXELS:
        raise ValueError(
            f"image declares {width}x{height} pixels, over the decode cap of {MAX_DECODE_PIXELS}"
        )


def decode_jpeg_half(data: bytes) -> np.ndarray:
    """A JPEG decoded at half size in the DCT domain (libjpeg scaled IDCT): what a 2x2 area
    mean of the full decode gives, within a fraction of a grey level, at a fraction of the
    cost, and without ever making the full-size pixels. ValueError when it does not decode
    or declares more than ``MAX_DECODE_PIXELS``.

    simplejpeg (TurboJPEG) rather than Pillow: the same libjpeg-turbo output with none of
    Pillow's per-image Python, half the time per 240-px tile. CMYK needs Pillow."""
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    _check_decode_size(width, height)  # the header may claim anything: 65500 x 65500 is 12 GiB
    if colorspace in ("CMYK", "YCCK"):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (-(-width // 2), -(-height // 2)))
                return np.asarray(image.convert("RGB"))
        except OSError as exc:  # Pillow's word for undecodable data
            raise ValueError(str(exc)) from exc
    pixels: np.ndarray = simplejpeg.decode_jpeg(
        data, "RGB", min_height=-(-height // 2), min_width=-(-width // 2), min_factor=2
    )
    return pixels


def to_quality(pixels: np.ndarray, quality: str) -> np.ndarray:
    """IIIF qualities: default/color keep RGB, gray is luma, bitonal thresholds luma at 128."""
    if quality in ("default", "color"):
        return pixels
    rgb = pixels.astype(np.uint32)
    luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    gray = luma.astype(np.uint8)
    if quality == "gray":
        return gray
    return np.where(gray >= 128, 255, 0).astype(np.uint8)


def rotate(pixels: np.ndarray, degrees: int, mirror: bool) -> np.ndarray:
    """IIIF rotation: mirror first (horizontally), then rotate clockwise by 0/90/180/270."""
    if mirror:
        pixels = pixels[:, ::-1]
    if degrees % 360:
        pixels = np.rot90(pixels, k=-(degrees // 90))
    return np.ascontiguousarray(pixels)


def encode_jpeg_as(pixels: np.ndarray, photometric: str, quality: int = 90) -> bytes:
    """(h, w, 3) RGB pixels as a baseline JPEG in the colour model a DICOM Photometric
    Interpretation names: "RGB" (Adobe transform 0), "YBR_FULL_422" (YCbCr 4:2:0) or
    "YBR_FULL" (YCbCr 4:4:4), so frames of one instance can all share one declaration."""
    models: dict[str, dict[str, object]] = {
        "RGB": {"keep_rgb": True, "subsampling": 0},
        "YBR_FULL_422": {"subsampling": 2},
        "YBR_FULL": {"subsampling": 0},
    }
    options = models[photometric]  # KeyError for any other
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "JPEG", quality=quality, **options)
    return out.getvalue()
