"""Provider webhooks: Twilio's SMS status callbacks and inbound messages (STOP / START / HELP), and
SendGrid's Event Webhook (delivered, bounces, spam complaints).

Each request is verified as Twilio documents (``X-Twilio-Signature`` over the URL Twilio called and the
sorted form parameters, with the auth token; see sms.py) before anything is read from it; an unsigned or
wrongly signed call is a 403. Twilio signs the public URL it was given, which a proxy in front of us may
rewrite, so the URL checked is ``TENURE_DELIVERY_PUBLIC_URL`` + the path and query as received, never
the Host header. The URL names the workspace, so one Twilio account can serve several.

SendGrid, configured once per deployment, has a single Event Webhook URL for every workspace: each event is
applied to the workspace of the message it names, whatever workspace (if any) the URL names.

A verified report holding what PostgreSQL cannot store (a NUL, or a lone surrogate from a JSON escape) in a
value we read is ignored and logged, and answered as any ignored report is (2xx): no provider sends one, so it
names nothing we sent, and an error would make SendGrid retry it — with the rest of its batch — for a day.
"""

import json
import uuid
from html import escape
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery import consent, provider_events, schemas, sendgrid, sms
from shared.db import SessionDep
from shared.errors import BadRequest, Forbidden, NotFound, problem_schema
from shared.validation import unstorable

log = structlog.get_logger()

async def _known_workspace(workspace_id: uuid.UUID, session: AsyncSession) -> None:
    """The URL names a workspace that exists: a verified report for another is refused (404) before anything is
    written. (Checked after the signature: an unsigned call learns nothing about which workspaces exist.) Its own
    short transaction on the route's session, ended before the route begins the one that writes."""
    async with session.begin():
        found = (await session.execute(text("select 1 from core.workspaces where id = :ws"),
                                       {"ws": workspace_id})).first()
    if found is None:
        raise NotFound(f"No workspace {workspace_id}")


router = APIRouter(prefix="/webhooks", tags=["provider webhooks"])
_SIGNED = {403: problem_schema("The provider's signature does not match (or no key is configured)"),
           404: problem_schema("No such workspace"), 413: problem_schema("The body is over this route's limit")}


async def _verified_form(request: Request) -> dict[str, str]:
    """The webhook's parameters (form fields, or a JSON object signed through ``bodySHA256``), verified."""
    settings = request.app.state.settings
    url = settings.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    given = request.headers.get("x-twilio-signature")
    if not given:
        raise Forbidden("Missing X-Twilio-Signature header")
    shared = request.headers.get("x-twilio-webhooks-signature-settings")
    secret, setting = ((settings.twilio_webhook_shared_key, "TENURE_TWILIO_WEBHOOK_SHARED_KEY") if shared
                       else (settings.twilio_auth_token, "TENURE_TWILIO_AUTH_TOKEN"))
    if not secret:
        raise Forbidden(f"Twilio webhooks cannot be verified: {setting} is not set")
    algorithm = sms.signature_algorithm(shared)
    if algorithm not in sms.ALGORITHMS:
        raise Forbidden(f"Unsupported Twilio signature algorithm {algorithm!r}")
    if "bodySHA256" in request.query_params:
        body = await request.body()
        valid = sms.valid_signature(secret, url, (), given, algorithm, body=body)
        params = _json_params(body) if valid else {}
    else:
        pairs = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
        valid = sms.valid_signature(secret, url, pairs, given, algorithm)
        params = dict(pairs)
    if not valid:
        raise Forbidden(f"The X-Twilio-Signature does not match a request to {url} with these parameters "
                        "(TENURE_DELIVERY_PUBLIC_URL must be the base URL Twilio calls)")
    return params


