"""The browser viewer (login page, worklist, slide viewer): being built, see issue 7."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    return []
