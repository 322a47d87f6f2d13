"""profiles merged into another, indexed both ways

An event whose write raced a merge keeps the merged-away profile's id: a profile's events and records are read
with those of the profiles merged into it (by ``merged_into``), and the event feed gives each event its profile's
survivor (by ``id``, probed once per event: a probe into this small index, not the primary key). Partial: only
merged profiles are in them.

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
    op.create_index("ix_profiles_merged_survivor", "profiles", ["id"], unique=False, schema="ingest",
                    postgresql_include=["merged_into"], postgresql_where=sa.text("merged_into IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_profiles_merged_survivor", table_name="profiles", schema="ingest")
    op.drop_index("ix_profiles_merged_into", table_name="profiles", schema="ingest")
