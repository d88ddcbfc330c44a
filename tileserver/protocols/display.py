"""Display parameters of channel and multi-plane slides: ``channels``, ``colors``,
``windows`` and ``z``, parsed against what the slide has, with its stored display settings
as defaults. Pure: a query mapping and the slide's description in, a ``Display`` out.

    channels=0,2,5                     indices into the slide's channels, no repeats
    colors=0000ff,00ff00,ff0000        one RRGGBB per chosen channel
    windows=100-4000,0-255,0-65535     one start-end per chosen channel (sample values)
    z=1                                focal plane index

Unset parameters take the stored settings: the active channels, their colours and windows,
and the default (best-focus) plane. Anything else is a ``DisplayError`` naming the parameter
(HTTP 400 through RegionError's row in the server's table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tileserver.errors import RegionError
from tileserver.sources.base import SlideInfo
from tileserver.sources.channel_metadata import display_colors
from tileserver.store.layout import DEFAULT_ACTIVE, StoreLayout

__all__ = [
    "PARAMETERS",
    "Display",
    "DisplayChannel",
    "DisplayError",
    "SlideDisplay",
    "display_document",
    "layout_display",
    "parse_display",
    "source_display",
]

PARAMETERS = ("channels", "colors", "windows", "z")
RGB = tuple[int, int, int]
Window = tuple[float, float]
DTYPE_MAX = {"uint8": 255, "uint16": 65535}
_INDEX = re.compile(r"\d{1,3}")
_HEX = re.compile(r"[0-9a-fA-F]{6}")
_NUMBER = r"\d{1,6}(?:\.\d{1,6})?"
_WINDOW = re.compile(rf"({_NUMBER})-({_NUMBER})")


class DisplayError(RegionError):
    """A display parameter that is malformed or outside the slide (the message names it)."""


@dataclass(frozen=True)
class DisplayChannel:
    name: str
    color: RGB
    window: Window  # default display window, in sample values
    active: bool = True
    emission_nm: float | None = None


@dataclass(frozen=True)
class SlideDisplay:
    """What a slide offers to display: no channels means RGB (brightfield)."""

    channels: tuple[DisplayChannel, ...] = ()
    dtype: str = "uint8"
    planes: tuple[float, ...] = ()  # focal planes' z offsets in µm; empty: one plane
    default_plane: int = 0

    @property
    def plane_count(self) -> int:
        return max(1, len(self.planes))


@dataclass(frozen=True)
class Display:
    """A resolved request: which plane, which channels in what colours and windows."""

    z: int
    channels: tuple[int, ...] = ()
    colors: tuple[RGB, ...] = ()
    windows: tuple[Window, ...] = ()

    @property
    def key(self) -> str:
        """Canonical text: equal displays give equal keys (cache keys, ETags)."""
        parts = [
            f"{c}:{_hex(rgb)}:{_num(w[0])}-{_num(w[1])}"
            for c, rgb, w in zip(self.channels, self.colors, self.windows, strict=True)
        ]
        return f"z{self.z};" + ";".join(parts)

    def query(self) -> dict[str, str]:
        """The query parameters that ask for exactly this display."""
        q = {"z": str(self.z)}
        if self.channels:
            q["channels"] = ",".join(map(str, self.channels))
            q["colors"] = ",".join(map(_hex, self.colors))
            q["windows"] = ",".join(f"{_num(a)}-{_num(b)}" for a, b in self.windows)
        return q


def _hex(rgb: RGB) -> str:
    return "{:02x}{:02x}{:02x}".format(*rgb)


def _num(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _items(name: str, raw: str) -> list[str]:
    items = raw.split(",")
    if not raw or any(not item for item in items):
        raise DisplayError(f"query parameter {name!r} must be a comma-separated list")
    return items


def _per_channel(name: str, raw: str, chosen: Sequence[int], each: str) -> list[str]:
    """``raw``'s items, one per chosen channel."""
    items = _items(name, raw)
    if len(items) != len(chosen):
        raise DisplayError(
            f"query parameter '{name}' needs one {each} per chosen channel ({len(chosen)}), "
            f"got {len(items)}"
        )
    return items


def parse_display(query: Mapping[str, str], slide: SlideDisplay) -> Display:
    """The display ``query`` asks for on ``slide``, defaults filled in."""
    z = _parse_z(query.get("z"), slide)
    given = [name for name in ("channels", "colors", "windows") if name in query]
    if not slide.channels:
        if given:
            raise DisplayError(f"query parameter {given[0]!r}: this slide has no channels (RGB)")
        return Display(z)
    chosen = _parse_channels(query.get("channels"), slide)
    colors = _parse_colors(query.get("colors"), slide, chosen)
    windows = _parse_windows(query.get("windows"), slide, chosen)
    return Display(z, chosen, colors, windows)


