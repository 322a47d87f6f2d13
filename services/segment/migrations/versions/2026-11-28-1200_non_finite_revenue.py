"""revenue that a non-finite amount made NaN or infinite is reset

A purchase whose revenue was text reading as NaN or an infinity ("NaN", "Infinity", "1e999") made the
profile's revenue NaN / infinite: every later evaluation, search and metric of the profile failed. Such
amounts now count as 0 (attributes.PurchaseRules.order_value); the finite part of a poisoned total cannot
be told apart from the bad amount any more, so it starts again from 0.

Revision ID: segment_0004
Revises: segment_0003
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'segment_0004'
down_revision: str | None = 'segment_0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("update segment.profile_stats set revenue = 0 "
               "where revenue in ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)")


def downgrade() -> None:
    pass  # the poisoned totals are not worth restoring
