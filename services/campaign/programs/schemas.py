"""The public contract of the referral and loyalty programs."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.campaign.programs.config import POOL_NAME, LoyaltyConfig, ReferralConfig
from shared.validation import JsonBool, JsonInt, Ref, StorableModel


class _Body(StorableModel):
    """A request body: a field this API does not know is a 422 naming it, not dropped (a misspelt ``config``
    answered 200 and reset the program to its defaults; a misspelt ``reason`` redeemed without one)."""

    model_config = ConfigDict(extra="forbid")


_KEPT = "; omitted: the stored value is kept (true on the first PUT)"
_CONFIG = ("the configuration keys to set: a key given replaces its stored value whole (a reward, `qualifying`, the "
           "`tiers` list); a key left out keeps its stored value, on the first PUT its documented default; "
           "omitted: the configuration is unchanged")


class _ProgramBody(_Body):
    """A program's PUT: only what it gives changes (pausing must never reset the configuration)."""

    def changes(self) -> tuple[bool | None, dict[str, Any]]:
        """(the new ``enabled``, None to keep it; the configuration keys the request gave, as JSON)."""
        enabled = self.enabled if "enabled" in self.model_fields_set else None  # type: ignore[attr-defined]
        config: BaseModel = self.config  # type: ignore[attr-defined]
        given = config.model_fields_set if "config" in self.model_fields_set else set()
        return enabled, config.model_dump(mode="json", include=given)


class ReferralProgramIn(_ProgramBody):
    """What to change: a field, or configuration key, left out keeps its stored value (`{"enabled": false}` pauses
    the program and keeps its configuration); the first PUT fills what it leaves out with the defaults."""

    enabled: JsonBool = Field(True, description="off: codes still resolve, but no attribution or rewards" + _KEPT)
    config: ReferralConfig = Field(default_factory=ReferralConfig, description=_CONFIG, examples=[{
        "landing_url": "https://acme.example/join", "attribution_window_days": 30,
        "qualifying": {"event": "Order Completed"},
        "referrer_reward": {"type": "points", "points": 500},
        "referred_reward": {"type": "coupon", "pool": "welcome-10"}}])


class LoyaltyProgramIn(_ProgramBody):
    """What to change: a field, or configuration key, left out keeps its stored value (`{"enabled": false}` pauses
    the program and keeps its tiers and badges); the first PUT fills what it leaves out with the defaults."""

    enabled: JsonBool = Field(True, description="off: events earn nothing and tiers do not move (balances and the "
                                                "members' API stay)" + _KEPT)
    config: LoyaltyConfig = Field(default_factory=LoyaltyConfig, description=_CONFIG, examples=[{
        "earn": [{"event": "Order Completed", "per_unit": 1, "property": "revenue"},
                 {"event": "Review Submitted", "points": 50, "name": "review bonus"}],
        "expiry_months": 12, "tier_basis": "points", "tier_window_days": 365,
        "tiers": [{"name": "Silver", "threshold": 0}, {"name": "Gold", "threshold": 1000,
                                                        "benefits": ["free shipping"]}],
        "badges": [{"name": "Explorer", "events": ["Project Created", "Report Shared"], "within_days": 7,
                    "points": 100}]}])


class ProgramOut(BaseModel):
    kind: Literal["referral", "loyalty"]
    enabled: bool
    config: dict[str, Any] = Field(description="as validated, with defaults filled in")
    updated_at: datetime


class CouponsIn(_Body):
    codes: list[str] = Field(min_length=1, max_length=10_000, examples=[["WELCOME-7F3K", "WELCOME-9QX2"]],
                             description="codes already in the pool are ignored")


class CouponPoolOut(BaseModel):
    pool: str = Field(pattern=POOL_NAME)
    added: int | None = Field(None, description="codes new to the pool (upload only)")
    total: int
    available: int = Field(description="not yet handed out")
    assigned: int
    revoked: int = Field(description="taken back after a refund")


class CodeIn(_Body):
    user: Ref = Field(description="profile id, userId, anonymousId or email", examples=["u-42"])


class CodeOut(BaseModel):
    code: str = Field(examples=["7KQ2M9XHPA"])
    profile_id: str
    links: dict[str, str] = Field(description="share link per channel: email, sms, social",
                                  examples=[{"email": "https://acme.example/join?ref=7KQ2M9XHPA&channel=email"}])
    created_at: datetime


class InviteIn(_Body):
    user: Ref = Field(description="the referrer: profile id, userId, anonymousId or email", examples=["u-42"])
    channel: Literal["email", "sms", "social"] = Field(
        "email", description="where the referrer shares it: picks the share link (its `channel` parameter)")
    idempotency_key: str | None = Field(None, max_length=200, description="per referrer: a retry with the same key "
                                                                           "and channel is one `Referral Sent` event "
                                                                           "and gets the first answer; the key on "
                                                                           "another channel is a 409")


