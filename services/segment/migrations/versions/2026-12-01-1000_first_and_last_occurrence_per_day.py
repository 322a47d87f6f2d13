"""the first and last occurrence of an event on a day

``event_counts`` gains ``first_at`` / ``last_at``: when the profile performed the event first and last that (UTC)
day. ``performed_time`` ``before`` / ``after`` compare the first / last occurrence's instant with the value's, as
a date trait does; they compared days, ignoring the value's time of day and UTC offset. Days counted before this
revision keep null: they read as the start of their day, which is what the comparison of days amounted to, so their
answers stay what they were. (Filling them from ``profile_events`` here rewrote the whole table under an exclusive
lock that stopped every fold of events for as long: 34 s per 1.5 M rows.) Adding nullable columns is instant.

Revision ID: segment_0008
Revises: segment_0007
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'segment_0008'
down_revision: str | None = 'segment_0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('event_counts', sa.Column('first_at', sa.DateTime(timezone=True), nullable=True), schema='segment')
    op.add_column('event_counts', sa.Column('last_at', sa.DateTime(timezone=True), nullable=True), schema='segment')


def downgrade() -> None:
    op.drop_column('event_counts', 'last_at', schema='segment')
    op.drop_column('event_counts', 'first_at', schema='segment')
