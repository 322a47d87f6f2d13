"""ingest: event log with xid8 cursor, profiles, identities

Revision ID: ingest_0001
Revises:
Create Date: 2026-11-24 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db import Xid8

revision: str = "ingest_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "ingest"


def _jsonb(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))


def _ts(name: str, *, nullable: bool = False, now: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.func.now() if now else None)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("xid", Xid8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("event", sa.Text),
        sa.Column("profile_id", UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("anonymous_id", sa.Text),
        _jsonb("properties"),
        _jsonb("traits"),
        _jsonb("context"),
        _ts("timestamp", now=False),
        _ts("received_at"),
        _ts("sent_at", nullable=True, now=False),
        sa.UniqueConstraint("workspace_id", "message_id", name="uq_events_workspace_id_message_id"),
        schema=S,
    )
    op.create_index("ix_events_xid_seq", "events", ["xid", "seq"], schema=S)
    op.create_index("ix_events_workspace_id_profile_id_seq", "events", ["workspace_id", "profile_id", "seq"],
                    schema=S)
    op.create_table(
        "profiles",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.Text),
        _jsonb("traits"),
        _jsonb("trait_times"),
        sa.Column("merged_into", UUID(as_uuid=True)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.UniqueConstraint("workspace_id", "user_id", name="uq_profiles_workspace_id_user_id"),
        schema=S,
    )
    op.create_index("ix_profiles_workspace_id", "profiles", ["workspace_id"], schema=S)
    op.create_index("ix_profiles_email", "profiles", ["workspace_id", sa.text("(traits->>'email')")], schema=S)
    op.create_table(
        "identities",
        sa.Column("workspace_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("profile_id", UUID(as_uuid=True), nullable=False),
        _ts("created_at"),
        schema=S,
    )
    op.create_index("ix_identities_profile_id", "identities", ["profile_id"], schema=S)
    op.create_table(
        "groups",
        sa.Column("workspace_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("group_id", sa.Text, primary_key=True),
        _jsonb("traits"),
        _jsonb("trait_times"),
        _ts("created_at"),
        _ts("updated_at"),
        schema=S,
    )
    op.create_table(
        "group_members",
        sa.Column("workspace_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("profile_id", UUID(as_uuid=True), primary_key=True),
        _ts("joined_at"),
        schema=S,
    )
    op.create_index("ix_group_members_profile_id", "group_members", ["profile_id"], schema=S)
    op.create_table(
        "profile_merges",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("into_profile_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_profile_id", UUID(as_uuid=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        _ts("at"),
        schema=S,
    )
    op.create_index("ix_profile_merges_into_profile_id", "profile_merges", ["into_profile_id"], schema=S)
    op.create_table(
        "privacy_requests",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("profile_ids", JSONB, nullable=False),
        sa.Column("suppress", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.Text, nullable=False),
        _jsonb("services"),
        _jsonb("removed"),
        _ts("created_at"),
        _ts("completed_at", nullable=True, now=False),
        schema=S,
    )
    op.create_index("ix_privacy_requests_pending", "privacy_requests", ["created_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_table(
        "suppressions",
        sa.Column("workspace_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("id_hash", sa.LargeBinary, primary_key=True),
        sa.Column("request_id", UUID(as_uuid=True)),
        _ts("created_at"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("suppressions", schema=S)
    op.drop_table("privacy_requests", schema=S)
    op.drop_table("profile_merges", schema=S)
    op.drop_table("group_members", schema=S)
    op.drop_table("groups", schema=S)
    op.drop_table("identities", schema=S)
    op.drop_table("profiles", schema=S)
    op.drop_table("events", schema=S)
