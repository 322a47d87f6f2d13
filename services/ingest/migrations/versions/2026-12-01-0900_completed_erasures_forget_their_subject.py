"""completed erasures no longer name the person: their ``subject`` becomes a salted digest

An erasure's audit row kept the reference it was asked for (a userId, an email) for good, though the request's
other ids were dropped on completion. Completing a request now replaces ``subject`` with
``privacy.subject_digest``: ``sha256:`` and the hex SHA-256 of ``"{request id}:{subject}"``. Requests completed
before get the same here (PostgreSQL's ``sha256()`` over the UTF-8 text; ``id::text`` is the UUID as Python
writes it). Pending requests keep theirs until they complete. Not reversible: the downgrade leaves the digests.

Revision ID: ingest_0007
Revises: ingest_0006
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "ingest_0007"
down_revision: str | None = "ingest_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("update ingest.privacy_requests "
               "set subject = 'sha256:' || encode(sha256(convert_to(id::text || ':' || subject, 'UTF8')), 'hex') "
               "where status = 'completed' and subject not like 'sha256:%'")


def downgrade() -> None:
    pass  # the subjects are gone
