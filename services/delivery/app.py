"""The delivery service: messages out through real providers, exactly once per intent."""

from fastapi import FastAPI

from services.delivery import outbox, pages, privacy, webhooks
from services.delivery.api import consent_router, router
from shared.errors import problem_schema
from shared.metrics import due_work_refresh
from shared.privacy import person_privacy_router
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
`POST /v1/messages` stores a message under its idempotency key before any provider call; workers send
it over SMTP and record every attempt. Retries use exponential backoff with jitter; permanent errors
stop at once. Marketing email carries RFC 8058 one-click unsubscribe headers; suppressions and topic
choices stop messages before any provider call; opens, clicks and consent changes go back to ingest as
events. `/u/…`, `/p/…`, `/o/…` and `/c/…` are the signed pages and links recipients reach.
"""


# Routes anyone may call read small bodies: a page's form is a few fields, a Twilio callback a few dozen; SendGrid
# posts its events in batches of up to 768 KB (its Event Webhook documentation).
BODY_LIMITS = (("/u/", 64 * 1024), ("/p/", 64 * 1024), ("/confirm/", 64 * 1024),
               ("/webhooks/twilio/", 64 * 1024), ("/webhooks/sendgrid/", 1024 * 1024))


def create_app(settings: Settings | None = None) -> FastAPI:
    routers = [router, consent_router, pages.router, webhooks.router,
               person_privacy_router("delivery", privacy.erase, privacy.export, erase_responses={409: problem_schema(
                   "A message to the person is with a sender right now: ask again once it is out (within the "
                   "delivery lease); nothing was erased")})]
    app = create_service_app("delivery", settings or Settings(), routers=routers, description=DESCRIPTION,
                             body_limits=BODY_LIMITS,
                             metrics_refresh=[due_work_refresh("delivery", "messages", outbox.DUE_ROWS)])
    pages.install_page_errors(app)
    return app
