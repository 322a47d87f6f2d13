"""SMS through Twilio's Messages API — against a local HTTP server that answers as Twilio does — and
Twilio's signed webhooks (status callbacks, STOP/START/HELP), all through HTTP."""

import asyncio
import base64
import json
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from twilio.rest import Client

from services.delivery import sending, sms
from shared.testing import http_server

SID, TOKEN = "AC" + "0" * 32, "test-auth-token"


def _error(code: int, message: str, status: int) -> JSONResponse:
    """Twilio's error body (as its SDKs read it: ``code``, ``message``, ``more_info``, ``status``)."""
    return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


class FakeTwilio:
    """Twilio's Messages resource as far as delivery uses it: Basic auth, form fields, its error bodies, and
    the list of an account's messages (most recent first, filtered by ``To``). Numbers ending 0104 have their
    first message taken and then answered too late (after the client's timeout); 0105's first request gets a
    503 without being taken."""

    SLOW_S = 2.0

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.calls: dict[str, int] = {}
        self.messages: list[dict] = []  # what Twilio holds, as its list resource shows it
        self.queries: list[dict[str, str]] = []
        app = FastAPI()

        def authorized(account: str, request: Request) -> bool:
            auth = request.headers.get("authorization", "")
            return account == SID and auth == "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()

        @app.get("/2010-04-01/Accounts/{account}/Messages.json")
        async def listing(account: str, request: Request) -> JSONResponse:
            if not authorized(account, request):
                return _error(20003, "Authenticate", 401)
            self.queries.append(dict(request.query_params))
            to, size = request.query_params.get("To"), int(request.query_params.get("PageSize", 50))
            page = [m for m in reversed(self.messages) if to is None or m["to"] == to][:size]
            return JSONResponse({"messages": page, "page_size": size, "page": 0, "next_page_uri": None,
                                 "uri": str(request.url.path)})

        @app.post("/2010-04-01/Accounts/{account}/Messages.json")
        async def create(account: str, request: Request) -> JSONResponse:
            auth = request.headers.get("authorization", "")
            if account != SID or auth != "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode():
                return _error(20003, "Authenticate", 401)
            form = {k: str(v) for k, v in (await request.form()).items()}
            to = form.get("To", "")
            self.calls[to] = self.calls.get(to, 0) + 1
            if to.endswith("0101"):
                return _error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
            if to.endswith("0102"):
                return _error(21610, "Attempt to send to unsubscribed recipient", 400)
            if to.endswith("0103") and self.calls[to] == 1:
                return _error(20429, "Too Many Requests", 429)
            if to.endswith("0105") and self.calls[to] == 1:
                return _error(20500, "Internal Server Error", 503)
            self.received.append(form)
            taken = self.take(form)
            if to.endswith("0104") and self.calls[to] == 1:
                await asyncio.sleep(self.SLOW_S)  # taken, but the answer comes after the client gave up
            return JSONResponse(taken, status_code=201)

        self.app = app
        self.port = 0

    def take(self, form: dict[str, str]) -> dict:
        """Twilio creates the message (as its JSON shows it) and lists it from then on."""
        sid = "SM" + uuid.uuid4().hex
        sender = form.get("From")
        message = {"sid": sid, "account_sid": SID, "to": form["To"], "from": sender, "body": form.get("Body", ""),
                   "messaging_service_sid": form.get("MessagingServiceSid"), "direction": "outbound-api",
                   "status": "queued", "date_created": format_datetime(datetime.now(UTC)), "date_sent": None}
        self.messages.append(message)
        return message


@pytest.fixture
def twilio():
    fake = FakeTwilio()
    with http_server(fake.app) as port:
        fake.port = port
        yield fake


