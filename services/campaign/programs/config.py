"""What a workspace's programs are, as data: the referral and loyalty configuration (stored as jsonb in
``campaign.programs``, validated on save), and reading it for a batch of workspaces."""

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.journey_def import PropertyFilter
from shared.errors import NotFound, ValidationFailed, body_error
from shared.jsonutil import dumps
from shared.validation import JsonBool, JsonFloat, JsonInt, StorableModel, bounded_json_int, error_message

KINDS = ("referral", "loyalty")
POOL_NAME = r"^[A-Za-z0-9_.-]{1,100}$"


def _event_name(name: str) -> str:
    if not name.strip():
        raise ValueError("an event name is not empty or blank: no event is named so")
    if len(name) > 200:
        raise ValueError("an event name is at most 200 characters")
    return name


# an event's name as a rule names it: one that can arrive (an empty or blank one never does)
EventName = Annotated[str, AfterValidator(_event_name)]


class _Model(StorableModel):  # stored as jsonb: a NUL or a lone surrogate is refused at its field
    model_config = ConfigDict(extra="forbid")


class PointsReward(_Model):
    type: Literal["points"] = "points"
    points: JsonInt = Field(gt=0, le=10_000_000, examples=[500], description="credited to the loyalty ledger")


class CouponReward(_Model):
    type: Literal["coupon"] = "coupon"
    pool: str = Field(pattern=POOL_NAME, examples=["welcome-10"],
                      description="the next unused code of this uploaded pool (PUT /v1/coupon-pools/{pool})")


class EventReward(_Model):
    type: Literal["event"] = "event"
    event: str = Field(min_length=1, max_length=200, examples=["Free Month Granted"],
                       description="an event sent to ingest for your app (or a journey) to fulfil")
    properties: dict[str, Any] = Field(default_factory=dict, examples=[{"months": 1}],
                                       description="the event's properties; `referral_id` and `side` are added")


Reward = Annotated[PointsReward | CouponReward | EventReward, Field(discriminator="type")]


class QualifyingEvent(_Model):
    event: str = Field("Order Completed", min_length=1, description="the referred user's first such event "
                                                                    "(after signing up) grants the rewards")
    where: list[PropertyFilter] = Field(default_factory=list, description="every filter must match")
    within_days: bounded_json_int(ge=1, le=3650) | None = Field(
        90, description="after signing up; null: any time")


class ReferralConfig(_Model):
    """Referral program: codes and share links, first-touch attribution, two-sided rewards."""

    landing_url: str = Field("https://example.com/join", pattern=r"^https?://", max_length=500,
                             examples=["https://acme.example/join"],
                             description="share links are this URL with ?ref=CODE&channel=email|sms|social")
    signup_events: list[EventName] = Field(default_factory=lambda: ["Signed Up"], min_length=1,
                                     description="events that make the visitor a referred user")
    attribution_window_days: JsonInt = Field(30, ge=0, le=365, description="the code must have been seen at most this "
                                                                       "long before signing up (first touch)")
    qualifying: QualifyingEvent = Field(default_factory=QualifyingEvent)
    referrer_reward: Reward | None = Field(default_factory=lambda: PointsReward(points=500))
    referred_reward: Reward | None = Field(default_factory=lambda: PointsReward(points=250))
    refund_event: EventName = Field("Order Refunded", description="with the qualifying order's order_id: the rewards "
                                                            "are reversed")
    max_rewarded_per_referrer: bounded_json_int(ge=1) | None = Field(
        None, description="rewarded referrals per referrer; beyond "
                                                                          "it, referrals convert without reward")


class EarnRule(_Model):
    """Points for an event: ``points`` fixed and/or ``per_unit`` points per unit of ``property``."""

    event: str = Field(min_length=1, examples=["Order Completed"])
    where: list[PropertyFilter] = Field(default_factory=list)
    points: JsonInt = Field(0, ge=0, le=10_000_000, description="fixed points (a bonus)")
    per_unit: JsonFloat = Field(0, ge=0, le=100_000, description="points per unit of `property` (rounded down)")
    property: str = Field("revenue", description="the amount property (e.g. Order Completed.revenue)")
    first_time_only: JsonBool = Field(False,
                                      description="only the member's first such event earns (a first-order bonus)")
    name: str | None = Field(None, max_length=100, description="shown in the history's reason")


class Tier(_Model):
    name: str = Field(min_length=1, max_length=100, examples=["Gold"])
    threshold: JsonFloat = Field(ge=0, description="points earned (or spend) in the window needed")
    benefits: list[str] = Field(default_factory=list, examples=[["free shipping", "exclusive offers"]])


class Badge(_Model):
    name: str = Field(min_length=1, max_length=100, examples=["Explorer"])
    events: list[EventName] = Field(min_length=1, max_length=20, examples=[["Project Created", "Report Shared"]],
                              description="every one of them, all within `within_days`")
    within_days: JsonInt = Field(7, ge=1, le=3650)
    points: JsonInt = Field(0, ge=0, le=10_000_000)


