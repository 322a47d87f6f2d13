"""The public contract of ingest: Segment HTTP Tracking API messages and the feed/profile answers."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from shared.validation import IsoOrUnixDatetime, JsonBool, Ref, StorableModel


def _id_str(v: Any) -> Any:
    """SDKs send numeric ids; Segment treats them as strings."""
    if isinstance(v, bool):
        raise ValueError("must be a string or number")
    if isinstance(v, int | float):
        return str(v)
    return v


# documented as what is accepted: a string, or a number (kept as its decimal text)
IdStr = Annotated[Annotated[str, StringConstraints(max_length=512)] | None, BeforeValidator(_id_str),
                  WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 512}, {"type": "number"},
                                            {"type": "null"}]}, mode="validation")]
RequiredIdStr = Annotated[str, BeforeValidator(_id_str), StringConstraints(min_length=1, max_length=512),
                          WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": 512},
                                                    {"type": "number"}]}, mode="validation")]


def _null_is_empty(v: Any) -> Any:
    return {} if v is None else v


# properties, traits, context, integrations: `null` is taken for absent (Segment's API stores such a message)
JsonObject = Annotated[dict[str, Any], BeforeValidator(_null_is_empty),
                       WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]}, mode="validation")]


class _Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    message_id: IdStr = Field(default=None, alias="messageId",
                              description="Idempotency key: a retried message with the same id is stored once")
    user_id: IdStr = Field(default=None, alias="userId")
    anonymous_id: IdStr = Field(default=None, alias="anonymousId")
    context: JsonObject = Field(default_factory=dict)
    integrations: JsonObject = Field(default_factory=dict)
    timestamp: IsoOrUnixDatetime | None = None
    original_timestamp: IsoOrUnixDatetime | None = Field(default=None, alias="originalTimestamp")
    sent_at: IsoOrUnixDatetime | None = Field(default=None, alias="sentAt")

    @model_validator(mode="after")
    def _needs_identity(self) -> "_Message":
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self


class TrackMessage(_Message):
    """A user performed an action."""

    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=512, examples=["Order Completed"])
    properties: JsonObject = Field(default_factory=dict)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"userId": "u-42", "event": "Order Completed", "properties": {"revenue": 39.9},
                 "messageId": "4f9f2a1e-0d6c-4a5b-9b1e-2b6f0c9d7e11"}
            ]
        }
    )


class IdentifyMessage(_Message):
    """Who the user is: traits such as email, first_name, locale, timezone."""

    type: Literal["identify"] = "identify"
    traits: JsonObject = Field(default_factory=dict)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"userId": "u-42", "traits": {"email": "ada@example.com", "first_name": "Ada",
                                              "locale": "en-GB", "timezone": "Europe/London"}}
            ]
        }
    )


class PageMessage(_Message):
    type: Literal["page"] = "page"
    name: str | None = None
    category: Any = Field(default=None, description="kept as `properties.category` when that is unset")
    properties: JsonObject = Field(default_factory=dict)


class ScreenMessage(_Message):
    type: Literal["screen"] = "screen"
    name: str | None = None
    category: Any = Field(default=None, description="kept as `properties.category` when that is unset")
    properties: JsonObject = Field(default_factory=dict)


class GroupMessage(_Message):
    """The user belongs to an account (B2B); ``traits`` are the account's (industry, employees, plan)."""

    type: Literal["group"] = "group"
    group_id: RequiredIdStr = Field(alias="groupId")
    traits: JsonObject = Field(default_factory=dict)


class AliasMessage(_Message):
    """``previousId`` (an anonymous id or an older user id) is the same person as ``userId``."""

    type: Literal["alias"] = "alias"
    previous_id: RequiredIdStr = Field(alias="previousId")

    @model_validator(mode="after")
    def _needs_user_id(self) -> "AliasMessage":
        if not self.user_id:
            raise ValueError("alias needs userId (the id previousId becomes)")
        return self


BatchItem = Annotated[
    TrackMessage | IdentifyMessage | PageMessage | ScreenMessage | GroupMessage | AliasMessage,
    Field(discriminator="type"),
]


