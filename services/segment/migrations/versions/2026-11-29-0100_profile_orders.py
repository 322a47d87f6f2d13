"""profile orders: each order id a profile ordered, so an order is counted once

A second purchase event for the same ``order_id`` (an SDK re-send, an app bug: a new messageId) counted the
order twice in order count, CLTV and purchase frequency. Orders folded before this revision are not known here:
their duplicates stay counted, and a refund naming only one of them takes off nothing more than before.

Revision ID: segment_0006
Revises: segment_0005
Create Date: 2026-11-29 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'segment_0006'
down_revision: str | None = 'segment_0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('profile_orders',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('order_id', sa.Text(), nullable=False),
    sa.Column('event', sa.Text(), nullable=False),
    sa.Column('value', sa.Numeric(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', 'order_id', name=op.f('pk_profile_orders')),
    schema='segment'
    )


def downgrade() -> None:
    op.drop_table('profile_orders', schema='segment')
