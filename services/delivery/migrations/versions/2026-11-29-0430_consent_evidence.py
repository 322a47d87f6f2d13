"""consent_log.evidence: what the person agreed to, where and when (SMS opt-ins: prior express written consent)

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


def downgrade() -> None:
    op.execute("alter table delivery.consent_log drop column if exists evidence")
