"""redaction_marks: how far each workspace's messages have had their content cleared for its retention

A sent message's subject, HTML and text are cleared once older than the workspace's ``retention_days``
(``services/delivery/retention.py``); each pass starts at the workspace's mark instead of reading every message
cleared before.

Revision ID: delivery_0014
Revises: delivery_0013
Create Date: 2026-12-02 09:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'delivery_0014'
down_revision: str | None = 'delivery_0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('redaction_marks',
    sa.Column('workspace_id', sa.Uuid(), nullable=False),
    sa.Column('redacted_before', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', name=op.f('pk_redaction_marks')),
    schema='delivery'
    )


def downgrade() -> None:
    op.drop_table('redaction_marks', schema='delivery')
