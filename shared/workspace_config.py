"""The settings a workspace may carry (``core.workspaces.settings``), typed.

Each service reads the keys it needs and falls back to defaults on anything it does not understand, so a
malformed value written straight into the table (quiet hours of "9pm", a cap of "two") silently switches a
rule off or makes every send step that reads it fail. ``tenure workspace configure --set`` validates the
whole document against this model before writing, and refuses with the field named. The readers and their
defaults: campaign (``timezone``, ``quiet_hours``, ``frequency_caps``, ``topics``), segment (``lifecycle``,
``purchase_events``, ``revenue_property``, ``refund_events``, ``nps_event``, ``lead_score``), delivery (``topics``,
``sms_help_text``), ingest (``retention_days``).

Leaving a key out means its default, at the top level and inside a section. At the top level ``null`` means
the same (``--set KEY=null`` removes the key); inside a section (``lifecycle``, ``quiet_hours``,
``frequency_caps``, ``lead_score``, ``topics``) ``null`` is refused with the key named, as is a value of the
wrong JSON type (``"14"`` for 14, ``true`` for 1): the readers compare numbers, and a string or null there
made every stage evaluation or send that read it fail. Text PostgreSQL cannot store (a NUL, a lone
surrogate) is refused too. The readers still fall back to the defaults, key by key, on a value stored
before these checks (or written straight into the table).
"""

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticUndefined

from shared.validation import unstorable

Channel = Literal["email", "sms", "push", "webhook"]
def _clock_time(v: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
        raise ValueError(f"{v!r} is not a time of day as HH:MM (24 h), e.g. 21:00")
    return v


ClockTime = Annotated[str, AfterValidator(_clock_time), Field(examples=["21:00"])]
EventName = Annotated[str, Field(min_length=1, max_length=200)]


class _Model(BaseModel):
    # strict: JSON types as written ("14" is not 14): the document is stored as given, not as validated
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, v: Any, info: ValidationInfo) -> Any:
        """null only where the default is null (the top-level keys): elsewhere leave the key out."""
        default = cls.model_fields[info.field_name or ""].default
        if v is None and default is not None:
            if default is PydanticUndefined:
                raise ValueError("is required and cannot be null")
            raise ValueError(f"cannot be null: leave the key out to use the default ({default!r})")
        return v


class QuietHours(_Model):
    start: ClockTime
    end: ClockTime
    action: Literal["defer", "skip"] = "defer"


class FrequencyCap(_Model):
    channel: Channel
    max: int = Field(ge=1)
    period_days: float = Field(7, gt=0, le=365)
    action: Literal["skip", "defer"] = "skip"


# Lifecycle settings of a workspace that sets none (days without activity; days a comeback stays
# "reactivated"; ...): the segment service's stages (services/segment/lifecycle.py) and the checks below read these.
ACTIVATION_EVENTS = ("Order Completed",)
ADVOCACY_EVENTS = ("Referral Converted", "Review Submitted")
LOYAL_ORDERS = 3
AT_RISK_DAYS = 30
CHURNED_DAYS = 90
REACTIVATED_DAYS = 30
PROMOTER_NPS = 9
MAX_LOYAL_ORDERS = 1_000_000  # compared with order counts in SQL (a 32-bit integer there)


class Lifecycle(_Model):
    activation_events: list[EventName] = Field(list(ACTIVATION_EVENTS))
    advocacy_events: list[EventName] = Field(list(ADVOCACY_EVENTS))
    loyal_orders: int = Field(LOYAL_ORDERS, ge=1, le=MAX_LOYAL_ORDERS)
    at_risk_days: int = Field(AT_RISK_DAYS, ge=1)
    churned_days: int = Field(CHURNED_DAYS, ge=1)
    reactivated_days: int = Field(REACTIVATED_DAYS, ge=1)
    promoter_nps: int = Field(PROMOTER_NPS, ge=0, le=10)

    @model_validator(mode="after")
    def _churn_after_risk(self) -> "Lifecycle":
        if self.churned_days <= self.at_risk_days:
            raise ValueError(f"churned_days ({self.churned_days}) must be more than at_risk_days ({self.at_risk_days})")
        return self


