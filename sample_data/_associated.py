"""Label and macro ("associated") images planted with canary identifiers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_SIZE: tuple[int, int] = (387, 463)  # (width, height), as in Aperio's CMU-1.svs
MACRO_SIZE: tuple[int, int] = (1280, 431)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: bitmap default font
        return ImageFont.load_default()


def _barcode_bits(text: str) -> list[int]:
    """A deterministic Code-39-looking bar pattern (not decodable) derived from ``text``."""
    bits = [1, 0, 1, 1, 0]
    for ch in text.encode("ascii"):
        for k in range(8):
            bits.extend([1] * (1 + ((ch >> k) & 1)) + [0] * (1 + ((ch >> (7 - k)) & 1)))
    return [*bits, 1, 0, 1, 1]


def make_label(patient: str, barcode: str) -> np.ndarray:
    """(463, 387, 3) uint8 slide label showing ``patient`` and ``barcode`` in text + stripes."""
    width, height = LABEL_SIZE
    img = Image.new("RGB", LABEL_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((4, 4, width - 5, height - 5), outline=(40, 40, 40), width=2)
    draw.text((20, 24), patient, fill=(0, 0, 0), font=_font(34))
    draw.text((20, 80), barcode, fill=(0, 0, 0), font=_font(34))
    draw.text((20, 136), "H&E  03/14/24", fill=(60, 60, 60), font=_font(22))
    bits = _barcode_bits(barcode)
    scale = max(1, (width - 40) // len(bits))
    x = (width - scale * len(bits)) // 2
    for bit in bits:
        if bit:
            draw.rectangle((x, 200, x + scale - 1, 330), fill=(0, 0, 0))
        x += scale
    draw.text((20, 350), barcode, fill=(0, 0, 0), font=_font(26))
    # a 2-D "data matrix"-like block of cells keyed on the barcode
    rng = np.random.default_rng(sum(barcode.encode()) * 7919)
    cells = rng.integers(0, 2, size=(10, 10))
    for j in range(10):
        for i in range(10):
            if cells[j, i] or i == 0 or j == 9:
                x0, y0 = 300 + 6 * i, 380 + 6 * j
                draw.rectangle((x0, y0, x0 + 5, y0 + 5), fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8).copy()


def make_macro(
    label: np.ndarray,
    slide_size: tuple[int, int],
    render: Callable[[int, int, float], np.ndarray],
) -> np.ndarray:
    """(431, 1280, 3) uint8 photo of the glass slide: label on the left, tissue on the right.

    ``render(w, h, downsample)`` returns the whole slide rendered at that downsample.
    """
    width, height = MACRO_SIZE
    macro = Image.new("RGB", MACRO_SIZE, (226, 228, 232))
    lab = Image.fromarray(label)
    lab_w = round(lab.width * (height - 20) / lab.height)
    macro.paste(lab.resize((lab_w, height - 20), Image.Resampling.BILINEAR), (10, 10))
    area_x0 = lab_w + 30
    box_w, box_h = width - area_x0 - 10, height - 20
    slide_w, slide_h = slide_size
    ds = max(slide_w / box_w, slide_h / box_h)
    w, h = max(1, round(slide_w / ds)), max(1, round(slide_h / ds))
    tissue = Image.fromarray(render(w, h, ds))
    macro.paste(tissue, (area_x0 + (box_w - w) // 2, 10 + (box_h - h) // 2))
    return np.asarray(macro, dtype=np.uint8).copy()
