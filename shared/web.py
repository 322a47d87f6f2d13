"""What every service's FastAPI app shares: lifespan resources, request ids, problem errors, probes.

``create_service_app`` builds the app; the service adds its routers. Resources live on ``app.state``
(typed by :class:`AppState`): ``settings``, ``engine``, ``sessionmaker``, ``redis`` (arq pool),
``http`` and ``internal`` (service-to-service client).
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics, openapi_glossary
from shared.db import create_engine, create_sessionmaker, dispose_within
from shared.errors import (
    PROBLEM_JSON,
    BodyTooLarge,
    ValidationFailed,
    body_too_large_schema,
    install_error_handlers,
    place_error,
    problem_response,
    problem_schema,
)
from shared.gc_tuning import tune_gc
from shared.http import InternalClient, make_http_client
from shared.logging import configure_logging
from shared.migrate import schema_problem
from shared.queue import Waker, lazy_redis
from shared.routing import path_parameters, routed
from shared.settings import ServiceName, Settings
from shared.validation import URL_TEXT_UNCHECKED, url_text_problem

log = structlog.get_logger()

REDIS_PROBE_TIMEOUT_S = 1.0
POSTGRES_PROBE_TIMEOUT_S = 2.0  # the readiness probe's own timeout is 3 s (k8s): an answer, not a timed-out probe
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/events", "/v1/transitions"})


class RequestContextMiddleware:
    """Binds a request id (taken from ``X-Request-ID`` or generated) to every log line and echoes it.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs an extra task per request).
    """

    def __init__(self, app: ASGIApp, service: str = ""):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:200] or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            seconds = time.perf_counter() - started
            route = scope.get("route")  # set by the router once a route matched: a template, bounded
            metrics.record_request(self.service, scope.get("method", ""), getattr(route, "path", "unmatched"),
                                   status, seconds)
            # probes and feed polls are frequent and uninteresting unless they fail
            quiet = path in _QUIET_PATHS and status < 400
            # a matched route is logged as its template: raw paths hold recipients' link tokens, write keys and email
            # addresses (`/u/{token}`, `/v1/profiles/{ref}`), which logs must not keep (docs/observability.md); a path
            # no route matched (a typo, a scanner, `/v1/nosuch/jane@example.com`) as "unmatched", as the metrics do
            (log.debug if quiet else log.info)(
                "http.request", method=scope.get("method"), path=getattr(route, "path", None) or "unmatched",
                status=status, ms=round(seconds * 1000, 1),
            )


class HeadAsGetMiddleware:
    """HEAD on every GET resource (RFC 9110 §9.3.2: a general-purpose server supports both), answered as GET without
    the body: uptime monitors, link checkers and ``curl -I`` send it. FastAPI registers only the methods a route
    names, so it was a 405. A route that declares HEAD itself (delivery's recipient links, which must record
    nothing then) keeps its own."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or routed(scope, "HEAD"):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}  # a copy: the server's own scope still says HEAD
        try:
            await self.app(as_get, receive, without_body)
        finally:
            if "route" in as_get:  # the route template the request metrics are labelled with
                scope["route"] = as_get["route"]


class BodyLimitMiddleware:
    """Refuses a request body over its limit without buffering it: at once from ``Content-Length``, or, for a
    chunked body (or one longer than it declared), as soon as the bytes read pass the limit; the chunk that passes
    it is dropped, so a route never holds more than its limit. ``default`` is ``TENURE_MAX_BODY_BYTES``; ``limits``
    are (path prefix, bytes) for routes that take less, checked in order (never more than ``default``)."""

    def __init__(self, app: ASGIApp, default: int, limits: Sequence[tuple[str, int]] = ()):
        self.app, self.default = app, default
        self.limits = tuple((prefix, min(n, default)) for prefix, n in limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = next((n for prefix, n in self.limits if path.startswith(prefix)), self.default)
        declared = next((v for k, v in scope.get("headers") or () if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await problem_response(BodyTooLarge(limit).problem(), Request(scope))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _queue_depth(service: ServiceName) -> Callable[[FastAPI], Any]:
    @metrics.sets(metrics.QUEUE_DEPTH)
    async def queue_depth(app: FastAPI) -> None:
        queue = app.state.settings.queue_name(service)
        metrics.QUEUE_DEPTH.labels(service, queue).set(await app.state.redis.zcard(queue))

    return queue_depth


class Readiness(BaseModel):
    """What ``/readyz`` found: 200 while the pod can serve, 503 (same shape) while it cannot."""

    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="`ok`: every check passed; `degraded`: only Redis failed (still ready: an API serves without "
                    "it); `unavailable` (503): PostgreSQL does not answer or the schemas are older than this release")
    checks: dict[str, str] = Field(
        description="each dependency checked (`postgres`; `schema` once PostgreSQL answered; `redis`) and `ok`, "
                    "`error: <exception>`, or for `schema` what to do",
        examples=[{"postgres": "ok", "schema": "schema core is not migrated: run `tenure migrate`", "redis": "ok"}])


def _serve_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its script and styles served by the service itself (``/docs/assets``, from the
    fastapi-offline package), not from a CDN: FastAPI's default page was blank on a machine without internet (an
    air-gapped cluster, a laptop offline)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} — API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")


