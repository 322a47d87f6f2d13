"""Delivery HTTP routes: the idempotent send API and the deliveries log."""

import csv
import io
import uuid
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import StringConstraints, ValidationError

from services.delivery import consent, devices, links, outbox, pages, texts, webhook_channel, webpush
from services.delivery.schemas import (
    BatchIn,
    BatchOut,
    DeviceIn,
    DeviceList,
    DeviceOut,
    MessageCreate,
    MessageList,
    MessageOut,
    OptInIn,
    OptInOut,
    PreferencesOut,
    SendMessage,
    SmsOptInIn,
    SmsOptInOut,
    SuppressionIn,
    SuppressionList,
    SuppressionOut,
    VapidPublicKey,
    WebhookSecret,
    normalise_address,
)
from shared import netguard
from shared.auth import WorkspaceDep
from shared.core import workspace_settings
from shared.db import SessionDep, Stamp
from shared.errors import (
    COMMON_ERRORS,
    Conflict,
    NotFound,
    UpstreamUnavailable,
    ValidationFailed,
    body_error,
    place_error,
    problem_schema,
)
from shared.idempotency import keys_differ, mark_replayed, replay_response
from shared.pagination import PageDep, StampAfterDep
from shared.routing import SegmentRoute
from shared.settings import Settings
from shared.validation import IsoDatetime, StorableText, errors_text, unstorable

log = structlog.get_logger()

router = APIRouter(prefix="/v1", tags=["messages"])

# the Idempotency-Key header: as the body's field, 1-255 characters PostgreSQL can hold
KeyHeader = Annotated[str, StringConstraints(min_length=1, max_length=255), *StorableText.__metadata__]


@router.post(
    "/messages",
    status_code=202,
    response_model=MessageOut,
    operation_id="send_message",
    summary="Queue a message, exactly once per idempotency key",
    description=(
        "Returns 202 when the message is new and 200 (header `Idempotent-Replayed: true`) when the key was "
        "seen before with the same content; the same key with different content is a 409."
    ),
    responses={**COMMON_ERRORS, 200: replay_response(MessageOut),
               409: problem_schema("Idempotency key reused with different content")},
)
async def send_message(
    body: SendMessage,
    ws: WorkspaceDep,
    session: SessionDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[KeyHeader | None, Header(alias="Idempotency-Key",
                                                        description="alternative to the body field")] = None,
) -> dict[str, Any]:
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise keys_differ()
    key = idempotency_key or body.idempotency_key
    if not key:
        raise ValidationFailed("An idempotency_key (or an Idempotency-Key header) is required", field="idempotency_key",
                               errors=[place_error(["body", "idempotency_key"], "required here or as the "
                                                   "Idempotency-Key header", "missing")])
    settings: Settings = request.app.state.settings
    data = {**_hashed(body), "idempotency_key": key}
    async with session.begin():
        message, created = await outbox.enqueue(session, ws, data, body.from_ or settings.email_from)
    if created:
        request.app.state.waker.request("delivery", "send_messages")
    else:
        mark_replayed(response)
    return message


def _hashed(msg: MessageCreate) -> dict[str, Any]:
    """What an idempotency key stands for: the message as sent, its ``from`` included when given (the same key
    again with another sender is a conflict, not a replay of the first)."""
    return {**msg.model_dump(exclude={"from_"}), "from": msg.from_}


