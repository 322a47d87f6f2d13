"""The delivery service: messages out through real providers, exactly once per intent."""

from fastapi import FastAPI

from services.delivery import privacy
from services.delivery.api import router
from shared.privacy import privacy_router
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
`POST /v1/messages` stores a message under its idempotency key before any provider call; workers send
it over SMTP and record every attempt. Retries use exponential backoff with jitter; permanent errors
stop at once.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    routers = [router, privacy_router("delivery", privacy.erase, privacy.export)]
    return create_service_app("delivery", settings or Settings(), routers=routers, description=DESCRIPTION)
