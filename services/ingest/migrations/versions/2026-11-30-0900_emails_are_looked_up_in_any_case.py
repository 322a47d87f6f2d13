"""emails are looked up in any case: an index on ``lower(traits->>'email')``

``GET /v1/profiles/{email}``, the ``email`` filter and erasure requests by email matched the trait's exact
case, so ``ada@example.com`` did not find the profile whose email is ``Ada@Example.com`` (delivery already
keys addresses lowercased). A new index holds the lowercased value. The old one stays for this release:
pods of the previous release still look emails up by their exact value during a rollout (expand now,
contract later: docs/operations.md, "Migrations").

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
    op.create_index("ix_profiles_email_ci", "profiles", ["workspace_id", sa.text("lower(traits->>'email')")],
                    schema="ingest")


def downgrade() -> None:
    op.drop_index("ix_profiles_email_ci", table_name="profiles", schema="ingest")
