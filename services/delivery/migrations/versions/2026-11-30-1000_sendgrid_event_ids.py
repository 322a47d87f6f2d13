"""sendgrid_event_ids: SendGrid events already applied, by sg_event_id, for as long as their signature is accepted

A signed Event Webhook batch stays valid for 25 hours (SendGrid retries for a day); replayed within that window, an
``unsubscribe`` undid a resubscription made since. Each event's ``sg_event_id`` is kept for the signature window and
a repeat ignored. Its own table, not ``webhook_receipts`` (kept for ever): a row per event, removed by age.

Revision ID: delivery_0013
Revises: delivery_0012
Create Date: 2026-11-30 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'delivery_0013'
down_revision: str | None = 'delivery_0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sendgrid_event_ids',
    sa.Column('sg_event_id', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('sg_event_id', name=op.f('pk_sendgrid_event_ids')),
    schema='delivery'
    )
    op.create_index('ix_sendgrid_event_ids_received_at', 'sendgrid_event_ids', ['received_at'], unique=False,
                    schema='delivery')


def downgrade() -> None:
    op.drop_index('ix_sendgrid_event_ids_received_at', table_name='sendgrid_event_ids', schema='delivery')
    op.drop_table('sendgrid_event_ids', schema='delivery')
