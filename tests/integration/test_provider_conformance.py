"""Delivery checked the way an outside checker with real clients would: the providers' own libraries sign
the webhooks (twilio's RequestValidator, sendgrid's EventWebhook), mail is parsed with the stdlib email
parser as a mailbox provider reads it, and everything reaches delivery over HTTP on loopback (a uvicorn
server), never in-process. Payloads have the shapes the providers document."""

import asyncio
import base64
import email
import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email import policy
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import text
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from services.delivery import sendgrid as our_sendgrid
from services.delivery import sending, sms
from services.delivery.app import create_app
from services.delivery.mailer import SendError
from shared.embedded import free_port
from shared.settings import Settings
from shared.testing import http_server, smtp_server

SID, TOKEN, SHARED_KEY = "AC" + "1" * 32, "conformance-auth-token", "webhooks-shared-key-secret"
PUBLIC = "https://hooks.acme.example/delivery"  # what Twilio calls; a proxy forwards to our loopback port


@contextmanager
def delivery_over_http(settings: Settings) -> Iterator[str]:
    """The delivery API served by uvicorn on a loopback port; yields its base URL."""
    with http_server(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def assert_problem(resp: httpx.Response, status: int, detail: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert detail in resp.json()["detail"], resp.json()


class FakeTwilio:
    """Twilio's Messages resource as Twilio answers: 201 with the message JSON, errors as
    ``{"code", "message", "more_info", "status"}``; it records every request as it arrived."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.app = FastAPI()

        @self.app.post("/2010-04-01/Accounts/{account}/Messages.json")
        async def create(account: str, request: Request) -> JSONResponse:
            form = await request.form()
            self.requests.append({"content_type": request.headers.get("content-type", ""),
                                  "authorization": request.headers.get("authorization", ""),
                                  "form": dict(form.multi_items())})
            if request.headers.get("authorization") != "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode():
                return self.error(20003, "Authenticate", 401)
            to = str(form.get("To", ""))
            if to.endswith("0101"):
                return self.error(21211, f"Invalid 'To' Phone Number: {to}", 400)
            if to.endswith("0102"):
                return self.error(21610, "Attempt to send to unsubscribed recipient", 400)
            if to.endswith("0103"):
                return self.error(20429, "Too Many Requests", 429, {"Retry-After": "7"})
            sid = "SM" + uuid.uuid4().hex
            return JSONResponse({
                "account_sid": account, "api_version": "2010-04-01", "body": form.get("Body"),
                "date_created": "Fri, 27 Nov 2026 12:00:00 +0000", "direction": "outbound-api", "error_code": None,
                "error_message": None, "from": form.get("From"), "messaging_service_sid": form.get(
                    "MessagingServiceSid"), "num_media": "0", "num_segments": "1", "price": None, "sid": sid,
                "status": "accepted" if form.get("MessagingServiceSid") else "queued", "to": to,
                "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json"}, status_code=201)

    @staticmethod
    def error(code: int, message: str, status: int, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                             "status": status}, status_code=status, headers=headers)


@pytest.fixture
def twilio() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with http_server(fake.app) as port:
        yield fake, f"http://127.0.0.1:{port}"


def sms_settings(settings: Settings, twilio_url: str, **extra) -> Settings:
    return settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                       "twilio_from": "+14155550199", "twilio_base_url": twilio_url,
                                       "delivery_public_url": PUBLIC, **extra})


async def test_twilio_messages_request_matches_the_official_sdk_and_errors_are_sorted(settings, twilio) -> None:
    fake, url = twilio
    cfg = sms_settings(settings, url)
    client = Client(SID, TOKEN)
    client.api.base_url = url  # the official SDK, pointed at the same Twilio-speaking server
    callback = f"{PUBLIC}/webhooks/twilio/{uuid.uuid4()}/status"
    sdk = await asyncio.to_thread(client.messages.create, to="+14155550100", from_="+14155550199",
                                  body="Your code is 1234", status_callback=callback)
    async with httpx.AsyncClient() as http:
        ours = await sms.send(cfg, http, "+14155550100", "Your code is 1234", callback)
        assert sdk.sid.startswith("SM") and ours.startswith("SM")
        theirs_req, our_req = fake.requests
        assert our_req == theirs_req  # same form fields and values, form encoding, Basic AccountSid:AuthToken
        assert our_req["form"] == {"To": "+14155550100", "From": "+14155550199", "Body": "Your code is 1234",
                                   "StatusCallback": callback}
        # a Messaging Service sends as MessagingServiceSid, as the SDK does with messaging_service_sid=
        await sms.send(cfg.model_copy(update={"twilio_from": "MG" + "2" * 32}), http, "+14155550100", "x", None)
        assert fake.requests[-1]["form"] == {"To": "+14155550100", "MessagingServiceSid": "MG" + "2" * 32,
                                             "Body": "x"}

        # Twilio's error bodies, read by the SDK and by us the same way
        with pytest.raises(TwilioRestException) as sdk_error:
            await asyncio.to_thread(client.messages.create, to="+14155550101", from_="+14155550199", body="x")
        assert (sdk_error.value.code, sdk_error.value.status) == (21211, 400)
        outcomes = {}
        for to in ("+14155550101", "+14155550102", "+14155550103"):
            with pytest.raises(SendError) as err:
                await sms.send(cfg, http, to, "x", None)
            outcomes[to] = (type(err.value).__name__, err.value.permanent, err.value.retry_after_s, str(err.value))
    assert outcomes["+14155550101"][:3] == ("SendError", True, None) and "21211" in outcomes["+14155550101"][3]
    assert outcomes["+14155550102"][:2] == ("Unsubscribed", True)  # 21610: the number replied STOP
    # 20429: never processed, safe to retry, and not before Twilio's Retry-After
    assert outcomes["+14155550103"][:3] == ("SendError", False, 7.0)


def twilio_form(**fields: str) -> dict[str, str]:
    """The parameters Twilio posts (empty ones included: they are signed too)."""
    return {"AccountSid": SID, "ApiVersion": "2010-04-01", "From": "+14155550100", "To": "+14155550199",
            "FromCity": "", "FromState": "CA", "FromZip": "", "FromCountry": "US", "ToCity": "", "ToState": "",
            "ToZip": "", "ToCountry": "US", **fields}


async def test_twilio_status_callbacks_signed_by_twilios_own_validator(apps, workspace, settings, sessionmaker,
                                                                       twilio) -> None:
    fake, twilio_url = twilio
    cfg = sms_settings(settings, twilio_url, twilio_webhook_shared_key=SHARED_KEY)
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    ids = []
    for n in range(3):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": "+14155550100", "text": f"Code {n}",
            "message_type": "transactional", "metadata": {"userId": f"sms-user-{ws}"}})
        ids.append(r.json()["id"])
    # without a public URL there is no status callback to give Twilio (an internal URL is its error 21609)
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = now() + interval '1 hour' "
                             "where id = :id"), {"id": ids[2]})
    await sending.send_due(sessionmaker, cfg)
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"), {"id": ids[2]})
    await sending.send_due(sessionmaker, cfg.model_copy(update={"delivery_public_url": None}))
    sent = [(await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for i in ids]
    assert [m["status"] for m in sent] == ["sent", "sent", "sent"]
    path = f"/webhooks/twilio/{ws}/status"
    callbacks = [r["form"].get("StatusCallback") for r in fake.requests if r["form"]["Body"].startswith("Code ")]
    assert callbacks == [PUBLIC + path, PUBLIC + path, None]
    validator = RequestValidator(TOKEN)

    def callback(message: dict, status: str, **extra: str) -> dict[str, str]:
        sid = message["provider_message_id"]
        return {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "MessageSid": sid, "AccountSid": SID,
                "From": "+14155550199", "To": "+14155550100", "ApiVersion": "2010-04-01", **extra}

    with delivery_over_http(cfg) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            delivered = callback(sent[0], "delivered")
            signed = {"X-Twilio-Signature": validator.compute_signature(PUBLIC + path, delivered),
                      "I-Twilio-Idempotency-Token": uuid.uuid4().hex}
            # the app sees http://127.0.0.1:port, Twilio signed the public URL: the public one is checked
            local = {"X-Twilio-Signature": validator.compute_signature(base + path, delivered)}
            assert_problem(await http.post(path, data=delivered, headers=local), 403, f"request to {PUBLIC}{path}")
            assert_problem(await http.post(path, data=delivered), 403, "Missing X-Twilio-Signature header")
            tampered = {**delivered, "MessageStatus": "failed"}
            assert_problem(await http.post(path, data=tampered, headers=signed), 403, "does not match")
            for _ in range(3):  # Twilio may deliver a callback more than once
                assert (await http.post(path, data=delivered, headers=signed)).status_code == 204
            late = callback(sent[0], "sent")  # out of order: never moves the message back
            assert (await http.post(path, data=late, headers={
                "X-Twilio-Signature": validator.compute_signature(PUBLIC + path, late)})).status_code == 204

            # Twilio's validator also accepts the URL with the default port: its signing is not consistent
            failed = callback(sent[1], "undelivered", ErrorCode="30003")
            with_port = PUBLIC.replace("example/", "example:443/") + path
            assert (await http.post(path, data=failed, headers={
                "X-Twilio-Signature": validator.compute_signature(with_port, failed)})).status_code == 204

            # a parameter sent twice: the validator signs each value, sorted (a dict would keep only one)
            repeated = {**callback(sent[1], "queued"), "ChannelPrefix": ["sms", "mms"]}

            class Multi(dict):
                def getall(self, name: str) -> list[str]:
                    value = self[name]
                    return value if isinstance(value, list) else [value]

            assert (await http.post(path, data=repeated, headers={
                "X-Twilio-Signature": validator.compute_signature(PUBLIC + path, Multi(repeated))})).status_code == 204

            # a Webhook Setting's SharedKey with HMAC-SHA256 (X-Twilio-Webhooks-Signature-Settings)
            shared_headers = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
            queued = callback(sent[1], "queued")
            good = RequestValidator(SHARED_KEY).compute_signature(PUBLIC + path, queued, "HMAC_SHA256")
            wrong_key = RequestValidator(TOKEN).compute_signature(PUBLIC + path, queued, "HMAC_SHA256")
            assert (await http.post(path, data=queued, headers={**shared_headers, "X-Twilio-Signature": good})
                    ).status_code == 204
            assert_problem(await http.post(path, data=queued, headers={**shared_headers,
                                                                        "X-Twilio-Signature": wrong_key}),
                           403, "does not match")

            # a JSON body: the URL carries bodySHA256 and the signature covers the URL only
            body = json.dumps(callback(sent[0], "delivered"))
            json_url = f"{path}?bodySHA256={validator.compute_hash(body)}"
            json_sig = {"X-Twilio-Signature": validator.compute_signature(PUBLIC + json_url, {}),
                        "Content-Type": "application/json"}
            assert (await http.post(json_url, content=body, headers=json_sig)).status_code == 204
            assert_problem(await http.post(json_url, content=body.replace("delivered", "failed"), headers=json_sig),
                           403, "does not match")

    got = [(await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for i in ids[:2]]
    assert got[0]["status"] == "delivered"
    assert got[1]["status"] == "failed" and "30003" in got[1]["last_error"]
    async with sessionmaker() as s:
        events = (await s.execute(text(
            "select payload->>'event' from delivery.feedback where workspace_id = :ws order by created_at"),
            {"ws": ws})).scalars().all()
    assert events == ["SMS Delivered", "SMS Failed"]  # duplicates reported nothing twice


async def test_twilio_inbound_keywords_and_a_late_duplicate_stop(apps, workspace, settings, sessionmaker) -> None:
    cfg = sms_settings(settings, "http://127.0.0.1:9")  # no sending here
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    path = f"/webhooks/twilio/{workspace.workspace_id}/inbound"
    validator = RequestValidator(TOKEN)
    # the number was texted for a known person: their STOP and START reach ingest as events about them
    for n, user in enumerate(("texted-before", "texted-last")):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": "+14155550100", "text": f"Hi {n}",
            "message_type": "transactional", "metadata": {"userId": user}})
        assert r.status_code in (200, 201, 202), r.text

    async def suppressed(number: str) -> bool:
        page = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "sms"})).json()
        return number in [x["address"] for x in page["suppressions"]]

    with delivery_over_http(cfg) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            async def reply(body: str, sid: str, number: str = "+14155550100", **extra: str) -> httpx.Response:
                form = twilio_form(Body=body, MessageSid=sid, SmsSid=sid, SmsMessageSid=sid, NumMedia="0",
                                   NumSegments="1", From=number, **extra)
                resp = await http.post(path, data=form, headers={
                    "X-Twilio-Signature": validator.compute_signature(PUBLIC + path, form),
                    "I-Twilio-Idempotency-Token": f"idem-{sid}"})
                assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/xml"), resp.text
                return resp

            stop_sid = "SM" + uuid.uuid4().hex
            stop = await reply("Stop ", stop_sid, OptOutType="STOP")
            assert ET.fromstring(stop.text).find("Message") is None  # Twilio itself confirms opt-outs
            assert await suppressed("+14155550100")
            help_reply = ET.fromstring((await reply("help", "SM" + uuid.uuid4().hex)).text)
            assert "Reply STOP" in help_reply.findtext("Message")
            # with Advanced Opt-Out, Twilio has answered HELP itself: a second answer would be a duplicate text
            answered = ET.fromstring((await reply("help", "SM" + uuid.uuid4().hex, OptOutType="HELP")).text)
            assert answered.find("Message") is None
            await reply("START", "SM" + uuid.uuid4().hex, OptOutType="START")
            assert not await suppressed("+14155550100")
            # Twilio retries the first STOP (our answer was lost): the later START must stand
            await reply("Stop ", stop_sid, OptOutType="STOP")
            assert not await suppressed("+14155550100")
            # Advanced Opt-Out classifies a localised keyword for us (OptOutType)
            await reply("ARRET", "SM" + uuid.uuid4().hex, number="+14155550111", OptOutType="STOP")
            assert await suppressed("+14155550111")
            # an ordinary reply changes nothing
            await reply("Stop sending me offers please", "SM" + uuid.uuid4().hex, number="+14155550112")
            assert not await suppressed("+14155550112")
    async with sessionmaker() as s:
        events = (await s.execute(text(
            "select payload->>'event', payload->>'userId', payload->'properties'->>'address' from delivery.feedback "
            "where workspace_id = :ws and payload->'properties'->>'channel' = 'sms' order by created_at"),
            {"ws": workspace.workspace_id})).all()
    # (a number nothing was sent to has nobody to report about)
    assert [tuple(e) for e in events] == [("Unsubscribed", "texted-last", "+14155550100"),
                                          ("Resubscribed", "texted-last", "+14155550100"),
                                          ("Opted In", "texted-last", "+14155550100")]  # START is consent
    async with sessionmaker() as s, s.begin():  # (never sent here: not left due for the next test's worker run)
        await s.execute(text("delete from delivery.messages where workspace_id = :ws and status = 'queued'"),
                        {"ws": workspace.workspace_id})


async def test_a_status_callback_that_beats_our_commit_is_applied(apps, workspace, settings, sessionmaker) -> None:
    """Twilio may deliver a message, and call its StatusCallback, before its answer to our POST has reached us:
    the callback then names a MessageSid we have not stored yet. Twilio does not retry a status callback
    answered with an error (its default retry policy covers connection failures only), so the callback is kept
    and applied when the send is recorded: the message ends up delivered, reported once."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    validator = RequestValidator(TOKEN)
    delivery: dict[str, str] = {}
    answered: list[int] = []
    fake = FastAPI()

    @fake.post("/2010-04-01/Accounts/{account}/Messages.json")
    async def create(account: str, request: Request) -> JSONResponse:
        form = await request.form()
        sid, callback_url = "SM" + uuid.uuid4().hex, str(form["StatusCallback"])
        status = "undelivered" if str(form["To"]).endswith("0104") else "delivered"
        params = {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "MessageSid": sid, "AccountSid": SID,
                  "From": "+14155550199", "To": str(form["To"]), "ApiVersion": "2010-04-01",
                  **({"ErrorCode": "30005"} if status == "undelivered" else {})}
        async with httpx.AsyncClient() as http:  # (a proxy strips PUBLIC's path prefix)
            r = await http.post(delivery["base"] + callback_url.removeprefix(PUBLIC), data=params, headers={
                "X-Twilio-Signature": validator.compute_signature(callback_url, params)})
        if str(form["Body"]).endswith(f"({ws})"):  # (texts other tests left retrying go through this server too)
            answered.append(r.status_code)
        return JSONResponse({"sid": sid, "status": "queued", "to": str(form["To"])}, status_code=201)

    with http_server(fake) as port:
        cfg = sms_settings(settings, f"http://127.0.0.1:{port}")
        with delivery_over_http(cfg) as base:
            delivery["base"] = base
            ids = []
            for to in ("+14155550100", "+14155550104"):
                r = await apps["delivery"].post("/v1/messages", headers=h, json={
                    "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": to, "text": f"Your code is 1234 ({ws})",
                    "message_type": "transactional", "metadata": {"userId": f"early-{ws}"}})
                ids.append(r.json()["id"])
            await sending.send_due(sessionmaker, cfg)
            assert answered == [204, 204]
            got = [(await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for i in ids]
            assert [g["status"] for g in got] == ["delivered", "failed"], got
            assert "30005" in got[1]["last_error"]
            # Twilio repeats a callback, or a late "sent" comes: nothing moves back, nothing is reported twice
            async with httpx.AsyncClient(base_url=base) as http:
                for status in ("delivered", "sent"):
                    params = {"MessageSid": got[0]["provider_message_id"], "MessageStatus": status, "AccountSid": SID}
                    path = f"/webhooks/twilio/{ws}/status"
                    r = await http.post(path, data=params, headers={
                        "X-Twilio-Signature": validator.compute_signature(PUBLIC + path, params)})
                    assert r.status_code == 204
    assert (await apps["delivery"].get(f"/v1/messages/{ids[0]}", headers=h)).json()["status"] == "delivered"
    async with sessionmaker() as s:
        events = (await s.execute(text(
            "select payload->>'event' from delivery.feedback where workspace_id = :ws order by created_at"),
            {"ws": ws})).scalars().all()
        kept = (await s.execute(text("select count(*) from delivery.early_events where workspace_id = :ws"),
                                {"ws": ws})).scalar_one()
    assert sorted(events) == ["SMS Delivered", "SMS Failed"] and kept == 0  # applied, so no longer kept


def sendgrid_signed(key: ec.EllipticCurvePrivateKey, events: list[dict], age_s: int = 0) -> tuple[bytes, dict]:
    """A request as SendGrid's signed Event Webhook sends it: ECDSA P-256/SHA-256 over timestamp + raw body."""
    raw, ts = json.dumps(events).encode(), str(int(time.time()) - age_s)
    sig = base64.b64encode(key.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    return raw, {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                 "Content-Type": "application/json", "User-Agent": "SendGrid Event API"}


async def test_sendgrid_event_webhook_as_sendgrid_signs_it(apps, workspace, settings, sessionmaker) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:6]
    ids = {}
    for who in ("ok", "gone", "quit", "listed"):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"{who}-{tag}", "to": f"{who}-{tag}@example.com", "subject": "Hi", "text": "x",
            "metadata": {"userId": f"sg-{tag}"}})
        ids[who] = r.json()["id"]
    async with sessionmaker() as s, s.begin():  # as if SendGrid had taken them
        await s.execute(text("update delivery.messages set status = 'sent', sent_at = now() "
                             "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(ids.values())})

    def events() -> list[dict]:
        """The batch as SendGrid documents it; a retry carries new sg_event_ids."""
        now = int(time.time())

        def event(who: str, kind: str, **extra) -> dict:
            return {"email": f"{who}-{tag}@example.com", "timestamp": now, "event": kind,
                    "smtp-id": f"<{ids[who]}@example.com>", "sg_event_id": base64.urlsafe_b64encode(
                        uuid.uuid4().bytes).decode().rstrip("="), "sg_message_id": f"sg{tag}.filter0001.16648.0",
                    "category": ["newsletter"], "tenure_message_id": ids[who], **extra}

        return [event("ok", "processed"), event("ok", "delivered", response="250 OK", ip="168.1.1.1", tls=1),
                event("gone", "bounce", type="bounce", status="5.1.1", bounce_classification="Invalid Address",
                      reason="550 5.1.1 The email account that you tried to reach does not exist"),
                event("ok", "open", useragent="Mozilla/5.0", sg_machine_open=False),
                event("quit", "delivered", response="250 OK"), event("quit", "unsubscribe"),  # SendGrid's own link
                event("listed", "dropped", reason="Bounced Address")]  # on SendGrid's bounce list already

    path = f"/webhooks/sendgrid/{ws}/events"
    raw, headers = sendgrid_signed(key, events())
    # the fixture signs exactly as SendGrid does: SendGrid's own helper verifies it with the key as shown
    helper = EventWebhook(public)
    assert helper.verify_signature(raw.decode(), headers["X-Twilio-Email-Event-Webhook-Signature"],
                                   headers["X-Twilio-Email-Event-Webhook-Timestamp"])
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for configured in (public, pem):  # the key as SendGrid shows it, or as PEM
        assert our_sendgrid.valid_event_signature(configured, raw, headers["X-Twilio-Email-Event-Webhook-Signature"],
                                              headers["X-Twilio-Email-Event-Webhook-Timestamp"])
    with delivery_over_http(settings.model_copy(update={"sendgrid_webhook_public_key": public})) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            assert_problem(await http.post(path, content=raw, headers={"Content-Type": "application/json"}), 403,
                           "Missing X-Twilio-Email-Event-Webhook-Signature")
            tampered = raw.replace(b'"bounce"', b'"delivered"')
            assert not helper.verify_signature(tampered.decode(), headers["X-Twilio-Email-Event-Webhook-Signature"],
                                               headers["X-Twilio-Email-Event-Webhook-Timestamp"])
            assert_problem(await http.post(path, content=tampered, headers=headers), 403,
                           "The SendGrid signature does not match the timestamp and body")
            old_raw, old = sendgrid_signed(key, events(), age_s=2 * 86400)  # captured, replayed two days later
            assert_problem(await http.post(path, content=old_raw, headers=old), 403, "a replay?")
            late_raw, late = sendgrid_signed(key, events(), age_s=6 * 3600)  # a retry SendGrid did not sign anew
            assert (await http.post(path, content=late_raw, headers=late)).status_code == 204
            assert (await http.post(path, content=raw, headers=headers)).status_code == 204
            for _ in range(2):  # SendGrid's retries: the same events, re-signed, with new sg_event_ids
                again_raw, again = sendgrid_signed(key, events())
                assert (await http.post(path, content=again_raw, headers=again)).status_code == 204
    got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json()["status"] for w, i in ids.items()}
    assert got == {"ok": "delivered", "gone": "bounced", "quit": "delivered", "listed": "bounced"}
    sup = {x["address"]: x["reason"] for x in (await apps["delivery"].get(
        "/v1/suppressions", headers=h, params={"channel": "email"})).json()["suppressions"]}
    assert sup == {f"gone-{tag}@example.com": "hard_bounce", f"quit-{tag}@example.com": "unsubscribed",
                   f"listed-{tag}@example.com": "hard_bounce"}
    async with sessionmaker() as s:
        names = (await s.execute(text("select payload->>'event' from delivery.feedback where workspace_id = :ws"),
                                 {"ws": ws})).scalars().all()
    assert sorted(names) == ["Email Bounced", "Email Bounced", "Email Delivered", "Email Delivered",
                             "Subscription Changed", "Subscription Changed", "Unsubscribed"]  # each once


async def test_one_sendgrid_event_webhook_serves_every_workspace(apps, workspace, settings, sessionmaker) -> None:
    """SendGrid is configured once per deployment, so its single Event Webhook URL names one workspace at most
    (or none: /webhooks/sendgrid/events), while the mail it reports is every workspace's. A bounce of workspace
    B's message posted to A's URL was answered 204 and dropped: B's address was never suppressed. Each event now
    goes to its message's workspace, early ones (the send not recorded yet) included."""
    from services.delivery import provider_events
    from shared.core import create_workspace

    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    async with sessionmaker() as s, s.begin():
        other = await create_workspace(s, f"test-{uuid.uuid4().hex[:8]}")
    tag = uuid.uuid4().hex[:6]
    ids: dict[str, str] = {}
    for ws, who in ((workspace, "a"), (other, "b"), (other, "b2"), (other, "early")):
        r = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {ws.secret_key}"}, json={
            "idempotency_key": f"{who}-{tag}", "to": f"{who}-{tag}@example.com", "subject": "Hi", "text": "x",
            "metadata": {"userId": f"sg-{who}-{tag}", "campaign_id": f"c-{tag}"}})
        ids[who] = r.json()["id"]
    async with sessionmaker() as s, s.begin():  # as if SendGrid had taken them; the early one's 202 not recorded yet
        await s.execute(text("update delivery.messages set status = case when id = :early then 'sending' else "
                             "'sent' end, sent_at = now() where id = any(CAST(:ids AS uuid[]))"),
                        {"ids": list(ids.values()), "early": ids["early"]})

    def event(who: str, kind: str, **extra) -> dict:
        return {"email": f"{who}-{tag}@example.com", "timestamp": int(time.time()), "event": kind,
                "sg_event_id": uuid.uuid4().hex, "tenure_message_id": ids[who], **extra}

    bounce = {"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 unknown user"}
    with delivery_over_http(settings.model_copy(update={"sendgrid_webhook_public_key": public})) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            # the earlier URL, naming workspace A, gets a batch of both workspaces' events
            raw, headers = sendgrid_signed(key, [event("a", "delivered"), event("b", "bounce", **bounce),
                                                 event("early", "bounce", **bounce)])
            assert (await http.post(f"/webhooks/sendgrid/{workspace.workspace_id}/events", content=raw,
                                    headers=headers)).status_code == 204
            # the deployment's URL, naming none
            raw, headers = sendgrid_signed(key, [event("b2", "spamreport")])
            assert (await http.post("/webhooks/sendgrid/events", content=raw, headers=headers)).status_code == 204
            assert_problem(await http.post("/webhooks/sendgrid/events", content=raw, headers={
                "Content-Type": "application/json"}), 403, "Missing X-Twilio-Email-Event-Webhook-Signature")
    async with sessionmaker() as s, s.begin():  # the early one's send is recorded: what was kept for it applies
        await s.execute(text("update delivery.messages set status = 'sent' where id = :id"), {"id": ids["early"]})
        assert await provider_events.apply_held(s, [ids["early"]]) == 1

    def auth(ws) -> dict:
        return {"Authorization": f"Bearer {ws.secret_key}"}

    got = {w: (await apps["delivery"].get(f"/v1/messages/{ids[w]}", headers=auth(ws))).json()["status"]
           for ws, w in ((workspace, "a"), (other, "b"), (other, "b2"), (other, "early"))}
    assert got == {"a": "delivered", "b": "bounced", "b2": "sent", "early": "bounced"}
    sup = {ws.name: {x["address"]: x["reason"] for x in (await apps["delivery"].get(
        "/v1/suppressions", headers=auth(ws), params={"channel": "email"})).json()["suppressions"]}
        for ws in (workspace, other)}
    assert sup == {workspace.name: {}, other.name: {f"b-{tag}@example.com": "hard_bounce",
                                                    f"b2-{tag}@example.com": "complaint",
                                                    f"early-{tag}@example.com": "hard_bounce"}}
    async with sessionmaker() as s:
        reported = sorted((str(r[0]) == str(other.workspace_id), r[1], r[2]) for r in await s.execute(text(
            "select workspace_id, payload->>'event', payload->>'userId' from delivery.feedback "
            "where workspace_id = any(CAST(:ws AS uuid[])) and payload->>'event' like 'Email %'"),
            {"ws": [workspace.workspace_id, other.workspace_id]}))
    assert reported == [(False, "Email Delivered", f"sg-a-{tag}"), (True, "Email Bounced", f"sg-b-{tag}"),
                        (True, "Email Bounced", f"sg-early-{tag}"), (True, "Email Marked as Spam", f"sg-b2-{tag}")]


