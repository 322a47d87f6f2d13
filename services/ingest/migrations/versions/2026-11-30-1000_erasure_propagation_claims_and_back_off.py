"""erasure propagation: claims with a lease and a fence, and a back-off per request

``propagate`` no longer holds a transaction (and its transaction id, which holds back every consumer of the
event feed) across its HTTP calls to segment, campaign and delivery. It claims requests in a short
transaction: ``claimed_until`` is the lease, ``claims`` the fence (raised by every claim; an answer is
recorded only by the claim that is still current). ``next_attempt_at`` is when the request is next due: the
earliest of its pending services' next attempts, each backed off after a failure (their attempt count, last
error and due time are in ``services``). Requests pending at upgrade are due at once.

Revision ID: ingest_0005
Revises: ingest_0004
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ingest_0005"
down_revision: str | None = "ingest_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "ingest"


def upgrade() -> None:
    # now() is stable: existing rows take the migration's time without a table rewrite
    op.add_column("privacy_requests", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
                                                server_default=sa.func.now()), schema=S)
    op.add_column("privacy_requests", sa.Column("claimed_until", sa.DateTime(timezone=True)), schema=S)
    op.add_column("privacy_requests", sa.Column("claims", sa.Integer, nullable=False, server_default="0"), schema=S)
    op.create_index("ix_privacy_requests_due", "privacy_requests", ["next_attempt_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_privacy_requests_due", "privacy_requests", schema=S)
    op.drop_column("privacy_requests", "claims", schema=S)
    op.drop_column("privacy_requests", "claimed_until", schema=S)
    op.drop_column("privacy_requests", "next_attempt_at", schema=S)
