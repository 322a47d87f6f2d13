"""The public contract of the campaign service."""

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.campaign import journey_def as jd
from shared.validation import (
    MESSAGE_BODY_MAX,
    MESSAGE_SUBJECT_MAX,
    SMS_TEXT_MAX,
    FieldError,
    Ref,
    StorableModel,
)


class _Body(StorableModel):
    """A request body: a field this API does not know is refused (422 naming it), not dropped — a misspelt
    ``goals`` or ``locale`` would otherwise be saved as if it had not been sent."""

    model_config = ConfigDict(extra="forbid")


# a locale variant's field: omitted (or null), the less specific locale's (fr for fr-CA), else the template's own
_OR_DEFAULT = "; omitted: the less specific locale's, else the template's"


class LocaleVariant(_Body):
    subject: str | None = Field(None, max_length=MESSAGE_SUBJECT_MAX,
                                description="the subject (a push's title)" + _OR_DEFAULT
                                + " (also in a variant that gives the body: give both to translate both)")
    preheader: str | None = Field(None, max_length=500, description="the email preheader" + _OR_DEFAULT
                                  + " (also in a variant that gives the body)")
    html: str | None = Field(None, max_length=MESSAGE_BODY_MAX,
                             description="the HTML body (Liquid); the body (HTML and text) is taken whole "
                                         "from the first locale of the chain that has either part, else the "
                                         "template's (its text part made from this HTML when it has none)")
    text: str | None = Field(None, max_length=MESSAGE_BODY_MAX,
                             description=f"the text body (Liquid; an SMS's text of at most {SMS_TEXT_MAX:,} "
                                         "characters, a push's body); with `html`, "
                                         "taken whole from the first locale of the chain that has either, else "
                                         "the template's (text alone: a text-only email)")
    deep_link: str | None = Field(None, max_length=2000, description="push: the deep link" + _OR_DEFAULT)
    image: str | None = Field(None, max_length=2000, description="push: the image URL" + _OR_DEFAULT)


