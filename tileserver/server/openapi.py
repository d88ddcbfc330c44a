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
                    "parameters": [_ID, _int("max", "longest side in pixels", minimum=1), _FORMAT],
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
                    ],
                    "responses": {"200": _IMAGE, "304": {"description": "not modified"}, **_ERRORS},
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
                        "properties": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
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
