"""The public contract of the delivery service."""

import re
from datetime import datetime
from email.utils import getaddresses
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.delivery.mailer import split_address
from shared.validation import (
    LANGUAGE_TAG_MAX,
    MESSAGE_BODY_MAX,
    MESSAGE_SUBJECT_MAX,
    SMS_TEXT_MAX,
    FieldError,
    IsoDatetime,
    LanguageTag,
    StorableModel,
)

# a push's data keys FCM refuses (HTTP v1 Message.data: "The key should not be a reserved word")
FCM_RESERVED_KEYS = frozenset({"from", "message_type"})
FCM_RESERVED_PREFIXES = ("google", "gcm")


@lru_cache(maxsize=16_384)
def normalized_email(address: str) -> str:
    """email_validator's normal form of ``address`` (no DNS lookup), raising ``EmailNotValidError``. Cached: the
    check costs ≈ 30 µs (a quarter of the API's CPU per queued email), and the same senders and recipients come
    back campaign after campaign; a batch's ``from`` is the same address for every message."""
    return validate_email(address, check_deliverability=False).normalized


_LINE_ENDS = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() breaks on


class _Body(StorableModel):
    """A request body: a field this API does not know is a 422 naming it, not dropped — a misspelt ``message_type``
    sent a transactional message as marketing, a misspelt ``reason`` suppressed as ``manual``."""

    model_config = ConfigDict(extra="forbid")


class MessageCreate(_Body):
    """One message to send (email or SMS). Stored under ``idempotency_key`` before any provider call:
    posting the same key again returns the stored message instead of sending a second one."""

    idempotency_key: str = Field(min_length=1, max_length=255, examples=["order-1234-receipt"])
    channel: Literal["email", "sms", "push", "webhook"] = "email"
    to: str = Field(min_length=1, max_length=2000, examples=["ada@example.com"],
                    description="an email address; for SMS a phone number (normalised to E.164); for push the "
                                "userId or anonymousId whose devices get it; for a webhook the http(s) URL")
    from_: str | None = Field(None, alias="from", max_length=998, examples=["Acme <hello@acme.example>"],
                              description="one address, with or without a display name; defaults to TENURE_EMAIL_FROM")
    subject: str = Field("", max_length=MESSAGE_SUBJECT_MAX, examples=["Welcome, Ada!"],
                         description="required for email; a push's title; none for SMS (its `text` is all it sends)")
    html: str | None = Field(None, max_length=MESSAGE_BODY_MAX,
                             description="the HTML part (at most 1,000,000 characters; Gmail clips past 102 KB); none "
                                         "for SMS")
    text: str | None = Field(None, max_length=MESSAGE_BODY_MAX, examples=["Hi Ada, welcome to Acme."],
                             description="the text part (made from html if absent)")
    message_type: Literal["marketing", "transactional"] = Field(
        "marketing", description="marketing: suppressions, topics and double opt-in apply, and email gets unsubscribe "
                                 "headers and a footer; transactional: only a hard bounce or complaint stops it")
    topic: str | None = Field(None, max_length=100, examples=["offers"],
                              description="subscription topic (marketing): not sent to addresses that opted out. "
                                          "One of the workspace's topics (setting `topics`, default `product_news` "
                                          "and `offers`): another is a 422 naming it, as no one could opt out of it")
    locale: LanguageTag | None = Field(None, max_length=LANGUAGE_TAG_MAX, examples=["fr-CA"],
                               description="the recipient's locale (BCP 47): the unsubscribe footer delivery adds to "
                                           "marketing email, and the unsubscribe and preference pages its links open, "
                                           "are in its language (English, French or German; English otherwise)")
    data: dict[str, Any] | None = Field(None, description="a webhook's JSON body; for push the data payload "
                                                          "(`deep_link`, `image`, other values: FCM carries text only, "
                                                          "so a number, boolean, list or object goes as its JSON). "
                                                          "Keys FCM reserves are refused in a push's data (422 naming "
                                                          "the key): `from`, `message_type`, and any key starting "
                                                          "with `google` or `gcm`")
    metadata: dict[str, Any] = Field(default_factory=dict, description="ids to find the message by later; "
                                     "`userId`/`anonymousId` attribute its opens, clicks and unsubscribes")

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    @model_validator(mode="after")
    def _fits_channel(self) -> "MessageCreate":
        for name, value in (("subject", self.subject), ("from", self.from_)):
            # every character str.splitlines() breaks on: the MIME encoder would fold U+2028 into a space
            if value and ("\x00" in value or not _LINE_ENDS.isdisjoint(value)):
                raise FieldError(name, "subject and from are single lines (no CR, LF, U+2028 or other line break, "
                                       "nor NUL)")
        if self.channel == "email":
            try:
                self.to = normalized_email(self.to)
            except EmailNotValidError as exc:
                raise FieldError("to", f"to is not a valid email address: {exc}") from None
            if self.from_ is not None:
                try:
                    _check_sender(self.from_)
                except ValueError as exc:
                    raise FieldError("from", str(exc)) from None
            if not self.subject.strip():
                raise FieldError("subject", "an email needs a subject")
            if not self.html and not self.text:
                raise FieldError("text", "html or text is required")
        elif self.channel == "push":
            if not self.subject.strip() or not self.text:
                raise FieldError("subject" if not self.subject.strip() else "text",
                                 "a push needs a title (subject) and a body (text)")
            for key in self.data or {}:
                if key in FCM_RESERVED_KEYS or key.startswith(FCM_RESERVED_PREFIXES):
                    # FCM answers 400 INVALID_ARGUMENT at send time (every device of the user), after the queue
                    raise FieldError(("data", key), f"data key {key!r} is reserved by FCM (from, message_type, and "
                                                    "keys starting with google or gcm): rename it")
        elif self.channel == "webhook":
            if not re.match(r"^https?://[^\s/]+", self.to):
                raise FieldError("to", "a webhook's to is an http(s) URL")
            if self.data is None:
                raise FieldError("data", "a webhook needs data (its JSON body)")
        else:
            try:
                self.to = e164(self.to)
            except ValueError as exc:
                raise FieldError("to", str(exc)) from None
            if not self.text:
                raise FieldError("text", "an SMS needs text")
            if len(self.text) > SMS_TEXT_MAX:
                raise FieldError("text", f"an SMS is at most {SMS_TEXT_MAX:,} characters")
            if self.subject or self.html is not None:  # (taken, then dropped on the way to Twilio: nothing said so)
                raise FieldError("subject" if self.subject else "html",
                                 "an SMS is its text alone: subject and html are not sent (put the words in text)")
        return self