class TemplateCreate(_Body):
    """Email (subject, preheader, HTML, text), SMS (text) or push (title = subject, body = text, deep link,
    image) content in Liquid. Templates read `profile`, `traits`, the trigger's `event`, the profile's computed
    `attributes` (segment's: `order_count`, `total_revenue`, …) and the programs' `referral` and `loyalty`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "welcome", "subject": "Welcome, {{ profile.first_name | default: 'there' }}!",
        "preheader": "Three things to try first", "html": "<p>Hi {{ profile.first_name | default: 'there' }}</p>",
        "text": "Hi {{ profile.first_name | default: 'there' }}",
        "locales": {"fr": {"subject": "Bienvenue, {{ profile.first_name | default: 'à vous' }} !"}}}]})

    name: str = Field(min_length=1, max_length=200, examples=["welcome"],
                      description="the template's name, unique in the workspace")
    channel: Literal["email", "sms", "push"] = Field(
        "email", description="sms: to the profile's `phone` trait; push: to its registered devices (subject = title, "
                             "text = body)")
    subject: str = Field("", max_length=MESSAGE_SUBJECT_MAX, examples=["Welcome, {{ profile.first_name }}!"],
                         description="required for email")
    preheader: str | None = Field(None, max_length=500, examples=["Three things to try first"],
                                  description="the preview line mail clients show after the subject")
    html: str | None = Field(None, max_length=MESSAGE_BODY_MAX,
                             examples=["<p>Hi {{ profile.first_name | default: 'there' }}</p>"],
                             description="the HTML body (delivery takes at most 1,000,000 characters)")
    text: str | None = Field(None, max_length=MESSAGE_BODY_MAX,
                             examples=["Hi {{ profile.first_name | default: 'there' }}"],
                             description=f"the text body; an SMS's text is at most {SMS_TEXT_MAX:,} characters")
    deep_link: str | None = Field(None, max_length=2000, examples=["acme://orders/{{ event.properties.order_id }}"],
                                  description="push: where tapping the notification leads (app link or https URL)")
    image: str | None = Field(None, max_length=2000,
                              examples=["https://cdn.example.com/push/{{ event.properties.sku }}.jpg"],
                              description="push: an https image shown with the notification")
    locales: dict[str, LocaleVariant] = Field(
        default_factory=dict, description="variants by locale; a profile's locale falls back fr-CA → fr → default",
        examples=[{"fr": {"subject": "Bienvenue, {{ profile.first_name }} !"}}])

    @model_validator(mode="after")
    def _fits_channel(self) -> "TemplateCreate":
        # a body part of blanks is no part (an email's text is then made from its HTML; SMS needs real text)
        self.html, self.text = body_part(self.html), body_part(self.text)
        for variant in self.locales.values():
            variant.html, variant.text = body_part(variant.html), body_part(variant.text)
        if self.channel == "email" and not self.subject.strip():
            raise FieldError("subject", "an email template needs a subject")
        if self.channel == "email" and self.html is None and self.text is None:
            raise FieldError("html", "an email template needs a body: html, text or both")
        if self.channel == "sms" and (wrong := _first_wrong(text=not self.text, html=self.html, subject=self.subject,
                                                            preheader=self.preheader)):
            raise FieldError(wrong, "an SMS template has text only")
        if self.channel == "sms":  # (delivery's limit: a longer SMS would fail every send)
            for at, sms in (("text",), self.text), *((("locales", c, "text"), v.text) for c, v in self.locales.items()):
                if sms is not None and len(sms) > SMS_TEXT_MAX:
                    raise FieldError(at, f"an SMS is at most {SMS_TEXT_MAX:,} characters (this text has {len(sms):,})")
        if self.channel == "push" and (wrong := _first_wrong(subject=not self.subject.strip(), text=not self.text,
                                                             html=self.html, preheader=self.preheader)):
            raise FieldError(wrong, "a push template has a title (subject) and a body (text)")
        if self.channel != "push" and (self.deep_link or self.image):
            raise FieldError("deep_link" if self.deep_link else "image", "deep_link and image are for push templates")
        images = (("image",), self.image), *((("locales", c, "image"), v.image) for c, v in self.locales.items())
        for at, image in images:
            if image is not None and not _may_be_https(image):
                raise FieldError(at, "image is an https URL (push services fetch the image over https only)")
        for code, variant in self.locales.items():  # a variant translates the channel's own fields only
            if wrong := next((f for f in _NOT_ON[self.channel] if getattr(variant, f) is not None), None):
                raise FieldError(("locales", code, wrong),
                                 f"{wrong} is not a field of {self.channel} templates (in locale {code})")
        return self


_NOT_ON = {"email": ("deep_link", "image"), "sms": ("subject", "preheader", "html", "deep_link", "image"),
           "push": ("preheader", "html")}


def _may_be_https(source: str) -> bool:
    """Whether a field's Liquid may render an https URL: what it writes out before its first tag or output starts
    so, or could (``{{ image_url }}``, ``https://cdn/{{ sku }}.jpg`` yes; ``http://…`` no)."""
    literal = re.split(r"\{[{%]", source, maxsplit=1)[0].lstrip().lower()
    return literal.startswith("https://") or "https://".startswith(literal)


def body_part(value: str | None) -> str | None:
    """A template's html or text as stored: a part of blanks is no part."""
    return value if value is not None and value.strip() else None


def _first_wrong(**checks: object) -> str | None:
    """The first field whose check is truthy (missing, or present where the channel has none)."""
    return next((name for name, wrong in checks.items() if wrong), None)


class TemplateOut(TemplateCreate):
    model_config = ConfigDict(extra="ignore", json_schema_extra=None)  # (TemplateCreate's example is a request)
    id: str
    created_at: datetime
    updated_at: datetime


class TemplateList(BaseModel):
    templates: list[TemplateOut]
    next_cursor: str | None = None


class CampaignCreate(_Body):
    """A journey: ``trigger``, ``steps`` (or just ``template_id`` for "every time TRIGGER, send TEMPLATE"),
    entry rules, goal and exit events. See docs/campaigns.md."""

    name: str = Field(min_length=1, max_length=200, examples=["Welcome series"])
    trigger: jd.Trigger = Field(examples=[{"type": "event", "event": "Signed Up"}])
    steps: list[jd.Step] | None = Field(None, max_length=jd.MAX_STEPS, examples=[[
        {"id": "welcome", "type": "send", "template_id": "6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10", "next": "wait"},
        {"id": "wait", "type": "delay", "seconds": 172800, "next": "tips"},
        {"id": "tips", "type": "send", "template_id": "0b7e2d4c-8f3a-4b6e-a1c5-9d2f6e8a3b71"}]])
    template_id: str | None = Field(None, description="shorthand for one send step")
    entry: jd.Entry | None = None
    goal: jd.Goal | None = None
    exit_on: list[str] | None = None
    exit_on_leaving: list[jd.SegmentRef] | None = Field(
        None, description="segments or lifecycle stages: leaving any of them ends the journey at once")
    exit_on_entering: list[jd.SegmentRef] | None = Field(
        None, description="segments or lifecycle stages: entering any of them ends the journey at once (leave "
                          "when a condition becomes true: a trial nurture ends when the user becomes a customer)")
    message_type: Literal["marketing", "transactional"] = "marketing"
    topic: str | None = Field(None, max_length=100, description="subscription topic (see delivery's preferences): one "
                                                                "of the workspace's `topics` (else a 422)")
    status: Literal["active", "paused"] = "active"


class CampaignUpdate(_Body):
    """A new version of the journey (trigger, steps, entry, goal, exit_on: as on create); an omitted
    ``name``, ``message_type`` or ``topic`` keeps the campaign's."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "trigger": {"type": "segment_entered", "stage": "at_risk"},
        "entry": {"rule": "once_per_period", "period_seconds": 7776000, "holdout_percent": 10},
        "goal": {"event": "Order Completed", "within_seconds": 1209600},
        "exit_on_leaving": [{"stage": "at_risk"}],
        "steps": [{"id": "survey", "type": "send", "template_id": "6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10",
                   "next": "wait"},
                  {"id": "wait", "type": "delay", "seconds": 259200, "next": "offer"},
                  {"id": "offer", "type": "send", "template_id": "0b7e2d4c-8f3a-4b6e-a1c5-9d2f6e8a3b71"}]}]})

    name: str | None = Field(None, min_length=1, max_length=200)
    trigger: jd.Trigger
    steps: list[jd.Step] | None = Field(None, max_length=jd.MAX_STEPS)
    template_id: str | None = None
    entry: jd.Entry | None = None
    goal: jd.Goal | None = None
    exit_on: list[str] | None = None
    exit_on_leaving: list[jd.SegmentRef] | None = Field(
        None, description="segments or lifecycle stages: leaving any of them ends the journey at once")
    exit_on_entering: list[jd.SegmentRef] | None = Field(
        None, description="segments or lifecycle stages: entering any of them ends the journey at once (leave "
                          "when a condition becomes true: a trial nurture ends when the user becomes a customer)")
    message_type: Literal["marketing", "transactional"] | None = Field(None, description="omitted: unchanged")
    topic: str | None = Field(None, max_length=100, description="omitted: unchanged; null: no topic any more; one "
                                                                "of the workspace's `topics` (else a 422)")


class CampaignOut(BaseModel):
    id: str
    name: str = Field(description="the campaign's name, unique in the workspace")
    status: str = Field(description="active | paused | archived")
    version: int = Field(description="the current version: 1, raised by every PUT (a pause, resume or archive "
                                     "keeps it)")
    trigger: dict[str, object]
    template_id: str | None = Field(description="the template of the journey's first send step; null without one")
    message_type: str
    definition: dict[str, object] = Field(description="the current version's journey")
    created_at: datetime
    updated_at: datetime


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]
    next_cursor: str | None = None


class TriggerRequest(_Body):
    user: Ref = Field(description="profile id, userId, anonymousId or email", examples=["u-42"])
    data: dict[str, Any] = Field(default_factory=dict, description="visible to templates as `event.properties`",
                                 examples=[{"reset_url": "https://example.com/reset/abc"}])
    idempotency_key: str | None = Field(None, max_length=200, description="a retried trigger with the same key "
                                                                           "enters once (or the Idempotency-Key "
                                                                           "header)")


class TriggerOut(BaseModel):
    entered: bool
    journey_id: str | None = None
    reason: str | None = Field(None, description="why not entered (the entry rule, or an earlier trigger with "
                                                 "the same idempotency key)")


class JourneyOut(BaseModel):
    id: str
    campaign_id: str
    version: int = Field(description="the campaign version the journey runs")
    profile_id: str
    status: str = Field(description="active | waiting | holdout | completed | exited")
    step: str | None = Field(description="the step it runs next: a wait_for_event step while it waits for the "
                                         "event; the step after a delay, wait_until or wait_until_attribute while it "
                                         "sleeps there until wake_at (the log shows the wait); for an exited journey, "
                                         "the step it left from; null for a holdout and once completed")
    wake_at: datetime | None
    variant: str | None
    entered_at: datetime
    ended_at: datetime | None
    converted_at: datetime | None


class JourneyList(BaseModel):
    journeys: list[JourneyOut]
    next_cursor: str | None = None


class LogEntry(BaseModel):
    step: str | None = Field(description="the step it happened at; null at entry, for a holdout and at completion")
    kind: str = Field(description="entered | holdout | waiting | sent | skipped | deferred | event | timeout | "
                                  "branch | split | converted | exited | completed | ...")
    detail: str | None
    at: datetime


class ProfileJourney(JourneyOut):
    log: list[LogEntry]


class ProfileJourneys(BaseModel):
    profile_id: str = Field(description="the profile answered for: the survivor's id when the id asked for is a "
                                        "profile merged into another")
    journeys: list[ProfileJourney] = Field(description="newest first")
    next_cursor: str | None = Field(None, description="pass as `after` for the next page")


class CampaignStats(BaseModel):
    entered: int
    holdout: int
    completed: int
    exited: int = Field(description="journeys that exited: an exit step or event, the goal (exit_on_conversion), "
                                    "leaving an exit_on_leaving or entering an exit_on_entering segment, the profile "
                                    "erased, or archiving")
    in_progress_by_step: dict[str, int]
    sends_by_step: dict[str, Any] = Field(description="per send step: queued, dispatched (handed to delivery), failed "
                                                      "and skipped (by reason); then what delivery reported of them: "
                                                      "delivered (a provider's delivery report: SendGrid, Twilio — "
                                                      "plain SMTP reports none), bounced, opened, clicked, and "
                                                      "unsubscribed (through the message's own unsubscribe link or "
                                                      "preference page)")
    converted: int
    conversion_rate: float | None
    holdout_converted: int
    holdout_conversion_rate: float | None
    lift_points: float | None = Field(description="conversion rate minus the holdout's, in percentage points")
    holdout_p_value: float | None = Field(description="two-proportion z-test of treated vs holdout conversion")
    variants: dict[str, Any] = Field(description="per split variant: entered; messages sent, delivered, opened and "
                                                 "clicked "
                                                 "(after the split); converted, revenue and conversion rate")
    experiment: dict[str, Any] = Field(description="leading variant (by conversion rate; a tie by click rate, then "
                                                   "open rate, then the variant listed first), its p-value against "
                                                   "each other variant, whether all differences are significant "
                                                   "(p < 0.05), and `winners`: per split step with `winner_after` or "
                                                   "`winner_at`, the variant decided for the rest (variant, reason, "
                                                   "decided_at), once decided")


class SendOut(BaseModel):
    id: str
    campaign_id: str
    campaign_version: int
    profile_id: str
    occurrence: str = Field(description="what it was sent for, `journey:JOURNEY_ID:STEP`: one send each")
    status: str = Field(description="pending | dispatched | skipped | failed")
    reason: str | None = Field(description="why it was skipped or failed, or the last error of a pending retry; "
                                           "null otherwise")
    journey_id: str | None = None
    step: str | None = None
    delivery_message_id: str | None
    created_at: datetime


class SendList(BaseModel):
    sends: list[SendOut]
    next_cursor: str | None = None


class SnippetIn(_Body):
    content: str = Field(max_length=100_000, examples=["<p style='color:#888'>Acme Inc, 1 Main St</p>"])


class SnippetOut(BaseModel):
    name: str
    content: str
    updated_at: datetime


class SnippetList(BaseModel):
    snippets: list[SnippetOut] = Field(description="the workspace's snippets, in name order")
    next_cursor: str | None = None


class PreviewIn(_Body):
    user: Ref | None = Field(None, examples=["u-42"],
                             description="render for this profile (id, userId, anonymousId or email)")
    locale: str | None = Field(None, examples=["fr-CA"],
                               description="force a locale variant, and the locale `money` writes amounts in "
                                           "(default: the profile's locale)")
    data: dict[str, Any] = Field(default_factory=dict, examples=[{"order_id": "1234", "revenue": 42.5}],
                                 description="as the trigger's `event.properties`")


class PreviewOut(BaseModel):
    subject: str = Field(description="the rendered subject (a push's title)")
    html: str | None = Field(description="the rendered HTML; null when the template has none")
    text: str | None = Field(description="generated from the HTML when the template has no text part")
    deep_link: str | None = Field(None, description="push: the rendered deep link")
    image: str | None = Field(None, description="push: the rendered image URL")
    locale: str | None = Field(description="the locale variant used (null: the default)")
    profile_id: str | None


class TestSendIn(PreviewIn):
    to: str = Field(min_length=3, max_length=320, examples=["me@example.com"],
                    description="an email address; for an SMS template a phone number with its country code; for "
                                "a push template the userId whose devices get it")


class TestSendOut(BaseModel):
    message_id: str = Field(description="delivery's message id")


class NotMovable(BaseModel):
    version: int = Field(description="the version they stay in")
    step: str | None = Field(description="the step they are at (about to run, or waiting at)")
    users: int
    reason: str = Field(examples=["version 3 has no step 'offer'"],
                        description="why they cannot move: the current version has no such step; or they wait for "
                                    "an event there and it is no longer a wait for an event; or it matches the event "
                                    "on a key their trigger lacks")


class MigrateOut(BaseModel):
    moved: int = Field(description="users moved to the current version, at the same step; one waiting for an "
                                   "event then waits as the current version's step says (event, match, where it "
                                   "goes next), until the deadline it already had")
    kept: int = Field(description="users left in their version, to finish it: their step is gone from the current "
                                  "one, or is no longer a wait for an event where they wait for one")
    not_movable: list[NotMovable] = Field(
        default_factory=list, description="the users kept, per version and step, with why the current version "
                                          "cannot continue them there")
    version: int = Field(description="the current version, the one users were moved to")