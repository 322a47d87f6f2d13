"""ix_messages_recipient: the last text to a number, whose person a STOP or START from it is about

Built in the migration's transaction, not concurrently: CREATE INDEX CONCURRENTLY needs the transaction
committed first, which releases the advisory lock that lets several pods run ``tenure migrate`` at once
(shared/migrate.py), and a second pod then ran this migration too and failed. The index is partial (texts
only), so the build holds inserts into the outbox for a short while.

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
    op.execute("create index if not exists ix_messages_recipient on delivery.messages "
               "(workspace_id, to_address, created_at) where channel = 'sms'")


def downgrade() -> None:
    op.execute("drop index if exists delivery.ix_messages_recipient")
