"""The ingest service: Segment-compatible tracking, profiles and the ordered event log."""

from fastapi import FastAPI

from services.ingest.api import feed_router, privacy_router, profiles_router, tracking_router
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
Send customer events here with any Segment-compatible SDK (`host` = this service, write key as the
HTTP Basic username). Events are stored once per `messageId`, in a durable ordered log that the other
Tenure services read through `/v1/events` (internal token).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    app = create_service_app(
        "ingest", settings or Settings(), routers=[tracking_router, feed_router, profiles_router, privacy_router],
        description=DESCRIPTION,
    )
    app.openapi_components = {"securitySchemes": {"writeKey": {"type": "http", "scheme": "basic"}}}
    return app