class InviteOut(BaseModel):
    code: str
    link: str = Field(description="the share link for the channel")
    event: str = Field("Referral Sent", description="sent to ingest for the referrer")


class RewardOut(BaseModel):
    side: Literal["referrer", "referred"]
    profile_id: str
    kind: Literal["points", "coupon", "event"]
    points: int | None
    coupon_code: str | None
    event: str | None
    status: str = Field(description="granted | unfulfilled (e.g. empty coupon pool) | reversed")
    detail: str | None
    granted_at: datetime
    reversed_at: datetime | None


class ReferralOut(BaseModel):
    id: str
    referrer_profile_id: str
    referred_profile_id: str
    code: str
    channel: str | None = Field(description="the share link's channel the referred user came through (email, sms or "
                                            "social); null if not known")
    status: str = Field(description="converted | rejected | rewarded | capped | reversed")
    reason: str | None = Field(description="why rejected: self_referral, duplicate_email, duplicate_phone, "
                                           "duplicate_device, attribution_window_expired; or why capped")
    order_id: str | None = Field(description="the qualifying order")
    touched_at: datetime = Field(description="when the code was first seen (first touch)")
    converted_at: datetime = Field(description="when the referred user signed up")
    rewarded_at: datetime | None
    reversed_at: datetime | None
    rewards: list[RewardOut] = Field(default_factory=list)


class ReferralList(BaseModel):
    referrals: list[ReferralOut] = Field(description="the referrals (of `referrer`, with `status`, when given), newest "
                                                     "first (`converted_at`, then `id`, both descending)")
    next_cursor: str | None = None


class ReferrerRank(BaseModel):
    rank: int
    profile_id: str
    user_id: str | None
    referrals: int = Field(description="converted (not rejected) in the period")
    qualified: int = Field(description="of which made their qualifying purchase")


class MemberRank(BaseModel):
    rank: int
    profile_id: str
    user_id: str | None = Field(description="the member's userId; null for one ingest knows only anonymously")
    tier: str | None
    points: int = Field(description="points earned in the period")


class Leaderboard(BaseModel):
    period: str
    start: datetime | None
    end: datetime | None
    referrers: list[ReferrerRank] | None = None
    members: list[MemberRank] | None = None


class Expiring(BaseModel):
    points: int
    expires_at: datetime = Field(description="when these points expire (ISO 8601, UTC)")


class BalanceOut(BaseModel):
    profile_id: str
    balance: int = Field(description="points available now (excludes points past their expiry date)")
    tier: str | None
    expiring: list[Expiring] = Field(description="the next lots to expire")


class EntryOut(BaseModel):
    seq: int
    kind: Literal["earn", "redeem", "expire", "adjust"]
    points: int = Field(description="positive: credited; negative: debited")
    balance_after: int
    source: str = Field(description="what wrote it: event:<messageId>, redeem:..., expire:<seq>, referral:...")
    reason: str | None
    order_id: str | None
    remaining: int = Field(description="of a credit: the points not yet spent or expired")
    expires_at: datetime | None = Field(description="of a credit: when its remaining points expire; null: never, "
                                                    "or not a credit (ISO 8601, UTC)")
    at: datetime


class HistoryOut(BaseModel):
    entries: list[EntryOut]
    next_cursor: str | None = None


class RedeemIn(_Body):
    points: JsonInt = Field(gt=0, le=10_000_000, examples=[500])
    reason: str | None = Field(None, max_length=500, examples=["$5 voucher"])


class AdjustIn(_Body):
    points: JsonInt = Field(ge=-10_000_000, le=10_000_000, examples=[-100],
                        description="positive: a credit (expires like earned points); negative: a debit")
    reason: str = Field(min_length=1, max_length=500, examples=["goodwill for a late delivery"])


class TierOut(BaseModel):
    profile_id: str
    tier: str | None
    since: datetime | None
    basis: Literal["points", "spend"]
    qualifying_value: float = Field(description="points earned (or spend) in the rolling window")
    window_days: int
    benefits: list[str]
    next_tier: str | None
    needed_for_next: float | None


class BadgeOut(BaseModel):
    badge: str
    events_done: list[str] = Field(description="the badge's events the member has done so far (it is earned when all "
                                               "of them fall within its `within_days`)")
    earned_at: datetime | None


class BadgesOut(BaseModel):
    badges: list[BadgeOut] = Field(description="the badges the member has started or earned, by name")
