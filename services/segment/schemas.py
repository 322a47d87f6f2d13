"""The public contract of the segment service."""

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.validation import JsonInt, Ref, StorableText

# a segment's or list's name: 1-200 characters of text PostgreSQL can hold (StorableText: a NUL or a lone
# surrogate is a 422 naming the field, not a database error or a 500). The lengths go before StorableText's
# validators so that, also inside ``| None``, they are string lengths ("at least 1 character").
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), *StorableText.__metadata__]

DEFINITION_EXAMPLE = {
    "type": "and",
    "children": [
        {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"},
        {"type": "performed", "event": "Order Completed", "op": "at_least", "count": 2, "within_days": 30},
    ],
}


class _Body(BaseModel):
    """A request body: a field this API does not know is a 422 naming it, as on campaign, not dropped — a misspelt
    ``defintion`` in an edit would otherwise answer 200 and keep the old definition, as an omitted field does."""

    model_config = ConfigDict(extra="forbid")


class SegmentCreate(_Body):
    name: Name = Field(examples=["Repeat buyers on Pro"], description="the segment's name, unique in the workspace")
    definition: dict[str, Any] = Field(
        description="condition tree: and/or/not, trait, account_trait, performed (with `where` property filters), "
                    "performed_time, aggregate, last_event_property, keyed, email_engagement, stage, segment, "
                    "list, attribute, random_bucket (see docs/segments.md)",
        examples=[DEFINITION_EXAMPLE],
    )


class SegmentUpdate(_Body):
    """What to change: the name, the definition, or both; an omitted field keeps its value."""

    name: Name | None = Field(None, description="a new name, unique in the workspace; omitted: unchanged")
    definition: dict[str, Any] | None = Field(
        None, examples=[DEFINITION_EXAMPLE],
        description="a definition that differs from the current one makes a new version (re-evaluated)")


class PreviewRequest(BaseModel):
    """Other fields are ignored: a segment's create body (its ``name`` too) previews as it is."""

    definition: dict[str, Any] = Field(examples=[DEFINITION_EXAMPLE])
    sample: JsonInt = Field(10, ge=0, le=100)


class PreviewOut(BaseModel):
    count: int = Field(description="profiles the definition matches now")
    sample: list[str] = Field(description="some of their profile ids")
    profiles_evaluated: int


class SegmentOut(BaseModel):
    id: str
    name: str
    definition: dict[str, Any]
    version: int = Field(description="the definition's version: 1, raised when an update changes the definition "
                                     "(not by a rename)")
    created_at: datetime
    updated_at: datetime


class SegmentList(BaseModel):
    segments: list[SegmentOut]
    next_cursor: str | None = None


class MemberOut(BaseModel):
    profile_id: str
    entered_at: datetime


class MemberList(BaseModel):
    members: list[MemberOut] = Field(description="the segment's current members, in profile id order")
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class TransitionOut(BaseModel):
    cursor: str
    workspace_id: str
    segment_id: str
    segment_version: int
    profile_id: str
    kind: str = Field(description="entered | exited")
    at: datetime


class TransitionPage(BaseModel):
    transitions: list[TransitionOut]
    next_cursor: str = Field(description="pass as `after` to continue; equal to `after` when nothing is new")
    behind: int = Field(default=0, description="committed entries still after `next_cursor` (the reader's lag; exact "
                                               "up to 1000, estimated beyond)")


class ProfileAttributes(BaseModel):
    """Computed attributes of one profile (see the segment service's `attributes` module)."""

    profile_id: str
    order_count: int
    total_revenue: float = Field(description="sum of purchase revenue so far, net of refunds (CLTV to date)")
    average_order_value: float | None
    orders_per_month: float = Field(description="purchase frequency since the first order")
    first_seen: datetime | None = Field(description="the person's first event (not counting what Tenure's services "
                                                    "record about them: message deliveries, opens, journey updates)")
    last_seen: datetime | None = Field(description="the person's latest event (likewise; never after ingest received "
                                                   "it); for someone only identified so far, `first_seen`")
    days_since_last_activity: int | None = Field(description="UTC days since the person's latest track, page or "
                                                             "screen call (`last_seen`); null without one (only "
                                                             "identified so far)")
    days_since_last_order: int | None
    last_nps: float | None = Field(None, description="newest NPS survey answer (a `score` from 0 to 10: a number, or "
                                                        "text holding one such as \"4\"), else the `nps` trait "
                                                        "(when it is a number from 0 to 10)")
    lead_score: float = Field(0, description="points from the workspace's lead score rules")


class AttributesLookup(_Body):
    profile_ids: list[uuid.UUID] = Field(
        min_length=1, max_length=1000, examples=[["6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10"]],
        description="profile ids (UUIDs in ingest); a merged-away one answers as its survivor")


class AttributesFound(BaseModel):
    attributes: dict[str, ProfileAttributes] = Field(
        description="asked id -> the computed attributes of the profile it lives on as (`profile_id`: the survivor "
                    "of merges); a profile none of whose events has reached segment yet has the zero values "
                    "(no order, no revenue, never seen), as a new customer does")


class StageCount(BaseModel):
    stage: str
    segment_id: str = Field(description="use as `segment_id` in a campaign's segment_entered trigger")
    profiles: int


class LifecycleOverview(BaseModel):
    stages: list[StageCount]


class ProfileStage(BaseModel):
    profile_id: str
    stage: str | None = Field(description="None until the profile has been seen")
    since: datetime | None


class RetentionMetrics(BaseModel):
    """See docs/metrics.md for every definition. Rates are percentages, ``null`` without a denominator."""

    start: datetime
    end: datetime
    segment_id: str | None
    users: int = Field(description="the cohort: profiles first seen in [start, end), only current members of "
                                   "`segment_id` when it is given")
    customers: int = Field(description="users with at least one purchase (at any time)")
    repeat_customers: int = Field(description="users with at least two purchases")
    loyal_customers: int = Field(description="users with at least the workspace's `lifecycle.loyal_orders` purchases "
                                             "(default 3)")
    activation_rate: float | None = Field(description="customers / users × 100")
    repeat_customer_rate: float | None = Field(description="repeat / customers × 100")
    loyal_rate: float | None = Field(description="repeat customers who are loyal / repeat × 100")
    churn_rate: float | None = Field(description="users now churned / users × 100")
    average_cltv: float | None = Field(description="mean revenue per customer (all their purchases, added up "
                                                   "as sent: no currency conversion; net of refunds); null "
                                                   "without customers")
    nps: float | None = Field(description="% promoters (9–10) − % detractors (0–6) among the users who answered, "
                                          "rounded to two decimals")
    nps_responses: int = Field(description="users with an NPS answer (0–10): their newest NPS survey event's "
                                           "`score` (a number, or text holding one), else their `nps` trait (a "
                                           "number)")
    csat: float | None = Field(description="% of answers 4–5 (csat trait, 1–5)")
    csat_responses: int = Field(description="users whose `csat` trait is a number from 1 to 5")


class StageSeries(BaseModel):
    days: list[dict[str, Any]] = Field(description="per day: the number of profiles in each stage at its end")


class SearchRequest(BaseModel):
    """Other fields are ignored, as a preview's (a segment's create body searches as it is)."""

    definition: dict[str, Any] = Field(
        description="which profiles: any condition tree (a trait, an attribute, a segment membership, …)",
        examples=[{"type": "attribute", "attribute": "order_count", "op": "gte", "value": 2}])
    limit: JsonInt = Field(50, ge=1, le=1000, description="page size")
    after: str | None = Field(None, description="next_cursor of the previous page")


class FoundProfile(BaseModel):
    profile_id: str
    traits: dict[str, Any] = Field(description="the profile's traits, as segment has them from ingest's events")
    attributes: dict[str, Any] = Field(description="computed attributes: those of `GET /v1/profiles/{id}/attributes` "
                                                   "(but `profile_id`), as it types them")
    stage: str | None = Field(description="lifecycle stage")


class SearchOut(BaseModel):
    count: int = Field(description="profiles matching in all")
    profiles: list[FoundProfile]
    profiles_evaluated: int
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class ListCreate(_Body):
    name: Name = Field(examples=["Beta testers"], description="the list's name, unique in the workspace")


class ListOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    members: int = Field(description="profiles on the list")


class ListPage(BaseModel):
    lists: list[ListOut]
    next_cursor: str | None = None


class ListIds(_Body):
    ids: list[Ref] = Field(min_length=1, max_length=10_000,
                           description="profile ids, userIds, anonymousIds or emails (no control characters)",
                           examples=[["u-42", "ada@example.com"]])


class ListUpload(BaseModel):
    added: int = Field(description="profiles newly on the list")
    removed: int = 0
    unknown: list[str] = Field(description="ids no profile has (nothing was done for them)")


class ProfileSegments(BaseModel):
    profile_id: str
    segment_ids: list[str] = Field(description="segments the profile is a member of now")
    stage: str | None = Field(description="lifecycle stage")
