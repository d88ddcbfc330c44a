"""Logging in and out, enrolment through one-time links, and who am I."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web

from tileserver.security.budgets import REFILL
from tileserver.security.login import (
    ABSOLUTE_TIMEOUT,
    EnrolmentFailed,
    LoginFailed,
)
from tileserver.server.auth import SECURITY, SESSION, SESSION_COOKIE, client_ip, principal_of
from tileserver.server.errors import BadRequest

T = TypeVar("T")

MAX_FIELD = 1024
MAX_NEXT = 2048  # a redirect target is a path and query of this site, never a novel


async def _form(request: web.Request, *names: str) -> dict[str, str]:
    """JSON or form fields as short strings; BadRequest naming what is missing or odd."""
    if request.content_type == "application/json":
        try:
            data: Any = await request.json()
        except RecursionError:
            # json.loads recurses per nesting level: a 64 KB body of "[" is 65,000 levels.
            raise BadRequest("body must be JSON without deep nesting") from None
        except ValueError:  # bad JSON or UTF-8, or a number of thousands of digits
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
        if _SURROGATE.search(value):
            raise BadRequest(f"field {name!r} must be Unicode text (no lone surrogates)")
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


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args))


def routes() -> list[web.RouteDef]:
    async def login(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        authenticator = security.authenticator
        if authenticator is None:
            raise web.HTTPNotFound()
        source = client_ip(request)
        try:
            # Per client address first, before the body, a hash or a database write: a flood
            # of random names costs a dictionary lookup each (no I/O: fine on the loop).
            wait = authenticator.admit(source)
            if wait is REFILL:  # limits shared by every host: a new lease, off the loop
                wait = await _off_loop(authenticator.admit_refill, source)
            if wait is not None:
                raise LoginFailed(retry_after=wait)
            form = await _form(request, "username", "password", "code")
            # Argon2 takes tens of milliseconds of CPU: never on the event loop.
            session = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    authenticator.login,
                    form["username"],
                    form["password"],
                    form["code"],
                    source,
                    admitted=True,
                ),
            )
        except LoginFailed as exc:
            # One answer for every refusal, whatever the name: status, body and headers.
            if exc.retry_after is not None:
                raise web.HTTPTooManyRequests(
                    reason="too many attempts; try again later",
                    headers={"Retry-After": str(max(1, round(exc.retry_after)))},
                ) from None
            raise web.HTTPUnauthorized(reason="invalid credentials") from None
        # Every database call off the event loop: PostgreSQL is a network round trip away.
        user = await _off_loop(authenticator.accounts.user, form["username"])
        response = web.json_response(
            {"user": form["username"], "role": user.role if user else None}
        )
        return _with_session(response, session, security.tls)

    async def logout(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        session = request.get(SESSION)
        if security.authenticator is not None and session:
            await _off_loop(
                security.authenticator.logout, session, principal_of(request), client_ip(request)
            )
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

    async def enrol_link(request: web.Request) -> web.Response:
        """Whom a one-time set-up link is for, so the page asks only what the link needs: a
        bootstrap link lets the first administrator choose a name; an enrolment link was
        issued for one user, whose name the page shows instead of a field it would ignore.
        The token is in the body (never a query string an access log could keep)."""
        security = request.app[SECURITY]
        if security.authenticator is None:
            raise web.HTTPNotFound()
        form = await _form(request, "token")
        accounts = security.authenticator.accounts
        found = await _off_loop(accounts.peek_one_time, form["token"], ("bootstrap", "enrol"))
        if found is None:
            raise BadRequest("this link is unknown, used or expired")
        purpose, user, role, _ = found
        if purpose == "bootstrap":
            if await _off_loop(accounts.has_users):
                raise BadRequest("this server already has an administrator")
            # The name staged by an unfinished attempt is not the link's: the choice stays open.
            user, role = None, "admin"
        return web.json_response(
            {"purpose": purpose, "username": user, "role": role},
            headers={"Cache-Control": "no-store"},
        )

    async def enrol_confirm(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        if security.authenticator is None:
            raise web.HTTPNotFound()
        form = await _form(request, "token", "code")
        try:
            session = await _off_loop(
                security.authenticator.enrol_confirm,
                form["token"],
                form["code"],
                client_ip(request),
            )
        except EnrolmentFailed as exc:
            raise BadRequest(str(exc)) from None
        return _with_session(web.json_response({"enrolled": True}), session, security.tls)

    async def link(request: web.Request) -> web.StreamResponse:
        security = request.app[SECURITY]
        if security.authenticator is None or not security.loopback:
            raise web.HTTPNotFound()
        try:
            session = await _off_loop(
                security.authenticator.use_login_link,
                request.query.get("token", ""),
                client_ip(request),
            )
        except LoginFailed:
            raise web.HTTPUnauthorized(
                reason="this login link is unknown, used or expired"
            ) from None
        target = safe_next(request.query.get("next"))
        response = web.Response(status=303, headers={"Location": target})
        return _with_session(response, session, security.tls)

    return [
        web.post("/auth/login", login),
        web.post("/auth/logout", logout),
        web.get("/auth/me", me),
        web.post("/auth/enrol", enrol),
        web.post("/auth/enrol/link", enrol_link),
        web.post("/auth/enrol/confirm", enrol_confirm),
        web.get("/auth/link", link),
    ]


# Lone surrogates ("\ud800" is valid JSON) cannot be encoded as UTF-8 for hashing or SQLite.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Printable ASCII without space or backslash: browsers drop tabs and newlines from URLs and
# read "\\" as "/", so any of those could turn "/\t/evil" into "//evil", another site.
_PLAIN = re.compile(r"[!-\[\]-~]*")
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site however it is decoded, else "/".

    Redirect targets after login come from the query string (open redirect, CWE-601). Only a
    path-absolute URL is kept: it starts with one "/", holds printable ASCII without
    backslashes, and its path, percent-decoded again and again (a server or proxy may decode
    once more), never starts a network path ("//", "/\\"), holds no empty or dot segment that
    would normalise into one ("/.//evil"), and no control or non-ASCII character (look-alike
    slashes such as U+2215 or U+FF0F). Everything else, "javascript:", "https://evil" and
    "///evil" included, falls back to the home page. The login page applies the same rules
    (static/js/common.js, safeNext).
    """
    if not target or len(target) > MAX_NEXT or not _PLAIN.fullmatch(target):
        return "/"
    path = re.split(r"[?#]", target, maxsplit=1)[0]
    for _ in range(4):
        if (
            not path.startswith("/")
            or not _PLAIN.fullmatch(path)
            or "//" in path
            or _DOT_SEGMENT.search(path)
        ):
            return "/"
        decoded = unquote(path, errors="replace")  # U+FFFD for bad UTF-8: not ASCII, refused
        if decoded == path:
            return target
        path = decoded
    return "/"  # still decoding after four rounds: nobody needs that
