"""The public contract of ingest: Segment HTTP Tracking API messages and the feed/profile answers."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from shared.jsonutil import dumps, obj
from shared.validation import IsoOrUnixDatetime, JsonBool, Ref, StorableModel


def _id_str(v: Any) -> Any:
    """SDKs send numeric ids; Segment treats them as strings. An empty or blank id is no id, as the SDKs test ids
    (by truthiness): kept, ``""`` became the userId of the first such message's profile, and the next one's a
    unique-key error that failed its whole batch."""
    if isinstance(v, bool):
        raise ValueError("must be a string or number")
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str) and not v.strip():
        return None
    return v


def _required_id_str(v: Any) -> Any:
    v = _id_str(v)
    if v is None:
        raise ValueError("must not be empty or blank")
    return v


# documented as what is accepted: a string, or a number (kept as its decimal text); an empty or blank one is absent
IdStr = Annotated[Annotated[str, StringConstraints(max_length=512)] | None, BeforeValidator(_id_str),
                  WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 512}, {"type": "number"},
                                            {"type": "null"}]}, mode="validation")]
RequiredIdStr = Annotated[str, BeforeValidator(_required_id_str), StringConstraints(max_length=512),
                          WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": 512},
                                                    {"type": "number"}]}, mode="validation")]


def _not_blank(v: Any) -> Any:
    """A track's name is what campaigns and segments match on: one of only spaces would be a name nobody can
    target, so it is refused (the batch's other messages are still stored). Nor is such a text anyone's id (a blank
    id is no id): an erasure of "   " was accepted, for nobody."""
    if isinstance(v, str) and not v.strip():
        raise ValueError("must not be empty or blank")
    return v


NonBlankText = Annotated[str, BeforeValidator(_not_blank), StringConstraints(min_length=1, max_length=512),
                         WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 512, "pattern": "\\S"},
                                        mode="validation")]
EventName = NonBlankText
MAX_EMAIL_TRAIT = 512  # characters: the profiles' email indexes hold at most ~2,700 bytes a key (an address: 254)


def _null_is_empty(v: Any) -> Any:
    return {} if v is None else v


# properties, traits, context, integrations: `null` is taken for absent (Segment's API stores such a message)
JsonObject = Annotated[dict[str, Any], BeforeValidator(_null_is_empty),
                       WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]}, mode="validation")]


class _Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    message_id: IdStr = Field(default=None, alias="messageId",
                              description="Idempotency key: a retried message with the same id is stored once (without "
                                          "one, or with an empty one, it is given a UUID)")
    user_id: IdStr = Field(default=None, alias="userId",
                           description="your app's id for the user (a number is kept as its text); userId or "
                                       "anonymousId is required (an empty or blank one counts as absent)")
    anonymous_id: IdStr = Field(default=None, alias="anonymousId",
                                description="the SDK's id for the device or browser (there before the user is "
                                            "known); an empty or blank one counts as absent")
    context: JsonObject = Field(default_factory=dict,
                                description="stored with the event as sent (ip, locale, timezone, userAgent, "
                                            "library, campaign …); its locale and timezone become the profile's when "
                                            "it never had them")
    integrations: JsonObject = Field(default_factory=dict,
                                     description="Segment's per-destination switches: accepted, not used or stored")
    timestamp: IsoOrUnixDatetime | None = Field(
        default=None, description="when it happened, by the client's clock (ISO 8601, or Unix time in s or ms): "
                                  "corrected for its clock skew with `sentAt`, or kept as sent when "
                                  "`originalTimestamp` is given too; with neither, the time ingest received it")
    original_timestamp: IsoOrUnixDatetime | None = Field(
        default=None, alias="originalTimestamp",
        description="when it happened, by the client's clock; with `sentAt` the stored time is "
                    "received time − (`sentAt` − `originalTimestamp`)")
    sent_at: IsoOrUnixDatetime | None = Field(default=None, alias="sentAt",
                                              description="when the client sent it, by the client's clock: "
                                                          "measures its clock skew")

    @model_validator(mode="after")
    def _needs_identity(self) -> "_Message":
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self


class TrackMessage(_Message):
    """A user performed an action."""

    type: Literal["track"] = "track"
    event: EventName = Field(examples=["Order Completed"],
                             description="the action's name, e.g. `Order Completed` (not empty or blank)")
    properties: JsonObject = Field(default_factory=dict, description="the action's details, stored as sent")

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
    traits: JsonObject = Field(default_factory=dict,
                               description="traits to set on the profile (with any in `context.traits`): newest "
                                           "value per trait wins, `null` removes the trait")

    @model_validator(mode="after")
    def _indexable_email(self) -> "IdentifyMessage":
        """The ``email`` trait the profile gets (``traits`` over ``context.traits``) is indexed for lookups by
        address: one of 8,000 characters failed its whole batch with a 500 the SDK retried, then dropped."""
        traits = self.traits if "email" in self.traits else obj(self.context.get("traits"))
        email = traits.get("email")
        if email is not None and len(email if isinstance(email, str) else dumps(email)) > MAX_EMAIL_TRAIT:
            where = "traits" if traits is self.traits else "context.traits"
            raise ValueError(f"{where}.email is over {MAX_EMAIL_TRAIT} characters (an email address has at most 254)")
        return self

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
    name: str | None = Field(None, description="the page's name; stored as the event's name")
    category: Any = Field(default=None, description="kept as `properties.category` when that is unset")
    properties: JsonObject = Field(default_factory=dict, description="the view's details (url, path, referrer …), "
                                                                     "stored as sent")


class ScreenMessage(_Message):
    type: Literal["screen"] = "screen"
    name: str | None = Field(None, description="the screen's name; stored as the event's name")
    category: Any = Field(default=None, description="kept as `properties.category` when that is unset")
    properties: JsonObject = Field(default_factory=dict, description="the view's details (url, path, referrer …), "
                                                                     "stored as sent")


class GroupMessage(_Message):
    """The user belongs to an account (B2B); ``traits`` are the account's (industry, employees, plan)."""

    type: Literal["group"] = "group"
    group_id: RequiredIdStr = Field(alias="groupId", description="your app's id for the account")
    traits: JsonObject = Field(default_factory=dict, description="the account's traits (industry, employees, plan …)")


class AliasMessage(_Message):
    """``previousId`` (an anonymous id or an older user id) is the same person as ``userId``."""

    type: Literal["alias"] = "alias"
    previous_id: RequiredIdStr = Field(alias="previousId",
                                       description="the earlier id (an anonymousId or an older userId); its profile "
                                                   "is merged into the userId's")

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
    batch: list[Annotated[Any, WithJsonSchema({"type": "object"})]] = Field(
        min_length=1, description="the messages, each with its `type` (track, identify, page, screen, group, alias) "
                                  "and the fields of that call; each is checked and stored on its own")
    context: JsonObject = Field(default_factory=dict,
                                description="context shared by every message; a message's own keys win")
    sent_at: IsoOrUnixDatetime | None = Field(default=None, alias="sentAt",
                                              description="when the client sent the batch, by its clock: the "
                                                          "`sentAt` of messages that give none")


# the stored event, as the feed and a profile's event list show it
_MESSAGE_ID = ("the messageId it was stored under (unique in the workspace): the caller's, a generated UUID when it "
               "gave none, or `merge:FROM:INTO` for a merge")
_EVENT_TYPE = ("track, identify, page, screen, group or alias, as sent; or merge: ingest found two profiles to be one "
               "person and merged `properties.merged_profile_id` into `profile_id`")
_EVENT_NAME = "a track's event name, or a page's or screen's name; null for the other types"
_EVENT_PROPERTIES = ("track, page, screen: the properties as sent (a page's or screen's top-level `category` added "
                     "when they had none); group: `groupId`; alias: `previousId`; merge: `merged_profile_id` and "
                     "`trait_times`")
_EVENT_TRAITS = ("identify: the traits sent (with `context.traits`); group: the account's traits; merge: the "
                 "profile's traits after the merge; empty for the other types")
_EVENT_CONTEXT = ("the message's context as sent, over its batch's context (ip, locale, timezone, userAgent, library, "
                  "campaign …); empty for a merge")
_PROFILE_TRAITS = ("the profile's traits: the newest value of each from identify calls (`null` removed it); locale "
                   "and timezone from a message's context when the profile never had them (a merge keeps the "
                   "surviving profile's: a login on a device does not take on the device's)")


class Rejected(BaseModel):
    index: int = Field(description="position of the message in the batch")
    message_id: str | None = Field(None, description="the message's messageId, when it gave one as text; else null")
    errors: list[dict[str, Any]] = Field(description="why it was refused: each with `msg` and `type`, and `loc` (the "
                                                     "field's path) for a field that does not match the schema")


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
    message_id: str = Field(description=_MESSAGE_ID)
    type: str = Field(description=_EVENT_TYPE)
    event: str | None = Field(description=_EVENT_NAME)
    profile_id: str = Field(description="the profile the event belongs to (UUID); a merge moves the events of the "
                                        "merged profile to the one it was merged into")
    user_id: str | None = Field(description="the userId the message carried; null if it had none")
    anonymous_id: str | None = Field(description="the anonymousId the message carried; null if it had none")
    properties: dict[str, Any] = Field(description=_EVENT_PROPERTIES)
    traits: dict[str, Any] = Field(description=_EVENT_TRAITS)
    context: dict[str, Any] = Field(description=_EVENT_CONTEXT)
    timestamp: datetime
    received_at: datetime


class FeedPage(BaseModel):
    events: list[FeedEvent] = Field(description="events committed after `after`, in feed order (at most `limit`)")
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
    anonymous_ids: list[str] = Field(description="every anonymousId tied to the profile, oldest first")
    traits: dict[str, Any] = Field(description=_PROFILE_TRAITS)
    groups: list[GroupOut] = Field(default_factory=list, description="accounts the user belongs to")
    merged_from: list[MergeOut] = Field(default_factory=list, description="merge history")
    created_at: datetime
    updated_at: datetime


class ProfileSummary(BaseModel):
    id: str
    user_id: str | None
    traits: dict[str, Any] = Field(description=_PROFILE_TRAITS)
    created_at: datetime
    updated_at: datetime


class ProfileList(BaseModel):
    profiles: list[ProfileSummary]
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class ProfileEvent(BaseModel):
    seq: int = Field(description="position in the event log, increasing (the list's order); the next page is asked "
                                 "for with the list's `next_cursor`, not with this number")
    message_id: str = Field(description=_MESSAGE_ID)
    type: str = Field(description=_EVENT_TYPE)
    event: str | None = Field(description=_EVENT_NAME)
    properties: dict[str, Any] = Field(description=_EVENT_PROPERTIES)
    traits: dict[str, Any] = Field(description=_EVENT_TRAITS)
    context: dict[str, Any] = Field(description=_EVENT_CONTEXT)
    timestamp: datetime
    received_at: datetime


class ProfileEventList(BaseModel):
    events: list[ProfileEvent] = Field(description="the profile's events, newest first (by `seq`)")
    next_cursor: str | None = Field(None, description="pass as `after` for older events")


class ErasureCreate(StorableModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt `suppress` erased without suppressing, with a 202

    user: NonBlankText = Field(description="userId, anonymousId, email or profile id", examples=["u-42"])
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
    subject: str = Field(description="the `user` the request named, while it is pending; once completed, no longer "
                                     "the person's id but `sha256:` and the hex SHA-256 of `{id}:{user}` (the "
                                     "request's id, a colon, the reference exactly as sent): enough to confirm a "
                                     "request was about someone whose id one already knows, not to recover it",
                         examples=["u-42", "sha256:3f0a…"])
    profile_ids: list[str] = Field(description="the profiles erased (UUIDs): every profile the reference names (by "
                                               "email: each holding that address, in any case) and those merged "
                                               "into them; empty when ingest held none (the other services are "
                                               "asked all the same, by the reference), and once the request is "
                                               "completed (the record no longer names whom it was about)")
    suppress: bool
    status: str = Field(description="pending until every service has erased, then completed")
    services: dict[str, ErasureServiceStatus] = Field(description="per service (segment, campaign, delivery)")
    removed: dict[str, int] = Field(description="rows removed in ingest, per table")
    created_at: datetime
    completed_at: datetime | None


class ExportOut(BaseModel):
    """Everything held about a user, across the services."""

    profile: ProfileOut | None = Field(description="the profile the reference names (as `GET /v1/profiles/{ref}` "
                                                   "finds it); null when no profile has it but another service holds "
                                                   "records under it (e.g. receipts sent to that address)")
    other_profiles: list[ProfileOut] = Field(
        default_factory=list,
        description="the other profiles the reference names: by email, every other profile holding that address "
                    "in any case (profiles are not merged by email: a known user and an anonymous visitor who gave "
                    "the same address in a form are two); usually empty")
    identities: list[dict[str, Any]] = Field(description="the userIds and anonymousIds of all those profiles "
                                                         "({kind, value, profile_id, created_at})")
    events: list[dict[str, Any]] = Field(description="the events of all those profiles (and of profiles merged into "
                                                     "them), oldest first, each with its `profile_id`")
    segment: dict[str, Any] = Field(description="what segment holds about them (or {error})")
    campaign: dict[str, Any] = Field(description="what campaign holds about them (or {error})")
    delivery: dict[str, Any] = Field(description="what delivery holds about them (or {error})")


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refs: list[Ref] = Field(min_length=1, max_length=10_000, description="profile ids, userIds, anonymousIds or emails",
                            examples=[["u-42", "ada@example.com", "b5f1c2d0-device"]])


class ResolveOut(BaseModel):
    profiles: dict[str, str] = Field(description="reference -> live profile id; unknown references are left out")


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[uuid.UUID] = Field(min_length=1, max_length=1000, description="profile ids",
                                 examples=[["6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10"]])


class LookupOut(BaseModel):
    profiles: dict[str, dict[str, Any]] = Field(
        description="asked id -> {id, user_id, anonymous_id, traits} of the live profile (merges followed); "
                    "unknown ids left out")
