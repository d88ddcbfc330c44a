"""The OpenAPI 3 document for the REST API (and the tile protocols, for completeness)."""

from __future__ import annotations

from typing import Any

_ID = {
    "name": "slide_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "schema": {"type": "string", "enum": ["jpeg", "png", "webp"], "default": "jpeg"},
}
_ICC = {
    "name": "icc",
    "in": "query",
    "description": "srgb: converted from the slide's ICC profile (default); embed: stored"
    " pixels with the profile embedded; none: stored pixels (docs/colour.md)",
    "schema": {"type": "string", "enum": ["srgb", "embed", "none"]},
}
# Channel (fluorescence) and z-stack slides (protocols/display.py, docs/fluorescence.md).
_DISPLAY: list[dict[str, Any]] = [
    {
        "name": "channels",
        "in": "query",
        "description": "channel indices to composite, comma-separated, no repeats"
        " (default: the slide's active channels)",
        "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
    },
    {
        "name": "colors",
        "in": "query",
        "description": "one RRGGBB hex colour per chosen channel (default: stored colours)",
        "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{6}(,[0-9A-Fa-f]{6})*$"},
    },
    {
        "name": "windows",
        "in": "query",
        "description": "one start-end display window per chosen channel, in sample values,"
        " start < end <= 255 or 65535 (default: stored windows)",
        "schema": {"type": "string", "example": "100-4000,0-255"},
    },
    {
        "name": "z",
        "in": "query",
        "description": "focal plane index (default: the slide's default plane)",
        "schema": {"type": "integer", "minimum": 0},
    },
]
_IMAGE = {"description": "image", "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}
_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_RETRY = {
    "description": "too many requests or render megapixels (429), or the server is busy or its"
    " database is unavailable (503): retry after the Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    "content": _ERROR["content"],
}
_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "403": _ERROR,
    "404": _ERROR,
    "429": _RETRY,
    "500": _ERROR,
    "503": _RETRY,
}


def _int(
    name: str, description: str, *, required: bool = False, minimum: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum},
    }


def _num(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": description,
        "schema": {"type": "number", "minimum": 0},
    }


# -- annotations (server/routes/annotations.py) ---------------------------------------------
_AID = {
    "name": "annotation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_GEOJSON = {
    "application/json": {"schema": {"$ref": "#/components/schemas/Annotation"}},
    "application/geo+json": {"schema": {"$ref": "#/components/schemas/Annotation"}},
}
_COLLECTION = {"application/json": {"schema": {"$ref": "#/components/schemas/Annotations"}}}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "description": "the ETag (version) the change is based on; 412 when another came since",
    "schema": {"type": "string"},
}
_WRITE_ERRORS = {
    **_ERRORS,
    "409": _ERROR,  # the slide is not encrypted: nothing to seal its annotations with
    "413": _ERROR,
    "415": _ERROR,
}
_ANNOTATION_SCHEMAS: dict[str, Any] = {
    "Annotation": {
        "type": "object",
        "description": "A GeoJSON Feature in level-0 pixel coordinates (origin top left, y"
        " down): Point, LineString or Polygon; properties label (plain text, no < or >),"
        " color (#rrggbb), shape (point, polyline, polygon, rectangle, ellipse), shared."
        " QuPath's name, color [r, g, b], classification and objectType are accepted too;"
        " measurements, author, own, version, created and updated are the server's.",
        "required": ["type", "geometry"],
        "properties": {
            "type": {"type": "string", "enum": ["Feature"]},
            "id": {"type": "string"},
            "geometry": {"type": "object"},
            "properties": {"type": "object", "nullable": True},
        },
    },
    "Annotations": {
        "type": "object",
        "description": "A GeoJSON FeatureCollection of annotations (at most 1000 features and"
        " 100000 vertices per import; a body of at most 4 MiB)",
        "required": ["type", "features"],
        "properties": {
            "type": {"type": "string", "enum": ["FeatureCollection"]},
            "features": {"type": "array", "items": {"$ref": "#/components/schemas/Annotation"}},
        },
    },
}


