"""The ingest service: Segment-compatible tracking, profiles and the ordered event log."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest import privacy
from services.ingest.api import beacon_router, feed_router, privacy_router, profiles_router, tracking_router
from services.ingest.committer import Committer
from shared import metrics
from shared.errors import path_in
from shared.ratelimit import RequestCounter
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
Send customer events here with any Segment-compatible SDK (`host` = this service, write key as the
HTTP Basic username). Events are stored once per `messageId`, in a durable ordered log that the other
Tenure services read through `/v1/events` (internal token).
"""


@asynccontextmanager
async def _committer(app: FastAPI) -> AsyncIterator[None]:
    app.state.committer = Committer(app.state.sessionmaker)
    app.state.request_counter = RequestCounter(app.state.redis)
    try:
        yield
    finally:
        await app.state.committer.close()


@metrics.sets(metrics.PRIVACY_ERASURES_PENDING, metrics.PRIVACY_OLDEST_PENDING)
async def pending_erasures(app: FastAPI) -> None:
    """Erasures still pending (any workspace) and the oldest one's age, for alerting (docs/observability.md)."""
    async with app.state.sessionmaker() as session, session.begin():
        count, oldest_s = await privacy.pending_erasures(session)
    metrics.PRIVACY_ERASURES_PENDING.set(count)
    metrics.PRIVACY_OLDEST_PENDING.set(oldest_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = create_service_app(
        "ingest", settings or Settings(),
        routers=[tracking_router, beacon_router, feed_router, profiles_router, privacy_router],
        description=DESCRIPTION, extend=_committer, metrics_refresh=[pending_erasures],
    )
    tracking_paths = tuple(sorted({r.path.split("{")[0]  # type: ignore[attr-defined]
                                   for r in (*tracking_router.routes, *beacon_router.routes)}))
    app.add_middleware(TrackingCORS, tracking_paths=tracking_paths)
    app.add_middleware(CollapseSlashes)
    app.state.sdk_error_paths = tracking_paths  # their problems also carry the SDKs' code and message (shared.errors)
    return app


_CORS: dict[str, Any] = {"allow_origins": ["*"], "allow_methods": ["POST", "OPTIONS"], "allow_headers": ["*"],
                         "expose_headers": ["Retry-After", "X-RateLimit-Reset"], "max_age": 86400}


class TrackingCORS:
    """CORS for ingest. Browsers send tracking calls straight from web pages (analytics.js); write keys are public
    and no cookie is read, so any origin and any request header may pass the preflight: SDKs add their own headers
    (analytics-next X-Retry-Count on retries, RudderStack's AnonymousId, headers set in deliveryStrategy), and
    Retry-After is exposed so that a page's SDK can honour a 429 (CORS hides it from scripts otherwise).

    The tracking routes (``tracking_paths``; one ending in ``/`` is a prefix) also take credentialed calls (the
    page's Origin is echoed, never "*", which browsers refuse for them): navigator.sendBeacon always sends
    credentials, so a Blob beacon of application/json is preflighted with credentials, and some SDKs use XHR
    withCredentials or fetch credentials: 'include'. The management routes (profiles, privacy) do not: if a
    deployment puts a cookie-authenticated proxy in front of them, another site's page must not be able to read
    them with the operator's cookies."""

    def __init__(self, app: ASGIApp, tracking_paths: tuple[str, ...]):
        self._tracking = CORSMiddleware(app, allow_credentials=True, **_CORS)
        self._other = CORSMiddleware(app, **_CORS)
        self._paths = tracking_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        await (self._tracking if path_in(path, self._paths) else self._other)(scope, receive, send)


class CollapseSlashes:
    """``//v1/…`` is ``/v1/…``: analytics-next joins ``cdnURL`` and ``/v1/projects/…`` (and ``apiHost`` and
    ``/v1/t``) as strings, so a configured URL ending in "/" asked ``//v1/projects/{writeKey}/settings``, a 404,
    and the SDK never loaded."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = {**scope, "path": re.sub("/{2,}", "/", scope["path"]),
                     "raw_path": re.sub(b"/{2,}", b"/", scope.get("raw_path") or scope["path"].encode())}
        await self.app(scope, receive, send)
