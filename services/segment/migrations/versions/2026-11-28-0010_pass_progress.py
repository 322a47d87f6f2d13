"""pass progress: backfills and re-checks resume where they stopped

Revision ID: segment_0003
Revises: segment_0002
Create Date: 2026-11-28 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'segment_0003'
down_revision: str | None = 'segment_0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pass_progress',
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('after', sa.Uuid(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_pass_progress')),
    schema='segment'
    )


def downgrade() -> None:
    op.drop_table('pass_progress', schema='segment')
