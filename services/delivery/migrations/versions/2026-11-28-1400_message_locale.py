"""messages.locale: the recipient's language, for the footer delivery adds and the pages its links open

Revision ID: delivery_0007
Revises: delivery_0006
Create Date: 2026-11-28 14:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0007'
down_revision: str | None = 'delivery_0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("alter table delivery.messages add column if not exists locale text")  # (no rewrite: nullable)


def downgrade() -> None:
    op.execute("alter table delivery.messages drop column if exists locale")
