"""consent_log.evidence: what the person agreed to, where and when (SMS opt-ins: prior express written consent)

Marketing texts now need an opt-in on record (workspace setting ``sms_opt_in_required``, default true). So that
an upgrade stops no workspace's texts overnight: one that has sent marketing texts keeps sending as before
(the setting written false: its operator turns it on once its consents are recorded), and a number that texted
START before this release has that START as its opt-in.

Revision ID: delivery_0009
Revises: delivery_0008
Create Date: 2026-11-29 04:30:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = 'delivery_0009'
down_revision: str | None = 'delivery_0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("alter table delivery.consent_log add column if not exists evidence jsonb")  # (nullable: no rewrite)
    op.execute("""
        update core.workspaces w set settings = coalesce(w.settings, '{}'::jsonb) || '{"sms_opt_in_required": false}'
         where not coalesce(w.settings, '{}'::jsonb) ? 'sms_opt_in_required'
           and exists (select 1 from delivery.messages m where m.workspace_id = w.id and m.channel = 'sms'
                          and m.message_type = 'marketing')
    """)
    op.execute("""
        insert into delivery.opt_ins (workspace_id, address, topics, requested_at, confirmed_at)
        select workspace_id, address, '[]'::jsonb, min(at), min(at) from delivery.consent_log
         where channel = 'sms' and action = 'resubscribed' and source = 'sms_keyword'
         group by workspace_id, address
        on conflict (workspace_id, address) do nothing
    """)


def downgrade() -> None:
    op.execute("alter table delivery.consent_log drop column if exists evidence")