def _annotation_paths() -> dict[str, Any]:
    one = {"description": "the annotation (ETag: its version)", "content": _GEOJSON}
    return {
        "/api/slides/{slide_id}/annotations": {
            "get": {
                "summary": "Annotations the caller may see: their own and the shared ones"
                " (scope annotations)",
                "parameters": [_ID],
                "responses": {
                    "200": {"description": "annotations", "content": _COLLECTION},
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Create one annotation (a Feature) or import a FeatureCollection"
                " (QuPath's GeoJSON): private unless properties.shared is true",
                "parameters": [_ID],
                "requestBody": {"required": True, "content": {**_GEOJSON, **_COLLECTION}},
                "responses": {
                    "201": {"description": "created", "content": _GEOJSON},
                    **_WRITE_ERRORS,
                },
            },
        },
        "/api/slides/{slide_id}/annotations.geojson": {
            "get": {
                "summary": "Export what the caller sees as GeoJSON in level-0 pixels, as"
                " QuPath imports it (objectType, name, color [r, g, b])",
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": "FeatureCollection",
                        "content": {"application/geo+json": {}},
                    },
                    **_ERRORS,
                },
            },
        },
        "/api/slides/{slide_id}/annotations/{annotation_id}": {
            "get": {
                "summary": "One annotation (404 for another's private one)",
                "parameters": [_ID, _AID],
                "responses": {"200": one, **_ERRORS},
            },
            "put": {
                "summary": "A new version (the author only: 403 for another's shared one)",
                "parameters": [_ID, _AID, _IF_MATCH],
                "requestBody": {"required": True, "content": _GEOJSON},
                "responses": {"200": one, "412": _ERROR, **_WRITE_ERRORS},
            },
            "delete": {
                "summary": "Delete (a tombstone version: the history stays; the author only)",
                "parameters": [_ID, _AID, _IF_MATCH],
                "responses": {"204": {"description": "deleted"}, "412": _ERROR, **_ERRORS},
            },
        },
        "/api/slides/{slide_id}/annotations/{annotation_id}/versions": {
            "get": {
                "summary": "Every version, oldest first, deletions included (the author only)",
                "parameters": [_ID, _AID],
                "responses": {
                    "200": {"description": "versions", "content": {"application/json": {}}},
                    **_ERRORS,
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tileserver",
            "version": "1",
            "description": "Whole-slide images: metadata, thumbnails, regions, tiles.",
        },
        "paths": {
            "/api/slides": {
                "get": {
                    "summary": "List slides (paginated)",
                    "parameters": [
                        _int("offset", "first item", minimum=0),
                        {
                            **_int("limit", "page size", minimum=1),
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of slides",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Page"}
                                }
                            },
                        },
                        "400": _ERROR,
                    },
                }
            },
            "/api/slides/{slide_id}": {
                "get": {
                    "summary": "Slide metadata",
                    "parameters": [_ID],
                    "responses": {
                        "200": {
                            "description": "metadata",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Slide"}
                                }
                            },
                        },
                        **_ERRORS,
                    },
                }
            },
            "/api/slides/{slide_id}/thumbnail": {
                "get": {
                    "summary": "Whole-slide thumbnail fitting in max x max",
                    "parameters": [
                        _ID,
                        _int("max", "longest side in pixels", minimum=1),
                        _FORMAT,
                        _ICC,
                        *_DISPLAY,
                    ],
                    "responses": {"200": _IMAGE, "304": {"description": "not modified"}, **_ERRORS},
                }
            },
            "/api/slides/{slide_id}/region": {
                "get": {
                    "summary": "A region, in level-0 pixels or micrometres, at an output size",
                    "parameters": [
                        _ID,
                        {
                            "name": "unit",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["px", "um"], "default": "px"},
                        },
                        _num("x", "left, in the unit"),
                        _num("y", "top, in the unit"),
                        _num("width", "width, in the unit"),
                        _num("height", "height, in the unit"),
                        _int("out_width", "output width", minimum=1),
                        _int("out_height", "output height", minimum=1),
                        _int("max", "output longest side", minimum=1),
                        _FORMAT,
                        _ICC,
                        *_DISPLAY,
                    ],
                    "responses": {"200": _IMAGE, "304": {"description": "not modified"}, **_ERRORS},
                }
            },
            "/api/slides/{slide_id}/icc": {
                "get": {
                    "summary": "The slide's ICC profile as stored (404 when it has none)",
                    "parameters": [_ID],
                    "responses": {
                        "200": {
                            "description": "ICC profile",
                            "content": {"application/vnd.iccprofile": {}},
                        },
                        **_ERRORS,
                    },
                }
            },
            "/api/slides/{slide_id}/associated/{name}": {
                "get": {
                    "summary": "An associated image (label, macro, thumbnail) if the store kept it",
                    "parameters": [
                        _ID,
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z]{1,20}$"},
                        },
                        _FORMAT,
                    ],
                    "responses": {"200": _IMAGE, **_ERRORS},
                }
            },
            "/api/slides/{slide_id}/share": {
                "post": {
                    "summary": "A signed URL: this slide's tiles (or regions) for up to 15 minutes,"
                    " without credentials (exp, kid and sig query parameters); a tiles link"
                    " opens DeepZoom tiles and single IIIF tiles of the advertised grid only",
                    "parameters": [
                        _ID,
                        {
                            "name": "scope",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["tiles", "regions"],
                                "default": "tiles",
                            },
                        },
                        _int("minutes", "lifetime, 1 to 15 (default 15)", minimum=1),
                    ],
                    "responses": {
                        "200": {
                            "description": "query string, DZI URL and expiry",
                            "content": {"application/json": {}},
                        },
                        "403": _ERROR,
                        **_ERRORS,
                    },
                }
            },
            **_annotation_paths(),
            "/deepzoom/{slide_id}.dzi": {
                "get": {
                    "summary": "DeepZoom descriptor",
                    "parameters": [_ID],
                    "responses": {
                        "200": {"description": "DZI XML", "content": {"application/xml": {}}},
                        **_ERRORS,
                    },
                }
            },
            "/iiif/3/{slide_id}/info.json": {
                "get": {
                    "summary": "IIIF Image API 3.0 image information",
                    "parameters": [_ID],
                    "responses": {
                        "200": {"description": "info.json", "content": {"application/json": {}}},
                        **_ERRORS,
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "status", "correlation_id"],
                    "properties": {
                        "error": {"type": "string"},
                        "status": {"type": "integer"},
                        "correlation_id": {"type": "string"},
                    },
                },
                "Level": {
                    "type": "object",
                    "properties": {
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "downsample": {"type": "integer"},
                    },
                },
                "Slide": {
                    "type": "object",
                    "required": ["id", "width", "height", "levels"],
                    "properties": {
                        "id": {"type": "string"},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "tile_size": {"type": "integer"},
                        "levels": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Level"},
                        },
                        "mpp": {"type": "array", "items": {"type": "number"}, "nullable": True},
                        "objective_power": {"type": "number", "nullable": True},
                        "vendor": {"type": "string", "nullable": True},
                        "associated": {"type": "array", "items": {"type": "string"}},
                        # The scanner's colour profile, described (docs/colour.md); the
                        # bytes are at /api/slides/{slide_id}/icc. null: none (sRGB).
                        "icc_profile": {
                            "type": "object",
                            "nullable": True,
                            "properties": {
                                "description": {"type": "string"},
                                "colour_space": {"type": "string"},
                                "version": {"type": "string"},
                                "size": {"type": "integer"},
                                "sha256": {"type": "string"},
                                "usable": {"type": "boolean"},
                                "srgb_equivalent": {"type": "boolean"},
                            },
                        },
                        # Channel (fluorescence) slides and focal planes: what the display
                        # parameters of images and tiles choose from.
                        "kind": {"type": "string", "enum": ["rgb", "channels"]},
                        "dtype": {"type": "string", "enum": ["uint8", "uint16"]},
                        "channels": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "index": {"type": "integer"},
                                    "name": {"type": "string"},
                                    "color": {"type": "string", "pattern": "^[0-9a-f]{6}$"},
                                    "emission_nm": {"type": "number", "nullable": True},
                                    "window": {"type": "array", "items": {"type": "number"}},
                                    "active": {"type": "boolean"},
                                },
                            },
                        },
                        "planes": {
                            "type": "array",
                            "items": {"type": "number"},
                            "description": "focal planes' z offsets in micrometres",
                        },
                        "default_plane": {"type": "integer"},
                        # Which slide is which (`tileserver slides label`); null: not set.
                        "case": {"type": "string", "nullable": True},
                        "block": {"type": "string", "nullable": True},
                        "stain": {"type": "string", "nullable": True},
                        "scan_date": {"type": "string", "format": "date", "nullable": True},
                        "properties": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                **_ANNOTATION_SCHEMAS,
                "Page": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Slide"}},
                        "offset": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "total": {"type": "integer"},
                    },
                },
            }
        },
    }