def _probe_router(service: str) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", operation_id=f"{service}_healthz", summary="Liveness: the process is up",
                openapi_extra={"security": []})
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get(
        "/readyz",
        operation_id=f"{service}_readyz",
        summary="Readiness: PostgreSQL answers and the schemas are migrated to this release (Redis is reported, "
                "and a Redis outage is `degraded`, still ready)",
        openapi_extra={"security": []},
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready: PostgreSQL does not answer, or the schemas "
                                                              "are not migrated to this release"}},
    )
    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        state = request.app.state

        async def database() -> None:
            async with state.engine.connect() as conn:
                await conn.execute(text("select 1"))
                checks["postgres"] = "ok"
                # a pod started before `tenure migrate` ran must not take traffic: every query would fail. Checked
                # until it passes once (a schema only moves forward)
                ready = getattr(state, "schema_ready", False)
                problem = None if ready else await schema_problem(conn, ("core", service))
                state.schema_ready = problem is None
                checks["schema"] = problem or "ok"
                if problem:
                    log.warning("readyz.schema_not_ready", problem=problem)

        # bounded as Redis is: a PostgreSQL behind a silent network held the probe for its connect timeout. Not
        # wait_for, which waits for the cancelled check to clean up (the driver's polite close: 2 s more)
        check = asyncio.ensure_future(database())
        done, _ = await asyncio.wait({check}, timeout=POSTGRES_PROBE_TIMEOUT_S)
        if not done:
            check.cancel()
            check.add_done_callback(lambda t: t.cancelled() or t.exception())  # (its error, left unread, is ours)
        failed = check.exception() if done else TimeoutError()
        if failed is not None:
            checks["schema" if "postgres" in checks else "postgres"] = f"error: {type(failed).__name__}"
        try:
            # bounded well inside the probe's timeout (3 s): a Redis that accepts and never answers must not make
            # the probe itself time out
            await asyncio.wait_for(request.app.state.redis.ping(), REDIS_PROBE_TIMEOUT_S)
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
        # Redis is reported, not required: an API only wakes workers there (their poll catches up) and counts rate
        # limits (failing open), so a Redis outage must not take every API pod out of its Service at once
        ok = all(v == "ok" for k, v in checks.items() if k != "redis")
        status = "unavailable" if not ok else "ok" if checks["redis"] == "ok" else "degraded"
        return JSONResponse({"status": status, "checks": checks}, status_code=200 if ok else 503)

    return router


SECURITY_SCHEMES = {
    "secretKey": {"type": "http", "scheme": "bearer",
                  "description": "The workspace's secret key (management APIs), or the internal token plus "
                                 "X-Tenure-Workspace (service-to-service; a workspace that does not exist is a "
                                 "404)."},
    "internalToken": {"type": "http", "scheme": "bearer",
                      "description": "The deployment's internal token (service-to-service routes), with "
                                     "X-Tenure-Workspace naming the workspace where the route acts on one (a "
                                     "workspace that does not exist is a 404)."},
    "writeKey": {"type": "http", "scheme": "basic",
                 "description": "The workspace's write key as the Basic username with an empty password "
                                "(Segment style); Bearer and a `writeKey` body field work too."},
}


