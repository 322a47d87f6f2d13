"""The ingest service: Segment-compatible tracking, profiles and the ordered event log."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.ingest.api import feed_router, privacy_router, profiles_router, tracking_router
from services.ingest.committer import Committer
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
    try:
        yield
    finally:
        await app.state.committer.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = create_service_app(
        "ingest", settings or Settings(), routers=[tracking_router, feed_router, profiles_router, privacy_router],
        description=DESCRIPTION, extend=_committer,
    )
    # browsers send tracking calls straight from web pages (analytics.js); write keys are public
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST", "OPTIONS"],
                       allow_headers=["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID"],
                       max_age=86400)
    return app
