"""an API trigger's idempotency key remembers its request and answer

Revision ID: campaign_0005
Revises: campaign_0004
Create Date: 2026-11-28 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'campaign_0005'
down_revision: str | None = 'campaign_0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('trigger_keys',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('campaign_id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('digest', sa.Text(), nullable=False),
    sa.Column('answer', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'campaign_id', 'key', name=op.f('pk_trigger_keys')),
    schema='campaign'
    )
    op.create_index('ix_trigger_keys_profile', 'trigger_keys', ['workspace_id', 'profile_id'], unique=False,
                    schema='campaign')


def downgrade() -> None:
    op.drop_index('ix_trigger_keys_profile', table_name='trigger_keys', schema='campaign')
    op.drop_table('trigger_keys', schema='campaign')
