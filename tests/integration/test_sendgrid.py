"""Email through SendGrid's v3 Mail Send API — a local server answering as SendGrid does — and its
ECDSA-signed Event Webhook (delivered, bounce, spam report), through HTTP."""

import base64
import json
import time
import uuid

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sendgrid.helpers.mail import From
from sqlalchemy import text

from services.delivery import sendgrid as our_sendgrid
from services.delivery import sending
from services.delivery.mailer import Email
from shared.testing import http_server

API_KEY = "SG.test-key"


def fake_sendgrid(received: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v3/mail/send")
    async def mail_send(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"errors": [{"message": "The provided authorization grant is invalid"}]},
                                status_code=401)
        body = await request.json()
        to = body["personalizations"][0]["to"][0]["email"]
        if to.startswith("slow"):
            received.append(body)
            if sum(r["personalizations"][0]["to"][0]["email"] == to for r in received) == 1:
                return JSONResponse({"errors": [{"message": "too many requests"}]}, status_code=429)
        if to.startswith("limited"):  # over the rate limit: SendGrid says when its refresh period ends
            received.append(body)
            if sum(r["personalizations"][0]["to"][0]["email"] == to for r in received) == 1:
                return JSONResponse({"errors": [{"field": None, "message": "too many requests"}]}, status_code=429,
                                    headers={"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "0",
                                             "X-RateLimit-Reset": str(int(time.time()) + 120)})
        if to.startswith("invalid"):
            return JSONResponse({"errors": [{"message": "Does not contain a valid address.",
                                             "field": "personalizations.0.to.0.email"}]}, status_code=400)
        received.append(body)
        return Response(status_code=202, headers={"X-Message-Id": f"sg-{uuid.uuid4().hex[:12]}"})

    return app


async def test_sendgrid_sending_and_signed_events(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    received: list[dict] = []
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    with http_server(fake_sendgrid(received)) as port:
        sg = settings.model_copy(update={"email_provider": "sendgrid", "sendgrid_api_key": API_KEY,
                                         "sendgrid_base_url": f"http://127.0.0.1:{port}",
                                         "sendgrid_webhook_public_key": public})
        delivery_app.state.settings = sg
        try:
            tag = uuid.uuid4().hex[:6]
            ids = {}
            for who in ("ok", "slow", "invalid"):
                r = await apps["delivery"].post("/v1/messages", headers=h, json={
                    "idempotency_key": f"sg-{who}-{tag}", "to": f"{who}-{tag}@example.com", "subject": "Hello",
                    "text": "Hi there", "html": "<p>Hi there</p>",
                    "metadata": {"userId": f"sg-user-{tag}", "campaign_id": f"c-{tag}", "journey_id": f"j-{who}",
                                 "step": "welcome"}})
                ids[who] = r.json()["id"]
            await sending.send_due(sessionmaker, sg)
            async with sessionmaker() as s, s.begin():
                await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"),
                                {"id": ids["slow"]})
            await sending.send_due(sessionmaker, sg)
            got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for w, i in ids.items()}
            assert {w: g["status"] for w, g in got.items()} == {"ok": "sent", "slow": "sent", "invalid": "failed"}
            assert got["ok"]["provider_message_id"].startswith("sg-") and got["slow"]["attempts"] == 2
            # the retry carries the same Message-ID: the recipient's server can tell it is not a new message
            slow = [b["headers"]["Message-ID"] for b in received if b["personalizations"][0]["to"][0]["email"]
                    == f"slow-{tag}@example.com"]
            assert len(slow) >= 2 and set(slow) == {f"<{ids['slow']}@tenure.localhost>"}
            body = next(b for b in received if b["personalizations"][0]["to"][0]["email"].startswith("ok"))
            assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
            assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            assert body["custom_args"]["tenure_message_id"] == ids["ok"]

            def signed(events: list[dict], private=key, age: int = 0) -> tuple[bytes, dict]:
                raw, ts = json.dumps(events).encode(), str(int(time.time()) - age)
                sig = private.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))
                return raw, {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                             "X-Twilio-Email-Event-Webhook-Timestamp": ts, "Content-Type": "application/json"}

            path = f"/webhooks/sendgrid/{ws}/events"
            # SendGrid's retry of a batch it held through 5 hours of our outage, with the signature of its first try
            raw, headers = signed(age=5 * 3600, events=[
                {"event": "delivered", "email": f"ok-{tag}@example.com", "tenure_message_id": ids["ok"]},
                {"event": "bounce", "type": "bounce", "email": f"slow-{tag}@example.com",
                 "tenure_message_id": ids["slow"], "reason": "550 5.1.1 unknown user"},
                {"event": "spamreport", "email": f"ok-{tag}@example.com", "tenure_message_id": ids["ok"]},
                {"event": "open", "tenure_message_id": "not-ours"}])
            forged_raw, forged = signed([{"event": "delivered"}], ec.generate_private_key(ec.SECP256R1()))
            assert (await apps["delivery"].post(path, content=forged_raw, headers=forged)).status_code == 403
            old_raw, old = signed([{"event": "delivered"}], age=2 * 86400)  # captured, replayed two days later
            assert (await apps["delivery"].post(path, content=old_raw, headers=old)).status_code == 403
            ahead_raw, ahead = signed([{"event": "delivered"}], age=-3600)  # dated an hour ahead of our clock
            assert (await apps["delivery"].post(path, content=ahead_raw, headers=ahead)).status_code == 403
            assert (await apps["delivery"].post(path, content=raw, headers=headers)).status_code == 204
            after = {w: (await apps["delivery"].get(f"/v1/messages/{ids[w]}", headers=h)).json()["status"]
                     for w in ("ok", "slow")}
            assert after == {"ok": "delivered", "slow": "bounced"}
            # the events ingest gets name the journey step that sent the message: campaign's funnel counts them
            async with sessionmaker() as s:
                reported = {r[0]: r[1] for r in await s.execute(text(
                    "select payload->>'event', payload->'properties' from delivery.feedback "
                    "where workspace_id = :ws and payload->>'event' in ('Email Delivered', 'Email Bounced')"),
                    {"ws": ws})}
            assert reported["Email Delivered"] | {"message_id": ids["ok"]} == {
                "message_id": ids["ok"], "provider": "sendgrid", "campaign_id": f"c-{tag}", "journey_id": "j-ok",
                "step": "welcome"}
            assert reported["Email Bounced"]["journey_id"] == "j-slow"
            sup = {x["address"]: x["reason"] for x in (await apps["delivery"].get(
                "/v1/suppressions", headers=h, params={"channel": "email"})).json()["suppressions"]}
            assert sup[f"slow-{tag}@example.com"] == "hard_bounce" and sup[f"ok-{tag}@example.com"] == "complaint"
            # a hard bounce stops transactional mail too
            again = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"sg-again-{tag}", "to": f"slow-{tag}@example.com", "subject": "Receipt",
                "text": "x", "message_type": "transactional"})
            assert again.json()["status"] == "suppressed"
        finally:
            delivery_app.state.settings = settings


