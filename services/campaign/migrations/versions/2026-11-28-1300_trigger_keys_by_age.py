"""trigger keys indexed by age, for the hourly pruning of keys past their 30 days

Revision ID: campaign_0006
Revises: campaign_0005
Create Date: 2026-11-28 13:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'campaign_0006'
down_revision: str | None = 'campaign_0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_trigger_keys_created_at', 'trigger_keys', ['created_at'], unique=False, schema='campaign')


def downgrade() -> None:
    op.drop_index('ix_trigger_keys_created_at', table_name='trigger_keys', schema='campaign')
