"""Typed errors rendered as RFC 9457 ``application/problem+json``.

Hierarchy::

    AppError (500)
    ├── BadRequest (400)
    │   ├── InvalidCursor (400)
    │   └── PayloadTooLarge (413)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── UnsupportedMediaType (415)
    ├── ValidationFailed (422)
    ├── RateLimited (429)
    └── UpstreamUnavailable (503)

(``BodyTooLarge``, raised while a body is read past its limit, is answered as ``PayloadTooLarge``.)

Domain code raises these; it never raises ``HTTPException``. :func:`install_error_handlers` maps them,
FastAPI's request validation errors and unexpected exceptions to problem documents.

A problem about particular places of the request lists them in ``errors``, each ``{"loc", "msg", "type"}``
as FastAPI's request validation does: ``loc`` says where (``["body", "steps", "2", "next"]``; the first item is
the part of the request: ``body``, ``query``, ``path`` or ``header``), ``msg`` what is wrong, ``type`` its kind
(pydantic's; for a service's own checks ``value_error``, or ``not_found`` for a reference to nothing there is).
A service's own checks build them with :func:`body_error`, so a client reads every 422 the same way.
"""

import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db import CONNECTION_ERRORS, UNAVAILABLE_SQLSTATES, UNMIGRATED_ERRORS, UNMIGRATED_SQLSTATES, sqlstate
from shared.routing import routed
from shared.validation import error_location, error_message, input_path

log = structlog.get_logger()

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://tenure.dev/problems/"


class AppError(Exception):
    status: int = 500
    slug: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(AppError):
    status, slug, title = 400, "bad-request", "Bad request"


class InvalidCursor(BadRequest):
    """An ``after`` that is not the next_cursor of a previous page of this list (its filters, its workspace), or one
    edited: the same 400 on every list, naming the parameter (``where`` is the part of the request that holds it:
    ``query``, or ``body`` for a search)."""

    def __init__(self, where: str = "query"):
        msg = ("not the next_cursor of a previous page of this list (with the same filters, in this workspace), or "
               "edited")
        super().__init__("Invalid cursor: pass the next_cursor of a previous page of this list, with the same "
                         "filters", errors=[{"loc": [where, "after"], "msg": msg, "type": "value_error"}])


class PayloadTooLarge(BadRequest):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body is read past its route's limit (``shared.web.BodyLimitMiddleware``), answered as
    :class:`PayloadTooLarge`. A Starlette ``HTTPException``, not an ``AppError``: FastAPI lets only those out of its
    body reading (anything else there becomes a 400). Code that catches ``HTTPException`` around reading a body
    must let this one through."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body is over the limit of {limit} bytes")
        self.limit = limit

    def problem(self) -> PayloadTooLarge:
        return PayloadTooLarge(str(self.detail), limit_bytes=self.limit, headers={"Connection": "close"})


class Unauthorized(AppError):
    """Carries the ``WWW-Authenticate`` challenge a 401 must have (RFC 9110 15.5.2): Bearer, which every
    authenticated route takes (the secret key, the write key on tracking calls, the internal token)."""

    status, slug, title = 401, "unauthorized", "Missing or invalid credentials"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="tenure"', **(headers or {})}, **extra)


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "Credentials not allowed here"


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict"


