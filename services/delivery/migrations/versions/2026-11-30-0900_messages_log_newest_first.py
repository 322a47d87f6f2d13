"""ix_messages_log: the deliveries log newest first, (workspace_id, created_at, id)

GET /v1/messages lists a workspace's messages by ``created_at desc, id desc`` and pages after the last one's
``(created_at, id)``. ix_messages_workspace_id_created_at, without the id, read every message sharing the page's
last time before it could start (a batch of 500 shares one, a COPY'd import every one); this index reads just the
page. It covers what the old one did (``since`` / ``until``), which is dropped. Built in the migration's
transaction, as delivery_0008 explains: it holds inserts into the outbox while it builds (a few seconds per million
messages).

Revision ID: delivery_0011
Revises: delivery_0010
Create Date: 2026-11-30 09:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0011'
down_revision: str | None = 'delivery_0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("create index if not exists ix_messages_log on delivery.messages (workspace_id, created_at, id)")
    op.execute("drop index if exists delivery.ix_messages_workspace_id_created_at")


def downgrade() -> None:
    op.execute("create index if not exists ix_messages_workspace_id_created_at on delivery.messages "
               "(workspace_id, created_at)")
    op.execute("drop index if exists delivery.ix_messages_log")