async def test_sms_outcomes_and_signed_webhooks(apps, workspace, sessionmaker, settings, twilio) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    sms_settings = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                               "twilio_from": "+14155550199",
                                               "twilio_base_url": f"http://127.0.0.1:{twilio.port}",
                                               "delivery_public_url": "https://hooks.example.test"})
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    delivery_app.state.settings = sms_settings  # the webhooks verify with this auth token
    tag = uuid.uuid4().hex[:6]

    async def post(to: str, **kw) -> dict:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"{to}-{tag}-{uuid.uuid4().hex[:4]}", "channel": "sms", "to": to,
            "text": "Your code is 1234", "message_type": "transactional", **kw})
        assert r.status_code == 202, r.text
        return r.json()

    bad = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"bad-{tag}", "channel": "sms", "to": "555-0100", "text": "x"})
    assert bad.status_code == 422 and "start it with + and the country code" in bad.text, bad.text
    for extra in ({"subject": "Your code"}, {"html": "<p>x</p>"}):  # taken, then dropped on the way to Twilio
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"extra-{tag}", "channel": "sms", "to": "+14155550100", "text": "x", **extra})
        assert r.status_code == 422 and "an SMS is its text alone" in r.text, r.text
    ok = await post("+1 (415) 555-0100")
    assert ok["to"] == "+14155550100"  # normalised to E.164
    invalid, stopped, limited = await post("+14155550101"), await post("+14155550102"), await post("+14155550103")
    try:
        await sending.send_due(sessionmaker, sms_settings)
        async with sessionmaker() as s, s.begin():  # the rate-limited one is due again at once
            await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"),
                            {"id": limited["id"]})
        await sending.send_due(sessionmaker, sms_settings)

        async def status(m: dict) -> dict:
            return (await apps["delivery"].get(f"/v1/messages/{m['id']}", headers=h)).json()

        got = [await status(m) for m in (ok, invalid, stopped, limited)]
        assert [g["status"] for g in got] == ["sent", "failed", "failed", "sent"]
        assert "21211" in got[1]["last_error"] and got[3]["attempts"] == 2
        sent = next(f for f in twilio.received if f["To"] == "+14155550100")
        assert sent["From"] == "+14155550199" and sent["Body"] == "Your code is 1234"
        assert sent["StatusCallback"].endswith(f"/webhooks/twilio/{ws}/status")
        # Twilio knew of a STOP we had missed: the number is suppressed here too
        suppressed = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "sms"})).json()
        assert "+14155550102" in [x["address"] for x in suppressed["suppressions"]]

        # a signed status callback moves the message to delivered; a forged one is refused
        path = f"/webhooks/twilio/{ws}/status"
        params = {"MessageSid": got[0]["provider_message_id"], "MessageStatus": "delivered", "AccountSid": SID}
        sig = sms.signature(TOKEN, sms_settings.public_url + path, params)
        forged = await apps["delivery"].post(path, data=params, headers={"X-Twilio-Signature": "bm9wZQ=="})
        assert forged.status_code == 403
        r = await apps["delivery"].post(path, data=params, headers={"X-Twilio-Signature": sig})
        assert r.status_code == 204 and (await status(ok))["status"] == "delivered"
        late = {**params, "MessageStatus": "sent"}  # out of order: never moves back
        await apps["delivery"].post(path, data=late, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, sms_settings.public_url + path, late)})
        assert (await status(ok))["status"] == "delivered"

        # inbound STOP / HELP / START
        inbound = f"/webhooks/twilio/{ws}/inbound"

        async def reply(body: str) -> str:
            form = {"From": "+14155550100", "To": "+14155550199", "Body": body, "AccountSid": SID}
            resp = await apps["delivery"].post(inbound, data=form, headers={
                "X-Twilio-Signature": sms.signature(TOKEN, sms_settings.public_url + inbound, form)})
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/xml")
            return resp.text

        assert "<Message>" not in await reply(" stop ")
        marketing = await post("+14155550100", message_type="marketing")
        assert marketing["status"] == "suppressed"
        # a STOP ends every text to the number, receipts and codes too (Twilio would refuse them: 21610)
        assert (await post("+14155550100"))["status"] == "suppressed"
        assert "Reply STOP" in await reply("HELP")
        await reply("START")
        assert (await post("+14155550100", message_type="marketing"))["status"] == "queued"
        assert (await post("+14155550100"))["status"] == "queued"
    finally:
        delivery_app.state.settings = settings


