"""Profiles stored with an empty userId have none.

An empty ``userId`` was taken as a user id: the first message carrying one made a profile whose ``user_id`` is
``""`` (and no identity pointed at it), and every later one failed on the unique ``(workspace_id, user_id)``. It
now counts as absent, as the SDKs treat it; the profile it made is an anonymous profile, which this makes it.
Not reversible: the downgrade leaves them so.

Revision ID: ingest_0008
Revises: ingest_0007
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "ingest_0008"
down_revision: str | None = "ingest_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("update ingest.profiles set user_id = null where user_id = ''")


def downgrade() -> None:
    pass  # an empty user id is no user id
