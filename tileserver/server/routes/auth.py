"""Logging in and out, enrolment through one-time links, and who am I."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tileserver.security.login import ABSOLUTE_TIMEOUT, EnrolmentFailed, LoginFailed
from tileserver.server.auth import SECURITY, SESSION, SESSION_COOKIE, client_ip, principal_of
from tileserver.server.errors import BadRequest

MAX_FIELD = 1024


async def _form(request: web.Request, *names: str) -> dict[str, str]:
    """JSON or form fields as short strings; BadRequest naming what is missing or odd."""
    if request.content_type == "application/json":
        try:
            data: Any = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body must be JSON") from None
    else:
        data = dict(await request.post())
    if not isinstance(data, dict):
        raise BadRequest("body must be an object")
    fields = {}
    for name in names:
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            raise BadRequest(f"field {name!r} must be a string of at most {MAX_FIELD} characters")
        fields[name] = value
    return fields


def _with_session(response: web.StreamResponse, session: str, secure: bool) -> web.StreamResponse:
    # __Host- prefix: Secure, Path=/, no Domain; browsers refuse it over plain HTTP, so
    # the loopback --insecure-http mode falls back to a plain name.
    response.set_cookie(
        SESSION_COOKIE if secure else "tileserver",
        session,
        max_age=int(ABSOLUTE_TIMEOUT),
        path="/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def routes() -> list[web.RouteDef]:
    async def login(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        if security.authenticator is None:
            raise web.HTTPNotFound()
        form = await _form(request, "username", "password", "code")
        loop = asyncio.get_running_loop()
        try:
            # Argon2 takes tens of milliseconds of CPU: never on the event loop.
            session = await loop.run_in_executor(
                None,
                security.authenticator.login,
                form["username"],
                form["password"],
                form["code"],
                client_ip(request),
            )
        except LoginFailed as exc:
            if exc.retry_after is not None:
                raise web.HTTPTooManyRequests(
                    reason="too many attempts; try again later",
                    headers={"Retry-After": str(max(1, round(exc.retry_after)))},
                ) from None
            raise web.HTTPUnauthorized(reason="invalid credentials") from None
        user = security.authenticator.accounts.user(form["username"])
        response = web.json_response(
            {"user": form["username"], "role": user.role if user else None}
        )
        return _with_session(response, session, security.tls)

    async def logout(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        session = request.get(SESSION)
        if security.authenticator is not None and session:
            security.authenticator.logout(session, principal_of(request), client_ip(request))
        response = web.json_response({"logged_out": True})
        response.del_cookie(SESSION_COOKIE if security.tls else "tileserver", path="/")
        return response

    async def me(request: web.Request) -> web.Response:
        principal = principal_of(request)
        return web.json_response(
            {
                "name": principal.name,
                "kind": principal.kind,
                "role": principal.role,
                "scopes": sorted(principal.scopes),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def enrol(request: web.Request) -> web.Response:
        security = request.app[SECURITY]
        if security.authenticator is None:
            raise web.HTTPNotFound()
        form = await _form(request, "token", "username", "password")
        loop = asyncio.get_running_loop()
        try:
            enrolment = await loop.run_in_executor(
                None,
                security.authenticator.enrol_start,
                form["token"],
                form["username"],
                form["password"],
            )
        except EnrolmentFailed as exc:
            raise BadRequest(str(exc)) from None
        return web.json_response(
            {"otpauth_uri": enrolment.otpauth_uri, "qr_svg": enrolment.qr_svg},
            headers={"Cache-Control": "no-store"},
        )

    async def enrol_confirm(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        if security.authenticator is None:
            raise web.HTTPNotFound()
        form = await _form(request, "token", "code")
        try:
            session = security.authenticator.enrol_confirm(
                form["token"], form["code"], client_ip(request)
            )
        except EnrolmentFailed as exc:
            raise BadRequest(str(exc)) from None
        return _with_session(web.json_response({"enrolled": True}), session, security.tls)

    async def link(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        if security.authenticator is None or not security.loopback:
            raise web.HTTPNotFound()
        try:
            session = security.authenticator.use_login_link(
                request.query.get("token", ""), client_ip(request)
            )
        except LoginFailed:
            raise web.HTTPUnauthorized(
                reason="this login link is unknown, used or expired"
            ) from None
        target = request.query.get("next", "/")
        response = web.Response(status=303, headers={"Location": target if _local(target) else "/"})
        return _with_session(response, session, security.tls)

    return [
        web.post("/auth/login", login),
        web.post("/auth/logout", logout),
        web.get("/auth/me", me),
        web.post("/auth/enrol", enrol),
        web.post("/auth/enrol/confirm", enrol_confirm),
        web.get("/auth/link", link),
    ]


def _local(target: str) -> bool:
    """Only same-site paths as redirect targets (no open redirect)."""
    return target.startswith("/") and not target.startswith("//") and "\\" not in target