def _parse_z(raw: str | None, slide: SlideDisplay) -> int:
    if raw is None:
        return slide.default_plane
    if not _INDEX.fullmatch(raw):
        raise DisplayError(f"query parameter 'z' must be a plane index, not {raw[:20]!r}")
    z = int(raw)
    if z >= slide.plane_count:
        raise DisplayError(f"query parameter 'z' must be in 0..{slide.plane_count - 1}")
    return z


def _parse_channels(raw: str | None, slide: SlideDisplay) -> tuple[int, ...]:
    n = len(slide.channels)
    if raw is None:
        active = tuple(i for i, ch in enumerate(slide.channels) if ch.active)
        return active or tuple(range(n))
    chosen: list[int] = []
    for item in _items("channels", raw):
        if not _INDEX.fullmatch(item) or int(item) >= n:
            raise DisplayError(
                f"query parameter 'channels': {item[:20]!r} is not a channel index in 0..{n - 1}"
            )
        if int(item) in chosen:
            raise DisplayError(f"query parameter 'channels' repeats channel {int(item)}")
        chosen.append(int(item))
    return tuple(chosen)


def _parse_colors(raw: str | None, slide: SlideDisplay, chosen: Sequence[int]) -> tuple[RGB, ...]:
    if raw is None:
        return tuple(slide.channels[c].color for c in chosen)
    items = _per_channel("colors", raw, chosen, "RRGGBB")
    colors = []
    for item in items:
        if not _HEX.fullmatch(item):
            raise DisplayError(f"query parameter 'colors': {item[:20]!r} is not RRGGBB hex")
        colors.append(_rgb(item))
    return tuple(colors)


def _parse_windows(
    raw: str | None, slide: SlideDisplay, chosen: Sequence[int]
) -> tuple[Window, ...]:
    if raw is None:
        return tuple(slide.channels[c].window for c in chosen)
    items = _per_channel("windows", raw, chosen, "start-end")
    top = DTYPE_MAX[slide.dtype]
    windows = []
    for item in items:
        m = _WINDOW.fullmatch(item)
        if m is None:
            raise DisplayError(f"query parameter 'windows': {item[:20]!r} is not start-end")
        start, end = float(m[1]), float(m[2])
        if not start < end <= top:
            raise DisplayError(
                f"query parameter 'windows': {item!r} must have start < end <= {top}"
            )
        windows.append((start, end))
    return tuple(windows)


def _rgb(text: str) -> RGB:
    value = int(text, 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def layout_display(layout: StoreLayout) -> SlideDisplay:
    """What a store offers to display (its layout was validated when the store opened)."""
    channels = tuple(
        DisplayChannel(
            name=info.name,
            color=_rgb(info.color),
            window=info.display_window(layout.dtype),
            active=info.active,
            emission_nm=info.emission_nm,
        )
        for info in (layout.channel_info if layout.kind == "channels" else ())
    )
    planes = layout.plane_offsets if layout.planes > 1 else ()
    return SlideDisplay(channels, layout.dtype, planes, layout.default_plane)


def source_display(info: SlideInfo, windows: Sequence[Window] | None = None) -> SlideDisplay:
    """What a slide file read directly offers: its own colours, and ``windows`` (one per
    channel, e.g. from its smallest level) or else the full sample range."""
    top = float(DTYPE_MAX.get(info.dtype, 255))
    colors = display_colors(info.channels)  # as the converter chooses them
    channels = tuple(
        DisplayChannel(
            name=ch.name or f"Channel {i}",
            color=_rgb(colors[i]),
            window=windows[i] if windows else (0.0, top),
            active=i < DEFAULT_ACTIVE,
            emission_nm=ch.emission_nm,
        )
        for i, ch in enumerate(info.channels)
    )
    return SlideDisplay(channels, info.dtype, info.planes, info.default_plane)


def display_document(s: SlideDisplay) -> dict[str, Any]:
    """Channels (name, colour, emission, default window, shown by default) and focal planes
    (offsets in µm, the default) for REST describe; an RGB slide is one plane, no channels."""
    return {
        "kind": "channels" if s.channels else "rgb",
        "dtype": s.dtype,
        "channels": [
            {
                "index": i,
                "name": ch.name,
                "color": _hex(ch.color),
                "emission_nm": ch.emission_nm,
                "window": list(ch.window),
                "active": ch.active,
            }
            for i, ch in enumerate(s.channels)
        ],
        "planes": list(s.planes) or [0.0],
        "default_plane": s.default_plane,
    }