async def test_help_reply_names_the_brand_and_a_contact(apps, workspace, sessionmaker, settings) -> None:
    """US carriers (CTIA; A2P 10DLC campaign review) want a HELP reply to name the program or brand and give a
    contact, besides how to opt out. By default: the workspace's name and the address mail comes from; a
    workspace's own text (``sms_help_text``, e.g. the one registered for its 10DLC campaign) replaces it."""
    ws = workspace.workspace_id
    cfg = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                      "twilio_from": "+14155550199", "delivery_public_url": "https://hooks.example.test",
                                      "email_from": "Acme Support <support@acme.example>"})
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    delivery_app.state.settings = cfg
    path = f"/webhooks/twilio/{ws}/inbound"

    async def reply(body: str) -> str:
        form = {"From": "+14155550123", "To": "+14155550199", "Body": body, "AccountSid": SID,
                "MessageSid": "SM" + uuid.uuid4().hex}
        resp = await apps["delivery"].post(path, data=form, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + path, form)})
        assert resp.status_code == 200, resp.text
        return ET.fromstring(resp.text).findtext("Message") or ""

    try:
        text_ = await reply("HELP")
        assert workspace.name in text_ and "support@acme.example" in text_ and "STOP" in text_, text_
        own = "Acme Alerts: help at acme.example/help or 1-800-555-0100. Reply STOP to opt out. Msg&data rates may apply."
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update core.workspaces set settings = settings || CAST(:v AS jsonb) where id = :ws"),
                            {"v": json.dumps({"sms_help_text": own}), "ws": ws})
        assert await reply("info") == own
    finally:
        delivery_app.state.settings = settings