def _json_params(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
        assert isinstance(data, dict)
    except (ValueError, AssertionError):
        raise BadRequest("Expected a JSON object") from None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def _unstorable(provider: str, values: dict[str, Any]) -> bool:
    """True (and logged, without the values) when a value read from a report cannot be stored."""
    problem = unstorable(values)
    if problem is not None:
        log.warning("delivery.webhook_unstorable", provider=provider, problem=problem)
    return problem is not None


def _twiml(message: str | None = None) -> Response:
    body = f"<Message>{escape(message)}</Message>" if message else ""
    return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>', media_type="text/xml")


@router.post("/twilio/{workspace_id}/status", operation_id="twilio_status_callback", status_code=204,
             response_class=Response, responses=_SIGNED,
             summary="Twilio SMS status callback (signed): delivered / undelivered / failed")
async def twilio_status(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form = await _verified_form(request)
    await _known_workspace(workspace_id, session)
    sid = form.get("MessageSid", "")
    if _unstorable("twilio", {k: form.get(k, "") for k in ("MessageSid", "MessageStatus", "ErrorCode")}):
        return Response(status_code=204)
    async with session.begin():
        held = await provider_events.twilio_status(session, workspace_id, sid, form.get("MessageStatus", ""),
                                                   form.get("ErrorCode", "")) == provider_events.HELD
    if held:  # it beat the record of the send: kept, and tried again now that the keeping is committed
        async with session.begin():
            await provider_events.apply_held(session, [sid])
    return Response(status_code=204)


def _sender_number(sender: str) -> str | None:
    """The E.164 number an inbound SMS came from, or None (logged) when it names none we text: no ``From``, or
    another channel's address (``whatsapp:+1…``, ``messenger:…``; delivery sends SMS only, so a WhatsApp STOP
    opts out of nothing we send, and is not taken for the SMS number's)."""
    channel, colon, _ = sender.partition(":")
    if colon:
        log.info("delivery.inbound_other_channel", channel=channel[:20])
        return None
    try:
        return schemas.e164(sender)
    except ValueError:
        log.info("delivery.inbound_without_number", present=bool(sender))
        return None


@router.post("/twilio/{workspace_id}/inbound", operation_id="twilio_inbound_sms", response_class=Response,
             responses={**_SIGNED, 200: {"description": "TwiML: the reply, if any", "content": {"text/xml": {}}}},
             summary="Twilio inbound SMS (signed): STOP opts out, START opts in, HELP answers")
async def twilio_inbound(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form = await _verified_form(request)
    await _known_workspace(workspace_id, session)
    # with Advanced Opt-Out Twilio classifies the reply itself (its own and custom, localised keywords)
    word = {"STOP": "stop", "START": "start", "HELP": "help"}.get(form.get("OptOutType", "").upper()) \
        or sms.keyword(form.get("Body", ""))
    key = form.get("MessageSid") or form.get("SmsSid") or request.headers.get("i-twilio-idempotency-token")
    if _unstorable("twilio", {"From": form.get("From", ""), "MessageSid": key or ""}):
        return _twiml()
    number = _sender_number(form.get("From", ""))
    if number is None:  # nothing to opt out or answer: an empty TwiML, as Twilio expects, and nothing stored
        return _twiml()
    answer = None
    async with session.begin():
        # a retried copy of a message already handled changes nothing: a later opposite keyword must stand
        if word in ("stop", "start") and await provider_events.first_receipt(session, workspace_id, "twilio", key):
            # the person the number was last texted for gets the Unsubscribed / Resubscribed event in ingest
            who = await consent.texted_identity(session, workspace_id, number)
            if word == "stop":
                await consent.suppress(session, workspace_id, "sms", number, "unsubscribed", "sms_keyword", who)
            else:  # texting START is the person's own consent: kept as the number's opt-in, with the message
                await consent.unsuppress(session, workspace_id, "sms", number, "sms_keyword", who,
                                         only_unsubscribed=True)
                await consent.record_sms_opt_in(session, workspace_id, number, "sms_keyword", {
                    "text": form.get("Body", "")[:160], "source": "inbound SMS keyword", "message_sid": key}, who)
        # an OptOutType means Twilio's Advanced Opt-Out already sent its own (configured) HELP answer
        elif word == "help" and not form.get("OptOutType"):
            ws = (await session.execute(text("select name, settings from core.workspaces where id = :ws"),
                                        {"ws": workspace_id})).first()
            answer = sms.help_text(ws.name if ws else None, ws.settings if ws else None,
                                   request.app.state.settings.email_from)
    return _twiml(answer)


_SENDGRID_RESPONSES = {**_SIGNED, 400: problem_schema("The body is not a JSON array of events")}
_SENDGRID_DEPLOYMENT_RESPONSES = {k: v for k, v in _SENDGRID_RESPONSES.items() if k != 404}  # (names no workspace)


@router.post("/sendgrid/events", operation_id="sendgrid_events_deployment", status_code=204,
             response_class=Response, responses=_SENDGRID_DEPLOYMENT_RESPONSES,
             summary="SendGrid Event Webhook (ECDSA-signed), for every workspace: the URL to configure in SendGrid",
             description="SendGrid is configured once per deployment; each event is applied to the workspace of "
                         "the message it names (`tenure_message_id`).")
async def sendgrid_deployment_events(request: Request, session: SessionDep) -> Response:
    return await _sendgrid_events(request, session, None)


@router.post("/sendgrid/{workspace_id}/events", operation_id="sendgrid_events", status_code=204,
             response_class=Response, responses=_SENDGRID_RESPONSES,
             summary="SendGrid Event Webhook (ECDSA-signed), the earlier URL: as /webhooks/sendgrid/events",
             description="Kept for deployments configured with it. The workspace in the URL must exist, but each "
                         "event is applied to the workspace of the message it names, whichever that is: "
                         "SendGrid has one Event Webhook URL for all the deployment's workspaces.")
async def sendgrid_events(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    return await _sendgrid_events(request, session, workspace_id)


async def _sendgrid_events(request: Request, session: AsyncSession, workspace_id: uuid.UUID | None) -> Response:
    settings = request.app.state.settings
    body = await request.body()
    key = settings.sendgrid_webhook_public_key
    if not key:
        raise Forbidden("SendGrid webhooks cannot be verified: TENURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
    problem = sendgrid.event_signature_problem(key, body, request.headers.get(sendgrid.SIGNATURE_HEADER),
                                               request.headers.get(sendgrid.TIMESTAMP_HEADER))
    if problem:
        raise Forbidden(problem)
    if workspace_id is not None:
        await _known_workspace(workspace_id, session)
    try:
        events = json.loads(body)
        assert isinstance(events, list)
    except (ValueError, AssertionError):
        raise BadRequest("Expected a JSON array of events") from None
    held = []
    async with session.begin():
        storable = [e for e in events if isinstance(e, dict) and not _unstorable(
            "sendgrid", {k: e[k] for k in provider_events.SENDGRID_FIELDS if k in e})]
        for e in await provider_events.new_sendgrid_events(session, storable):  # (a replay's are not new)
            if await provider_events.sendgrid_event(session, e) == provider_events.HELD:
                held.append(str(uuid.UUID(str(e.get("tenure_message_id")))))  # (as it was kept)
    if held:  # they beat the record of the send: kept, and tried again now that the keeping is committed
        async with session.begin():
            await provider_events.apply_held(session, held)
    return Response(status_code=204)