class SendMessage(MessageCreate):
    """``POST /v1/messages``: the key may come as the ``Idempotency-Key`` header instead of the field."""

    idempotency_key: str | None = Field(None, min_length=1, max_length=255, examples=["order-1234-receipt"],
                                        description="required here or as the Idempotency-Key header")


@lru_cache(maxsize=1024)  # a batch's messages share their sender
def _check_sender(value: str) -> None:
    """``from`` is one mailbox (``hello@acme.example`` or ``Acme <hello@acme.example>``): it becomes the From
    header, the envelope sender and the Message-ID's domain, and anything else goes out malformed."""
    parsed = getaddresses([value])
    address = split_address(value)[1]
    if len(parsed) != 1 or parsed[0][1] != address:
        raise ValueError("from is one address, e.g. hello@acme.example or Acme <hello@acme.example>")
    try:
        normalized_email(address)
    except EmailNotValidError as exc:
        raise ValueError(f"from is not a valid email address: {exc}") from None


def e164(number: str) -> str:
    """A phone number in E.164 (``+14155550100``); numbers without a country code are refused."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not number.strip().startswith(
                "+"):  # ("(0) Missing or invalid default region.": libphonenumber's words for a number without it)
            raise ValueError("to is not a phone number in international form: start it with + and the country "
                             "code, e.g. +14155550100") from None
        raise ValueError(f"to is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("to is not a valid phone number (include the country code, e.g. +44…)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class MessageOut(BaseModel):
    id: str
    idempotency_key: str
    channel: str
    to: str
    subject: str = Field(description="the email subject or push title; empty for SMS and webhooks, and once the "
                                     "message is older than the workspace's `retention_days` (its content is cleared "
                                     "then)")
    message_type: str
    topic: str | None = None
    locale: str | None = Field(None, description="the recipient's locale given when it was queued")
    status: str = Field(description="queued | sending | sent | delivered | bounced | failed | suppressed")
    attempts: int = Field(description="provider calls made so far (a transient error is retried with backoff, for a "
                                      "day from the first one, email for 4 days: TENURE_DELIVERY_RETRY_FOR_S, "
                                      "TENURE_EMAIL_RETRY_FOR_S)")
    last_error: str | None = Field(description="why it was suppressed (`suppressed: unsubscribed`, …), bounced, or "
                                               "why its last attempt failed; null otherwise")
    provider_message_id: str | None = Field(description="the provider's id for it once sent: the email's Message-ID "
                                                        "(SMTP), SendGrid's X-Message-Id, the Twilio SID, the push "
                                                        "services' ids (comma-separated) …; null before")
    metadata: dict[str, Any] = Field(description="the `metadata` given when it was queued (userId, anonymousId, "
                                                 "campaign_id …); a push's `data` as `push_data`")
    created_at: datetime
    sent_at: datetime | None
    opened_at: datetime | None = Field(None, description="an email's first open (its tracking pixel loaded); opens by "
                                                         "link scanners and within 2 s of sending are not counted")
    clicks: int = Field(0, description="clicks on the message's tracked links, scanners' left out")


class BatchIn(BaseModel):
    # (not a StorableModel: a message that cannot be stored is that message's `invalid`, not the batch's 422)
    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=500, examples=[[
        {"idempotency_key": "order-1234-receipt", "to": "ada@example.com", "subject": "Your receipt",
         "text": "Thanks for order 1234.", "message_type": "transactional"},
        {"idempotency_key": "otp-u42-7731", "channel": "sms", "to": "+33612345678", "text": "Your code: 7731",
         "message_type": "transactional"}]],
                                           description="each as for POST /v1/messages; checked one by one (a "
                                                       "message with a NUL or a lone surrogate, or a topic the "
                                                       "workspace does not have, is `invalid`)")


class BatchResult(BaseModel):
    idempotency_key: str | None = Field(description="the message's key (null: it had none, or one that is not "
                                                    "storable text, e.g. with a NUL)")
    result: Literal["queued", "replayed", "suppressed", "conflict", "invalid"]
    message: "MessageOut | None" = None
    error: str | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


class MessageList(BaseModel):
    messages: list[MessageOut] = Field(description="the matching messages, newest first (`created_at`, then `id`, "
                                                   "both descending)")
    next_cursor: str | None = None


class SuppressionIn(_Body):
    channel: Literal["email", "sms", "push"] = Field("email", description="the channel the address is suppressed on")
    address: str = Field(min_length=3, max_length=320, examples=["ada@example.com"],
                         description="normalised as messages are (email lower-cased, phone numbers to E.164)")
    reason: Literal["manual", "unsubscribed", "hard_bounce", "complaint"] = Field(
        "manual", description="manual and unsubscribed stop marketing messages; hard_bounce and complaint stop "
                              "transactional ones too and cannot be lifted")

    @model_validator(mode="after")
    def _normalise(self) -> "SuppressionIn":
        self.address = normalise_address(self.channel, self.address)
        return self


def normalise_address(channel: str, address: str) -> str:
    if channel == "sms":
        return e164(address)
    if channel == "email":
        try:
            return normalized_email(address).lower()
        except EmailNotValidError as exc:
            raise ValueError(f"not a valid email address: {exc}") from None
    return address


class SuppressionOut(BaseModel):
    channel: str = Field(description="email, sms or push")
    address: str
    reason: str
    source: str = Field(description="what suppressed it: api, one_click (RFC 8058), unsubscribe_page, "
                                    "preference_page, sms_keyword (STOP), or sendgrid / twilio (the provider's report)")
    created_at: datetime = Field(description="when the address was suppressed for this reason (a hard bounce or "
                                             "complaint replaces an earlier reason) (ISO 8601, UTC)")


class SuppressionList(BaseModel):
    suppressions: list[SuppressionOut] = Field(
        description="the suppressions, in address order (then channel: an address can be suppressed on several)")
    next_cursor: str | None = None


class TopicChoice(BaseModel):
    id: str = Field(description="the topic's id, as messages and campaigns name it (workspace setting `topics`)")
    label: dict[str, str] = Field(description="the topic's name per language code, e.g. {\"en\": \"Offers\"}")
    subscribed: bool = Field(description="whether the address gets this topic's marketing messages (no choice "
                                         "recorded: true)")


class PreferencesOut(BaseModel):
    address: str = Field(description="the address, lower-cased")
    unsubscribed: bool = Field(description="whether the address is suppressed for email (any reason): no marketing "
                                           "email goes to it")
    suppression: str | None = Field(description="why the address is suppressed for email, if it is")
    topics: list[TopicChoice]


class WebhookSecret(BaseModel):
    secret: str
    scheme: str


class WebPushKeys(StorableModel):
    p256dh: str = Field(min_length=80, max_length=100, description="the browser's P-256 public key (base64url)")
    auth: str = Field(min_length=20, max_length=30, description="the 16-byte authentication secret (base64url)")


class WebPushSubscription(StorableModel):
    """A browser's ``PushSubscription.toJSON()``, as it is (fields a browser adds are ignored, not refused)."""

    endpoint: str = Field(min_length=10, max_length=4096, examples=["https://fcm.googleapis.com/fcm/send/dZ3…"],
                          description="the push service URL of this subscription (https, a public host)")
    keys: WebPushKeys
    expirationTime: float | None = Field(None, description="ignored (push services report expiry with 404/410)")

    model_config = {"extra": "ignore"}

    @model_validator(mode="after")
    def _valid(self) -> "WebPushSubscription":
        from services.delivery.webpush import check_keys

        if not re.match(r"^https?://[^\s/]+", self.endpoint):
            raise ValueError("subscription.endpoint is an http(s) URL")
        check_keys(self.keys.p256dh, self.keys.auth)
        return self


