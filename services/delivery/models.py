"""Tables of the ``delivery`` schema: the outbox of messages and every attempt to send them."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Identity, Index, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.db import jsonb_column, metadata_for, tz_column

metadata = metadata_for("delivery")


class DeliveryTable(SQLModel):
    metadata = metadata


class Message(DeliveryTable, table=True):
    """One intent to send. The unique idempotency key is stored before any provider call.

    Status: queued → sending → sent, or failed (permanent error, or transient ones for longer than the retry
    time); ``sending`` past its lease means a worker died mid-send and the message is attempted again (with the
    same Message-ID).
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key"),
        Index("ix_messages_due", "next_attempt_at", postgresql_where="status in ('queued', 'sending')"),
        # the deliveries log, newest first, paged after (created_at, id) (delivery_0011)
        Index("ix_messages_log", "workspace_id", "created_at", "id"),
        # Twilio's status callbacks name a message by its MessageSid
        Index("ix_messages_provider_message_id", "workspace_id", "provider_message_id",
              postgresql_where="provider_message_id is not null"),
        # an inbound SMS (STOP, START) names only the number: its person is the one the last text to it was for
        Index("ix_messages_recipient", "workspace_id", "to_address", "created_at",
              postgresql_where="channel = 'sms'"),
        # a Twilio SID names one message of the whole account, which several workspaces may share: a text retried
        # after an unanswered attempt adopts a SID Twilio lists only if no message of any workspace holds it
        Index("ix_messages_sms_provider_id", "provider_message_id",
              postgresql_where="channel = 'sms' and provider_message_id is not null"),
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
    topic: str | None = None  # subscription topic of a marketing message (e.g. "offers")
    locale: str | None = None  # the recipient's (e.g. "fr-CA"): the footer's and the linked pages' language
    status: str = "queued"  # queued | sending | sent | failed | suppressed
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_error: str | None = None
    provider_message_id: str | None = None
    # the provider that may hold this message (it took it, or an attempt's outcome is unknown): failover
    # never sends it through another one
    provider: str | None = None
    metadata_: dict[str, Any] = Field(sa_column=jsonb_column("metadata"))
    next_attempt_at: datetime = Field(sa_column=tz_column("next_attempt_at"))
    claimed_until: datetime | None = Field(default=None, sa_column=tz_column("claimed_until", nullable=True,
                                                                              default_now=False))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))
    sent_at: datetime | None = Field(default=None, sa_column=tz_column("sent_at", nullable=True, default_now=False))
    # the first transient failure of the failures it is being retried for (given up after TENURE_*_RETRY_FOR_S)
    retrying_since: datetime | None = Field(default=None, sa_column=tz_column("retrying_since", nullable=True,
                                                                              default_now=False))
    # how many holders died mid-send (their lease ran out): given up after outbox.MAX_LOST_LEASES
    lost_leases: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Attempt(DeliveryTable, table=True):
    __tablename__ = "attempts"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    message_id: uuid.UUID = Field(index=True)
    attempt: int
    outcome: str  # "sent" | "transient_error" | "permanent_error"
    error: str | None = None
    started_at: datetime = Field(sa_column=tz_column("started_at"))
    finished_at: datetime = Field(sa_column=tz_column("finished_at"))