class UnsupportedMediaType(AppError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(AppError):
    status, slug, title = 422, "validation-failed", "Request validation failed"


class RateLimited(AppError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class UpstreamUnavailable(AppError):
    status, slug, title = 503, "upstream-unavailable", "A dependency is unavailable"


def body_error(at: str | Sequence[str | int], msg: str, type_: str = "value_error", **extra: Any) -> dict[str, Any]:
    """One entry of a problem's ``errors`` about a place in the request body, shaped as FastAPI's request
    validation errors (``loc``, ``msg``, ``type``). ``at`` is the place dotted (``steps.2.next``) or as its
    parts (``["locales", "fr.CA", "html"]``: for keys that may hold a dot); ``extra`` adds details (``line``,
    ``column``). ``at`` itself is kept too, dotted: campaign named places that way before ``loc``, and clients may
    read it."""
    parts = at.split(".") if isinstance(at, str) else [str(p) for p in at]
    return {"loc": ["body", *parts], "msg": msg, "type": type_, "at": ".".join(parts), **extra}


def path_in(path: str, paths: Sequence[str]) -> bool:
    """``path`` is one of ``paths`` (one ending in ``/`` is a prefix of paths)."""
    return any(path == p or p.endswith("/") and path.startswith(p) for p in paths)


def place_error(loc: Sequence[str], msg: str, type_: str = "value_error") -> dict[str, Any]:
    """One entry of a problem's ``errors`` about a parameter, a header or the body as a whole (``["query", "end"]``,
    ``["header", "Idempotency-Key"]``, ``["body"]``), shaped as :func:`body_error`'s."""
    return {"loc": list(loc), "msg": msg, "type": type_}


def problem_response(err: AppError, request: Request) -> JSONResponse:
    """The problem document of ``err``. On the paths the app lists in ``app.state.sdk_error_paths`` (ingest's
    tracking routes) it also carries the extension members ``code`` (the problem type's name) and ``message`` (=
    ``detail``): Segment's and RudderStack's Python SDKs read them from any JSON error body, and
    rudder-sdk-python, missing them, raised KeyError and retried a 401 or 413 as if the network had failed."""
    body = err.to_problem(instance=request.url.path)
    app = request.scope.get("app")
    if app is not None and path_in(request.scope.get("path", ""), getattr(app.state, "sdk_error_paths", ())):
        body.setdefault("code", err.slug)
        body.setdefault("message", err.detail)
    return JSONResponse(
        body,
        status_code=err.status,
        headers=err.headers,
        media_type=PROBLEM_JSON,
    )


_SDK_MEMBERS = {
    "code": {"type": "string", "description": "the kind of problem, as the last part of `type` (`unauthorized`, "
                                              "`payload-too-large`, …): for Segment's and RudderStack's SDKs"},
    "message": {"type": "string", "description": "the same as `detail`: for Segment's and RudderStack's SDKs"},
}


def problem_schema(description: str, *, sdk_members: bool = False) -> dict[str, Any]:
    """An OpenAPI ``responses=`` entry for a problem document (``sdk_members``: with ``code`` and ``message``, see
    :func:`problem_response`)."""
    schema = _problem_schema(description)
    if sdk_members:
        schema["content"][PROBLEM_JSON]["schema"]["properties"].update(_SDK_MEMBERS)
    return schema


def _problem_schema(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            PROBLEM_JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "description": "a URI naming the kind of problem: "
                                                                  f"{_TYPE_BASE}<kind>, e.g. …/not-found"},
                        "title": {"type": "string", "description": "the kind of problem, in words"},
                        "status": {"type": "integer", "description": "the HTTP status code"},
                        "detail": {"type": "string", "description": "what went wrong with this request, in words"},
                        "instance": {"type": "string", "description": "the request's path"},
                        "errors": {
                            "type": "array",
                            "description": "where the request is wrong, place by place (when the problem is about "
                                           "places of it): as FastAPI's request validation words them",
                            "items": {"type": "object", "properties": {
                                "loc": {"type": "array", "items": {"type": "string"},
                                        "description": "the place: the part of the request (body, query, path, "
                                                       "header), then the keys and indexes down to the value"},
                                "msg": {"type": "string", "description": "what is wrong there, in words"},
                                "type": {"type": "string", "description": "the kind of error: pydantic's "
                                                                          "(missing, uuid_parsing, …), or for a "
                                                                          "service's own checks value_error "
                                                                          "(not_found: names nothing there is)"},
                            }},
                        },
                    },
                }
            }
        },
    }


def body_too_large_schema() -> dict[str, Any]:
    """The 413 every operation that takes a body can answer (``shared.web.BodyLimitMiddleware``), documented on each
    by ``shared.web`` unless the route names its own (tracking's 32 KB per message)."""
    entry = problem_schema("The request body is over its limit: TENURE_MAX_BODY_BYTES (16 MiB by default), or the "
                           "route's own smaller one; `limit_bytes` says which. Nothing was read or done")
    entry["content"][PROBLEM_JSON]["schema"]["properties"]["limit_bytes"] = {
        "type": "integer", "description": "the largest body this route reads, in bytes (as sent: compressed if gzip)"}
    return entry


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem_schema("Malformed request"),
    401: problem_schema("Missing or invalid credentials"),
    422: problem_schema("Request validation failed"),
}


def _jsonable_errors(errors: list[Any], body: Any = None) -> list[dict[str, Any]]:
    """FastAPI's errors as the problem lists them; a place in the body as a path in it (no union tags)."""
    out = []
    for e in errors:
        loc = error_location(e)
        if loc[:1] == ["body"]:
            loc = ["body", *input_path(loc[1:], body)]
        out.append({"loc": loc, "msg": error_message(e), "type": e.get("type")})
    return out


