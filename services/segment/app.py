"""The segment service: who each customer is right now."""

from fastapi import FastAPI

from services.segment import privacy
from services.segment.api import feed_router, lists_router, router
from shared.privacy import privacy_router
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
Segments are condition trees over profile traits and behaviour, evaluated incrementally as ingest's
event feed arrives. Entries and exits are written to a transition log that campaign reads at
`/v1/transitions` (internal token).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    routers = [router, lists_router, feed_router, privacy_router("segment", privacy.erase, privacy.export)]
    return create_service_app("segment", settings or Settings(), routers=routers, description=DESCRIPTION)
