"""Provider webhooks: Twilio's SMS status callbacks and inbound messages (STOP / START / HELP), and
SendGrid's Event Webhook (delivered, bounces, spam complaints).

Each request is verified as Twilio documents (``X-Twilio-Signature`` over the URL Twilio called and the
sorted form parameters, with the auth token) before anything is read from it; an unsigned or wrongly
signed call is a 403. The URL names the workspace, so one Twilio account can serve several.
"""

import json
import uuid
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from services.delivery import consent, sendgrid, sms
from shared import metrics
from shared.db import SessionDep
from shared.errors import BadRequest, Forbidden, problem_schema

router = APIRouter(prefix="/webhooks", tags=["provider webhooks"])
_SIGNED = {403: problem_schema("The provider's signature does not match (or no key is configured)")}
HELP_TEXT = "Reply STOP to unsubscribe, START to subscribe again."


async def _verified_form(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    form = {k: str(v) for k, v in (await request.form()).items()}
    url = settings.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    token = settings.twilio_auth_token
    if not token or not sms.valid_signature(token, url, form, request.headers.get("x-twilio-signature")):
        raise Forbidden("The Twilio signature does not match")
    return form


def _twiml(message: str | None = None) -> Response:
    body = f"<Message>{escape(message)}</Message>" if message else ""
    return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>', media_type="text/xml")


@router.post("/twilio/{workspace_id}/status", operation_id="twilio_status_callback", status_code=204,
             response_class=Response, responses=_SIGNED,
             summary="Twilio SMS status callback (signed): delivered / undelivered / failed")
async def twilio_status(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form = await _verified_form(request)
    status, sid = form.get("MessageStatus", ""), form.get("MessageSid", "")
    ours = {"delivered": "delivered", "undelivered": "failed", "failed": "failed"}.get(status)
    if ours is None:
        return Response(status_code=204)  # queued/sending/sent: nothing we do not know yet
    async with session.begin():
        row = (await session.execute(text(
            "update delivery.messages set status = :s, updated_at = now(), "
            "last_error = case when :s = 'failed' then :err else last_error end "
            "where workspace_id = :ws and channel = 'sms' and provider_message_id = :sid and status = 'sent' "
            "returning id, workspace_id, metadata"),
            {"s": ours, "err": f"Twilio {status} ({form.get('ErrorCode', '')})", "ws": workspace_id,
             "sid": sid})).mappings().first()
        if row is not None:
            metrics.MESSAGES.labels("sms", ours).inc()
            await consent.queue_event(session, workspace_id, consent.identity_of(dict(row)),
                                      "SMS Delivered" if ours == "delivered" else "SMS Failed",
                                      {"message_id": str(row["id"]), "status": status})
    return Response(status_code=204)


@router.post("/twilio/{workspace_id}/inbound", operation_id="twilio_inbound_sms", response_class=Response,
             responses={**_SIGNED, 200: {"description": "TwiML: the reply, if any", "content": {"text/xml": {}}}},
             summary="Twilio inbound SMS (signed): STOP opts out, START opts in, HELP answers")
async def twilio_inbound(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form = await _verified_form(request)
    number, word = form.get("From", ""), sms.keyword(form.get("Body", ""))
    async with session.begin():
        if word == "stop":
            await consent.suppress(session, workspace_id, "sms", number, "unsubscribed", "sms_keyword")
        elif word == "start":
            await consent.unsuppress(session, workspace_id, "sms", number, "sms_keyword", only_unsubscribed=True)
    return _twiml(HELP_TEXT if word == "help" else None)


@router.post("/sendgrid/{workspace_id}/events", operation_id="sendgrid_events", status_code=204,
             response_class=Response,
             responses={**_SIGNED, 400: problem_schema("The body is not a JSON array of events")},
             summary="SendGrid Event Webhook (ECDSA-signed): delivered, bounce, spamreport, dropped")
async def sendgrid_events(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    settings = request.app.state.settings
    body = await request.body()
    key = settings.sendgrid_webhook_public_key
    if not key or not sendgrid.valid_event_signature(key, body, request.headers.get(sendgrid.SIGNATURE_HEADER),
                                                     request.headers.get(sendgrid.TIMESTAMP_HEADER)):
        raise Forbidden("The SendGrid signature does not match")
    try:
        events = json.loads(body)
        assert isinstance(events, list)
    except (ValueError, AssertionError):
        raise BadRequest("Expected a JSON array of events") from None
    async with session.begin():
        for e in events:
            if isinstance(e, dict):
                await _sendgrid_event(session, workspace_id, e)
    return Response(status_code=204)


async def _sendgrid_event(session: Any, ws: uuid.UUID, e: dict[str, Any]) -> None:
    mid, kind, address = e.get("tenure_message_id"), e.get("event"), str(e.get("email") or "")
    try:
        message_id = uuid.UUID(str(mid))
    except ValueError:
        return  # not one of ours
    row = (await session.execute(text(
        "select id, status, metadata, to_address from delivery.messages where workspace_id = :ws and id = :id "
        "for update"), {"ws": ws, "id": message_id})).mappings().first()
    if row is None:
        return
    message = dict(row)
    who = consent.identity_of(message)
    changed = False  # SendGrid retries (and replays) must not report the same event twice
    if kind == "delivered" and message["status"] == "sent":
        await session.execute(text("update delivery.messages set status = 'delivered', updated_at = now() "
                                   "where id = :id"), {"id": message_id})
        metrics.MESSAGES.labels("email", "delivered").inc()
        changed = True
    elif kind == "bounce" and e.get("type", "bounce") == "bounce" or kind == "dropped":
        res = await session.execute(text(
            "update delivery.messages set status = 'bounced', last_error = :why, updated_at = now() "
            "where id = :id and status in ('sent', 'delivered')"),
            {"id": message_id, "why": f"SendGrid {kind}: {e.get('reason', '')}"[:500]})
        changed = bool(res.rowcount)
        if changed:
            metrics.MESSAGES.labels("email", "bounced").inc()
        if kind == "bounce":
            changed |= await consent.suppress(session, ws, "email", address or message["to_address"], "hard_bounce",
                                              "sendgrid", who)
    elif kind == "spamreport":
        changed = await consent.suppress(session, ws, "email", address or message["to_address"], "complaint",
                                         "sendgrid", who)
    if changed:
        await consent.queue_event(session, ws, who, {
            "delivered": "Email Delivered", "bounce": "Email Bounced", "dropped": "Email Bounced",
            "spamreport": "Email Marked as Spam"}[kind], {"message_id": str(message_id), "provider": "sendgrid"})
