"""split winners: an A/B split's winner, decided once (after `winner_after` entrants or at `winner_at`)

Revision ID: campaign_0008
Revises: campaign_0007
Create Date: 2026-11-29 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'campaign_0008'
down_revision: str | None = 'campaign_0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('split_winners',
    sa.Column('campaign_id', sa.Uuid(), nullable=False),
    sa.Column('step', sa.String(), nullable=False),
    sa.Column('variant', sa.String(), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'step', name=op.f('pk_split_winners')),
    schema='campaign'
    )


def downgrade() -> None:
    op.drop_table('split_winners', schema='campaign')