_PROBES = ("/healthz", "/readyz", "/metrics")


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    """The problem documents every route can answer, whatever it declares: 422 as problem+json (FastAPI's
    default entry says ``application/json``), 400/415 for a body that is not JSON or not sent as JSON, 413 for a
    body over its limit (every operation that takes one), 401/403 where credentials are checked (and 404: the
    workspace the internal token names may not exist), 503 (with ``Retry-After``) when PostgreSQL or a sibling
    service does not answer, or the database is not migrated yet (shared/errors.py; docs/operations.md)."""
    responses = operation.setdefault("responses", {})
    if "422" in responses and PROBLEM_JSON not in responses["422"].get("content", {}):
        responses["422"] = problem_schema("Request validation failed")
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        responses.setdefault("400", problem_schema("Malformed request (the body is not valid JSON)"))
        responses.setdefault("415", problem_schema("The body is not sent as application/json"))
    if "requestBody" in operation:  # whatever its type: BodyLimitMiddleware reads every body
        responses.setdefault("413", body_too_large_schema())
    if operation.get("security"):
        responses.setdefault("401", problem_schema("Missing or invalid credentials"))
        responses.setdefault("403", problem_schema("Credentials not allowed here (e.g. a write key)"))
        responses.setdefault("404", problem_schema("The workspace X-Tenure-Workspace names (with the internal token) "
                                                   "does not exist"))
    if "401" in responses:
        responses["401"] = {**responses["401"], "headers": {"WWW-Authenticate": {
            "description": "the challenge: `Bearer realm=\"tenure\"`", "schema": {"type": "string"}}}}
    if path not in _PROBES:  # every route but the probes reads PostgreSQL, and many ask a sibling service
        responses.setdefault("503", {**problem_schema(
            "PostgreSQL, or another Tenure service this route asks, is unavailable, or the database is not migrated "
            "to this release yet: nothing was done; retry after Retry-After seconds"), "headers": {"Retry-After": {
                "description": "seconds to wait before retrying", "schema": {"type": "integer"}}}})


def _is_list(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(_is_list(s) for s in schema.get("anyOf", []))


@dataclass(frozen=True)
class _Declared:
    """What an operation's OpenAPI document declares about its URL."""

    scalars: frozenset[str]  # query parameters that take one value
    parameters: bool  # any path or query parameter


def _declared(request: Request) -> _Declared | None:
    """The matched route's declarations (None when it is in no OpenAPI document), read once per app."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path is None:
        return None
    declared: dict[tuple[str, str], _Declared] | None = getattr(request.app.state, "declared_parameters", None)
    if declared is None:
        declared = {}
        for p, item in request.app.openapi()["paths"].items():
            for method, op in item.items():
                params = [prm for prm in op.get("parameters", []) if prm["in"] in ("query", "path")]
                declared[(method.upper(), p)] = _Declared(
                    frozenset(prm["name"] for prm in params if prm["in"] == "query"
                              and not _is_list(prm.get("schema", {}))), bool(params))
        request.app.state.declared_parameters = declared
    return declared.get(("GET" if request.method == "HEAD" else request.method, path))


async def _no_repeated_scalars(request: Request) -> None:
    """``?status=a&status=b`` on a one-value parameter: refuse it rather than silently keep the last."""
    if b"&" not in request.scope.get("query_string", b""):
        return
    declared = _declared(request)
    for name in declared.scalars if declared else ():
        if len(request.query_params.getlist(name)) > 1:
            msg = "takes one value; it was given more than once"
            raise ValidationFailed(f"The query parameter {name!r} {msg}", errors=[place_error(["query", name], msg)])


def _plain(raw: bytes) -> bool:
    """Nothing percent-encoded, no NUL and no byte beyond ASCII: no parameter in it can be other than text."""
    return b"%" not in raw and b"\x00" not in raw and raw.isascii()


def _shown(name: str) -> str:
    """A parameter's name as the URL spells it when it is not text (a NUL in a name stays ``%00``)."""
    return name if url_text_problem(name) is None else quote(name.encode("utf-8", "surrogateescape"), safe="")


def _raw_path_parameters(request: Request) -> dict[str, str]:
    """The path parameters decoded from the raw path with ``surrogateescape``: the router decodes bytes that are not
    UTF-8 as U+FFFD, which would hide them. Falls back to the router's values (a NUL is visible there too)."""
    found = path_parameters(request.scope, "surrogateescape")
    if found is not None:
        return found
    return {name: str(value) for name, value in request.path_params.items()}


async def _parameters_are_text(request: Request) -> None:
    """A NUL (``%00``) or bytes that are not UTF-8 (``%FF``, ``%ED%A0%80``) in a path or query parameter: a 422
    naming the parameter, before any dependency or route reads it (PostgreSQL refuses a NUL with an error that names
    nothing; the router reads the other bytes as U+FFFD, a lookup of text nobody sent). Every query parameter of a
    route that declares any is checked, undeclared ones too (ingest reads ``trait.NAME``); a route marked
    :func:`shared.validation.url_text_unchecked` is left alone."""
    scope = request.scope
    query, raw_path = scope.get("query_string", b""), scope.get("raw_path")
    if _plain(query) and isinstance(raw_path, bytes) and _plain(raw_path):
        return
    if getattr(getattr(scope.get("route"), "endpoint", None), URL_TEXT_UNCHECKED, False):
        return
    declared = _declared(request)
    if declared is None or not declared.parameters:
        return
    found: dict[tuple[str, str], str] = {}
    for name, value in _raw_path_parameters(request).items():
        if (problem := url_text_problem(value)) is not None:
            found[("path", name)] = problem
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="surrogateescape"):
        if (problem := url_text_problem(name)) is not None:
            found.setdefault(("query", _shown(name)), f"has a name that {problem}")
        elif (problem := url_text_problem(value)) is not None:
            found.setdefault(("query", name), problem)
    if found:
        raise ValidationFailed("; ".join(f"The {where} parameter {name!r} {problem}"
                                         for (where, name), problem in found.items()),
                               errors=[{"loc": [where, name], "msg": problem, "type": "value_error"}
                                       for (where, name), problem in found.items()])


