"""Annotations as GeoJSON: validation, normalisation, measurements (pure functions)."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tileserver.annotations import (  # _position: the careful check, as a reference
    MAX_BODY_BYTES,
    MAX_FEATURES,
    MAX_RINGS,
    MAX_TEXT,
    MAX_VERTICES,
    Annotation,
    AnnotationError,
    AnnotationTooLarge,
    SlideFrame,
    _position,
    feature,
    is_rectangle,
    measurements,
    parse_feature,
    parse_import,
    parse_json,
    qupath_feature,
)

FRAME = SlideFrame.of(3000, 2000, [0.25, 0.5])


def rect(x: float, y: float, w: float, h: float) -> list[list[list[float]]]:
    return [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int) -> list[list[list[float]]]:
    ring = [
        [cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)]
        for k in range(n)
    ]
    return [[*ring, ring[0]]]


def feat(kind: str, coords: Any, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": props,
    }


# -- shapes ---------------------------------------------------------------------------------
def test_each_shape_is_taken_and_normalised() -> None:
    point = parse_feature(feat("Point", [10, 20.123456]), FRAME)
    assert point.shape == "point" and point.geometry["coordinates"] == [10.0, 20.123]
    assert point.label == "" and point.color == "#ffcc00" and point.shared is False
    line = parse_feature(feat("LineString", [[0, 0], [30, 40]], label="margin"), FRAME)
    assert line.shape == "polyline" and line.label == "margin"
    box = parse_feature(feat("Polygon", rect(1, 2, 30, 40), shape="rectangle"), FRAME)
    assert box.shape == "rectangle"
    oval = parse_feature(feat("Polygon", ellipse(500, 500, 80, 40, 64), shape="ellipse"), FRAME)
    assert oval.shape == "ellipse"
    holed = parse_feature(feat("Polygon", rect(0, 0, 100, 100) + rect(10, 10, 10, 10)), FRAME)
    assert holed.shape == "polygon" and len(holed.geometry["coordinates"]) == 2


def test_qupath_properties_map_onto_ours() -> None:
    qupath = feat(
        "Polygon",
        rect(0, 0, 10, 10),
        objectType="annotation",
        name="Tumor",
        color=[255, 0, 16],
        isLocked=False,
        measurements={"Area µm^2": 1.0},
    )
    a = parse_feature(qupath, FRAME)
    assert (a.label, a.color) == ("Tumor", "#ff0010")
    classified = feat("Point", [1, 1], classification={"name": "Stroma", "color": [0, 128, 0]})
    assert (parse_feature(classified, FRAME).label, parse_feature(classified, FRAME).color) == (
        "Stroma",
        "#008000",
    )


def test_body_round_trips_and_shared_lives_beside_it() -> None:
    a = parse_feature(feat("LineString", [[0, 0], [3, 4]], label="x", shared=True), FRAME)
    assert b"shared" not in a.body()
    assert Annotation.from_body(a.body(), True) == a
    assert Annotation.from_body(a.body(), False).shared is False


def test_export_imports_again() -> None:
    """Our export (QuPath's flavour) and our API's features both import as they were."""
    a = parse_feature(feat("Polygon", rect(5, 6, 70, 80), shape="rectangle", label="b"), FRAME)
    for out in (
        qupath_feature(a, "0" * 32, FRAME.mpp),
        feature(a, "0" * 32, {"author": "user:x", "version": 3}, FRAME.mpp),
    ):
        again = parse_import({"type": "FeatureCollection", "features": [out]}, FRAME)
        assert again == [a]
    exported = qupath_feature(a, "0" * 32, FRAME.mpp)["properties"]
    assert exported["objectType"] == "annotation" and exported["color"] == [255, 204, 0]


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"type": "Feature"}, "geometry"),
        ([], "Feature"),
        ({"type": "Feature", "geometry": None}, "geometry"),
        (feat("MultiPolygon", []), "MultiPolygon"),
        (feat("Point", [1]), "[x, y]"),
        (feat("Point", [1, 2, 3]), "[x, y]"),
        (feat("Point", ["1", 2]), "numbers"),
        (feat("Point", [True, 2]), "numbers"),
        (feat("LineString", [[0, 0]]), "at least 2"),
        (feat("Polygon", [[[0, 0], [1, 0], [1, 1], [0, 1]]]), "closed"),
        (feat("Polygon", [[[0, 0], [1, 0], [0, 0]]]), "at least 4"),
        (feat("Polygon", []), "rings"),
        (feat("Point", [99999, 1]), "outside the slide"),
        (feat("Point", [-200, 1]), "outside the slide"),
        (feat("Point", [1, 1], label="<b>x</b>"), "plain text"),
        (feat("Point", [1, 1], label="a\x00b"), "control"),
        (feat("Point", [1, 1], label="\ud800"), "surrogate"),
        (feat("Point", [1, 1], label="x" * (MAX_TEXT + 1)), "longer"),
        (feat("Point", [1, 1], label=5), "string"),
        (feat("Point", [1, 1], label="a", name="b"), "differ"),
        (feat("Point", [1, 1], colour="#ffffff"), "unknown key"),
        (feat("Point", [1, 1], color="red"), "#rrggbb"),
        (feat("Point", [1, 1], color=[256, 0, 0]), "#rrggbb"),
        (feat("Point", [1, 1], shared="yes"), "true or false"),
        (feat("Point", [1, 1], shape="star"), "shape"),
        (feat("Point", [1, 1], shape="polygon"), "a polygon is a Polygon"),
        (feat("Point", [1, 1], objectType="detection"), "objectType"),
        (feat("Polygon", rect(0, 0, 5, 5) + rect(1, 1, 1, 1), shape="rectangle"), "one closed"),
        (feat("Polygon", [[[0, 0], [10, 0], [12, 5], [0, 5], [0, 0]]], shape="rectangle"), "right"),
        (feat("Polygon", rect(0, 0, 5, 5), shape="ellipse"), "at least 8"),
        ({**feat("Point", [1, 1]), "style": {}}, "unknown key"),
        ({"type": "FeatureCollection", "features": []}, "no features"),
        ({"type": "FeatureCollection", "features": [feat("Point", [1, 1])], "x": 1}, "unknown"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature"}]}, "features[0]"),
    ],
)
def test_bad_input_is_refused_with_a_message(doc: Any, needle: str) -> None:
    with pytest.raises(AnnotationError, match=None) as caught:
        parse_import(doc, FRAME)
    assert needle in str(caught.value), str(caught.value)


def test_limits_name_themselves_and_only_the_body_limit_is_too_large() -> None:
    many = [[float(i % 3000), 1.0] for i in range(MAX_VERTICES + 1)]
    point, line = feat("Point", [1, 1]), feat("LineString", [[1.0, 1.0]] * 9_000)
    over = [
        (feat("LineString", many), "10000 vertices"),
        (feat("Polygon", rect(0, 0, 1, 1) * (MAX_RINGS + 1)), "64 rings"),
        ({"type": "FeatureCollection", "features": [point] * (MAX_FEATURES + 1)}, "features"),
        ({"type": "FeatureCollection", "features": [line] * 12}, "vertices per request"),
    ]
    for doc, needle in over:
        with pytest.raises(AnnotationError, match=needle) as caught:
            parse_import(doc, FRAME)
        assert not isinstance(caught.value, AnnotationTooLarge)  # a 400, not a 413
    with pytest.raises(AnnotationTooLarge, match="bytes"):
        parse_json(b" " * (MAX_BODY_BYTES + 1))


def test_json_that_is_not_json_is_refused() -> None:
    for data in (b"{", b"NaN", b'{"a": Infinity}', b"[" * 100_000, b"\xff"):
        with pytest.raises(AnnotationError, match="not JSON"):
            parse_json(data)


# -- measurements ---------------------------------------------------------------------------
sides = st.floats(min_value=0.5, max_value=2000, allow_nan=False)
mpps = st.floats(min_value=0.05, max_value=20, allow_nan=False)
origins = st.floats(min_value=0, max_value=500, allow_nan=False)


@given(origins, origins, sides, sides, mpps, mpps)
def test_rectangle_area_and_perimeter(
    x: float, y: float, w: float, h: float, mx: float, my: float
) -> None:
    m = measurements({"type": "Polygon", "coordinates": rect(x, y, w, h)}, (mx, my))
    assert m["area_px2"] == pytest.approx(w * h, rel=1e-6, abs=1e-3)
    assert m["area_um2"] == pytest.approx(w * h * mx * my, rel=1e-6, abs=1e-3)
    assert m["perimeter_um"] == pytest.approx(2 * (w * mx + h * my), rel=1e-6, abs=1e-3)


@given(st.lists(st.tuples(origins, origins), min_size=2, max_size=30), mpps)
def test_polyline_length_scales_with_the_pixel_size(points: list[Any], mpp: float) -> None:
    coords = [list(p) for p in points]
    m = measurements({"type": "LineString", "coordinates": coords}, (mpp, mpp))
    expected = sum(math.dist(a, b) for a, b in itertools.pairwise(coords))
    assert m["length_px"] == pytest.approx(expected, rel=1e-6, abs=1e-3)
    assert m["length_um"] == pytest.approx(expected * mpp, rel=1e-6, abs=1e-3)
    assert "area_um2" not in m


@given(origins, origins, sides, sides, st.floats(min_value=-300, max_value=300))
def test_area_does_not_depend_on_where_or_which_way_round(
    x: float, y: float, w: float, h: float, shift: float
) -> None:
    ring = rect(x, y, w, h)[0]
    moved = [[px + shift, py - shift] for px, py in ring]
    area = measurements({"type": "Polygon", "coordinates": [ring]}, None)["area_px2"]
    assert measurements({"type": "Polygon", "coordinates": [moved]}, None)[
        "area_px2"
    ] == pytest.approx(area, rel=1e-6, abs=1e-2)
    reverse = measurements({"type": "Polygon", "coordinates": [ring[::-1]]}, None)
    assert reverse["area_px2"] == pytest.approx(area, rel=1e-9)


@given(st.floats(min_value=5, max_value=800), st.floats(min_value=5, max_value=800), mpps)
def test_sampled_ellipse_approaches_pi_a_b(rx: float, ry: float, mpp: float) -> None:
    m = measurements({"type": "Polygon", "coordinates": ellipse(0, 0, rx, ry, 720)}, (mpp, mpp))
    assert m["area_um2"] == pytest.approx(math.pi * rx * ry * mpp * mpp, rel=1e-3)


def test_holes_are_taken_out_of_the_area_and_added_to_the_perimeter() -> None:
    m = measurements(
        {"type": "Polygon", "coordinates": rect(0, 0, 10, 10) + rect(2, 2, 3, 3)}, None
    )
    assert m == {"area_px2": 91.0, "perimeter_px": 52.0}


def test_point_has_no_measurements_and_unknown_mpp_gives_pixels_only() -> None:
    assert measurements({"type": "Point", "coordinates": [1, 2]}, (0.25, 0.25)) == {}
    frame = SlideFrame.of(100, 100, None)
    assert frame.mpp is None and SlideFrame.of(100, 100, [0, 0.5]).mpp is None
    line = {"type": "LineString", "coordinates": [[0, 0], [3, 4]]}
    assert measurements(line, frame.mpp) == {"length_px": 5.0}


@given(origins, origins, sides, sides, st.floats(min_value=0, max_value=2 * math.pi))
def test_rotated_rectangles_are_rectangles(
    x: float, y: float, w: float, h: float, angle: float
) -> None:
    c, s = math.cos(angle), math.sin(angle)
    corners = [(x + c * u - s * v, y + s * u + c * v) for u, v in [(0, 0), (w, 0), (w, h), (0, h)]]
    rounded = [[round(px, 3), round(py, 3)] for px, py in corners]
    assert is_rectangle(rounded)
    # Sheared by a third of the long side along the first: a parallelogram, not a rectangle.
    dx, dy = c * max(w, h) / 3, s * max(w, h) / 3
    sheared = [*rounded[:2], *([px + dx, py + dy] for px, py in rounded[2:])]
    assert not is_rectangle(sheared)


def test_feature_output_carries_measurements_and_meta() -> None:
    a = parse_feature(feat("LineString", [[0, 0], [30, 40]], label="cut", color="#00FF00"), FRAME)
    out = feature(a, "f" * 32, {"version": 2}, (0.5, 0.5))
    assert out["id"] == "f" * 32 and out["geometry"] == a.geometry
    assert out["properties"]["measurements"] == {"length_px": 50.0, "length_um": 25.0}
    assert out["properties"]["color"] == "#00ff00" and out["properties"]["version"] == 2
    assert json.loads(json.dumps(out)) == out


values = st.one_of(
    st.integers(-500, 4000),
    st.floats(-500, 4000),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300]),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@given(st.lists(st.lists(values, min_size=1, max_size=3), min_size=2, max_size=5))
def test_the_fast_path_takes_and_refuses_what_the_careful_check_does(points: list[Any]) -> None:
    """Positions are checked in a tight loop; each must fare as the one-by-one check says."""

    def outcome(call: Any) -> Any:
        try:
            return call()
        except AnnotationError as exc:
            return str(exc)

    careful = [outcome(lambda p=p: _position(p, FRAME)) for p in points]
    refused = [c for c in careful if isinstance(c, str)]
    fast = outcome(lambda: parse_feature(feat("LineString", points), FRAME).geometry["coordinates"])
    assert fast == (refused[0] if refused else careful)
    if not refused:
        assert all(type(v) is float for position in fast for v in position)
