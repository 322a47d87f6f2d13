"""segment initial tables

Revision ID: segment_0001
Revises:
Create Date: 2026-11-24 02:53:14.405286
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from shared.db import Xid8

revision: str = 'segment_0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('consumers',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_consumers')),
    schema='segment'
    )
    op.create_table('event_counts',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('event', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', 'event', 'day', name=op.f('pk_event_counts')),
    schema='segment'
    )
    op.create_table('memberships',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('segment_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('entered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'segment_id', 'profile_id', name=op.f('pk_memberships')),
    schema='segment'
    )
    op.create_index('ix_memberships_workspace_id_profile_id', 'memberships', ['workspace_id', 'profile_id'], unique=False, schema='segment')
    op.create_table('profile_traits',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('traits', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('trait_times', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', name=op.f('pk_profile_traits')),
    schema='segment'
    )
    op.create_table('profile_stats',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('order_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('revenue', sa.Numeric(), server_default='0', nullable=False),
    sa.Column('first_order_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_order_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', name=op.f('pk_profile_stats')),
    schema='segment'
    )
    op.create_table('workspace_checks',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('lifecycle_checked_on', sa.Date(), nullable=True),
    sa.PrimaryKeyConstraint('workspace_id', name=op.f('pk_workspace_checks')),
    schema='segment'
    )
    op.create_table('segments',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('definition', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('evaluated_version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('windows_checked_on', sa.Date(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segments')),
    sa.UniqueConstraint('workspace_id', 'name', name=op.f('uq_segments_workspace_id_name')),
    schema='segment'
    )
    op.create_table('transitions',
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('xid', Xid8(), server_default=sa.text('pg_current_xact_id()'), nullable=False),
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('segment_id', sa.Uuid(), nullable=False),
    sa.Column('segment_version', sa.Integer(), nullable=False),
    sa.Column('profile_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_transitions')),
    schema='segment'
    )
    op.create_index('ix_transitions_xid_seq', 'transitions', ['xid', 'seq'], unique=False, schema='segment')


def downgrade() -> None:
    op.drop_index('ix_transitions_xid_seq', table_name='transitions', schema='segment')
    op.drop_table('transitions', schema='segment')
    op.drop_table('segments', schema='segment')
    op.drop_table('profile_stats', schema='segment')
    op.drop_table('workspace_checks', schema='segment')
    op.drop_table('profile_traits', schema='segment')
    op.drop_index('ix_memberships_workspace_id_profile_id', table_name='memberships', schema='segment')
    op.drop_table('memberships', schema='segment')
    op.drop_table('event_counts', schema='segment')
    op.drop_table('consumers', schema='segment')