async def test_marketing_texts_go_only_to_numbers_that_opted_in(apps, workspace, sessionmaker) -> None:
    """TCPA: marketing texts need the recipient's prior express written consent. A number without an opt-in on
    record gets no marketing text (suppressed, saying why); transactional texts need none. The opt-in is recorded
    with its evidence, which the consent log keeps, and ingest hears `Opted In` about the person."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id

    async def text_to(number: str, kind: str = "marketing") -> dict:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": number, "text": "20% off today",
            "message_type": kind})
        assert r.status_code == 202, r.text
        return r.json()

    refused = await text_to("+14155550160")
    assert refused["status"] == "suppressed" and "no SMS opt-in" in refused["last_error"], refused
    assert (await text_to("+14155550160", "transactional"))["status"] == "queued"
    evidence = {"text": "Yes, text me offers. Msg & data rates may apply. Reply STOP to cancel.",
                "source": "checkout form", "ip": "203.0.113.7", "collected_at": "2026-11-29T10:00:00Z"}
    r = await apps["delivery"].post("/v1/sms-opt-ins", headers=h, json={
        "phone": "+1 (415) 555-0160", "user_id": "texter", "evidence": evidence})
    assert r.status_code == 201 and r.json()["phone"] == "+14155550160", r.text
    assert (await text_to("+14155550160"))["status"] == "queued"
    async with sessionmaker() as s:
        kept = (await s.execute(text(
            "select action, source, evidence from delivery.consent_log where workspace_id = :ws and address = :a"),
            {"ws": ws, "a": "+14155550160"})).all()
        events = (await s.execute(text(
            "select payload->>'event', payload->>'userId' from delivery.feedback where workspace_id = :ws"),
            {"ws": ws})).all()
    assert [(k.action, k.source, k.evidence) for k in kept] == [("opted_in", "api", evidence)]
    from services.delivery import privacy  # a privacy export of the person shows the evidence (IP, text) too
    async with sessionmaker() as s:
        export = await privacy.export(s, ws, [], ["+14155550160"])
    assert [(c["action"], c["evidence"]) for c in export["consent_log"]] == [("opted_in", evidence)]
    assert ("Opted In", "texter") in [tuple(e) for e in events]
    for bad, field in (({"phone": "555", "evidence": evidence}, "phone"), ({"phone": "+14155550161"}, "evidence"),
                       ({"phone": "+14155550161", "evidence": {"source": "form"}}, "evidence.text")):
        r = await apps["delivery"].post("/v1/sms-opt-ins", headers=h, json=bad)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert ["body", *field.split(".")] in [e["loc"] for e in r.json()["errors"]], r.text
    # a workspace that keeps consent elsewhere turns the check off
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = settings || '{\"sms_opt_in_required\": false}' "
                             "where id = :ws"), {"ws": ws})
    assert (await text_to("+14155550162"))["status"] == "queued"


async def test_a_text_twilio_took_without_answering_is_not_sent_twice(apps, workspace, sessionmaker, settings,
                                                                      twilio) -> None:
    """Twilio's Messages API has no idempotency key. An attempt that may have reached it unanswered (read
    timeout, 5xx) or whose worker died during the call is looked up in Twilio's message list before it is
    sent again: one text per intent, and one that Twilio never took still goes out."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    cfg = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                      "twilio_from": "+14155550199", "provider_timeout_s": 0.5,
                                      "twilio_base_url": f"http://127.0.0.1:{twilio.port}"})
    tag = uuid.uuid4().hex[:6]

    async def post(to: str, body: str) -> str:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"{tag}-{uuid.uuid4().hex[:6]}", "channel": "sms", "to": to, "text": body,
            "message_type": "transactional"})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    async def status(mid: str) -> dict:
        return (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()

    async def due_now(*ids: str) -> None:
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = now() where id = any(:ids)"),
                            {"ids": [uuid.UUID(i) for i in ids]})

    slow = await post("+14155550104", f"Your code is 4321 {tag}")
    refused = await post("+14155550105", f"Your code is 8765 {tag}")
    await sending.send_due(sessionmaker, cfg)
    first = {m: await status(m) for m in (slow, refused)}
    assert first[slow]["status"] == "queued" and "ReadTimeout" in first[slow]["last_error"]
    assert first[refused]["status"] == "queued" and "503" in first[refused]["last_error"]
    await asyncio.sleep(FakeTwilio.SLOW_S)  # (the slow answer is over)
    await due_now(slow, refused)
    await sending.send_due(sessionmaker, cfg)
    done = {m: await status(m) for m in (slow, refused)}
    assert [done[m]["status"] for m in (slow, refused)] == ["sent", "sent"]
    # the slow one: found at Twilio, not sent again; the refused one: not there, so sent
    assert twilio.calls["+14155550104"] == 1 and twilio.calls["+14155550105"] == 2
    held = {m["to"]: [x["sid"] for x in twilio.messages if x["to"] == m["to"]] for m in (done[slow], done[refused])}
    assert held == {"+14155550104": [done[slow]["provider_message_id"]],
                    "+14155550105": [done[refused]["provider_message_id"]]}
    assert sorted(q["To"] for q in twilio.queries) == ["+14155550104", "+14155550105"]  # (sent concurrently)

    async def died_during_the_call(mid: str) -> None:
        """Its worker died during the provider call: the message is claimed again after its lease."""
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set status = 'sending', attempts = 1, "
                                 "claimed_until = now() - interval '1 second', next_attempt_at = now() "
                                 "where id = :id"), {"id": uuid.UUID(mid)})

    # the same words again to the same number, and its worker died before Twilio took it: the text Twilio
    # lists is another message's (its SID is recorded there), so this one is sent
    again = await post("+14155550105", f"Your code is 8765 {tag}")
    await died_during_the_call(again)
    await sending.send_due(sessionmaker, cfg)
    assert (await status(again))["status"] == "sent" and twilio.calls["+14155550105"] == 3
    assert twilio.queries[-1]["To"] == "+14155550105"

    # one Twilio account serves every workspace: a text another workspace sent with the same words to the same
    # number (its SID recorded there) is not this one's either
    from shared.core import create_workspace

    async with sessionmaker() as s, s.begin():
        other = await create_workspace(s, f"test-{uuid.uuid4().hex[:8]}")
    theirs = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {other.secret_key}"},
                                         json={"idempotency_key": f"theirs-{tag}", "channel": "sms",
                                               "to": "+14155550107", "text": f"Same words {tag}",
                                               "message_type": "transactional"})
    await sending.send_due(sessionmaker, cfg)
    ours = await post("+14155550107", f"Same words {tag}")
    await died_during_the_call(ours)  # (before Twilio took it)
    await sending.send_due(sessionmaker, cfg)
    got_ours = await status(ours)
    assert got_ours["status"] == "sent" and twilio.calls["+14155550107"] == 2
    assert got_ours["provider_message_id"] != (await apps["delivery"].get(
        f"/v1/messages/{theirs.json()['id']}", headers={"Authorization": f"Bearer {other.secret_key}"}
    )).json()["provider_message_id"]

    # a worker died during its call, after Twilio took the text: the next claim asks first, and finds it
    died = await post("+14155550106", f"Your order shipped {tag}")
    twilio.take({"To": "+14155550106", "From": "+14155550199", "Body": f"Your order shipped {tag}"})
    await died_during_the_call(died)
    await sending.send_due(sessionmaker, cfg)
    got = await status(died)
    assert got["status"] == "sent" and twilio.calls.get("+14155550106", 0) == 0
    assert got["provider_message_id"] == twilio.messages[-1]["sid"]

    # the list request is the one Twilio's own SDK makes for the same question
    client = Client(SID, TOKEN)
    client.api.base_url = f"http://127.0.0.1:{twilio.port}"
    listed = await asyncio.to_thread(client.messages.list, to="+14155550106", page_size=sms.LOOKUP_PAGE,
                                     limit=sms.LOOKUP_PAGE)
    assert [m.sid for m in listed] == [got["provider_message_id"]]
    assert twilio.queries[-1] == twilio.queries[-2] == {"To": "+14155550106", "PageSize": str(sms.LOOKUP_PAGE)}