# character_not_in_repertoire (NUL in text or jsonb), untranslatable_character, invalid \\u escapes
_BAD_TEXT_SQLSTATES = frozenset({"22021", "22P05", "22P02"})
# a value asyncpg cannot encode (22000: a date before year 1 in UTC, an integer beyond 64 bits),
# numeric_value_out_of_range, datetime_field_overflow
_OUT_OF_RANGE_SQLSTATES = frozenset({"22000", "22003", "22008"})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405 (RFC 9110): every method some route takes at this path, and HEAD wherever GET is
    (``shared.web.HeadAsGetMiddleware``). Starlette names only the methods of the first route whose path matches,
    and each of our routes has one method, so ``/v1/campaigns`` said ``POST`` alone."""
    allowed = {m for m in _METHODS if routed(request.scope, m)}
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(m for m in _METHODS if m in allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request.failed", error=exc.slug, detail=exc.detail)
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(list(exc.errors()), exc.body)
        whole_body = [e for e in errors if e["loc"] == ["body"]]
        if any(e["type"] == "json_invalid" for e in errors):
            err: AppError = BadRequest("The request body is not valid JSON", errors=errors)
        elif whole_body and whole_body[0]["type"] == "missing":
            err = ValidationFailed("The request body is missing: send a JSON object", errors=errors)
        elif whole_body and not _is_json(request.headers.get("content-type", "")):
            got = request.headers.get("content-type", "")[:100] or "no Content-Type"
            err = UnsupportedMediaType(f"Send the body as JSON with Content-Type: application/json (got {got})")
        else:
            err = ValidationFailed("The request does not match the schema", errors=errors)
        return problem_response(err, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # valid JSON that Python's reader gives up on (FastAPI says only "There was an error parsing the body")
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            return problem_response(BadRequest("The request body nests JSON arrays and objects too deeply to be "
                                               "read (hundreds of levels)"), request)
        if exc.status_code == 400 and "integer string conversion" in str(exc.__cause__):
            return problem_response(BadRequest("The request body holds a number with too many digits to be read "
                                               "(over 4300)"), request)
        if isinstance(exc, BodyTooLarge):
            return problem_response(exc.problem(), request)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        known: dict[int, tuple[str, str, str]] = {  # the router's own answers, titled as ours are
            404: (NotFound.slug, NotFound.title, f"No route {request.url.path}"),
            405: ("method-not-allowed", "Method not allowed",
                  f"{request.method} is not one of this path's methods: {headers.get('Allow', 'none')}"),
        }
        slug, title, detail = known.get(exc.status_code, ("http-error", str(exc.detail), str(exc.detail)))
        err = AppError(detail, headers=headers)
        err.status, err.slug, err.title = exc.status_code, slug, title
        return problem_response(err, request)

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # the request's transaction rolled back: nothing was written. SQLAlchemy's error, or the driver's own from
        # a statement run on the driver's connection (ingest's COPY of the events)
        state = sqlstate(exc) or ""
        if state in _BAD_TEXT_SQLSTATES:
            return problem_response(ValidationFailed(
                "A text value cannot be stored: it contains a NUL character (\\u0000) or invalid Unicode"), request)
        if state in _OUT_OF_RANGE_SQLSTATES:
            log.warning("request.value_out_of_range", sqlstate=state)
            return problem_response(ValidationFailed(
                "A value is out of the range the database can store (a date before year 1 in UTC, or an "
                "integer beyond 64 bits)"), request)
        if getattr(exc, "connection_invalidated", False) or state.startswith(UNAVAILABLE_SQLSTATES):
            log.warning("request.database_unavailable", sqlstate=state)
            return problem_response(UpstreamUnavailable("The database is not reachable; retry shortly",
                                                        headers={"Retry-After": "1"}), request)
        if state in UNMIGRATED_SQLSTATES:
            return await _not_migrated(request, getattr(exc, "orig", None) or exc)
        log.exception("request.database_error", sqlstate=state)
        return problem_response(AppError("An unexpected error occurred"), request)

    for database_error in (DBAPIError, asyncpg.exceptions.PostgresError):
        app.add_exception_handler(database_error, _database)

    async def _not_migrated(request: Request, exc: BaseException) -> JSONResponse:
        # a table or schema missing: this pod started before `tenure migrate` ran (its /readyz says so)
        first = (str(exc).strip().splitlines() or [""])[0]
        log.warning("request.database_not_migrated", error=re.sub(r"^<class '[\w.]+'>: ", "", first),
                    hint="run `tenure migrate`")
        return problem_response(UpstreamUnavailable(
            "The database is not migrated to this release yet (`tenure migrate`); retry shortly",
            headers={"Retry-After": "5"}), request)

    for unmigrated in UNMIGRATED_ERRORS:  # raised by asyncpg directly (ingest's COPY), not wrapped by SQLAlchemy
        app.add_exception_handler(unmigrated, _not_migrated)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("request.dependency_unreachable", error=type(exc).__name__)
        return problem_response(UpstreamUnavailable("A dependency (the database) is not reachable; retry shortly",
                                                    headers={"Retry-After": "1"}), request)

    # connecting to PostgreSQL failed (refused, timed out, server restarting): nothing was written
    # (the driver's own "went away" errors, as workers wait them out, and a statement on a connection closed under it)
    for connection_error in (*CONNECTION_ERRORS, asyncpg.exceptions.InterfaceError):
        app.add_exception_handler(connection_error, _database_down)

    @app.exception_handler(httpx.HTTPError)
    async def _upstream(request: Request, exc: httpx.HTTPError) -> JSONResponse:
        log.warning("request.upstream_unavailable", error=type(exc).__name__)
        return problem_response(UpstreamUnavailable("Another Tenure service did not answer; retry shortly",
                                                    headers={"Retry-After": "5"}), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.crashed", error_type=type(exc).__name__)
        return problem_response(AppError("An unexpected error occurred"), request)
