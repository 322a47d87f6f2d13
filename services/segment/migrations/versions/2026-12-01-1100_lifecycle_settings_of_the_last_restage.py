"""the lifecycle settings the stages were last recomputed with

``workspace_checks`` gains ``lifecycle_settings``: a digest of the workspace's ``lifecycle`` settings when its
stages were last recomputed over every profile. A change of them (``tenure workspace configure``) re-stages the
workspace at the worker's next poll; it waited for the next daily re-check, while ``/v1/metrics`` followed at once.
Null until the next daily re-check records it (a change before then waits for that re-check, as before).

Revision ID: segment_0009
Revises: segment_0008
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'segment_0009'
down_revision: str | None = 'segment_0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('workspace_checks', sa.Column('lifecycle_settings', sa.Text(), nullable=True), schema='segment')


def downgrade() -> None:
    op.drop_column('workspace_checks', 'lifecycle_settings', schema='segment')
