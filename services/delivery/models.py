"""Tables of the ``delivery`` schema: the outbox of messages and every attempt to send them."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Identity, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.db import jsonb_column, metadata_for, tz_column

metadata = metadata_for("delivery")


class DeliveryTable(SQLModel):
    metadata = metadata


class Message(DeliveryTable, table=True):
    """One intent to send. The unique idempotency key is stored before any provider call.

    Status: queued → sending → sent, or failed (permanent error / out of tries); ``sending`` past its
    lease means a worker died mid-send and the message is attempted again (with the same Message-ID).
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key"),
        Index("ix_messages_due", "next_attempt_at", postgresql_where="status in ('queued', 'sending')"),
        Index("ix_messages_workspace_id_created_at", "workspace_id", "created_at"),
    )

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    idempotency_key: str
    request_hash: str
    channel: str
    to_address: str
    from_address: str
    subject: str
    html: str | None = None
    text: str | None = None
    message_type: str = "marketing"  # "marketing" | "transactional"
    status: str = "queued"
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_error: str | None = None
    provider_message_id: str | None = None
    metadata_: dict[str, Any] = Field(sa_column=jsonb_column("metadata"))
    next_attempt_at: datetime = Field(sa_column=tz_column("next_attempt_at"))
    claimed_until: datetime | None = Field(default=None, sa_column=tz_column("claimed_until", nullable=True,
                                                                              default_now=False))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))
    sent_at: datetime | None = Field(default=None, sa_column=tz_column("sent_at", nullable=True, default_now=False))


class Attempt(DeliveryTable, table=True):
    __tablename__ = "attempts"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    message_id: uuid.UUID = Field(index=True)
    attempt: int
    outcome: str  # "sent" | "transient_error" | "permanent_error"
    error: str | None = None
    started_at: datetime = Field(sa_column=tz_column("started_at"))
    finished_at: datetime = Field(sa_column=tz_column("finished_at"))