class LoyaltyConfig(_Model):
    """Loyalty program: earning rules, expiry, tiers, badges."""

    earn: list[EarnRule] = Field(default_factory=lambda: [EarnRule(event="Order Completed", per_unit=1)],
                                 max_length=50)
    expiry_months: bounded_json_int(ge=1, le=120) | None = Field(
        12, description="points expire this long after they were "
                                                                    "earned, oldest first; null: never")
    tier_basis: Literal["points", "spend"] = Field("points", description="points earned or `revenue` spent")
    tier_window_days: JsonInt = Field(365, ge=1, le=3650, description="the rolling window tiers are measured over")
    tier_retain_days: JsonInt = Field(30, ge=0, le=3650, description="a tier is kept at least this long before a "
                                                                 "downgrade")
    tiers: list[Tier] = Field(default_factory=list, max_length=20, description="ordered by threshold")
    badges: list[Badge] = Field(default_factory=list, max_length=100,
                                description="badges members earn by doing events (names unique)")
    refund_event: EventName = Field("Order Refunded", description="points earned on that order_id are taken back")

    @field_validator("tiers")
    @classmethod
    def _by_threshold(cls, tiers: list[Tier]) -> list[Tier]:
        # (a field validator: assigning in the model validator marked `tiers` as given, so a PUT of other keys
        # replaced the stored tiers)
        return sorted(tiers, key=lambda t: t.threshold)

    @model_validator(mode="after")
    def _consistent(self) -> "LoyaltyConfig":
        if len({t.name for t in self.tiers}) != len(self.tiers):
            raise ValueError("tier names must be unique")
        if len({b.name for b in self.badges}) != len(self.badges):
            raise ValueError("badge names must be unique")
        if any(r.points == 0 and r.per_unit == 0 for r in self.earn):
            raise ValueError("an earning rule needs points or per_unit")
        return self


MODELS: dict[str, type[_Model]] = {"referral": ReferralConfig, "loyalty": LoyaltyConfig}


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


async def put(session: AsyncSession, ws: uuid.UUID, kind: str, enabled: bool | None, given: dict[str, Any]
              ) -> dict[str, Any]:
    """Save a program: the configuration keys in ``given`` (validated, as JSON) replace their stored values, the
    others keep theirs, and ``enabled`` None keeps the switch. The first save starts from the defaults (enabled)."""
    defaults = MODELS[kind]().model_dump(mode="json")
    # the row first (a concurrent first save waits here), then locked: two saves of different keys keep both
    await session.execute(text(
        "insert into campaign.programs (workspace_id, kind, enabled, config) values (:ws, :k, true, CAST(:c AS jsonb)) "
        "on conflict (workspace_id, kind) do nothing"), {"ws": ws, "k": kind, "c": dumps(defaults)})
    stored = (await session.execute(text(
        "select enabled, config from campaign.programs where workspace_id = :ws and kind = :k for update"),
        {"ws": ws, "k": kind})).one()
    try:
        merged = MODELS[kind].model_validate({**stored.config, **given})
    except ValidationError as exc:  # a configuration stored before a check it now fails
        raise ValidationFailed(f"The {kind} program's configuration is not valid", errors=[
            body_error(["config", *e["loc"]], error_message(e), e["type"]) for e in exc.errors(include_url=False)
        ]) from None
    row = (await session.execute(text(
        "update campaign.programs set enabled = :e, config = CAST(:c AS jsonb), updated_at = now() "
        "where workspace_id = :ws and kind = :k returning kind, enabled, config, updated_at"),
        {"ws": ws, "k": kind, "e": stored.enabled if enabled is None else enabled,
         "c": dumps(merged.model_dump(mode="json"))})).mappings().one()
    return dict(row)


async def get(session: AsyncSession, ws: uuid.UUID, kind: str) -> dict[str, Any]:
    row = (await session.execute(text(
        "select kind, enabled, config, updated_at from campaign.programs where workspace_id = :ws and kind = :k"),
        {"ws": ws, "k": kind})).mappings().first()
    if row is None:
        raise NotFound(f"This workspace has no {kind} program")
    return dict(row)


class Programs:
    """The enabled programs of a batch's workspaces, parsed once."""

    def __init__(self, referral: dict[uuid.UUID, ReferralConfig], loyalty: dict[uuid.UUID, LoyaltyConfig]):
        self.referral = referral
        self.loyalty = loyalty

    @classmethod
    async def load(cls, session: AsyncSession, workspaces: set[uuid.UUID]) -> "Programs":
        rows = (await session.execute(text(
            "select workspace_id, kind, config from campaign.programs where enabled "
            "and workspace_id = any(CAST(:ws AS uuid[]))"), {"ws": list(workspaces)})).all()
        referral = {r.workspace_id: ReferralConfig.model_validate(r.config) for r in rows if r.kind == "referral"}
        loyalty = {r.workspace_id: LoyaltyConfig.model_validate(r.config) for r in rows if r.kind == "loyalty"}
        return cls(referral, loyalty)

    def __bool__(self) -> bool:
        return bool(self.referral or self.loyalty)
