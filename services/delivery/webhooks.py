"""Provider webhooks: Twilio's SMS status callbacks and inbound messages (STOP / START / HELP).

Each request is verified as Twilio documents (``X-Twilio-Signature`` over the URL Twilio called and the
sorted form parameters, with the auth token) before anything is read from it; an unsigned or wrongly
signed call is a 403. The URL names the workspace, so one Twilio account can serve several.
"""

import uuid
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from services.delivery import consent, sms
from shared.db import SessionDep
from shared.errors import Forbidden

router = APIRouter(prefix="/webhooks", tags=["provider webhooks"])
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


@router.post("/twilio/{workspace_id}/status", operation_id="twilio_status_callback",
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
            await consent.queue_event(session, workspace_id, consent.identity_of(dict(row)),
                                      "SMS Delivered" if ours == "delivered" else "SMS Failed",
                                      {"message_id": str(row["id"]), "status": status})
    return Response(status_code=204)


@router.post("/twilio/{workspace_id}/inbound", operation_id="twilio_inbound_sms",
             summary="Twilio inbound SMS (signed): STOP opts out, START opts in, HELP answers")
async def twilio_inbound(workspace_id: uuid.UUID, request: Request, session: SessionDep) -> Response:
    form = await _verified_form(request)
    number, word = form.get("From", ""), sms.keyword(form.get("Body", ""))
    async with session.begin():
        if word == "stop":
            await consent.suppress(session, workspace_id, "sms", number, "unsubscribed", "sms_keyword")
        elif word == "start":
            await consent.unsuppress(session, workspace_id, "sms", number, "sms_keyword")
    return _twiml(HELP_TEXT if word == "help" else None)
