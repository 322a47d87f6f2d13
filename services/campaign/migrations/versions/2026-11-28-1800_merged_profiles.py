"""merged profiles: where a profile ingest merged away lives on, so per-profile routes follow merges

Filled from the ``merge`` events of ingest's feed from now on (shared/profile_merges.py); merges followed before
this revision are not known here (their journeys moved to the survivors then, and campaign reads no other schema).

Revision ID: campaign_0007
Revises: campaign_0006
Create Date: 2026-11-28 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'campaign_0007'
down_revision: str | None = 'campaign_0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('merged_profiles',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('survivor_id', sa.Uuid(), nullable=False),
    sa.Column('merged_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', name=op.f('pk_merged_profiles')),
    schema='campaign'
    )
    op.create_index('ix_merged_profiles_survivor', 'merged_profiles', ['workspace_id', 'survivor_id'], unique=False,
                    schema='campaign')


def downgrade() -> None:
    op.drop_index('ix_merged_profiles_survivor', table_name='merged_profiles', schema='campaign')
    op.drop_table('merged_profiles', schema='campaign')