async def test_sendgrid_events_that_beat_our_commit_are_applied(apps, workspace, settings, sessionmaker) -> None:
    """SendGrid may post a message's events before its 202 has reached us (the message is still `sending`
    here): they are kept and applied when the send is recorded — delivered, or bounced with the address
    suppressed — each reported once."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:6]
    delivery: dict[str, str] = {}
    answered: list[int] = []
    fake = FastAPI()

    @fake.post("/v3/mail/send")
    async def mail_send(request: Request) -> Response:
        body = await request.json()
        to, mid = body["personalizations"][0]["to"][0]["email"], body["custom_args"]["tenure_message_id"]
        if tag not in to:  # another test's message still due in the shared database: taken, no events
            return Response(status_code=202, headers={"X-Message-Id": f"other{tag}"})
        event = {"email": to, "timestamp": int(time.time()), "tenure_message_id": mid, "sg_event_id": uuid.uuid4().hex,
                 "sg_message_id": f"sg{tag}.filter0001", **({"event": "bounce", "type": "bounce", "status": "5.1.1",
                                                             "reason": "550 5.1.1 unknown user"}
                                                            if to.startswith("gone") else {"event": "delivered"})}
        raw, headers = sendgrid_signed(key, [{**event, "event": "processed"}, event])
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{delivery['base']}/webhooks/sendgrid/events", content=raw, headers=headers)
        answered.append(r.status_code)
        return Response(status_code=202, headers={"X-Message-Id": f"sg{tag}"})

    with http_server(fake) as port, delivery_over_http(
            settings.model_copy(update={"sendgrid_webhook_public_key": public})) as base:
        delivery["base"] = base
        cfg = settings.model_copy(update={"email_provider": "sendgrid", "sendgrid_api_key": "SG.key",
                                          "sendgrid_base_url": f"http://127.0.0.1:{port}"})
        ids = {}
        for who in ("ok", "gone"):
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"early-{who}-{tag}", "to": f"{who}-{tag}@example.com", "subject": "Hi",
                "text": "x", "message_type": "transactional", "metadata": {"userId": f"sg-early-{tag}"}})
            ids[who] = r.json()["id"]
        await sending.send_due(sessionmaker, cfg)
    assert answered == [204, 204]
    got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json()["status"] for w, i in ids.items()}
    assert got == {"ok": "delivered", "gone": "bounced"}
    sup = {x["address"]: x["reason"] for x in (await apps["delivery"].get(
        "/v1/suppressions", headers=h, params={"channel": "email"})).json()["suppressions"]}
    assert sup == {f"gone-{tag}@example.com": "hard_bounce"}
    async with sessionmaker() as s:
        names = (await s.execute(text("select payload->>'event' from delivery.feedback where workspace_id = :ws"),
                                 {"ws": ws})).scalars().all()
        kept = (await s.execute(text("select count(*) from delivery.early_events where workspace_id = :ws"),
                                {"ws": ws})).scalar_one()
    assert sorted(names) == ["Email Bounced", "Email Delivered", "Subscription Changed"] and kept == 0


class _Sink:
    """An SMTP server keeping each message's raw bytes; refuses the first DATA to ``retry-…`` recipients
    with a 451 (try again later), as a greylisting server does."""

    def __init__(self) -> None:
        self.raw: list[tuple[str, bytes, bool]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: ANN001
        if address.startswith("unknown-"):  # (aiosmtpd's hook: the mailbox does not exist)
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd's hook
        to = envelope.rcpt_tos[0]
        refuse = to.startswith("retry-") and not any(t == to for t, _, _ in self.raw)
        self.raw.append((to, envelope.original_content, not refuse))
        return "451 4.7.1 Greylisted, try again later" if refuse else "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[_Sink, int]]:
    handler = _Sink()
    with smtp_server(handler) as port:
        yield handler, port


async def test_one_click_unsubscribe_as_mailbox_providers_do_it(apps, workspace, settings, sessionmaker,
                                                                sink) -> None:
    box, smtp_port = sink
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    with delivery_over_http(settings) as base:
        cfg = settings.model_copy(update={"smtp_port": smtp_port, "delivery_public_url": base})

        async def send(to: str, message_type: str = "marketing") -> tuple[str, email.message.Message]:
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Our offers this week, in full detail",
                "html": "<p>Offers</p>", "text": "Offers", "message_type": message_type})
            for _ in range(2):  # a greylisted first attempt is retried
                async with sessionmaker() as s, s.begin():
                    await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"),
                                    {"id": r.json()["id"]})
                await sending.send_due(sessionmaker, cfg)
            copies = [raw for t, raw, _ in box.raw if t == to]
            accepted = next(raw for t, raw, ok in box.raw if t == to and ok)
            # the same Message-ID on every attempt: a receiver can tell a retry from a new message
            assert len({email.message_from_bytes(c)["Message-ID"] for c in copies}) == 1
            modern = email.message_from_bytes(accepted, policy=policy.default)
            plain = email.message_from_bytes(accepted)  # the plain stdlib parser (compat32): nothing decoded
            assert modern["List-Unsubscribe"] == plain["List-Unsubscribe"]  # both parsers read the same URL
            return r.json()["id"], plain

        async def unsubscribed(address: str) -> bool:
            return (await apps["delivery"].get(f"/v1/preferences/{address}", headers=h)).json()["unsubscribed"]

        mid, mail = await send(f"retry-{tag}@example.com")
        assert len([1 for t, _, _ in box.raw if t == f"retry-{tag}@example.com"]) == 2
        assert mail["Message-ID"].startswith(f"<{mid}@")
        # RFC 2369/8058 headers as written: one angle-bracketed https URL, not RFC 2047 encoded-words
        value = mail["List-Unsubscribe"]
        assert re.fullmatch(r"<[^<>\s]+>", value), value
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsub = value[1:-1]
        assert unsub.startswith(base + "/u/")

        async with httpx.AsyncClient() as client:  # a mailbox provider: no cookies, no credentials
            page = await client.get(unsub, headers={"User-Agent": "Mozilla/5.0 (link preview)"})
            assert page.status_code == 200 and re.search(r'<form method="post"', page.text)
            assert not await unsubscribed(f"retry-{tag}@example.com")  # a GET never unsubscribes
            token = urlsplit(unsub).path.rsplit("/", 1)[1]
            forged = unsub[:-len(token)] + token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
            assert_problem(await client.post(forged, data={"List-Unsubscribe": "One-Click"}), 400,
                           "This link is not valid")
            assert not await unsubscribed(f"retry-{tag}@example.com")
            # Gmail may post multipart/form-data
            done = await client.post(unsub, files={"List-Unsubscribe": (None, "One-Click")})
            assert done.status_code == 200 and done.request.headers["content-type"].startswith("multipart/form-data")
            assert await unsubscribed(f"retry-{tag}@example.com")

            _, other = await send(f"other-{tag}@example.com")
            done = await client.post(other["List-Unsubscribe"][1:-1], content=b"List-Unsubscribe=One-Click",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert done.status_code == 200 and await unsubscribed(f"other-{tag}@example.com")
            # a body that cannot be read as a form (multipart without its boundary): the signed URL still acts
            _, broken = await send(f"broken-{tag}@example.com")
            done = await client.post(broken["List-Unsubscribe"][1:-1], content=b"List-Unsubscribe=One-Click",
                                     headers={"Content-Type": "multipart/form-data"})
            assert done.status_code == 200 and await unsubscribed(f"broken-{tag}@example.com")

        # transactional mail carries no List-Unsubscribe (deliberate: receipts are not a list; docs/delivery.md)
        _, receipt = await send(f"receipt-{tag}@example.com", "transactional")
        assert receipt["List-Unsubscribe"] is None and receipt["List-Unsubscribe-Post"] is None
    async with sessionmaker() as s:
        sources = (await s.execute(text(
            "select address, source from delivery.consent_log where workspace_id = :ws order by at"),
            {"ws": workspace.workspace_id})).all()
    assert [tuple(r) for r in sources] == [(f"retry-{tag}@example.com", "one_click"),
                                           (f"other-{tag}@example.com", "one_click"),
                                           (f"broken-{tag}@example.com", "one_click")]


async def test_a_non_ascii_body_hash_is_refused_not_a_crash(settings) -> None:
    with delivery_over_http(sms_settings(settings, "http://127.0.0.1:9")) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            for query in ("bodySHA256=abc", "bodySHA256=%C3%A9"):
                r = await http.post(f"/webhooks/twilio/{uuid.uuid4()}/inbound?{query}", content=b"{}",
                                    headers={"X-Twilio-Signature": "x", "Content-Type": "application/json"})
                assert r.status_code == 403, (query, r.text)


async def test_internationalized_addresses_as_servers_with_and_without_smtputf8_take_them(apps, workspace, settings,
                                                                                         sessionmaker, sink) -> None:
    """A domain in Unicode (``bücher.example``) needs no SMTPUTF8: it goes out as its A-labels, which every
    server takes (it used to need SMTPUTF8, and a server without it left the message retrying for hours). A
    non-ASCII local part does need it: such a server fails the message at once, saying why, and one that
    offers SMTPUTF8 gets it as written."""
    utf8_box, utf8_port = sink  # (aiosmtpd's Controller offers SMTPUTF8 unless told not to)
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    box, plain_port = _Sink(), free_port()
    plain = Controller(box, hostname="127.0.0.1", port=plain_port, enable_SMTPUTF8=False)
    plain.start()

    async def send(port: int, to: str) -> dict:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "from": "Zoë <hello@bücher.example>", "subject": "Hallo",
            "text": "Hallo", "message_type": "transactional"})
        assert r.status_code == 202, r.text
        await sending.send_due(sessionmaker, settings.model_copy(update={"smtp_port": port}))
        return (await apps["delivery"].get(f"/v1/messages/{r.json()['id']}", headers=h)).json()

    try:
        sent = await send(plain_port, f"ada-{tag}@bücher.example")
        assert sent["status"] == "sent" and sent["to"] == f"ada-{tag}@bücher.example"  # kept as given
        ((rcpt, raw, _),) = [m for m in box.raw if tag in m[0]]
        assert rcpt == f"ada-{tag}@xn--bcher-kva.example"
        mail = email.message_from_bytes(raw, policy=policy.default)
        assert mail["To"] == f"ada-{tag}@xn--bcher-kva.example" and mail["From"] == "Zoë <hello@xn--bcher-kva.example>"
        assert mail["Message-ID"] == sent["provider_message_id"] == f"<{sent['id']}@xn--bcher-kva.example>"

        refused = await send(plain_port, f"zoë-{tag}@example.com")
        assert refused["status"] == "failed" and refused["attempts"] == 1, refused
        assert "SMTPUTF8" in refused["last_error"]
        assert [m for m in box.raw if tag in m[0]] == [(rcpt, raw, True)]  # nothing more was offered

        # a mailbox that does not exist is a hard bounce whatever its address's script (it was a plain failure,
        # its reason cut to "[550]", and the address was not suppressed)
        unknown = await send(utf8_port, f"unknown-zoë-{tag}@bücher.example")
        assert unknown["status"] == "bounced" and "550 5.1.1 no such user here" in unknown["last_error"], unknown
        suppressed = await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "email"})
        assert f"unknown-zoë-{tag}@bücher.example" in suppressed.text, suppressed.text

        taken = await send(utf8_port, f"zoë-{tag}@bücher.example")
        assert taken["status"] == "sent", taken
        ((rcpt, raw, _),) = utf8_box.raw
        assert rcpt == f"zoë-{tag}@bücher.example"
        assert email.message_from_bytes(raw, policy=policy.default)["To"] == f"zoë-{tag}@bücher.example"
    finally:
        plain.stop()


async def test_twilio_signs_the_configured_url_with_its_query_and_unicode_bodies(apps, workspace, settings) -> None:
    """A webhook URL configured in Twilio with a query string (percent-encoded, ``+``, a bare flag) is signed with
    it as written, and a reply's Body in any script (UTF-8 in the form) is signed as its characters; behind a proxy
    the X-Forwarded-* headers change nothing: the URL checked is TENURE_DELIVERY_PUBLIC_URL's."""
    cfg = sms_settings(settings, "http://127.0.0.1:9")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    validator = RequestValidator(TOKEN)
    path = f"/webhooks/twilio/{workspace.workspace_id}/inbound"
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "elsewhere.example", "X-Forwarded-For": "54.172.60.1"}
    with delivery_over_http(cfg) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            for n, query in enumerate(("", "?src=twilio", "?name=caf%C3%A9&x=a+b&y=%2F", "?flag")):
                number = f"+1415555012{n}"
                form = twilio_form(Body="ARRÊT 🛑" if n % 2 else "Stop", MessageSid="SM" + uuid.uuid4().hex,
                                   From=number, OptOutType="STOP", FromCity="SÃO PAULO")
                signed = {"X-Twilio-Signature": validator.compute_signature(PUBLIC + path + query, form), **proxy}
                resp = await http.post(path + query, data=form, headers=signed)
                assert resp.status_code == 200, (query, resp.text)
                assert_problem(await http.post(path + query, data={**form, "Body": "ARRET"}, headers=signed), 403,
                               "does not match")
    page = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "sms"})).json()
    assert {f"+1415555012{n}" for n in range(4)} <= {x["address"] for x in page["suppressions"]}