class Suppression(DeliveryTable, table=True):
    """An address that must not get (marketing) messages on a channel: unsubscribed, bounced, complained
    or added by hand. Hard bounces and complaints stop transactional mail too."""

    __tablename__ = "suppressions"

    workspace_id: uuid.UUID = Field(primary_key=True)
    channel: str = Field(primary_key=True)
    address: str = Field(primary_key=True)
    reason: str  # unsubscribed | hard_bounce | complaint | manual
    source: str
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class Subscription(DeliveryTable, table=True):
    """An address's choice for one topic (e.g. product news, offers); no row = subscribed."""

    __tablename__ = "subscriptions"

    workspace_id: uuid.UUID = Field(primary_key=True)
    address: str = Field(primary_key=True)
    topic: str = Field(primary_key=True)
    subscribed: bool
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class ConsentChange(DeliveryTable, table=True):
    """Every consent change, with time and source (audit)."""

    __tablename__ = "consent_log"
    __table_args__ = (Index("ix_consent_log_address", "workspace_id", "address"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    workspace_id: uuid.UUID
    address: str
    channel: str
    topic: str | None = None
    action: str  # unsubscribed | resubscribed | topic_on | topic_off | suppressed | confirmed | opted_in
    source: str  # one_click | preference_page | api | bounce | complaint | sms_keyword | double_opt_in
    at: datetime = Field(sa_column=tz_column("at"))
    # an SMS opt-in's proof: the consent text shown, where it was collected, the IP, when (POST /v1/sms-opt-ins)
    evidence: dict[str, Any] | None = Field(default=None, sa_column=Column("evidence", JSONB, nullable=True))


class Engagement(DeliveryTable, table=True):
    """Opens and clicks of a message (bot and prefetch opens flagged, not fed back)."""

    __tablename__ = "engagements"
    __table_args__ = (Index("ix_engagements_message", "message_id"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    workspace_id: uuid.UUID
    message_id: uuid.UUID
    kind: str  # opened | clicked
    url: str | None = None
    user_agent: str | None = None
    bot: bool = False
    at: datetime = Field(sa_column=tz_column("at"))


class Feedback(DeliveryTable, table=True):
    """Events for ingest (engagement, consent changes), written in the transaction that records them and
    forwarded by the worker; the row id is the event's messageId, so a resend is deduplicated by ingest."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_pending", "id", postgresql_where="forwarded_at is null"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    payload: dict[str, Any] = Field(sa_column=jsonb_column("payload"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    forwarded_at: datetime | None = Field(default=None, sa_column=tz_column("forwarded_at", nullable=True,
                                                                           default_now=False))


class Device(DeliveryTable, table=True):
    """A push token registered for a user (their userId or anonymousId); removed when the provider says
    it is gone."""

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_user", "workspace_id", "user_ref"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    token: str = Field(primary_key=True)
    user_ref: str
    platform: str  # android | ios | web (the adapter: push.adapter_of)
    # a Web Push subscription: the token is its endpoint URL, these its keys (base64url)
    webpush_p256dh: str | None = None
    webpush_auth: str | None = None
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    last_used_at: datetime | None = Field(default=None, sa_column=tz_column("last_used_at", nullable=True,
                                                                           default_now=False))


class OptIn(DeliveryTable, table=True):
    """Double opt-in: an address asked to receive marketing email; confirmed by clicking the link sent to
    it. With the workspace setting ``double_opt_in``, marketing email goes only to confirmed addresses. A phone
    number's row is its SMS opt-in (confirmed when recorded: the app collected the consent, or the person texted
    START); marketing texts go only to such numbers unless the workspace sets ``sms_opt_in_required: false``."""

    __tablename__ = "opt_ins"

    workspace_id: uuid.UUID = Field(primary_key=True)
    address: str = Field(primary_key=True)
    topics: list[str] = Field(sa_column=Column("topics", JSONB, nullable=False, server_default=text("'[]'::jsonb")))
    confirmation_message_id: uuid.UUID | None = None
    requested_at: datetime = Field(sa_column=tz_column("requested_at"))
    confirmed_at: datetime | None = Field(default=None, sa_column=tz_column("confirmed_at", nullable=True,
                                                                           default_now=False))


class WebhookReceipt(DeliveryTable, table=True):
    """A provider webhook already acted on, by the provider's own id for it (Twilio's inbound MessageSid; for a
    status callback reporting error 21610, ``twilio_status`` and the text's MessageSid): providers deliver at least
    once, and a late copy of an old STOP must not undo a later START."""

    __tablename__ = "webhook_receipts"

    workspace_id: uuid.UUID = Field(primary_key=True)
    provider: str = Field(primary_key=True)
    event_key: str = Field(primary_key=True)
    received_at: datetime = Field(sa_column=tz_column("received_at"))


class RedactionMark(DeliveryTable, table=True):
    """How far a workspace's messages have had their content cleared for its retention (``retention``): every
    message created before ``redacted_before`` holds none, so the next pass starts there."""

    __tablename__ = "redaction_marks"

    workspace_id: uuid.UUID = Field(primary_key=True)
    redacted_before: datetime = Field(sa_column=tz_column("redacted_before"))


class PushReceipt(DeliveryTable, table=True):
    """A device a push message reached (``sending._send_push``): a retry, after another device's transient error
    or a lost lease, goes to the devices without one. Deleted with its message (an erasure, a workspace's
    deletion), which is why it has no ``workspace_id`` of its own."""

    __tablename__ = "push_receipts"

    message_id: uuid.UUID = Field(sa_column=Column(
        "message_id", ForeignKey("delivery.messages.id", ondelete="CASCADE"), primary_key=True))
    token: str = Field(primary_key=True)
    provider_id: str
    sent_at: datetime = Field(sa_column=tz_column("sent_at"))


class SendgridEventId(DeliveryTable, table=True):
    """A SendGrid event already applied (its ``sg_event_id``), kept while a signature of the batch that carried it
    is still accepted: a replay of that batch must change nothing (``provider_events.new_sendgrid_events``)."""

    __tablename__ = "sendgrid_event_ids"
    __table_args__ = (Index("ix_sendgrid_event_ids_received_at", "received_at"),)

    sg_event_id: str = Field(primary_key=True)
    received_at: datetime = Field(sa_column=tz_column("received_at"))


class EarlyEvent(DeliveryTable, table=True):
    """A provider's report on a message that arrived before the send was recorded (the provider answered,
    and its webhook beat our commit): applied when the send is recorded (``provider_events``). ``ref`` is
    what the report names the message by: Twilio's MessageSid, or our message id for SendGrid."""

    __tablename__ = "early_events"
    __table_args__ = (Index("ix_early_events_ref", "ref"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    workspace_id: uuid.UUID
    provider: str  # twilio | sendgrid
    ref: str
    payload: dict[str, Any] = Field(sa_column=jsonb_column("payload"))
    received_at: datetime = Field(sa_column=tz_column("received_at"))
