"""ix_messages_sms_provider_id: which message of any workspace holds a Twilio SID

One Twilio account may serve several workspaces, and a SID names one message of the account. A text retried
after an unanswered attempt looks in Twilio's list for the text it may have sent, and must not adopt one that a
message of another workspace holds (the same words to the same number). Built in the migration's transaction,
as delivery_0008 explains; partial (texts with a SID only).

Revision ID: delivery_0010
Revises: delivery_0009
Create Date: 2026-11-29 13:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0010'
down_revision: str | None = 'delivery_0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("create index if not exists ix_messages_sms_provider_id on delivery.messages (provider_message_id) "
               "where channel = 'sms' and provider_message_id is not null")


def downgrade() -> None:
    op.execute("drop index if exists delivery.ix_messages_sms_provider_id")