def _with_messaging_service(apps, settings, twilio) -> tuple[Any, Any]:
    """Delivery's app sending texts through a Twilio Messaging Service (an MG… sender) at the local Twilio, with
    signed callbacks to a public URL; the test puts ``settings`` back when done. Returns (app, its settings)."""
    cfg = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                      "twilio_from": "MG" + "0" * 32,
                                      "twilio_base_url": f"http://127.0.0.1:{twilio.port}",
                                      "delivery_public_url": "https://hooks.example.test"})
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    delivery_app.state.settings = cfg
    return delivery_app, cfg


async def test_error_21610_in_a_status_callback_suppresses_the_number(apps, workspace, sessionmaker, settings,
                                                                       twilio) -> None:
    """With a Messaging Service sender Twilio takes a text to a number that replied STOP and reports error 21610
    only in the status callback (failed). That failed the message and left the number unsuppressed, so every next
    text was tried (and refused) again, and ingest never heard of the opt-out. It is now mirrored as the send's
    own 21610 is: suppressed (unsubscribed, source twilio) with an Unsubscribed event for the person, also when
    the callback beat the record of the send."""
    from services.delivery import provider_events

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:6]
    delivery_app, cfg = _with_messaging_service(apps, settings, twilio)
    path = f"/webhooks/twilio/{ws}/status"

    async def post(to: str, who: str) -> str:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"{to}-{tag}", "channel": "sms", "to": to, "text": f"Your code is 9 {tag}",
            "message_type": "transactional", "metadata": {"userId": f"{who}-{tag}"}})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    async def callback(sid: str) -> None:
        form = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610", "AccountSid": SID,
                "To": "+14155550000", "From": "+14155550199"}
        r = await apps["delivery"].post(path, data=form, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + path, form)})
        assert r.status_code == 204, r.text

    async def get(mid: str) -> dict:
        return (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()

    try:
        stopped, early = await post("+14155550131", "stopped"), await post("+14155550132", "early")
        await sending.send_due(sessionmaker, cfg)
        sent = await get(stopped)
        assert sent["status"] == "sent"
        await callback(sent["provider_message_id"])
        # the callback that beat the record of the send: kept, then applied when the send is recorded
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set provider_message_id = null, status = 'sending' "
                                 "where id = :id"), {"id": uuid.UUID(early)})
        await callback(f"SMearly{tag}")
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set provider_message_id = :sid, status = 'sent' "
                                 "where id = :id"), {"sid": f"SMearly{tag}", "id": uuid.UUID(early)})
            assert await provider_events.apply_held(s, [f"SMearly{tag}"]) == 1
        got = [await get(m) for m in (stopped, early)]
        assert [g["status"] for g in got] == ["failed", "failed"] and "21610" in got[0]["last_error"]
        sup = {x["address"]: (x["reason"], x["source"]) for x in (await apps["delivery"].get(
            "/v1/suppressions", headers=h, params={"channel": "sms"})).json()["suppressions"]}
        assert sup == {"+14155550131": ("unsubscribed", "twilio"), "+14155550132": ("unsubscribed", "twilio")}
        async with sessionmaker() as s:
            unsubscribed = (await s.execute(text(
                "select payload->>'userId' from delivery.feedback where workspace_id = :ws "
                "and payload->>'event' = 'Unsubscribed'"), {"ws": ws})).scalars().all()
        assert sorted(unsubscribed) == [f"early-{tag}", f"stopped-{tag}"]
        await callback(sent["provider_message_id"])  # Twilio's repeat changes nothing
        async with sessionmaker() as s:
            assert (await s.execute(text("select count(*) from delivery.feedback where workspace_id = :ws and "
                                         "payload->>'event' = 'Unsubscribed'"), {"ws": ws})).scalar_one() == 2
        # the next text to the number is not tried
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"again-{tag}", "channel": "sms", "to": "+14155550131", "text": "code 10",
            "message_type": "transactional"})
        assert r.json()["status"] == "suppressed"
    finally:
        delivery_app.state.settings = settings


