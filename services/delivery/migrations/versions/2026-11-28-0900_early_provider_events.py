"""early provider events: status callbacks and events that arrive before the send is recorded; messages
found by provider message id (Twilio's status callbacks) through an index instead of a scan

Revision ID: delivery_0005
Revises: delivery_0004
Create Date: 2026-11-28 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'delivery_0005'
down_revision: str | None = 'delivery_0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('early_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('ref', sa.Text(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
              nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_early_events')),
    schema='delivery'
    )
    op.create_index('ix_early_events_ref', 'early_events', ['ref'], unique=False, schema='delivery')
    op.create_index('ix_messages_provider_message_id', 'messages', ['workspace_id', 'provider_message_id'],
                    unique=False, schema='delivery', postgresql_where=sa.text('provider_message_id is not null'))


def downgrade() -> None:
    op.drop_index('ix_messages_provider_message_id', table_name='messages', schema='delivery')
    op.drop_index('ix_early_events_ref', table_name='early_events', schema='delivery')
    op.drop_table('early_events', schema='delivery')