class BatchRequest(BaseModel):
    """``/v1/batch``: up to 500 KB of messages; batch-level ``context`` is merged into each."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")
    # each message is checked on its own: one that is no object is rejected, the others are stored
    batch: list[Annotated[Any, WithJsonSchema({"type": "object"})]] = Field(min_length=1)
    context: JsonObject = Field(default_factory=dict)
    sent_at: IsoOrUnixDatetime | None = Field(default=None, alias="sentAt")


class Rejected(BaseModel):
    index: int = Field(description="position of the message in the batch")
    message_id: str | None = None
    errors: list[dict[str, Any]]


class TrackResponse(BaseModel):
    success: bool = True
    accepted: int = Field(description="messages stored by this request")
    duplicates: int = Field(0, description="messages already stored under the same messageId")
    suppressed: int = Field(0, description="messages dropped because their user is being erased, or was erased "
                                           "with suppression")
    rejected: list[Rejected] = Field(default_factory=list)


class FeedEvent(BaseModel):
    cursor: str
    workspace_id: str
    message_id: str
    type: str
    event: str | None
    profile_id: str
    user_id: str | None
    anonymous_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime
    received_at: datetime


class FeedPage(BaseModel):
    events: list[FeedEvent]
    next_cursor: str = Field(description="pass as `after` to continue; equal to `after` when nothing is new")
    behind: int = Field(default=0, description="committed entries still after `next_cursor` (the reader's lag; exact "
                                               "up to 1000, estimated beyond)")


class GroupOut(BaseModel):
    group_id: str
    traits: dict[str, Any]


class MergeOut(BaseModel):
    profile_id: str = Field(description="the profile that was merged into this one")
    reason: str = Field(description="alias | identify")
    message_id: str | None = Field(description="the message that proved they are one person")
    at: datetime


class ProfileOut(BaseModel):
    id: str
    workspace_id: str
    user_id: str | None
    anonymous_ids: list[str]
    traits: dict[str, Any]
    groups: list[GroupOut] = Field(default_factory=list, description="accounts the user belongs to")
    merged_from: list[MergeOut] = Field(default_factory=list, description="merge history")
    created_at: datetime
    updated_at: datetime


class ProfileSummary(BaseModel):
    id: str
    user_id: str | None
    traits: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ProfileList(BaseModel):
    profiles: list[ProfileSummary]
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class ProfileEvent(BaseModel):
    seq: int
    message_id: str
    type: str
    event: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime
    received_at: datetime


class ProfileEventList(BaseModel):
    events: list[ProfileEvent]
    next_cursor: str | None = Field(None, description="pass as `after` for older events")


class ErasureCreate(StorableModel):
    user: str = Field(min_length=1, max_length=512, description="userId, anonymousId, email or profile id",
                      examples=["u-42"])
    suppress: JsonBool = Field(False, description="keep dropping events for this user's ids after the erasure "
                                                  "completes (hashes are kept); until then they are dropped anyway")


class ErasureServiceStatus(BaseModel):
    status: str = Field(description="pending until the service has erased, then done")
    removed: dict[str, Any] | None = Field(None, description="what the service removed (when done)")
    attempts: int = Field(0, description="calls made to the service for this request so far")
    error: str | None = Field(None, description="what went wrong on the last call, while pending")
    last_attempt_at: datetime | None = Field(None, description="when the last call ended")
    next_attempt_at: datetime | None = Field(None, description="while pending after a failure: when the service is "
                                                               "asked again (the wait doubles after each failure, up "
                                                               "to an hour)")


class PrivacyRequestOut(BaseModel):
    id: str
    kind: str
    subject: str
    profile_ids: list[str]
    suppress: bool
    status: str = Field(description="pending until every service has erased, then completed")
    services: dict[str, ErasureServiceStatus] = Field(description="per service (segment, campaign, delivery)")
    removed: dict[str, int] = Field(description="rows removed in ingest, per table")
    created_at: datetime
    completed_at: datetime | None


class ResolveRequest(BaseModel):
    refs: list[Ref] = Field(min_length=1, max_length=10_000, description="profile ids, userIds, anonymousIds or emails")


class ResolveOut(BaseModel):
    profiles: dict[str, str] = Field(description="reference -> live profile id; unknown references are left out")


class LookupRequest(BaseModel):
    ids: list[uuid.UUID] = Field(min_length=1, max_length=1000, description="profile ids")


class LookupOut(BaseModel):
    profiles: dict[str, dict[str, Any]] = Field(
        description="asked id -> {id, user_id, anonymous_id, traits} of the live profile (merges followed); "
                    "unknown ids left out")