async def test_a_sendgrid_batch_in_raw_utf8_verifies(apps, workspace, settings, sessionmaker) -> None:
    """SendGrid posts UTF-8 as is (not \\u escapes): the signature covers those bytes, and verifies as SendGrid's
    own helper verifies it."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"utf8-{tag}", "to": f"zoë-{tag}@bücher.example", "subject": "Hallo", "text": "x"})
    mid = r.json()["id"]
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set status = 'sent', sent_at = now() where id = :id"),
                        {"id": mid})
    raw = json.dumps([{"email": f"zoë-{tag}@bücher.example", "event": "delivered", "timestamp": int(time.time()),
                       "tenure_message_id": mid, "category": ["Überraschung ✓"]}], ensure_ascii=False).encode()
    ts = str(int(time.time()))
    sig = base64.b64encode(key.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    assert EventWebhook(public).verify_signature(raw.decode(), sig, ts)
    with delivery_over_http(settings.model_copy(update={"sendgrid_webhook_public_key": public})) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            resp = await http.post(f"/webhooks/sendgrid/{workspace.workspace_id}/events", content=raw, headers={
                "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": sig,
                "X-Twilio-Email-Event-Webhook-Timestamp": ts})
            assert resp.status_code == 204, resp.text
    assert (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()["status"] == "delivered"


async def test_a_marketing_text_waits_for_the_recipients_hours_and_a_transactional_one_does_not(
        apps, workspace, settings, sessionmaker, twilio) -> None:
    """TCPA: no telephone solicitation before 8:00 or after 21:00 at the recipient's location. The window here is
    chosen to exclude the recipient's present hour (New York or Tokyo, whichever is in its day), so the test does
    not depend on when it runs."""
    fake, twilio_url = twilio
    now = datetime.now(UTC)
    number, zone = next((n, z) for n, z in (("+12125550199", "America/New_York"), ("+81312345678", "Asia/Tokyo"))
                        if 2 <= now.astimezone(ZoneInfo(z)).hour <= 20)
    cfg = sms_settings(settings, twilio_url, sms_marketing_hours="22:00-23:00")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["delivery"].post("/v1/sms-opt-ins", headers=h, json={"phone": number, "evidence": {
        "text": "Texts about offers, STOP to end", "source": "test"}})
    assert r.status_code == 201, r.text
    ids = {}
    for kind in ("marketing", "transactional"):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": number, "text": f"A {kind} text",
            "message_type": kind})
        ids[kind] = r.json()["id"]
    await sending.send_due(sessionmaker, cfg)
    assert [r["form"]["Body"] for r in fake.requests] == ["A transactional text"]
    held = (await apps["delivery"].get(f"/v1/messages/{ids['marketing']}", headers=h)).json()
    assert held["status"] == "queued" and "held" in held["last_error"] and zone in held["last_error"], held
    local = now.astimezone(ZoneInfo(zone))
    due = local.replace(hour=22, minute=0, second=0, microsecond=0)
    async with sessionmaker() as s:
        at, attempts, tries = (await s.execute(text(
            "select next_attempt_at, (select array_agg(outcome) from delivery.attempts where message_id = m.id), "
            "m.attempts from delivery.messages m where id = :id"), {"id": ids["marketing"]})).one()
    # held, not tried: the claim's attempt is given back (a night's wait does not use one of its tries)
    assert abs((at - due).total_seconds()) < 5 and attempts == ["deferred"] and tries == 0
    # another run before then sends nothing; when the hour comes (moved here), it goes
    await sending.send_due(sessionmaker, cfg)
    assert len(fake.requests) == 1
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"),
                        {"id": ids["marketing"]})
    await sending.send_due(sessionmaker, cfg.model_copy(update={"sms_marketing_hours": "00:00-24:00"}))
    assert [r["form"]["Body"] for r in fake.requests] == ["A transactional text", "A marketing text"]
    assert (await apps["delivery"].get(f"/v1/messages/{ids['marketing']}", headers=h)).json()["status"] == "sent"
