"""The settings a workspace may carry (``core.workspaces.settings``), typed.

Each service reads the keys it needs and falls back to defaults on anything it does not understand, so a
malformed value written straight into the table (quiet hours of "9pm", a cap of "two") silently switches a
rule off or makes every send step that reads it fail. ``tenure workspace configure --set`` validates the
whole document against this model before writing, and refuses with the field named. The readers and their
defaults: campaign (``timezone``, ``quiet_hours``, ``frequency_caps``), segment (``lifecycle``,
``purchase_events``, ``revenue_property``, ``nps_event``, ``lead_score``), delivery (``topics``,
``sms_help_text``), ingest (``retention_days``).
"""

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

Channel = Literal["email", "sms", "push", "webhook"]
def _clock_time(v: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
        raise ValueError(f"{v!r} is not a time of day as HH:MM (24 h), e.g. 21:00")
    return v


ClockTime = Annotated[str, AfterValidator(_clock_time), Field(examples=["21:00"])]
EventName = Annotated[str, Field(min_length=1, max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuietHours(_Model):
    start: ClockTime
    end: ClockTime
    action: Literal["defer", "skip"] = "defer"


class FrequencyCap(_Model):
    channel: Channel
    max: int = Field(ge=1)
    period_days: float = Field(7, gt=0, le=365)
    action: Literal["skip", "defer"] = "skip"


# Lifecycle thresholds of a workspace that sets none (days without activity; days a comeback stays
# "reactivated"): the segment service's stages (services/segment/lifecycle.py) and the check below read these.
AT_RISK_DAYS = 30
CHURNED_DAYS = 90
REACTIVATED_DAYS = 30


class Lifecycle(_Model):
    activation_events: list[EventName] | None = None
    advocacy_events: list[EventName] | None = None
    loyal_orders: int | None = Field(None, ge=1)
    at_risk_days: int | None = Field(None, ge=1)
    churned_days: int | None = Field(None, ge=1)
    reactivated_days: int | None = Field(None, ge=1)
    promoter_nps: int | None = Field(None, ge=0, le=10)

    @model_validator(mode="after")
    def _churn_after_risk(self) -> "Lifecycle":
        at_risk = AT_RISK_DAYS if self.at_risk_days is None else self.at_risk_days
        churned = CHURNED_DAYS if self.churned_days is None else self.churned_days
        if churned <= at_risk:
            raise ValueError(f"churned_days ({churned}) must be more than at_risk_days ({at_risk})")
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
        return self


class LeadScore(_Model):
    events: dict[EventName, float] = Field(default_factory=dict, description="points per occurrence")
    traits: list[LeadTraitRule] = Field(default_factory=list)


class Topic(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    label: dict[str, str] = Field(min_length=1, description="per language code, e.g. {\"en\": \"Offers\"}")


class WorkspaceConfig(_Model):
    timezone: str | None = Field(None, examples=["Europe/Paris"], description="IANA zone; profiles' own wins")
    retention_days: int | None = Field(None, ge=1, description="events older than this are dropped")
    quiet_hours: dict[Channel, QuietHours] | None = None
    frequency_caps: list[FrequencyCap] | None = None
    lifecycle: Lifecycle | None = None
    purchase_events: list[EventName] | None = Field(None, min_length=1)
    revenue_property: str | None = Field(None, min_length=1)
    nps_event: EventName | None = None
    lead_score: LeadScore | None = None
    topics: list[Topic] | None = Field(None, min_length=1)
    sms_help_text: str | None = Field(None, min_length=1, max_length=320)

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