async def _queue(apps, h: dict, prefix: str, tag: str, n: int) -> list[str]:
    """``n`` transactional emails to ``{prefix}{i}-{tag}@example.com``: their ids."""
    return [(await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"{prefix}-{tag}-{i}", "to": f"{prefix}{i}-{tag}@example.com", "subject": "S", "text": "x",
        "message_type": "transactional"})).json()["id"] for i in range(n)]


async def _send_rounds(sessionmaker, cfg, redis, ids: list[str], rounds: int) -> None:
    """What the worker does ``rounds`` times, each message still queued made due again at once between rounds."""
    for _ in range(rounds):
        await sending.send_due(sessionmaker, cfg, concurrency=1, redis=redis)
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = now() "
                                 "where id = any(CAST(:ids AS uuid[])) and status = 'queued'"), {"ids": ids})


async def test_failover_to_the_fallback_provider_never_doubles_a_message(apps, workspace, sessionmaker,
                                                                         settings) -> None:
    from shared.embedded import free_port
    from shared.queue import create_redis

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    received: list[dict] = []
    with http_server(fake_sendgrid(received)) as port:
        cfg = settings.model_copy(update={
            "smtp_port": free_port(), "smtp_timeout_s": 2,  # the primary refuses connections
            "email_fallback_provider": "sendgrid", "sendgrid_api_key": API_KEY,
            "sendgrid_base_url": f"http://127.0.0.1:{port}", "circuit_failures": 2, "circuit_open_s": 30,
            "queue_prefix": f"fo-{uuid.uuid4().hex[:6]}"})
        redis = await create_redis(cfg)
        await redis.delete("circuit:smtp:open", "circuit:smtp:failures")
        tag = uuid.uuid4().hex[:6]
        ids = await _queue(apps, h, "fo", tag, 4)
        pinned = (await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"fo-{tag}-pinned", "to": f"pinned-{tag}@example.com", "subject": "S", "text": "x",
            "message_type": "transactional"})).json()["id"]
        async with sessionmaker() as s, s.begin():  # an earlier SMTP attempt of this one ended in an unknown state
            await s.execute(text("update delivery.messages set provider = 'smtp' where id = :id"), {"id": pinned})
        try:
            await _send_rounds(sessionmaker, cfg, redis, [*ids, pinned], 3)
        finally:
            await redis.delete("circuit:smtp:open", "circuit:smtp:failures")
            await redis.aclose()
        got = {i: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for i in [*ids, pinned]}
        assert [got[i]["status"] for i in ids] == ["sent"] * 4
        sent_to = [b["personalizations"][0]["to"][0]["email"] for b in received
                   if tag in b["personalizations"][0]["to"][0]["email"]]  # (other tests' due mail may pass by)
        assert sorted(sent_to) == sorted(f"fo{i}-{tag}@example.com" for i in range(4))  # each exactly once
        assert got[pinned]["status"] == "queued" and got[pinned]["last_error"].startswith("smtp:")
        assert f"pinned-{tag}@example.com" not in sent_to  # pinned to SMTP: never through the fallback