def _document_security(app: FastAPI) -> None:
    """Declare the credentials in the OpenAPI document. Each operation names its own: the auth dependencies
    carry an ``HTTPBearer`` declaration, ingest's tracking routes state ``writeKey`` themselves, and routes
    with none (probes, unsubscribe and tracking links, signed provider webhooks) are public."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            schema.setdefault("security", [{"secretKey": []}])
            for path, item in schema.get("paths", {}).items():
                for operation in item.values():
                    operation.setdefault("security", [])  # no credential dependency: a public route
                    _document_errors(path, operation)
            openapi_glossary.describe(schema)  # fields that mean the same everywhere, where a model says nothing
            # FastAPI's validation-error models, now referenced by nothing (our 422 is a problem document)
            for name in ("HTTPValidationError", "ValidationError"):
                if f'"#/components/schemas/{name}"' not in json.dumps(schema):
                    schema["components"].get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_service_app(
    service: ServiceName,
    settings: Settings,
    *,
    routers: Sequence[APIRouter],
    description: str,
    version: str = "0.1.0",
    extend: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    metrics_refresh: Sequence[metrics.Refresh] = (),
    body_limits: Sequence[tuple[str, int]] = (),
    **kw: Any,
) -> FastAPI:
    """The service's app. ``extend(app)`` is entered after the shared resources exist and exited before
    they close (service-specific state, e.g. ingest's group committer); ``metrics_refresh`` update the
    service's own gauges at scrape time; ``body_limits`` are (path prefix, bytes) for routes whose bodies must
    stay smaller than ``TENURE_MAX_BODY_BYTES`` (see :class:`BodyLimitMiddleware`)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        app.state.settings = settings
        app.state.engine = create_engine(settings, application_name=f"tenure-{service}")
        app.state.sessionmaker = create_sessionmaker(app.state.engine)
        app.state.redis = lazy_redis(settings)
        app.state.http = make_http_client(settings)
        app.state.internal = InternalClient(settings, app.state.http)
        app.state.waker = Waker(app.state.redis, settings)
        try:
            async with extend(app) if extend else contextlib.nullcontext():
                tune_gc()
                log.info("service.started", service=service)
                yield
        finally:
            await app.state.waker.close()
            await app.state.http.aclose()
            await app.state.redis.aclose()
            await dispose_within(app.state.engine)
            log.info("service.stopped", service=service)

    app = FastAPI(
        title=f"Tenure {service}",
        description=description,
        version=version,
        lifespan=lifespan,
        dependencies=[Depends(_parameters_are_text), Depends(_no_repeated_scalars)],
        docs_url=None,
        redoc_url=None,
        **kw,
    )
    app.state.settings = settings
    _serve_docs(app)
    _document_security(app)
    app.add_middleware(BodyLimitMiddleware, default=settings.max_body_bytes, limits=body_limits)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RequestContextMiddleware, service=service)
    install_error_handlers(app)
    app.include_router(_probe_router(service))
    app.include_router(metrics.metrics_router(service, _queue_depth(service), *metrics_refresh))
    for router in routers:
        app.include_router(router)
    return app
