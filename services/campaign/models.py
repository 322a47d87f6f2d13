"""Tables of the ``campaign`` schema: templates, campaigns (versioned), feed cursors, sends."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, Numeric, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.db import jsonb_column, metadata_for, tz_column

metadata = metadata_for("campaign")


class CampaignTable(SQLModel):
    metadata = metadata


class Template(CampaignTable, table=True):
    """An email template in Liquid: subject, HTML and text bodies."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    name: str
    channel: str = "email"
    subject: str
    preheader: str | None = None
    html: str | None = None
    text: str | None = None
    deep_link: str | None = None  # push: where tapping the notification leads (Liquid)
    image: str | None = None  # push: an image URL shown with the notification (Liquid)
    # {"fr": {"subject": ..., "html": ..., "text": ...}, "fr-CA": {...}}: chosen by the profile's locale
    locales: dict[str, Any] = Field(sa_column=jsonb_column("locales"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Campaign(CampaignTable, table=True):
    """A journey (journey_def.py); every edit bumps ``version`` and keeps the old one in
    ``campaign_versions`` for the users still inside it."""

    __tablename__ = "campaigns"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    name: str
    status: str = "active"  # "active" | "paused"
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    trigger: dict[str, Any] = Field(sa_column=jsonb_column("trigger"))
    template_id: uuid.UUID | None = None  # the first send step's template (one-step campaigns)
    definition: dict[str, Any] = Field(sa_column=jsonb_column("definition"))
    message_type: str = "marketing"
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Consumer(CampaignTable, table=True):
    __tablename__ = "consumers"

    name: str = Field(primary_key=True)
    cursor: str = ""
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Send(CampaignTable, table=True):
    """A decided send: one per (campaign version, step, profile, occurrence), handed to delivery.

    Status: pending → dispatched | skipped | failed.
    """

    __tablename__ = "sends"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key"),
        Index("ix_sends_profile_recent", "workspace_id", "profile_id", "created_at"),
        # a campaign's sends, newest first, paged after (created_at, id) (campaign_0009)
        Index("ix_sends_campaign", "workspace_id", "campaign_id", "created_at", "id"),
        Index("ix_sends_pending", "next_attempt_at", postgresql_where="status = 'pending'"),
    )

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_version: int
    template_id: uuid.UUID
    profile_id: uuid.UUID
    occurrence: str
    idempotency_key: str
    status: str = "pending"
    reason: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    delivery_message_id: uuid.UUID | None = None
    trigger_data: dict[str, Any] = Field(sa_column=jsonb_column("trigger_data"))
    journey_id: uuid.UUID | None = None
    step: str | None = None
    channel: str = Field(default="email", sa_column_kwargs={"server_default": "email"})
    next_attempt_at: datetime = Field(sa_column=tz_column("next_attempt_at"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class CampaignVersion(CampaignTable, table=True):
    __tablename__ = "campaign_versions"

    campaign_id: uuid.UUID = Field(primary_key=True)
    version: int = Field(primary_key=True)
    workspace_id: uuid.UUID
    definition: dict[str, Any] = Field(sa_column=jsonb_column("definition"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class JourneyRun(CampaignTable, table=True):
    """One profile's way through one campaign version: where it is and when it wakes.

    Status: ``active`` (wakes at ``wake_at`` to run its step), ``waiting`` (for an event, or its
    timeout at ``wake_at``), ``holdout`` (gets nothing; kept to measure conversions), ``completed``,
    ``exited``. Timers are claimed with ``FOR UPDATE SKIP LOCKED``.
    """

    __tablename__ = "journeys"
    __table_args__ = (
        Index("ix_journeys_due", "wake_at", postgresql_where="status in ('active', 'waiting')"),
        Index("ix_journeys_campaign_profile", "campaign_id", "profile_id", "entered_at"),
        Index("ix_journeys_profile", "workspace_id", "profile_id"),
        UniqueConstraint("campaign_id", "profile_id", "occurrence"),
    )

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    campaign_id: uuid.UUID
    version: int
    profile_id: uuid.UUID
    occurrence: str  # what made the profile enter (idempotent entry)
    status: str = "active"
    step: str | None = None
    wake_at: datetime | None = Field(default=None, sa_column=tz_column("wake_at", nullable=True, default_now=False))
    wait: dict[str, Any] | None = Field(default=None, sa_column=jsonb_column("wait", nullable=True))
    variant: str | None = None
    trigger_data: dict[str, Any] = Field(sa_column=jsonb_column("trigger_data"))
    # what happened since entry that steps may ask about: "event:<name>", "event:<name>|<prop>=<json>",
    # "opened:<step>", "clicked:<step>"
    seen: list[str] = Field(sa_column=Column("seen", JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    goal_deadline: datetime | None = Field(default=None, sa_column=tz_column("goal_deadline", nullable=True,
                                                                             default_now=False))
    converted_at: datetime | None = Field(default=None, sa_column=tz_column("converted_at", nullable=True,
                                                                           default_now=False))
    # the goal event's ``revenue`` property, when it has one (revenue per variant)
    converted_value: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    entered_at: datetime = Field(sa_column=tz_column("entered_at"))
    ended_at: datetime | None = Field(default=None, sa_column=tz_column("ended_at", nullable=True, default_now=False))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class JourneyLog(CampaignTable, table=True):
    """What happened to a journey and why: the answer to "why didn't X get the email"."""

    __tablename__ = "journey_log"
    __table_args__ = (Index("ix_journey_log_journey", "journey_id", "seq"),
                      Index("ix_journey_log_profile", "workspace_id", "profile_id"))

    seq: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    journey_id: uuid.UUID
    workspace_id: uuid.UUID
    campaign_id: uuid.UUID
    profile_id: uuid.UUID
    step: str | None = None
    kind: str  # entered | holdout | sent | skipped | deferred | waiting | event | timeout | branch | converted | ...
    detail: str | None = None
    at: datetime = Field(sa_column=tz_column("at"))


class ScheduleRun(CampaignTable, table=True):
    """One firing of a scheduled campaign (a slot of its cron, or its one-off time), entered member by
    member from the audience segment; ``cursor`` is the members list's next_cursor after the last page entered, so a
    crash resumes."""

    __tablename__ = "schedule_runs"

    campaign_id: uuid.UUID = Field(primary_key=True)
    slot: datetime = Field(sa_column=Column("slot", DateTime(timezone=True), primary_key=True))
    workspace_id: uuid.UUID
    cursor: str | None = None
    entered: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    done: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    started_at: datetime = Field(sa_column=tz_column("started_at"))


class Snippet(CampaignTable, table=True):
    """A partial shared by a workspace's templates: ``{% render 'footer' %}``."""

    __tablename__ = "snippets"

    workspace_id: uuid.UUID = Field(primary_key=True)
    name: str = Field(primary_key=True)
    content: str
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class EngagementHour(CampaignTable, table=True):
    """How often a profile opened or clicked an email in each hour of the day (UTC): send-time optimisation."""

    __tablename__ = "engagement_hours"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    hour: int = Field(primary_key=True)
    n: int = 0


class TriggerKey(CampaignTable, table=True):
    """An API trigger's idempotency key: the request it was first used for (profile, digest of the data) and the
    answer given, replayed to a retry; the same key with another profile or data is refused (409)."""

    __tablename__ = "trigger_keys"
    __table_args__ = (Index("ix_trigger_keys_profile", "workspace_id", "profile_id"),
                      Index("ix_trigger_keys_created_at", "created_at"))

    workspace_id: uuid.UUID = Field(primary_key=True)
    campaign_id: uuid.UUID = Field(primary_key=True)
    key: str = Field(primary_key=True)
    profile_id: uuid.UUID
    digest: str  # sha256 of the trigger's data as canonical JSON
    answer: dict[str, Any] = Field(sa_column=jsonb_column("answer"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class SplitWinner(CampaignTable, table=True):
    """The variant an A/B split decided on (``winner_after`` entrants, or ``winner_at``): decided once, so every
    later entrant gets the same one whatever the conversions do next."""

    __tablename__ = "split_winners"

    campaign_id: uuid.UUID = Field(primary_key=True)
    step: str = Field(primary_key=True)
    variant: str
    reason: str
    decided_at: datetime = Field(sa_column=tz_column("decided_at"))


class MergedProfile(CampaignTable, table=True):
    """A profile ingest merged into another, and the one it lives on as (shared/profile_merges.py): per-profile
    routes answer an old id with the survivor's state."""

    __tablename__ = "merged_profiles"
    __table_args__ = (Index("ix_merged_profiles_survivor", "workspace_id", "survivor_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)  # the merged-away profile
    survivor_id: uuid.UUID
    merged_at: datetime = Field(sa_column=tz_column("merged_at"))
