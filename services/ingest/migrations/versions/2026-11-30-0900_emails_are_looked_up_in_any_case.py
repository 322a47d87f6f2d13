"""emails are looked up in any case: the profiles' email index is on ``lower(traits->>'email')``

``GET /v1/profiles/{email}``, the ``email`` filter and erasure requests by email matched the trait's exact
case, so ``ada@example.com`` did not find the profile whose email is ``Ada@Example.com`` (delivery already
keys addresses lowercased). The index is rebuilt on the lowercased value.

Revision ID: ingest_0004
Revises: ingest_0003
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ingest_0004"
down_revision: str | None = "ingest_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_profiles_email", table_name="profiles", schema="ingest")
    op.create_index("ix_profiles_email", "profiles", ["workspace_id", sa.text("lower(traits->>'email')")],
                    schema="ingest")


def downgrade() -> None:
    op.drop_index("ix_profiles_email", table_name="profiles", schema="ingest")
    op.create_index("ix_profiles_email", "profiles", ["workspace_id", sa.text("(traits->>'email')")], schema="ingest")