class LeadTraitRule(_Model):
    trait: str = Field(min_length=1)
    op: Literal["equals", "not_equals", "exists", "not_exists", "contains", "starts_with", "in", "not_in",
                "gt", "gte", "lt", "lte"] = "equals"
    value: Any = None
    points: float

    @model_validator(mode="after")
    def _list_for_in(self) -> "LeadTraitRule":
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"{self.op!r} needs a list value")
        if self.op == "starts_with" and not isinstance(self.value, str):
            raise ValueError("'starts_with' needs a text value")
        return self


class LeadScore(_Model):
    events: dict[EventName, float] = Field(default_factory=dict, description="points per occurrence")
    traits: list[LeadTraitRule] = Field(default_factory=list)


class Topic(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    label: dict[str, str] = Field(min_length=1, description="per language code, e.g. {\"en\": \"Offers\"}")


# a workspace's topics when it sets none (delivery's preference page, and what messages and campaigns may name)
DEFAULT_TOPICS = [
    {"id": "product_news", "label": {"en": "Product news", "fr": "Nouveautés produit", "de": "Produktneuheiten"}},
    {"id": "offers", "label": {"en": "Offers and discounts", "fr": "Offres et réductions",
                               "de": "Angebote und Rabatte"}},
]


def topics_of(settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The workspace's subscription topics (its ``topics`` setting), else :data:`DEFAULT_TOPICS`."""
    topics = (settings or {}).get("topics")
    return topics if isinstance(topics, list) and topics else DEFAULT_TOPICS


def unknown_topic(settings: dict[str, Any] | None, topic: str) -> str | None:
    """Why ``topic`` is none of the workspace's topics (None: it is one). The preference page offers only those,
    so a message on another (a typo: ``offerz``) would reach people who opted out of offers, and no one could
    opt out of it."""
    ids = [t["id"] for t in topics_of(settings) if isinstance(t, dict) and isinstance(t.get("id"), str)]
    if topic in ids:
        return None
    return (f"{topic[:100]!r} is not one of the workspace's topics ({', '.join(ids) or 'none'}): a topic is one "
            "its recipients can opt out of on the preference page (workspace setting `topics`)")


MAX_RETENTION_DAYS = 36_500  # 100 years; far larger values failed the retention SQL (a 32-bit cast, year 0)


class WorkspaceConfig(_Model):
    timezone: str | None = Field(None, examples=["Europe/Paris"], description="IANA zone; profiles' own wins")
    retention_days: int | None = Field(None, ge=1, le=MAX_RETENTION_DAYS,
                                       description="events older than this are dropped; sent messages older "
                                                   "than this lose their subject, HTML and text, and ended journeys "
                                                   "the trigger's properties")
    quiet_hours: dict[Channel, QuietHours] | None = None
    frequency_caps: list[FrequencyCap] | None = None
    lifecycle: Lifecycle | None = None
    purchase_events: list[EventName] | None = Field(None, min_length=1)
    revenue_property: str | None = Field(None, min_length=1)
    refund_events: list[EventName] | None = None
    nps_event: EventName | None = None
    lead_score: LeadScore | None = None
    topics: list[Topic] | None = Field(None, min_length=1)
    sms_help_text: str | None = Field(None, min_length=1, max_length=320)
    double_opt_in: bool | None = None
    sms_opt_in_required: bool | None = None
    postal_address: str | None = Field(None, min_length=1, max_length=300)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        if (problem := unstorable(v)) is not None:
            raise ValueError(problem)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Paris)") from None
        return v


KEYS = tuple(WorkspaceConfig.model_fields)


def checked(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` if every key this model knows holds a valid value (others are left alone: an older
    or newer release may use them); raises pydantic.ValidationError naming the field otherwise."""
    WorkspaceConfig.model_validate({k: v for k, v in settings.items() if k in KEYS})
    return settings
