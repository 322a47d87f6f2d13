"""Tables of the referral and loyalty programs, in the ``campaign`` schema (see docs/programs.md)."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, Identity, Index, Numeric, UniqueConstraint
from sqlmodel import Field

from services.campaign.models import CampaignTable
from shared.db import jsonb_column, tz_column


class Program(CampaignTable, table=True):
    """A workspace's referral or loyalty program: its configuration (programs/config.py) and switch."""

    __tablename__ = "programs"

    workspace_id: uuid.UUID = Field(primary_key=True)
    kind: str = Field(primary_key=True)  # referral | loyalty
    enabled: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})
    config: dict[str, Any] = Field(sa_column=jsonb_column("config"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class ProgramOutbox(CampaignTable, table=True):
    """Events for ingest (``Referral Converted``, ``Loyalty Tier Changed`` ...), written in the transaction
    that decided them; the id is the event's messageId, so a batch resent after a crash is deduplicated."""

    __tablename__ = "program_outbox"
    __table_args__ = (Index("ix_program_outbox_pending", "created_at", postgresql_where="forwarded_at is null"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    payload: dict[str, Any] = Field(sa_column=jsonb_column("payload"))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    forwarded_at: datetime | None = Field(default=None, sa_column=tz_column("forwarded_at", nullable=True,
                                                                           default_now=False))


class ReferralCode(CampaignTable, table=True):
    """A profile's referral code (random, stored: stable and unguessable); share links are built from it."""

    __tablename__ = "referral_codes"
    __table_args__ = (UniqueConstraint("workspace_id", "code"), UniqueConstraint("workspace_id", "profile_id"))

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    profile_id: uuid.UUID
    code: str
    user_id: str | None = None
    anonymous_id: str | None = None
    # the profile was merged into this one, which already had a code: this code works on its behalf
    merged_into: uuid.UUID | None = None
    created_at: datetime = Field(sa_column=tz_column("created_at"))


class ReferralTouch(CampaignTable, table=True):
    """The first referral code a visitor arrived with (first touch wins), by profile."""

    __tablename__ = "referral_touches"
    __table_args__ = (Index("ix_referral_touches_anonymous", "workspace_id", "anonymous_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    anonymous_id: str | None = None
    code: str
    channel: str | None = None
    touched_at: datetime = Field(sa_column=tz_column("touched_at"))


class ReferralFingerprint(CampaignTable, table=True):
    """Hashed email, phone and device ids seen per profile: how duplicate accounts are recognised."""

    __tablename__ = "referral_fingerprints"
    __table_args__ = (Index("ix_referral_fingerprints_profile", "workspace_id", "profile_id"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    digest: str = Field(primary_key=True)  # sha256 of "<kind>:<normalised value>"
    profile_id: uuid.UUID = Field(primary_key=True)
    kind: str  # email | phone | device


class Referral(CampaignTable, table=True):
    """One referred profile and who referred it. Status: ``converted`` (signed up through a code),
    ``rejected`` (``reason``), ``rewarded`` (qualifying event: rewards granted), ``reversed`` (refunded)."""

    __tablename__ = "referrals"
    __table_args__ = (UniqueConstraint("workspace_id", "referred_profile_id"),
                      Index("ix_referrals_referrer", "workspace_id", "referrer_profile_id", "converted_at"),
                      # the referrals, newest first, paged after (converted_at, id) (campaign_0009)
                      Index("ix_referrals_log", "workspace_id", "converted_at", "id"))

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    referrer_profile_id: uuid.UUID
    referred_profile_id: uuid.UUID
    code: str
    channel: str | None = None
    status: str
    reason: str | None = None
    order_id: str | None = None  # the qualifying order (a refund of it reverses the rewards)
    touched_at: datetime = Field(sa_column=tz_column("touched_at"))
    converted_at: datetime = Field(sa_column=tz_column("converted_at"))
    rewarded_at: datetime | None = Field(default=None, sa_column=tz_column("rewarded_at", nullable=True,
                                                                          default_now=False))
    reversed_at: datetime | None = Field(default=None, sa_column=tz_column("reversed_at", nullable=True,
                                                                          default_now=False))


class ReferralReward(CampaignTable, table=True):
    """A reward of one side of a referral: granted once (unique per side), reversed on refund."""

    __tablename__ = "referral_rewards"
    __table_args__ = (UniqueConstraint("referral_id", "side"),)

    id: uuid.UUID = Field(primary_key=True)
    workspace_id: uuid.UUID
    referral_id: uuid.UUID
    side: str  # referrer | referred
    profile_id: uuid.UUID
    kind: str  # points | coupon | event
    points: int | None = Field(default=None, sa_type=BigInteger)
    coupon_code: str | None = None
    event: str | None = None
    status: str  # granted | unfulfilled | reversed
    detail: str | None = None
    granted_at: datetime = Field(sa_column=tz_column("granted_at"))
    reversed_at: datetime | None = Field(default=None, sa_column=tz_column("reversed_at", nullable=True,
                                                                          default_now=False))


class Coupon(CampaignTable, table=True):
    """An uploaded coupon code of a pool; handed out once (``assigned_to``), claimed with SKIP LOCKED."""

    __tablename__ = "coupons"
    __table_args__ = (Index("ix_coupons_free", "workspace_id", "pool", "seq", postgresql_where="assigned_to is null"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    pool: str = Field(primary_key=True)
    code: str = Field(primary_key=True)
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), nullable=False))
    assigned_to: uuid.UUID | None = None
    assigned_at: datetime | None = Field(default=None, sa_column=tz_column("assigned_at", nullable=True,
                                                                          default_now=False))
    revoked: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})


class LoyaltyAccount(CampaignTable, table=True):
    """A member's balance row: every ledger write locks it (``FOR UPDATE``), so concurrent redemptions
    queue up and the balance can never go below zero (also a check constraint)."""

    __tablename__ = "loyalty_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    user_id: str | None = None
    anonymous_id: str | None = None
    balance: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})
    tier: str | None = None
    tier_since: datetime | None = Field(default=None, sa_column=tz_column("tier_since", nullable=True,
                                                                         default_now=False))
    created_at: datetime = Field(sa_column=tz_column("created_at"))
    updated_at: datetime = Field(sa_column=tz_column("updated_at"))


class LedgerEntry(CampaignTable, table=True):
    """Append-only points ledger. ``source`` makes each write idempotent (``event:<messageId>``,
    ``redeem:<Idempotency-Key>``, ``expire:<lot seq>`` ...). Positive entries are lots: ``remaining`` is
    what is left of them, consumed oldest first by redemptions and expired at ``expires_at``."""

    __tablename__ = "loyalty_ledger"
    __table_args__ = (
        UniqueConstraint("workspace_id", "source"),
        Index("ix_loyalty_ledger_profile", "workspace_id", "profile_id", "seq"),
        Index("ix_loyalty_ledger_lots", "expires_at", postgresql_where="remaining > 0"),
        Index("ix_loyalty_ledger_order", "workspace_id", "profile_id", "order_id"),
    )

    seq: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    workspace_id: uuid.UUID
    profile_id: uuid.UUID
    kind: str  # earn | redeem | expire | adjust
    points: int = Field(sa_type=BigInteger)
    balance_after: int = Field(sa_type=BigInteger)
    source: str
    reason: str | None = None
    order_id: str | None = None
    spend: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    remaining: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})
    expires_at: datetime | None = Field(default=None, sa_column=tz_column("expires_at", nullable=True,
                                                                         default_now=False))
    at: datetime = Field(sa_column=tz_column("at"))


class BadgeProgress(CampaignTable, table=True):
    """Which of a badge's events a member performed and when (latest), and when the badge was earned."""

    __tablename__ = "loyalty_badges"

    workspace_id: uuid.UUID = Field(primary_key=True)
    profile_id: uuid.UUID = Field(primary_key=True)
    badge: str = Field(primary_key=True)
    seen: dict[str, Any] = Field(sa_column=jsonb_column("seen"))
    earned_at: datetime | None = Field(default=None, sa_column=tz_column("earned_at", nullable=True,
                                                                        default_now=False))
