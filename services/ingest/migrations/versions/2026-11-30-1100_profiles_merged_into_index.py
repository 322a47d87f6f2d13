"""profiles merged into another, indexed by the profile they joined

A profile's events and records are read with those of the profiles merged into it (an event whose write raced
the merge keeps the merged-away profile's id). Partial: only merged profiles are in it.

Revision ID: ingest_0006
Revises: ingest_0005
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ingest_0006"
down_revision: str | None = "ingest_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_profiles_merged_into", "profiles", ["workspace_id", "merged_into"], unique=False,
                    schema="ingest", postgresql_where=sa.text("merged_into IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_profiles_merged_into", table_name="profiles", schema="ingest")
