"""Display parameters: defaults from the stored settings, every malformed value refused with
the parameter named, and a canonical key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tileserver.errors import RegionError
from tileserver.protocols.display import (
    Display,
    DisplayChannel,
    DisplayError,
    SlideDisplay,
    parse_display,
    source_display,
)

SLIDE = SlideDisplay(
    channels=(
        DisplayChannel("DAPI", (0, 0, 255), (100.0, 4000.0)),
        DisplayChannel("FITC", (0, 255, 0), (0.0, 2000.0), active=False),
        DisplayChannel("Cy3", (255, 255, 0), (50.0, 60000.0)),
    ),
    dtype="uint16",
    planes=(-2.0, 0.0, 2.0),
    default_plane=1,
)
RGB_SLIDE = SlideDisplay()


def test_defaults_are_the_stored_settings() -> None:
    d = parse_display({}, SLIDE)
    assert d == Display(1, (0, 2), ((0, 0, 255), (255, 255, 0)), ((100.0, 4000.0), (50.0, 60000.0)))


def test_explicit_parameters() -> None:
    d = parse_display(
        {"channels": "1,0", "colors": "FF0000,00ff00", "windows": "0-255,10.5-20", "z": "2"},
        SLIDE,
    )
    assert d == Display(2, (1, 0), ((255, 0, 0), (0, 255, 0)), ((0.0, 255.0), (10.5, 20.0)))


def test_channels_alone_take_their_stored_colours_and_windows() -> None:
    d = parse_display({"channels": "1"}, SLIDE)
    assert d.colors == ((0, 255, 0),) and d.windows == ((0.0, 2000.0),)


def test_rgb_slide_takes_only_z() -> None:
    assert parse_display({}, RGB_SLIDE) == Display(0)
    stack = SlideDisplay(planes=(0.0, 1.0), default_plane=0)
    assert parse_display({"z": "1"}, stack) == Display(1)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"channels": "3"}, "channels"),
        ({"channels": "0,0"}, "channels"),
        ({"channels": "-1"}, "channels"),
        ({"channels": ""}, "channels"),
        ({"channels": "0,,1"}, "channels"),
        ({"channels": "a"}, "channels"),
        ({"colors": "0000ff"}, "colors"),  # 2 default channels, 1 colour
        ({"colors": "0000ff,zzzzzz"}, "colors"),
        ({"colors": "#0000ff,00ff00"}, "colors"),
        ({"windows": "0-100"}, "windows"),
        ({"windows": "100-0,0-1"}, "windows"),
        ({"windows": "5-5,0-1"}, "windows"),
        ({"windows": "0-70000,0-1"}, "windows"),
        ({"windows": "0:1,0-1"}, "windows"),
        ({"windows": "nan-1,0-1"}, "windows"),
        ({"z": "3"}, "z"),
        ({"z": "-1"}, "z"),
        ({"z": "1.0"}, "z"),
        ({"z": ""}, "z"),
    ],
)
def test_bad_values_name_the_parameter(query: dict[str, str], name: str) -> None:
    with pytest.raises(DisplayError, match=f"'{name}'"):
        parse_display(query, SLIDE)


def test_display_errors_are_region_errors() -> None:
    # RegionError's row in the server's status table makes them 400s.
    assert issubclass(DisplayError, RegionError)


def test_channel_parameters_refused_on_rgb() -> None:
    with pytest.raises(DisplayError, match=r"'windows'.*no channels"):
        parse_display({"windows": "0-1"}, RGB_SLIDE)


def test_uint8_windows_capped_at_255() -> None:
    slide = SlideDisplay((DisplayChannel("a", (1, 2, 3), (0.0, 255.0)),), "uint8")
    with pytest.raises(DisplayError, match="'windows'"):
        parse_display({"windows": "0-256"}, slide)


@given(
    channels=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
    z=st.integers(0, 2),
    data=st.data(),
)
def test_key_round_trips(channels: list[int], z: int, data: st.DataObject) -> None:
    """Canonical key: the query a Display prints parses back to the same Display, and
    spellings that mean the same (case of hex, 10 vs 10.0) give the same key."""
    colors = [data.draw(st.integers(0, 0xFFFFFF)) for _ in channels]
    windows = []
    for _ in channels:
        start = data.draw(st.integers(0, 65534))
        windows.append((start, data.draw(st.integers(start + 1, 65535))))
    query = {
        "channels": ",".join(map(str, channels)),
        "colors": ",".join(f"{c:06X}" for c in colors),
        "windows": ",".join(f"{a}.0-{b}" for a, b in windows),
        "z": str(z),
    }
    d = parse_display(query, SLIDE)
    again = parse_display(d.query(), SLIDE)
    assert again == d and again.key == d.key
    assert parse_display({"z": str(z)}, SLIDE).key != "" and isinstance(d.key, str)


def test_distinct_displays_have_distinct_keys() -> None:
    a = parse_display({"channels": "0,2"}, SLIDE)
    b = parse_display({"channels": "2,0"}, SLIDE)
    c = parse_display({"channels": "0,2", "z": "0"}, SLIDE)
    assert len({a.key, b.key, c.key}) == 3


def test_source_display_from_slide_info() -> None:
    from tileserver.geometry import Size
    from tileserver.sources.base import Channel, Level, SlideInfo

    info = SlideInfo(
        backend="tifffile",
        vendor="ome",
        levels=(Level(Size(10, 10), 1.0, None),),
        mpp=None,
        objective_power=None,
        associated=(),
        icc_profile=None,
        channels=tuple(Channel(f"c{i}", "FF0000" if i == 0 else None, 520.0) for i in range(6)),
        dtype="uint16",
        planes=(0.0, 1.0, 2.0),
    )
    full = source_display(info)
    assert [c.window for c in full.channels] == [(0.0, 65535.0)] * 6
    # The file's colour, else the converter's palette (sources/channel_metadata.py).
    assert [c.color for c in full.channels][:2] == [(255, 0, 0), (0, 255, 0)]
    assert [c.active for c in full.channels] == [True] * 4 + [False] * 2  # as the converter
    assert full.plane_count == 3 and full.default_plane == 1
    windowed = source_display(info, [(float(i), 100.0 + i) for i in range(6)])
    assert windowed.channels[5].window == (5.0, 105.0)
