"""Tables of the ``segment`` schema: definitions, per-profile aggregates, memberships, transitions."""

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Identity, Index, Numeric, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.db import jsonb_column, metadata_for, tz_column, xid_column

metadata = metadata_for("segment")


class SegmentTable(SQLModel):
    metadata = metadata


class SegmentDef(SegmentTable, table=True):
    """A segment: a condition tree (see conditions.py) stored as JSON, versioned on every edit."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    name: str
    definition: dict[str, Any] = Field(sa_column=jsonb_column("definition"))
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # the version whose full evaluation over known profiles has finished (a new segment starts at 0)
    evaluated_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # the (UTC) day time-windowed conditions were last re-checked over every known profile
    windows_checked_on: date | None = None
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Consumer(SegmentTable, table=True):
    """Where a feed consumer stands; updated in the same transaction as the state it derives."""

    __tablename__ = "consumers"

    name: str = Field(primary_key=True)
    cursor: str = ""
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class ProfileTraits(SegmentTable, table=True):
    __tablename__ = "profile_traits"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    traits: dict[str, Any] = Field(sa_column=jsonb_column("traits"))
    trait_times: dict[str, str] = Field(sa_column=jsonb_column("trait_times"))  # see shared/traits.py
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class ProfileStats(SegmentTable, table=True):
    """What computed attributes are derived from (attributes.py)."""

    __tablename__ = "profile_stats"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    first_seen: datetime | None = Field(default=None, sa_column=tz_column("first_seen", nullable=True,
                                                                           default_now=False))
    last_seen: datetime | None = Field(default=None, sa_column=tz_column("last_seen", nullable=True,
                                                                         default_now=False))
    order_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    revenue: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric, nullable=False, server_default="0"))
    first_order_at: datetime | None = Field(default=None, sa_column=tz_column("first_order_at", nullable=True,
                                                                               default_now=False))
    last_order_at: datetime | None = Field(default=None, sa_column=tz_column("last_order_at", nullable=True,
                                                                             default_now=False))
    # the newest NPS survey answer (attributes.py: ``last_nps``)
    last_nps: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    last_nps_at: datetime | None = Field(default=None, sa_column=tz_column("last_nps_at", nullable=True,
                                                                           default_now=False))


class WorkspaceCheck(SegmentTable, table=True):
    """The (UTC) day each workspace's lifecycle stages were last recomputed as time passes, and the lifecycle
    settings they were recomputed with (a digest: evaluation.recheck_lifecycle re-stages when they change)."""

    __tablename__ = "workspace_checks"

    workspace_id: uuid.UUID = Field(primary_key=True)
    lifecycle_checked_on: date | None = None
    lifecycle_settings: str | None = None


class PassProgress(SegmentTable, table=True):
    """How far a pass over every profile (a backfill, a daily re-check) got: the last profile of its last
    committed page. A pass interrupted by a deploy or a crash resumes there instead of at the first profile.
    ``key`` names the pass: workspace, segments with their versions, stages, day (evaluation.pass_key)."""

    __tablename__ = "pass_progress"

    key: str = Field(primary_key=True)
    workspace_id: uuid.UUID
    after: uuid.UUID
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class EventCount(SegmentTable, table=True):
    """How many times a profile performed an event on a (UTC) day, and when it did first and last that day
    (``performed_time`` before / after an instant). Null for a day counted before segment_0008 whose occurrences
    were not stored: read as the start of the day."""

    __tablename__ = "event_counts"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    event: str = Field(primary_key=True)
    day: date = Field(primary_key=True)
    count: int = 0
    first_at: datetime | None = Field(default=None, sa_column=tz_column("first_at", nullable=True, default_now=False))
    last_at: datetime | None = Field(default=None, sa_column=tz_column("last_at", nullable=True, default_now=False))


class Membership(SegmentTable, table=True):
    __tablename__ = "memberships"
    __table_args__ = (Index("ix_memberships_workspace_id_profile_id", "workspace_id", "profile_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    segment_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    entered_at: datetime = Field(sa_column=tz_column("entered_at"))


class Transition(SegmentTable, table=True):
    """Append-only log of membership changes, read by campaign as a cursor feed."""

    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_xid_seq", "xid", "seq"),)

    seq: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    xid: int | None = Field(default=None, sa_column=xid_column())
    workspace_id: uuid.UUID
    segment_id: uuid.UUID
    segment_version: int
    profile_id: uuid.UUID
    kind: str  # "entered" | "exited"
    at: datetime = Field(sa_column=tz_column("at"))


class ProfileEvent(SegmentTable, table=True):
    """Each track/page/screen occurrence with its properties: what property filters, aggregates over a
    window, last-event properties and keyed conditions read (plain counts use ``event_counts``)."""

    __tablename__ = "profile_events"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    event: str = Field(primary_key=True)
    at: datetime = Field(sa_column=Column("at", DateTime(timezone=True), primary_key=True))
    message_id: str = Field(primary_key=True)
    properties: dict[str, Any] = Field(sa_column=jsonb_column("properties"))


class ProfileOrder(SegmentTable, table=True):
    """Each order id a profile ordered (``order_id`` of a purchase event), with its value and what refunds took
    off it: an order is counted once whatever number of purchase events name it, a refund naming only the order
    takes off what is left of its value, and refunds never take off more than its value in all. An order id a
    refund named before its order came (or one counted before segment_0006) has a row without value: the refund
    took off the amount it stated, and the order, if it comes, settles its refunds to that rule."""

    __tablename__ = "profile_orders"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    order_id: str = Field(primary_key=True)
    event: str | None = None  # the purchase event that named it first
    value: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    at: datetime | None = Field(default=None, sa_column=Column("at", DateTime(timezone=True), nullable=True))
    # taken off the revenue so far; without a value (not ordered yet), the amounts refunds stated (taken off at once)
    refunded: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric, nullable=False, server_default="0"))
    refund_all: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))


class Account(SegmentTable, table=True):
    """A B2B account (``group`` call): its traits, merged newest-per-trait like profile traits."""

    __tablename__ = "accounts"

    workspace_id: uuid.UUID = Field(primary_key=True)
    group_id: str = Field(primary_key=True)
    traits: dict[str, Any] = Field(sa_column=jsonb_column("traits"))
    trait_times: dict[str, str] = Field(sa_column=jsonb_column("trait_times"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class AccountMember(SegmentTable, table=True):
    __tablename__ = "account_members"
    __table_args__ = (Index("ix_account_members_workspace_id_group_id", "workspace_id", "group_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    group_id: str = Field(primary_key=True)


class ManualList(SegmentTable, table=True):
    """A list of profiles uploaded by hand (ids through the API or a CSV file)."""

    __tablename__ = "lists"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    name: str
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class ListMember(SegmentTable, table=True):
    __tablename__ = "list_members"
    __table_args__ = (Index("ix_list_members_workspace_id_profile_id", "workspace_id", "profile_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    list_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    added_at: datetime = Field(sa_column=tz_column("added_at"))


class DirtyProfile(SegmentTable, table=True):
    """Profiles whose facts changed and that await re-evaluation, by partition (partitioning.py).
    Marked in the transaction that folds the events; removed in the one that re-evaluates them."""

    __tablename__ = "dirty_profiles"
    __table_args__ = (Index("ix_dirty_profiles_partition_marked_at", "partition", "marked_at"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    partition: int
    marked_at: datetime = Field(sa_column=tz_column("marked_at"))


class MergedProfile(SegmentTable, table=True):
    """A profile ingest merged into another, and the one it lives on as (shared/profile_merges.py): per-profile
    routes answer an old id with the survivor's state."""

    __tablename__ = "merged_profiles"
    __table_args__ = (Index("ix_merged_profiles_survivor", "workspace_id", "survivor_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)  # the merged-away profile
    survivor_id: uuid.UUID
    merged_at: datetime = Field(sa_column=tz_column("merged_at"))
