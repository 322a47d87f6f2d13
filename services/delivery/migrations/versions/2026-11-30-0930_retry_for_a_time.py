"""messages.retrying_since, messages.lost_leases: transient failures are retried for a time, not a count

A transient failure (a webhook answering 503, a greylisting SMTP server, FCM UNAVAILABLE) was retried 8 times in
about three minutes and then given up; it is now retried until ``retrying_since`` (its first transient failure) is
older than TENURE_DELIVERY_RETRY_FOR_S (TENURE_EMAIL_RETRY_FOR_S for email), so ``attempts`` grows past 8. The
separate cap on holders dying mid-send (8) counts those deaths alone in ``lost_leases``. Both columns are added
without a rewrite (nullable; a constant default); a message waiting for its retry gets its first transient
attempt's time.

Revision ID: delivery_0012
Revises: delivery_0011
Create Date: 2026-11-30 09:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0012'
down_revision: str | None = 'delivery_0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("alter table delivery.messages add column if not exists retrying_since timestamptz")
    op.execute("alter table delivery.messages add column if not exists lost_leases integer not null default 0")
    # (the messages waiting, through ix_messages_due; their attempts through ix_attempts_message_id)
    op.execute("""
        update delivery.messages m
           set retrying_since = (select min(a.started_at) from delivery.attempts a
                                  where a.message_id = m.id and a.outcome = 'transient_error')
         where m.status in ('queued', 'sending') and m.attempts > 0 and m.retrying_since is null
    """)

def downgrade() -> None:
    op.execute("alter table delivery.messages drop column if exists lost_leases")
    op.execute("alter table delivery.messages drop column if exists retrying_since")