async def test_an_inbound_text_without_a_usable_sender_changes_nothing(apps, workspace, sessionmaker,
                                                                         settings) -> None:
    """A signed inbound STOP without ``From`` suppressed the empty address "", and one from WhatsApp
    (``From=whatsapp:+1…``) was stored with its prefix. Delivery sends SMS only: both are answered with an empty
    TwiML and nothing is stored; an SMS STOP still suppresses its E.164 number."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    cfg = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                      "twilio_from": "+14155550199", "delivery_public_url": "https://hooks.example.test"})
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    delivery_app.state.settings = cfg
    path = f"/webhooks/twilio/{ws}/inbound"

    async def inbound(body: str, **sender: str) -> str:
        form = {"To": "+14155550199", "Body": body, "AccountSid": SID, "MessageSid": "SM" + uuid.uuid4().hex,
                **sender}
        resp = await apps["delivery"].post(path, data=form, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + path, form)})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/xml"), resp.text
        return resp.text

    try:
        empty = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
        assert await inbound("STOP") == empty
        assert await inbound("STOP", From="") == empty
        assert await inbound("STOP", From="whatsapp:+14155550141") == empty
        assert await inbound("HELP", From="whatsapp:+14155550141") == empty  # no answer to another channel
        async with sessionmaker() as s:
            stored = (await s.execute(text(
                "select (select count(*) from delivery.suppressions where workspace_id = :ws) + "
                "(select count(*) from delivery.consent_log where workspace_id = :ws)"), {"ws": ws})).scalar_one()
        assert stored == 0
        assert await inbound("STOP", From="+14155550142") == empty
        sup = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "sms"})).json()
        assert [x["address"] for x in sup["suppressions"]] == ["+14155550142"]
    finally:
        delivery_app.state.settings = settings


async def test_a_replayed_21610_callback_does_not_undo_a_later_start(apps, workspace, sessionmaker, settings,
                                                                     twilio) -> None:
    """A status callback failed/21610 suppresses the number once, on the callback that first reports that failure
    of that text, and not at all when the number texted START after the text was sent. Before, Twilio's repeat of
    the callback (or a captured one replayed: its signature stays valid) after the person texted START suppressed
    the number again, and ingest got a second Unsubscribed."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:6]
    delivery_app, cfg = _with_messaging_service(apps, settings, twilio)

    async def signed(path: str, form: dict[str, str]) -> int:
        r = await apps["delivery"].post(path, data=form, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + path, form)})
        return r.status_code

    async def text_sent(to: str) -> dict:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": to, "text": f"Your code is 7 {tag}",
            "message_type": "transactional", "metadata": {"userId": f"u-{to[-4:]}-{tag}"}})
        assert r.status_code == 202, r.text
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                                 "where id = :id"), {"id": uuid.UUID(r.json()["id"])})
        await sending.send_due(sessionmaker, cfg, limit=1)
        got = (await apps["delivery"].get(f"/v1/messages/{r.json()['id']}", headers=h)).json()
        assert got["status"] == "sent", got
        return got

    def refused(m: dict) -> dict[str, str]:
        return {"AccountSid": SID, "MessageSid": m["provider_message_id"], "MessageStatus": "failed",
                "ErrorCode": "21610", "To": m["to"], "From": "+14155550199"}

    async def start(number: str) -> int:
        sid = "SM" + uuid.uuid4().hex
        return await signed(f"/webhooks/twilio/{ws}/inbound", {
            "AccountSid": SID, "MessageSid": sid, "SmsMessageSid": sid, "From": number, "To": "+14155550199",
            "Body": "START", "NumMedia": "0"})

    async def suppressed() -> dict[str, str]:
        sup = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "sms"})).json()
        return {x["address"]: x["source"] for x in sup["suppressions"]}

    async def unsubscribed_events() -> list[str]:
        async with sessionmaker() as s:
            return sorted((await s.execute(text(
                "select payload->>'userId' from delivery.feedback where workspace_id = :ws "
                "and payload->>'event' = 'Unsubscribed'"), {"ws": ws})).scalars())

    status = f"/webhooks/twilio/{ws}/status"
    try:
        first = await text_sent("+14155550167")
        assert await signed(status, refused(first)) == 204
        assert await suppressed() == {"+14155550167": "twilio"}
        assert await start("+14155550167") == 200
        assert await suppressed() == {}
        assert await signed(status, refused(first)) == 204  # the same callback again, byte for byte
        assert await suppressed() == {}
        assert await unsubscribed_events() == [f"u-0167-{tag}"]
        # the number is texted again, and taken
        again = await text_sent("+14155550167")
        assert again["to"] == "+14155550167"

        # a first report of the failure that arrives after the person texted START (Twilio's callback was slow,
        # or retried for hours): the START is later than the text, so the number stays subscribed
        late = await text_sent("+14155550168")
        assert await start("+14155550168") == 200
        assert await signed(status, refused(late)) == 204
        assert await suppressed() == {}
        got = (await apps["delivery"].get(f"/v1/messages/{late['id']}", headers=h)).json()
        assert got["status"] == "failed" and "21610" in got["last_error"]  # the text itself did fail
        assert await unsubscribed_events() == [f"u-0167-{tag}"]
    finally:
        delivery_app.state.settings = settings
