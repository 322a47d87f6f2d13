"""push_receipts: which devices a push message reached, so a retry goes to the others only

A push fans out to every device of its user. Before, the message was ``sent`` as soon as one device took it (the
others' transient errors were never retried), and a fan-out that outlasted the lease went to every device again.

Revision ID: delivery_0015
Revises: delivery_0014
Create Date: 2026-12-03 09:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'delivery_0015'
down_revision: str | None = 'delivery_0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('push_receipts',
    sa.Column('message_id', sa.Uuid(), nullable=False),
    sa.Column('token', sa.Text(), nullable=False),
    sa.Column('provider_id', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['delivery.messages.id'],
                            name=op.f('fk_push_receipts_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', 'token', name=op.f('pk_push_receipts')),
    schema='delivery'
    )


def downgrade() -> None:
    op.drop_table('push_receipts', schema='delivery')