async def test_a_revoked_api_key_sends_through_the_fallback_instead_of_failing_every_message(
        apps, workspace, sessionmaker, settings, mailbox) -> None:
    """SendGrid's 401 (a revoked or rotated key) failed every message for good, and the fallback provider configured
    for exactly such a day was never used: it is the account's fault, not the message's. It now counts against
    SendGrid; once the circuit opens the messages go out once through SMTP."""
    from shared.queue import create_redis

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    received: list[dict] = []
    with http_server(fake_sendgrid(received)) as port:
        cfg = settings.model_copy(update={
            "email_provider": "sendgrid", "sendgrid_api_key": "SG.revoked", "email_fallback_provider": "smtp",
            "sendgrid_base_url": f"http://127.0.0.1:{port}", "circuit_failures": 2, "circuit_open_s": 30,
            "queue_prefix": f"key-{uuid.uuid4().hex[:6]}"})
        redis = await create_redis(cfg)
        await redis.delete("circuit:sendgrid:open", "circuit:sendgrid:failures")
        tag = uuid.uuid4().hex[:6]
        ids = await _queue(apps, h, "key", tag, 3)
        try:
            await _send_rounds(sessionmaker, cfg, redis, ids, 4)
        finally:
            await redis.delete("circuit:sendgrid:open", "circuit:sendgrid:failures")
            await redis.aclose()
    got = [(await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for i in ids]
    assert [g["status"] for g in got] == ["sent"] * 3, [(g["status"], g["last_error"]) for g in got]
    delivered = sorted(to for m in mailbox.messages for to in m["to"] if tag in to)
    assert delivered == sorted(f"key{i}-{tag}@example.com" for i in range(3)), delivered  # each once, by SMTP


async def test_a_quoted_sender_name_reaches_sendgrid_as_its_own_library_reads_it(settings) -> None:
    """A display name with a comma must be quoted in From ("Acme, Inc." <…>); SendGrid takes the bare name
    and quotes it itself, so the quotes (and backslash escapes) must not reach its API."""
    received: list[dict] = []
    with http_server(fake_sendgrid(received)) as port:
        sg = settings.model_copy(update={"sendgrid_api_key": API_KEY, "sendgrid_base_url": f"http://127.0.0.1:{port}"})
        async with httpx.AsyncClient() as http:
            for sender in ('"Acme, Inc." <news@acme.example>', '"Zoë \\"Z\\" Shop" <z@acme.example>',
                           "Acme <news@acme.example>", "news@acme.example"):
                await our_sendgrid.send(sg, http, Email(str(uuid.uuid4()), sender, "bob@example.com", "Hi", None, "x"))
                assert received[-1]["from"] == From(sender).get(), sender  # SendGrid's own helper
    assert received[0]["from"] == {"name": "Acme, Inc.", "email": "news@acme.example"}


async def test_a_429_waits_for_sendgrids_rate_limit_reset(apps, workspace, sessionmaker, settings) -> None:
    """SendGrid answers 429 with X-RateLimit-Reset (the Unix time its refresh period ends) and no Retry-After:
    the retry must not come before that time (it would only be refused again)."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    received: list[dict] = []
    with http_server(fake_sendgrid(received)) as port:
        sg = settings.model_copy(update={"email_provider": "sendgrid", "sendgrid_api_key": API_KEY,
                                         "sendgrid_base_url": f"http://127.0.0.1:{port}"})
        tag = uuid.uuid4().hex[:6]
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"sg-limited-{tag}", "to": f"limited-{tag}@example.com", "subject": "Hello",
            "text": "Hi there", "message_type": "transactional"})
        mid = r.json()["id"]
        await sending.send_due(sessionmaker, sg)
        async with sessionmaker() as s:
            row = (await s.execute(text("select status, attempts, extract(epoch from next_attempt_at - now()) as wait "
                                        "from delivery.messages where id = :id"), {"id": mid})).one()
    assert row.status == "queued" and row.attempts == 1
    assert 100 < row.wait <= 121, row.wait  # the reset, not the first backoff (1-2 s)


async def test_a_replayed_unsubscribe_does_not_undo_a_resubscription(apps, workspace, sessionmaker, settings) -> None:
    """SendGrid's `unsubscribe` event, posted again after the person resubscribed (the API's DELETE, the preference
    page) — the same signed batch replayed within the signature window, or SendGrid's retry of it carrying new
    `sg_event_id`s — unsubscribed them again. An `sg_event_id` seen before is ignored now, and an event older than a
    later resubscription of its address suppresses nothing."""
    import asyncio

    from services.delivery import signing

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws = workspace.workspace_id
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    delivery_app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    tag = uuid.uuid4().hex[:6]
    address = f"carol-{tag}@example.com"

    def signed(events: list[dict]) -> tuple[bytes, dict]:
        raw, ts = json.dumps(events).encode(), str(int(time.time()))
        sig = key.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))
        return raw, {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                     "X-Twilio-Email-Event-Webhook-Timestamp": ts, "Content-Type": "application/json"}

    async def post(raw: bytes, headers: dict) -> None:
        r = await apps["delivery"].post("/webhooks/sendgrid/events", content=raw, headers=headers)
        assert r.status_code == 204, r.text

    async def unsubscribed() -> bool:
        return (await apps["delivery"].get(f"/v1/preferences/{address}", headers=h)).json()["unsubscribed"]

    async def unsubscribes() -> int:
        async with sessionmaker() as s:
            return (await s.execute(text(
                "select count(*) from delivery.feedback where workspace_id = :ws and payload->>'event' = "
                "'Unsubscribed' and payload->>'userId' = :u"), {"ws": ws, "u": f"carol-{tag}"})).scalar_one()

    with http_server(fake_sendgrid([])) as port:
        sg = settings.model_copy(update={"email_provider": "sendgrid", "sendgrid_api_key": API_KEY,
                                         "sendgrid_base_url": f"http://127.0.0.1:{port}",
                                         "sendgrid_webhook_public_key": public})
        delivery_app.state.settings = sg
        try:
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"news-{tag}", "to": address, "subject": "News", "text": "Hi",
                "metadata": {"userId": f"carol-{tag}"}})
            mid = r.json()["id"]
            async with sessionmaker() as s, s.begin():
                await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                                     "where id = :id"), {"id": mid})
            await sending.send_due(sessionmaker, sg, limit=1)
            assert (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()["status"] == "sent"

            def unsubscribe(event_id: str) -> dict:
                return {"email": address, "timestamp": int(time.time()), "event": "unsubscribe",
                        "sg_event_id": event_id, "sg_message_id": f"sg-{tag}.filter0001", "tenure_message_id": mid}

            first = unsubscribe(f"ev1-{tag}")
            raw, headers = signed([first])
            await post(raw, headers)
            assert await unsubscribed() and await unsubscribes() == 1
            await asyncio.sleep(1.1)  # (SendGrid's timestamps are whole seconds)
            assert (await apps["delivery"].delete(f"/v1/suppressions/email/{address}", headers=h)).status_code == 204
            assert not await unsubscribed()
            await post(raw, headers)  # the same signed request again, byte for byte
            assert not await unsubscribed()
            # SendGrid's retry of the batch, its event given a new sg_event_id (sendgrid-nodejs#1435), signed anew
            await post(*signed([{**first, "sg_event_id": f"ev1-retry-{tag}"}]))
            assert not await unsubscribed() and await unsubscribes() == 1

            # a new unsubscribe is applied; the person resubscribes on the preference page; its replay changes nothing
            await asyncio.sleep(1.1)
            raw, headers = signed([unsubscribe(f"ev2-{tag}")])
            await post(raw, headers)
            assert await unsubscribed() and await unsubscribes() == 2
            await asyncio.sleep(1.1)
            token = signing.sign(sg.signing_secret, "preferences", signing.Subject(ws, uuid.UUID(mid)))
            page = await apps["delivery"].post(f"/p/{token}", data={"topic": ["product_news", "offers"]})
            assert page.status_code == 200 and not await unsubscribed()
            await post(raw, headers)
            assert not await unsubscribed() and await unsubscribes() == 2
        finally:
            delivery_app.state.settings = settings
