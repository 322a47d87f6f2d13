"""The campaign service: the right message, to the right person, at the right time."""

from fastapi import FastAPI

from services.campaign import journeys, privacy
from services.campaign.api import router
from services.campaign.programs.api import router as programs_router
from shared.metrics import due_work_refresh
from shared.privacy import privacy_router
from shared.settings import Settings
from shared.web import create_service_app

DESCRIPTION = """
Campaigns react to events (from ingest's feed) and segment entries (from segment's transition feed),
render a Liquid template with the profile's traits and ask delivery to send it, once per occurrence.
Referral and loyalty programs (codes, attribution, two-sided rewards, a points ledger, tiers, badges) run
on the same events.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    gdpr = privacy_router("campaign", privacy.erase, privacy.export,
                          by_identity=(privacy.erase_by_identity, privacy.export_by_identity))
    routers = [router, programs_router, gdpr]
    return create_service_app("campaign", settings or Settings(), routers=routers, description=DESCRIPTION,
                              metrics_refresh=[due_work_refresh("campaign", "journeys", journeys.DUE_ROWS)])
