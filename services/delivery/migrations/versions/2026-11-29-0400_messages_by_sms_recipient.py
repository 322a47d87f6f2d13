"""ix_messages_recipient: the last text to a number, whose person a STOP or START from it is about

Built concurrently: on a live outbox a plain CREATE INDEX would hold every send's insert for the build.

Revision ID: delivery_0008
Revises: delivery_0007
Create Date: 2026-11-29 04:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0008'
down_revision: str | None = 'delivery_0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("create index concurrently if not exists ix_messages_recipient on delivery.messages "
                   "(workspace_id, to_address, created_at) where channel = 'sms'")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("drop index concurrently if exists delivery.ix_messages_recipient")