class DeviceIn(_Body):
    """A device token (FCM registration token, or an APNs device token of an iOS app), or for ``web`` either
    an FCM token or a Web Push subscription."""

    user: str = Field(min_length=1, max_length=512, examples=["u-42"],
                      description="the userId or anonymousId the device belongs to")
    platform: Literal["android", "ios", "web"] = Field(examples=["android"])
    token: str | None = Field(None, min_length=10, max_length=4096, examples=["dKx3Fq0nT7e:APA91bH2k9zQ"],
                              description="the FCM registration token, or an iOS app's APNs device token (hex)")
    subscription: WebPushSubscription | None = Field(
        None, description="web only, instead of a token: the browser's PushSubscription (sent with Web Push)")

    @model_validator(mode="after")
    def _one_address(self) -> "DeviceIn":
        if (self.token is None) == (self.subscription is None):
            raise ValueError("send either a token or a subscription")
        if self.subscription is not None and self.platform != "web":
            raise ValueError("a Web Push subscription is for platform web")
        return self


class DeviceOut(BaseModel):
    user: str = Field(description="the userId or anonymousId the device belongs to")
    platform: str
    token: str = Field(description="the device token, or a Web Push subscription's endpoint")
    web_push: bool = Field(False, description="a Web Push subscription")
    created_at: datetime
    last_used_at: datetime | None = Field(description="when a push last went to this device; null: never "
                                                      "(ISO 8601, UTC)")


