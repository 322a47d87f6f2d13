"""ix_sends_campaign, ix_referrals_log: a campaign's sends and the referrals, newest first

GET /v1/campaigns/{id}/sends lists by ``created_at desc, id desc`` and GET /v1/referrals by ``converted_at desc,
id desc``, each page after the previous one's last ``(time, id)``. Sends had no index naming their campaign (a
page read the workspace's sends in id order), referrals none without a referrer: these read just the page. Built
in the migration's transaction (delivery_0008 says why): they hold inserts into these tables while they build.

Revision ID: campaign_0009
Revises: campaign_0008
Create Date: 2026-11-30 09:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'campaign_0009'
down_revision: str | None = 'campaign_0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("create index if not exists ix_sends_campaign on campaign.sends "
               "(workspace_id, campaign_id, created_at, id)")
    op.execute("create index if not exists ix_referrals_log on campaign.referrals (workspace_id, converted_at, id)")


def downgrade() -> None:
    op.execute("drop index if exists campaign.ix_referrals_log")
    op.execute("drop index if exists campaign.ix_sends_campaign")
