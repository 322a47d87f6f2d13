"""Tables of the ``ingest`` schema: the event log, profiles and the identity map."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, UniqueConstraint, text
from sqlalchemy import Identity as IdentityColumn
from sqlmodel import Field, SQLModel

from shared.db import jsonb_column, metadata_for, tz_column, xid_column

metadata = metadata_for("ingest")


class IngestTable(SQLModel):
    metadata = metadata


class Event(IngestTable, table=True):
    """The ordered, append-only event log. ``(xid, seq)`` is the feed cursor (see shared.feed)."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("workspace_id", "message_id"),
        Index("ix_events_xid_seq", "xid", "seq"),
        Index("ix_events_workspace_id_profile_id_seq", "workspace_id", "profile_id", "seq"),
    )

    seq: int | None = Field(default=None, sa_column=Column(BigInteger, IdentityColumn(), primary_key=True))
    xid: int | None = Field(default=None, sa_column=xid_column())
    workspace_id: uuid.UUID
    message_id: str
    type: str
    event: str | None = None
    profile_id: uuid.UUID
    user_id: str | None = None
    anonymous_id: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("properties"))
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("traits"))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("context"))
    timestamp: datetime = Field(sa_column=tz_column("timestamp", default_now=False))
    received_at: datetime = Field(sa_column=tz_column("received_at"))
    sent_at: datetime | None = Field(default=None, sa_column=tz_column("sent_at", nullable=True, default_now=False))


class Profile(IngestTable, table=True):
    __tablename__ = "profiles"
    __table_args__ = (
        UniqueConstraint("workspace_id", "user_id"),
        # emails are looked up whatever their case (profiles.resolve_refs); the exact-value index served the
        # release before ingest_0004 during its rollout: drop it in the next migration
        Index("ix_profiles_email_ci", "workspace_id", text("lower(traits->>'email')")),
        Index("ix_profiles_email", "workspace_id", text("(traits->>'email')")),
        Index("ix_profiles_merged_into", "workspace_id", "merged_into",
              postgresql_where=text("merged_into IS NOT NULL")),
        Index("ix_profiles_merged_survivor", "id", postgresql_include=["merged_into"],
              postgresql_where=text("merged_into IS NOT NULL")),
    )

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID = Field(index=True)
    user_id: str | None = None
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("traits"))
    # when each trait was last set or removed (see shared/traits.py): newer wins per trait
    trait_times: dict[str, str] = Field(default_factory=dict, sa_column=jsonb_column("trait_times"))
    merged_into: uuid.UUID | None = None  # set when this profile was merged into another
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Identity(IngestTable, table=True):
    """Maps each known ``userId`` / ``anonymousId`` of a workspace to one profile."""

    __tablename__ = "identities"

    workspace_id: uuid.UUID = Field(primary_key=True)
    kind: str = Field(primary_key=True)  # "user_id" | "anonymous_id"
    value: str = Field(primary_key=True)
    profile_id: uuid.UUID = Field(index=True)
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class Group(IngestTable, table=True):
    """An account (B2B): ``group`` calls keep its traits (industry, employees, plan)."""

    __tablename__ = "groups"

    workspace_id: uuid.UUID = Field(primary_key=True)
    group_id: str = Field(primary_key=True)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("traits"))
    trait_times: dict[str, str] = Field(default_factory=dict, sa_column=jsonb_column("trait_times"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class GroupMember(IngestTable, table=True):
    __tablename__ = "group_members"

    workspace_id: uuid.UUID = Field(primary_key=True)
    group_id: str = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True, index=True)
    joined_at: datetime = Field(sa_column=tz_column("joined_at"))


class ProfileMerge(IngestTable, table=True):
    """History: ``from_profile_id`` was merged into ``into_profile_id`` (alias, or a login)."""

    __tablename__ = "profile_merges"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, IdentityColumn(), primary_key=True))
    workspace_id: uuid.UUID
    into_profile_id: uuid.UUID = Field(index=True)
    from_profile_id: uuid.UUID
    reason: str
    message_id: str | None = None
    at: datetime = Field(sa_column=tz_column("at"))


class PrivacyRequest(IngestTable, table=True):
    """An erasure (audit record): what was removed here, and each other service's status."""

    __tablename__ = "privacy_requests"
    __table_args__ = (Index("ix_privacy_requests_pending", "created_at", postgresql_where=text("status = 'pending'")),
                      Index("ix_privacy_requests_due", "next_attempt_at", postgresql_where=text("status = 'pending'")))

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    kind: str  # "erasure"
    subject: str  # the reference the request named (userId, email, …)
    profile_ids: list[str] = Field(sa_column=jsonb_column("profile_ids"))
    suppress: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    status: str  # "pending" | "completed"
    services: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("services"))
    removed: dict[str, Any] = Field(default_factory=dict, sa_column=jsonb_column("removed"))
    # the erased user's ids (userId, anonymousId, email, phone): the other services key some records by
    # them (delivery's devices); held only until every service has erased, then cleared
    identities: list[str] | None = Field(default=None, sa_column=jsonb_column("identities", nullable=True))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    completed_at: datetime | None = Field(default=None, sa_column=tz_column("completed_at", nullable=True,
                                                                             default_now=False))
    # propagation (privacy.propagate): when next due (the earliest of its pending services' next attempts),
    # the current claim's lease, and the fence every claim raises
    next_attempt_at: datetime = Field(sa_column=tz_column("next_attempt_at"))
    claimed_until: datetime | None = Field(default=None, sa_column=tz_column("claimed_until", nullable=True,
                                                                              default_now=False))
    claims: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})


class Suppression(IngestTable, table=True):
    """Hashes of erased identities whose events are dropped: while their erasure is pending, and for good
    when it asked for ``suppress``. Each erasure owns its rows (two may hold the same hash)."""

    __tablename__ = "suppressions"

    workspace_id: uuid.UUID = Field(primary_key=True)
    id_hash: bytes = Field(primary_key=True)
    request_id: uuid.UUID = Field(primary_key=True)
    created_at: datetime = Field(sa_column=tz_column("created_at"))