class VapidPublicKey(BaseModel):
    public_key: str = Field(description="the applicationServerKey for pushManager.subscribe() (base64url)")


class DeviceList(BaseModel):
    devices: list[DeviceOut] = Field(description="the user's devices, oldest first")
    next_cursor: str | None = None


class OptInIn(_Body):
    email: str = Field(min_length=3, max_length=320, examples=["ada@example.com"],
                       description="the address to subscribe: the confirmation link is emailed to it")
    topics: list[str] = Field(default_factory=list, max_length=50,
                              description="topics to subscribe on confirmation, each one of the workspace's "
                                          "(setting `topics`; another is a 422 naming it)")
    locale: LanguageTag = Field("en", max_length=LANGUAGE_TAG_MAX, examples=["fr-CA"],
                                description="the person's locale (BCP 47, read as a message's `locale` is): the "
                                            "confirmation email and the page its link opens are in its language "
                                            "(English, French or German; English otherwise)")
    user_id: str | None = Field(None, max_length=512, description="who asked, for the `Opted In` event")
    anonymous_id: str | None = Field(None, max_length=512,
                                     description="who asked (their anonymousId), for the `Opted In` event")

    @model_validator(mode="after")
    def _normalise(self) -> "OptInIn":
        self.email = normalise_address("email", self.email)
        return self


class SmsOptInEvidence(_Body):
    """What proves the consent (TCPA: prior express written consent to marketing texts), kept as sent."""

    text: str = Field(min_length=1, max_length=2000, examples=[
        "Yes, send me offers by text. Msg & data rates may apply. Reply STOP to cancel."],
                      description="the consent language the person agreed to, as shown to them")
    source: str = Field(min_length=1, max_length=200, examples=["checkout form, acme.example/checkout"],
                        description="where it was collected: a form and its page, a keyword campaign, a call")
    ip: str | None = Field(None, max_length=64, description="the IP address the consent came from")
    collected_at: IsoDatetime | None = Field(None, description="when the person agreed (default: now)")


class SmsOptInIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "phone": "+14155550100", "user_id": "u-42", "evidence": {
            "text": "Yes, send me offers by text. Msg & data rates may apply. Reply STOP to cancel.",
            "source": "checkout form, acme.example/checkout", "ip": "203.0.113.7",
            "collected_at": "2026-11-29T10:00:00Z"}}]})

    phone: str = Field(min_length=3, max_length=32, examples=["+14155550100"],
                       description="the number that agreed to marketing texts (E.164, or national with its country "
                                   "code)")
    evidence: SmsOptInEvidence
    user_id: str | None = Field(None, max_length=512, description="whose number, for the `Opted In` event")
    anonymous_id: str | None = Field(None, max_length=512,
                                     description="whose number (their anonymousId), for the `Opted In` event")

    @model_validator(mode="after")
    def _normalise(self) -> "SmsOptInIn":
        try:
            self.phone = normalise_address("sms", self.phone)
        except ValueError as exc:
            raise FieldError("phone", str(exc).replace("to is", "phone is", 1)) from None
        return self


class SmsOptInOut(BaseModel):
    phone: str = Field(description="the number, in E.164")
    confirmed_at: datetime = Field(description="when it was first recorded as opted in")


class OptInOut(BaseModel):
    status: Literal["pending", "confirmed"]
    message_id: str | None = Field(description="the confirmation email (pending)")