@router.post(
    "/messages/batch",
    response_model=BatchOut,
    operation_id="send_messages",
    summary="Queue up to 500 messages at once, each exactly once per idempotency key",
    description="One result per message, in order: `queued`, `replayed` (same key, same content), `suppressed`, "
                "`conflict` (same key, different content) or `invalid` (with the reason). Valid messages are "
                "stored in one transaction.",
    responses=COMMON_ERRORS,
)
async def send_messages(body: BatchIn, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    results: list[dict[str, Any] | None] = []
    valid: list[tuple[int, MessageCreate]] = []
    for raw in body.messages:
        key = raw.get("idempotency_key")
        # a key that cannot be stored is not given back (JSON cannot even carry a lone surrogate)
        key = key if isinstance(key, str) and unstorable(key) is None else None
        try:
            valid.append((len(results), MessageCreate.model_validate(raw)))
            results.append(None)
        except ValidationError as exc:  # one bad message does not sink the batch
            results.append({"idempotency_key": key, "result": "invalid", "error": errors_text(exc)})
    async with session.begin():
        stored = await outbox.enqueue_many(session, ws, [(_hashed(item), item.from_ or settings.email_from)
                                                         for _, item in valid])
    for (i, item), outcome in zip(valid, stored, strict=True):
        if isinstance(outcome, ValidationFailed):  # (a topic the workspace does not have)
            results[i] = {"idempotency_key": item.idempotency_key, "result": "invalid", "error": "; ".join(
                f"{e['at']}: {e['msg']}" for e in outcome.extra["errors"])}
            continue
        if isinstance(outcome, Conflict):
            results[i] = {"idempotency_key": item.idempotency_key, "result": "conflict", "error": str(outcome)}
            continue
        message, created = outcome
        result = ("suppressed" if message["status"] == "suppressed" else "queued") if created else "replayed"
        results[i] = {"idempotency_key": item.idempotency_key, "result": result, "message": message}
    if any(r and r["result"] == "queued" for r in results):
        request.app.state.waker.request("delivery", "send_messages")
    return {"results": results}


@router.get("/messages/{message_id}", response_model=MessageOut, operation_id="get_message",
            summary="One message and its status", responses={**COMMON_ERRORS, 404: problem_schema("No such message")})
async def get_message(message_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await outbox.get_message(session, ws, message_id)


class LogFilters:
    """Filters of the deliveries log (shared by the JSON list and the CSV export)."""

    def __init__(
        self,
        status: Annotated[Literal["queued", "sending", "sent", "delivered", "bounced", "failed", "suppressed"] | None,
                          Query()] = None,
        to: Annotated[str | None, Query(description="recipient address or number")] = None,
        channel: Annotated[Literal["email", "sms", "push", "webhook"] | None, Query()] = None,
        user: Annotated[str | None, Query(description="the userId or anonymousId the message was for")] = None,
        campaign_id: Annotated[uuid.UUID | None, Query()] = None,
        since: Annotated[IsoDatetime | None, Query(description="created at or after")] = None,
        until: Annotated[IsoDatetime | None, Query(description="created before")] = None,
    ):
        self.values = {"status": status, "to": to, "channel": channel, "user": user,
                       "campaign_id": str(campaign_id) if campaign_id else None, "since": since, "until": until}


@router.get("/messages", response_model=MessageList, operation_id="list_messages",
            summary="The deliveries log: filter by status, recipient, channel, user, campaign and time",
            description="Newest first: by `created_at`, then by `id` (descending) among messages queued together. "
                        "Messages queued while a client pages sort before its first page: the next pages hold what "
                        "they would have held, nothing skipped or repeated.",
            responses=COMMON_ERRORS)
async def list_messages(ws: WorkspaceDep, session: SessionDep, page: StampAfterDep,
                        filters: Annotated[LogFilters, Depends()],
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await outbox.list_messages(session, ws, filters.values, after=page.stamp, limit=limit)
    return {"messages": items, "next_cursor": page.next(nxt)}


CSV_MAX_ROWS = 100_000


@router.get("/messages.csv", operation_id="export_messages_csv", response_class=Response,
            summary="The deliveries log as CSV (same filters), with the reason of every skip or failure",
            description="Newest first, as `GET /v1/messages`.",
            responses={200: {"content": {"text/csv": {}}}, **COMMON_ERRORS})
async def export_messages(ws: WorkspaceDep, session: SessionDep, filters: Annotated[LogFilters, Depends()]
                          ) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(outbox.CSV_COLUMNS)
    after: Stamp | None = None
    written = 0
    async with session.begin():
        while True:
            items, after = await outbox.list_messages(session, ws, filters.values, after=after, limit=1000)
            written += len(items)
            if written > CSV_MAX_ROWS:
                raise ValidationFailed(f"Over {CSV_MAX_ROWS:,} messages match: narrow the filters (since/until)")
            for item in items:
                writer.writerow([outbox.csv_value(item.get(c)) for c in outbox.CSV_COLUMNS])
            if after is None:
                break
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="deliveries.csv"'})


consent_router = APIRouter(prefix="/v1", tags=["consent"], route_class=SegmentRoute)  # addresses may hold a "/"


@consent_router.post("/suppressions", status_code=201, response_model=SuppressionOut,
                     operation_id="add_suppression", summary="Suppress an address on a channel (manual)",
                     responses=COMMON_ERRORS)
async def add_suppression(body: SuppressionIn, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        await consent.suppress(session, ws, body.channel, body.address, body.reason, "api")
        return await consent.suppression(session, ws, body.channel, body.address)


@consent_router.get("/suppressions", response_model=SuppressionList, operation_id="list_suppressions",
                    summary="Suppressed addresses", responses=COMMON_ERRORS)
async def list_suppressions(ws: WorkspaceDep, session: SessionDep,
                            page: PageDep,
                            channel: Annotated[str | None, Query()] = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await consent.list_suppressions(session, ws, channel, page.position, limit)
    return {"suppressions": items, "next_cursor": page.next(nxt)}


@consent_router.delete("/suppressions/{channel}/{address}", status_code=204, operation_id="remove_suppression",
                       summary="Lift a suppression (not a hard bounce or complaint)",
                       responses={**COMMON_ERRORS, 404: problem_schema("Not suppressed (or not liftable)")})
async def remove_suppression(channel: StorableText, address: StorableText, ws: WorkspaceDep, session: SessionDep
                             ) -> Response:
    try:
        address = normalise_address(channel, address)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None
    async with session.begin():
        if not await consent.unsuppress(session, ws, channel, address, "api"):
            raise NotFound(f"{address} is not suppressed on {channel} (or the reason cannot be lifted)")
    return Response(status_code=204)


@consent_router.get("/preferences/{address}", response_model=PreferencesOut, operation_id="get_preferences",
                    summary="An address's topics and suppression", responses=COMMON_ERRORS)
async def get_preferences(address: str, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await consent.preferences(session, ws, address, await workspace_settings(session, ws))


@consent_router.get("/webhook-secret", response_model=WebhookSecret, operation_id="get_webhook_secret",
                    tags=["messages"], summary="The key webhook messages are signed with (Tenure-Signature)",
                    responses=COMMON_ERRORS)
async def get_webhook_secret(ws: WorkspaceDep, request: Request) -> dict[str, Any]:
    return {"secret": webhook_channel.secret_for(request.app.state.settings, ws),
            "scheme": "Tenure-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>"}


@consent_router.post("/devices", status_code=201, response_model=DeviceOut, operation_id="register_device",
                     tags=["push"], summary="Register a push token for a user (idempotent)", responses=COMMON_ERRORS)
async def register_device(body: DeviceIn, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    if body.subscription is None:
        async with session.begin():
            return await devices.register(session, ws, body.user, body.platform, body.token or "")
    settings: Settings = request.app.state.settings
    endpoint = body.subscription.endpoint
    if not settings.webhook_allow_private and not endpoint.startswith("https://"):
        raise ValidationFailed("subscription.endpoint must be an https URL", field="subscription.endpoint",
                               errors=[body_error("subscription.endpoint", "must be an https URL")])
    try:
        await netguard.check_public(endpoint, allow_private=settings.webhook_allow_private)
    except netguard.BlockedURL as exc:
        raise ValidationFailed(f"subscription.endpoint refused: {exc}", field="subscription.endpoint",
                               errors=[body_error("subscription.endpoint", f"refused: {exc}")]) from None
    async with session.begin():
        return await devices.register(session, ws, body.user, "web", endpoint, body.subscription.keys.p256dh,
                                      body.subscription.keys.auth)


@consent_router.get("/push/vapid-public-key", response_model=VapidPublicKey, operation_id="get_vapid_public_key",
                    tags=["push"], summary="The VAPID public key browsers subscribe with (no credentials needed)",
                    responses={404: problem_schema("Web Push is not configured"),
                               503: problem_schema("The configured VAPID key is not usable")})
async def get_vapid_public_key(request: Request) -> dict[str, Any]:
    try:
        key = webpush.vapid_key(request.app.state.settings)
    except (OSError, ValueError) as exc:  # a key file missing or not a P-256 key: the operator's to fix
        log.error("webpush.vapid_key_unusable", error=type(exc).__name__)
        raise UpstreamUnavailable("Web Push is misconfigured: TENURE_VAPID_PRIVATE_KEY is not a usable key") from None
    if key is None:
        raise NotFound("Web Push is not configured (TENURE_VAPID_PRIVATE_KEY)")
    return {"public_key": key.public_key}


@consent_router.get("/devices", response_model=DeviceList, operation_id="list_devices", tags=["push"],
                    summary="A user's push devices", responses=COMMON_ERRORS)
async def list_devices(ws: WorkspaceDep, session: SessionDep, page: PageDep,
                       user: Annotated[str, Query(min_length=1, max_length=512)],
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await devices.list_devices(session, ws, user, page.position, limit)
    return {"devices": items, "next_cursor": page.next(nxt)}


@consent_router.delete("/devices/{token:path}", status_code=204, operation_id="remove_device", tags=["push"],
                       summary="Forget a push token (or a Web Push subscription: its endpoint, URL-encoded)",
                       responses={**COMMON_ERRORS, 404: problem_schema("Unknown token")})
async def remove_device(token: StorableText, ws: WorkspaceDep, session: SessionDep) -> Response:
    async with session.begin():
        if not await devices.forget(session, ws, devices.spellings(token)):
            raise NotFound("No such device token")
    return Response(status_code=204)


@consent_router.post("/sms-opt-ins", status_code=201, response_model=SmsOptInOut, operation_id="record_sms_opt_in",
                     summary="Record a number's consent to marketing texts, with its evidence",
                     description="Marketing SMS go only to numbers recorded here (or that texted START), unless the "
                                 "workspace sets `sms_opt_in_required: false`; transactional texts need none. The "
                                 "evidence is kept in the consent log. Recording a number again keeps its first "
                                 "time and logs the new evidence; STOP still stops every text.",
                     responses=COMMON_ERRORS)
async def record_sms_opt_in(body: SmsOptInIn, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    evidence = body.evidence.model_dump(mode="json", exclude_none=True)
    async with session.begin():
        return await consent.record_sms_opt_in(session, ws, body.phone, "api", evidence,
                                               {"userId": body.user_id, "anonymousId": body.anonymous_id})


@consent_router.post("/opt-ins", status_code=202, response_model=OptInOut, operation_id="request_opt_in",
                     summary="Double opt-in: record the request and email a confirmation link",
                     responses=COMMON_ERRORS)
async def request_opt_in(body: OptInIn, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    lang = texts.page_language(body.locale)  # (fr-CA, fr_FR → fr; a language without texts → en)
    t = pages.TEXTS[lang]
    async with session.begin():
        opt_in = await consent.request_opt_in(session, ws, body.email, body.topics)
        if opt_in["confirmed_at"] is not None:
            return {"status": "confirmed", "message_id": None}
        # one confirmation per request, the link filled in at send time (it is signed with this message's id)
        message, _ = await outbox.enqueue(session, ws, {
            "idempotency_key": f"opt-in:{body.email.lower()}:{opt_in['requested_at'].isoformat()}",
            "channel": "email", "to": body.email, "subject": t["confirm_subject"], "locale": body.locale,
            # the link names the email's language: the page it opens goes on in it, whatever the browser asks for
            "text": t["confirm_body"].format(url=f"{links.CONFIRM}?lang={lang}"), "html": None,
            "message_type": "transactional",
            "metadata": {k: v for k, v in {"userId": body.user_id, "anonymousId": body.anonymous_id}.items() if v}},
            settings.email_from)
    request.app.state.waker.request("delivery", "send_messages")
    return {"status": "pending", "message_id": message["id"]}
