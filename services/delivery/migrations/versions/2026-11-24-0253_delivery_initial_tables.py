"""delivery initial tables

Revision ID: delivery_0001
Revises:
Create Date: 2026-11-24 02:53:16.486232
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'delivery_0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('attempts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('message_id', sa.Uuid(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts')),
    schema='delivery'
    )
    op.create_index(op.f('ix_attempts_message_id'), 'attempts', ['message_id'], unique=False, schema='delivery')
    op.create_table('messages',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('idempotency_key', sa.Text(), nullable=False),
    sa.Column('request_hash', sa.Text(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('to_address', sa.Text(), nullable=False),
    sa.Column('from_address', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('message_type', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('provider_message_id', sa.Text(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('workspace_id', 'idempotency_key', name=op.f('uq_messages_workspace_id_idempotency_key')),
    schema='delivery'
    )
    op.create_index('ix_messages_due', 'messages', ['next_attempt_at'], unique=False, schema='delivery', postgresql_where="status in ('queued', 'sending')")
    op.create_index('ix_messages_workspace_id_created_at', 'messages', ['workspace_id', 'created_at'], unique=False, schema='delivery')


def downgrade() -> None:
    op.drop_index('ix_messages_workspace_id_created_at', table_name='messages', schema='delivery')
    op.drop_index('ix_messages_due', table_name='messages', schema='delivery', postgresql_where="status in ('queued', 'sending')")
    op.drop_table('messages', schema='delivery')
    op.drop_index(op.f('ix_attempts_message_id'), table_name='attempts', schema='delivery')
    op.drop_table('attempts', schema='delivery')
