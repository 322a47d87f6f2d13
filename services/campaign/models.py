"""Tables of the ``campaign`` schema: templates, campaigns (versioned), feed cursors, sends."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, UniqueConstraint
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
    html: str | None = None
    text: str | None = None
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class Campaign(CampaignTable, table=True):
    """``when <trigger>, send <template>``; every edit bumps ``version``."""

    __tablename__ = "campaigns"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    name: str
    status: str = "active"  # "active" | "paused"
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    trigger: dict[str, Any] = Field(sa_column=jsonb_column("trigger"))
    template_id: uuid.UUID
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
    next_attempt_at: datetime = Field(sa_column=tz_column("next_attempt_at"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))
