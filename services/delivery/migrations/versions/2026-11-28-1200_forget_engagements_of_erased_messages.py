"""forget what earlier erasures left behind: opens, clicks and events for ingest of erased messages

Erasures before this revision deleted a person's messages but not the opens and clicks recorded on them
(``engagements``: time, URL, user agent) nor the events about them queued for ingest (``feedback``). Only an
erasure deletes messages, so a row naming a message that no longer exists is such a leftover. (Opt-ins and
topic choices left behind are keyed by address alone and cannot be told apart here: see docs/delivery.md.)

Revision ID: delivery_0006
Revises: delivery_0005
Create Date: 2026-11-28 12:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0006'
down_revision: str | None = 'delivery_0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (a row written after its message is always seen with it: it is written while the message is locked)
    op.execute("delete from delivery.engagements e "
               "where not exists (select 1 from delivery.messages m where m.id = e.message_id)")
    op.execute("delete from delivery.feedback f where f.payload->'properties' ? 'message_id' "
               "and not exists (select 1 from delivery.messages m "
               "where m.id::text = f.payload->'properties'->>'message_id')")


def downgrade() -> None:
    pass  # what was erased stays erased
