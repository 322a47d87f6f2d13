"""webhook receipts: provider webhooks already acted on (duplicate deliveries are ignored)

Revision ID: delivery_0004
Revises: delivery_0003
Create Date: 2026-11-27 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'delivery_0004'
down_revision: str | None = 'delivery_0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('webhook_receipts',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('event_key', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'provider', 'event_key', name=op.f('pk_webhook_receipts')),
    schema='delivery'
    )


def downgrade() -> None:
    op.drop_table('webhook_receipts', schema='delivery')
