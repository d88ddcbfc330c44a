"""Annotations as GeoJSON in level-0 pixel coordinates: validation, normalisation and
measurements. Pure: no I/O, no clock, no keys (storage: security/annotation_store.py).

A slide's annotation is one GeoJSON Feature. Coordinates are level-0 pixels with the origin
at the top-left corner of the full-resolution image, x to the right and y down: the frame
QuPath imports and exports. Five shapes, each a GeoJSON geometry with a ``shape`` property
(the drawing tool re-opens it as what was drawn):

    point      Point
    polyline   LineString (2 or more positions)
    polygon    Polygon (an exterior ring, optionally holes; rings closed)
    rectangle  Polygon of one ring with four corners at right angles (any rotation)
    ellipse    Polygon of one ring sampling the outline (at least 8 vertices)

Input accepts our own properties (``label``, ``color`` as ``#rrggbb``, ``shape``, ``shared``)
and QuPath's (``name``, ``color`` as ``[r, g, b]``, ``classification``, ``objectType``,
``isLocked``); what the server computes or owns (``measurements``, ``author``, ``version``,
...) is accepted and ignored, so an export imports again. Any other key is refused: a typo
must not be stored as nothing. Text is refused when it holds ``<`` or ``>`` (markup), a
control character or a lone surrogate: annotations reach browsers, and refusing at the door
means no stored label can ever be markup, whatever renders it later (the viewer also sets
text, never HTML, under a strict CSP).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tileserver.errors import TileserverError

# A freehand outline of a large region runs to a few thousand vertices; 10,000 leaves room
# and keeps one annotation (~200 KB of JSON) cheap to seal, store and send to every viewer.
MAX_VERTICES = 10_000  # positions in one geometry, all rings together
MAX_RINGS = 64  # a polygon's exterior and holes
MAX_FEATURES = 1_000  # features in one import
MAX_IMPORT_VERTICES = 100_000  # positions in one import, all features together
MAX_TEXT = 200  # characters of a label
# 100,000 positions written as full-precision doubles, as QuPath writes them (about 40 bytes:
# "[51234.56789012345,40123.45678901234],"), are 4 MB: the body limit lets the largest import
# through and nothing bigger is parsed (the app's own limit, 64 KiB, is for forms and stays).
MAX_BODY_BYTES = 4 * 1024 * 1024
MARGIN = 0.05  # coordinates may lie this fraction of the slide's longer side outside it
DECIMALS = 3  # coordinates are kept to a thousandth of a level-0 pixel
DEFAULT_COLOR = "#ffcc00"

SHAPES = {
    "point": "Point",
    "polyline": "LineString",
    "polygon": "Polygon",
    "rectangle": "Polygon",
    "ellipse": "Polygon",
}
_DEFAULT_SHAPE = {"Point": "point", "LineString": "polyline", "Polygon": "polygon"}
_FEATURE_KEYS = frozenset({"type", "id", "geometry", "properties", "bbox"})
_COLLECTION_KEYS = frozenset({"type", "features", "bbox"})
_GEOMETRY_KEYS = frozenset({"type", "coordinates", "bbox"})
_OURS = frozenset({"label", "color", "shape", "shared"})
_QUPATH = frozenset({"name", "classification", "objectType", "isLocked"})
# What the server computes or owns: accepted and ignored, so an export can be imported.
_SERVER_OWNED = frozenset(
    {"measurements", "author", "own", "version", "created", "updated", "deleted"}
)
_PROPERTY_KEYS = _OURS | _QUPATH | _SERVER_OWNED
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_MARKUP = frozenset("<>")


class AnnotationError(TileserverError, ValueError):
    """An annotation that is not valid GeoJSON, not one of our shapes, or over a limit."""


class AnnotationTooLarge(AnnotationError):
    """A body over MAX_BODY_BYTES (HTTP 413); a geometry or import over its limits is an
    AnnotationError (400) naming the limit."""


@dataclass(frozen=True)
class SlideFrame:
    """What validation and measurement need of a slide: its level-0 size and pixel size."""

    width: int
    height: int
    mpp: tuple[float, float] | None  # micrometres per pixel in x and y; None: unknown

    @classmethod
    def of(cls, width: int, height: int, mpp: Sequence[float] | None) -> SlideFrame:
        usable = mpp is not None and len(mpp) == 2 and all(m and m > 0 for m in mpp)
        return cls(width, height, (float(mpp[0]), float(mpp[1])) if usable and mpp else None)


@dataclass(frozen=True)
class Annotation:
    """One validated, normalised annotation (what is sealed, but for ``shared``)."""

    geometry: dict[str, Any]  # GeoJSON geometry, coordinates rounded to DECIMALS
    shape: str
    label: str
    color: str  # "#rrggbb", lower case
    shared: bool

    def body(self) -> bytes:
        """The bytes that are sealed: canonical JSON; ``shared`` lives beside them."""
        doc = {"geometry": self.geometry, "shape": self.shape, "label": self.label}
        doc["color"] = self.color
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, data: bytes, shared: bool) -> Annotation:
        doc = json.loads(data)
        return cls(doc["geometry"], doc["shape"], doc["label"], doc["color"], shared)


# -- parsing --------------------------------------------------------------------------------
def parse_json(data: bytes) -> Any:
    """A request body as JSON (AnnotationError saying why not)."""
    if len(data) > MAX_BODY_BYTES:
        raise AnnotationTooLarge(f"body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise AnnotationError(f"body is not JSON: {str(exc)[:80]}") from None


def _no_constant(name: str) -> None:
    raise AnnotationError(f"body is not JSON: {name} is not a number")


def parse_import(doc: Any, frame: SlideFrame) -> list[Annotation]:
    """A Feature or a FeatureCollection (QuPath's export, or ours) as annotations."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature":
        return [parse_feature(doc, frame)]
    if kind != "FeatureCollection":
        raise AnnotationError("body must be a GeoJSON Feature or FeatureCollection")
    _known_keys(doc, _COLLECTION_KEYS, "FeatureCollection")
    features = doc.get("features")
    if not isinstance(features, list):
        raise AnnotationError("FeatureCollection needs a 'features' list")
    if not features:
        raise AnnotationError("FeatureCollection has no features")
    if len(features) > MAX_FEATURES:
        raise AnnotationError(f"at most {MAX_FEATURES} features per request")
    parsed, total = [], 0
    for i, feature in enumerate(features):
        try:
            annotation = parse_feature(feature, frame)
        except AnnotationError as exc:
            raise type(exc)(f"features[{i}]: {exc}") from None
        total += count_positions(annotation.geometry)
        if total > MAX_IMPORT_VERTICES:
            raise AnnotationError(f"at most {MAX_IMPORT_VERTICES} vertices per request")
        parsed.append(annotation)
    return parsed


def parse_feature(doc: Any, frame: SlideFrame) -> Annotation:
    """One GeoJSON Feature as an annotation, or AnnotationError naming what is wrong."""
    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        raise AnnotationError("an annotation is a GeoJSON Feature (type 'Feature')")
    _known_keys(doc, _FEATURE_KEYS, "Feature")
    props = doc.get("properties") or {}
    if not isinstance(props, dict):
        raise AnnotationError("'properties' must be an object or null")
    _known_keys(props, _PROPERTY_KEYS, "properties")
    geometry = _geometry(doc.get("geometry"), frame)
    shape = props.get("shape", _DEFAULT_SHAPE[geometry["type"]])
    if shape not in SHAPES:
        raise AnnotationError(f"'shape' must be one of {', '.join(SHAPES)}")
    if SHAPES[shape] != geometry["type"]:
        raise AnnotationError(f"a {shape} is a {SHAPES[shape]}, not a {geometry['type']}")
    _check_shape(shape, geometry["coordinates"])
    object_type = props.get("objectType", "annotation")
    if object_type != "annotation":
        raise AnnotationError("'objectType' must be 'annotation' (detections are not taken)")
    if "isLocked" in props and not isinstance(props["isLocked"], bool):
        raise AnnotationError("'isLocked' must be true or false")
    shared = props.get("shared", False)
    if not isinstance(shared, bool):
        raise AnnotationError("'shared' must be true or false")
    label, color = _label_and_color(props)
    return Annotation(geometry, shape, label, color, shared)


def _known_keys(doc: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise AnnotationError(f"unknown key(s) in {where}: {shown}")


def _label_and_color(props: Mapping[str, Any]) -> tuple[str, str]:
    classification = props.get("classification")
    class_name, class_color = None, None
    if classification is not None:
        if not isinstance(classification, dict):
            raise AnnotationError("'classification' must be an object")
        _known_keys(classification, frozenset({"name", "color", "colorRGB"}), "classification")
        if "name" in classification:
            class_name = check_text(classification["name"], "classification.name")
        class_color = classification.get("color")
    label, name = props.get("label"), props.get("name")
    if label is not None and name is not None and label != name:
        raise AnnotationError("'label' and 'name' differ: give one")
    text = label if label is not None else name if name is not None else class_name
    color = props.get("color", class_color)
    return (
        "" if text is None else check_text(text, "label"),
        DEFAULT_COLOR if color is None else parse_color(color),
    )


def check_text(value: Any, what: str) -> str:
    """Plain text of at most MAX_TEXT characters: no markup, controls or lone surrogates."""
    if not isinstance(value, str):
        raise AnnotationError(f"'{what}' must be a string")
    if len(value) > MAX_TEXT:
        raise AnnotationError(f"'{what}' is longer than {MAX_TEXT} characters")
    if _MARKUP.intersection(value):
        raise AnnotationError(f"'{what}' must be plain text: '<' and '>' are refused")
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            raise AnnotationError(f"'{what}' must be Unicode text (no lone surrogates)")
        if category == "Cc":
            raise AnnotationError(f"'{what}' must not hold control characters")
    return value


def parse_color(value: Any) -> str:
    """``#rrggbb`` (ours) or ``[r, g, b]`` (QuPath's) as ``#rrggbb`` in lower case."""
    if isinstance(value, str) and _HEX_COLOR.fullmatch(value):
        return value.lower()
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return "#" + "".join(f"{c:02x}" for c in value)
    raise AnnotationError("'color' must be '#rrggbb' or [r, g, b] with 0-255 integers")


def rgb(color: str) -> list[int]:
    return [int(color[i : i + 2], 16) for i in (1, 3, 5)]


# -- geometry -------------------------------------------------------------------------------
def _geometry(doc: Any, frame: SlideFrame) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise AnnotationError("a Feature needs a 'geometry' object")
    kind = doc.get("type")
    if kind not in _DEFAULT_SHAPE:
        shown = str(kind)[:40]
        raise AnnotationError(f"geometry type {shown!r} is not taken: Point, LineString, Polygon")
    _known_keys(doc, _GEOMETRY_KEYS, "geometry")
    coords = doc.get("coordinates")
    if kind == "Point":
        return {"type": kind, "coordinates": _position(coords, frame)}
    if kind == "LineString":
        line = _positions(coords, frame, "a LineString", MAX_VERTICES)
        if len(line) < 2:
            raise AnnotationError("a LineString needs at least 2 positions")
        return {"type": kind, "coordinates": line}
    if not isinstance(coords, list) or not coords:
        raise AnnotationError("a Polygon's coordinates are a list of rings")
    if len(coords) > MAX_RINGS:
        raise AnnotationError(f"a Polygon has at most {MAX_RINGS} rings")
    rings, left = [], MAX_VERTICES
    for ring in coords:
        points = _positions(ring, frame, "a Polygon ring", left)
        if len(points) < 4:
            raise AnnotationError("a Polygon ring needs at least 4 positions (closed)")
        if points[0] != points[-1]:
            raise AnnotationError("a Polygon ring must be closed (last position = first)")
        rings.append(points)
        left -= len(points)
    return {"type": kind, "coordinates": rings}


def _positions(coords: Any, frame: SlideFrame, what: str, limit: int) -> list[list[float]]:
    if not isinstance(coords, list):
        raise AnnotationError(f"{what}'s coordinates must be a list of positions")
    if len(coords) > limit:
        raise AnnotationError(f"a geometry has at most {MAX_VERTICES} vertices")
    # The common case in one tight loop (an import has up to 100,000 positions); anything
    # it does not take goes through _position, which says what is wrong. Only int and float
    # pass the type test (not bool), and NaN fails every comparison.
    margin = MARGIN * max(frame.width, frame.height)
    x0, x1, y0, y1 = -margin, frame.width + margin, -margin, frame.height + margin
    out = []
    for p in coords:
        if type(p) is list and len(p) == 2:
            x, y = p
            if type(x) in _NUMBER and type(y) in _NUMBER and x0 <= x <= x1 and y0 <= y <= y1:
                out.append([round(float(x), DECIMALS), round(float(y), DECIMALS)])
                continue
        out.append(_position(p, frame))
    return out


_NUMBER = (int, float)


def _position(value: Any, frame: SlideFrame) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise AnnotationError("a position is [x, y] in level-0 pixels")
    x, y = (_number(v) for v in value)
    margin = MARGIN * max(frame.width, frame.height)
    if not (-margin <= x <= frame.width + margin and -margin <= y <= frame.height + margin):
        raise AnnotationError(
            f"position [{x:.0f}, {y:.0f}] is outside the slide ({frame.width} x"
            f" {frame.height} level-0 pixels, {MARGIN:.0%} margin)"
        )
    return [round(x, DECIMALS), round(y, DECIMALS)]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnnotationError("coordinates must be numbers")
    number = float(value)
    if not math.isfinite(number):
        raise AnnotationError("coordinates must be finite numbers")
    return number


def _check_shape(shape: str, coords: Any) -> None:
    if shape == "rectangle":
        if len(coords) != 1 or len(coords[0]) != 5:
            raise AnnotationError("a rectangle is one closed ring of 4 corners")
        if not is_rectangle(coords[0][:4]):
            raise AnnotationError("a rectangle's corners must meet at right angles")
    elif shape == "ellipse" and (len(coords) != 1 or len(coords[0]) < 9):
        raise AnnotationError("an ellipse is one closed ring of at least 8 vertices")


def is_rectangle(corners: Sequence[Sequence[float]]) -> bool:
    """Four corners, in order, with sides of positive length meeting at right angles, to
    the tolerance rounding corners to a thousandth of a pixel needs (each side's components
    move by up to 0.001, the dot product by up to 0.001 * sqrt(2) * (|u| + |v|))."""
    for i in range(4):
        (ax, ay), (bx, by), (cx, cy) = corners[i - 1], corners[i], corners[(i + 1) % 4]
        ux, uy, vx, vy = bx - ax, by - ay, cx - bx, cy - by
        lu, lv = math.hypot(ux, uy), math.hypot(vx, vy)
        if lu == 0 or lv == 0 or abs(ux * vx + uy * vy) > 2e-3 * (lu + lv) + 1e-9 * lu * lv:
            return False
    return True


def count_positions(geometry: Mapping[str, Any]) -> int:
    kind, coords = geometry["type"], geometry["coordinates"]
    if kind == "Point":
        return 1
    if kind == "LineString":
        return len(coords)
    return sum(len(ring) for ring in coords)


# -- measurements ---------------------------------------------------------------------------
def path_length(points: Sequence[Sequence[float]], scale: tuple[float, float]) -> float:
    """Length of the path through ``points``, x and y scaled by ``scale``."""
    sx, sy = scale
    return sum(
        math.hypot((b[0] - a[0]) * sx, (b[1] - a[1]) * sy) for a, b in itertools.pairwise(points)
    )


def ring_area(ring: Sequence[Sequence[float]], scale: tuple[float, float]) -> float:
    """Area enclosed by a closed ring (shoelace formula), x and y scaled by ``scale``."""
    twice = sum(a[0] * b[1] - b[0] * a[1] for a, b in itertools.pairwise(ring))
    return abs(twice) / 2 * scale[0] * scale[1]


def measurements(geometry: Mapping[str, Any], mpp: tuple[float, float] | None) -> dict[str, float]:
    """Length of a polyline; area (exterior less holes) and perimeter (every ring) of a
    polygon: in level-0 pixels, and in µm / µm² when the slide's pixel size is known."""
    kind, coords = geometry["type"], geometry["coordinates"]
    scales: list[tuple[str, tuple[float, float]]] = [("px", (1.0, 1.0))]
    if mpp is not None:
        scales.append(("um", mpp))
    out: dict[str, float] = {}
    for unit, scale in scales:
        if kind == "LineString":
            out[f"length_{unit}"] = path_length(coords, scale)
        elif kind == "Polygon":
            areas = [ring_area(ring, scale) for ring in coords]
            out[f"area_{unit}2"] = max(0.0, areas[0] - sum(areas[1:]))
            out[f"perimeter_{unit}"] = sum(path_length(ring, scale) for ring in coords)
    return {k: round(v, 4) for k, v in out.items()}


# -- output ---------------------------------------------------------------------------------
def feature(
    annotation: Annotation,
    annotation_id: str,
    meta: Mapping[str, object],
    mpp: tuple[float, float] | None,
) -> dict[str, Any]:
    """The API's Feature: our properties, the server's (``meta``) and the measurements."""
    return {
        "type": "Feature",
        "id": annotation_id,
        "geometry": annotation.geometry,
        "properties": {
            "label": annotation.label,
            "color": annotation.color,
            "shape": annotation.shape,
            "shared": annotation.shared,
            "measurements": measurements(annotation.geometry, mpp),
            **meta,
        },
    }


def qupath_feature(
    annotation: Annotation, annotation_id: str, mpp: tuple[float, float] | None
) -> dict[str, Any]:
    """The export's Feature, as QuPath reads it (``objectType``, ``name``, ``color`` as
    ``[r, g, b]``), with our ``shape`` so the drawing tool gets back what was drawn."""
    return {
        "type": "Feature",
        "id": annotation_id,
        "geometry": annotation.geometry,
        "properties": {
            "objectType": "annotation",
            "name": annotation.label,
            "color": rgb(annotation.color),
            "shape": annotation.shape,
            "shared": annotation.shared,
            "measurements": measurements(annotation.geometry, mpp),
        },
    }
