"""The public contract of the campaign service."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class TemplateCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["welcome"])
    channel: Literal["email"] = "email"
    subject: str = Field(min_length=1, max_length=998, examples=["Welcome, {{ profile.first_name }}!"])
    html: str | None = Field(None, examples=["<p>Hi {{ profile.first_name | default: 'there' }}</p>"])
    text: str | None = Field(None, examples=["Hi {{ profile.first_name | default: 'there' }}"])


class TemplateOut(TemplateCreate):
    id: str
    created_at: datetime
    updated_at: datetime


class EventTrigger(BaseModel):
    type: Literal["event"] = "event"
    event: str = Field(min_length=1, examples=["Signed Up"])


class SegmentEnteredTrigger(BaseModel):
    type: Literal["segment_entered"] = "segment_entered"
    segment_id: str = Field(description="id of a segment in the segment service")


Trigger = Annotated[EventTrigger | SegmentEnteredTrigger, Field(discriminator="type")]


class CampaignCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Welcome email"])
    trigger: Trigger
    template_id: str
    message_type: Literal["marketing", "transactional"] = "marketing"
    status: Literal["active", "paused"] = "active"


class CampaignOut(BaseModel):
    id: str
    name: str
    status: str
    version: int
    trigger: dict[str, object]
    template_id: str
    message_type: str
    created_at: datetime
    updated_at: datetime


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]
    next_cursor: str | None = None


class SendOut(BaseModel):
    id: str
    campaign_id: str
    campaign_version: int
    profile_id: str
    occurrence: str
    status: str = Field(description="pending | dispatched | skipped | failed")
    reason: str | None
    delivery_message_id: str | None
    created_at: datetime


class SendList(BaseModel):
    sends: list[SendOut]
    next_cursor: str | None = None
