"""Regressions from a review of delivery: consent checked again at send time, no webhooks to private
addresses, bounces outrank unsubscribes, recipients cannot lift the workspace's suppressions, addresses
normalised, single-line headers."""

import re
import uuid

from services.delivery import sending


async def test_consent_rules_found_in_review(apps, workspace, sessionmaker, settings, mailbox) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    to = f"late-{tag}@example.com"

    async def queue(**kw) -> dict:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "S", "text": "x", **kw})
        assert r.status_code == 202, r.text
        return r.json()

    # unsubscribed while the message waited in the queue: it is not sent
    waiting = await queue()
    await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to, "reason": "unsubscribed"})
    await sending.send_due(sessionmaker, settings)
    got = (await apps["delivery"].get(f"/v1/messages/{waiting['id']}", headers=h)).json()
    assert got["status"] == "suppressed" and got["last_error"] == "suppressed: unsubscribed"
    # a hard bounce outranks the unsubscribe: transactional mail stops too
    await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to, "reason": "hard_bounce"})
    assert (await queue(message_type="transactional"))["status"] == "suppressed"
    # addresses are normalised as messages are: a suppression for "+1 (415) 555-0177" stops "+14155550177"
    r = await apps["delivery"].post("/v1/suppressions", headers=h, json={"channel": "sms",
                                                                       "address": "+1 (415) 555-0177"})
    assert r.json()["address"] == "+14155550177"
    sms = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "channel": "sms", "to": "+14155550177", "text": "x"})
    assert sms.json()["status"] == "suppressed"
    # headers are single lines
    bad = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Hi\r\nBcc: all@example.com", "text": "x"})
    assert bad.status_code == 422


async def test_preference_page_cannot_lift_a_manual_suppression(apps, workspace, sessionmaker, settings,
                                                               mailbox) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"manual-{uuid.uuid4().hex[:6]}@example.com"
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "S", "html": "<p>x</p>"})
    await sending.send_due(sessionmaker, settings)
    mail = next(m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == r.json()["id"])
    prefs = re.search(r'href="[^"]+(/p/[^"]+)"', mail["html"]).group(1)
    await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to, "reason": "manual"})
    await apps["delivery"].post(prefs, data={"topic": ["offers"]})  # "unsubscribe from all" left unticked
    assert (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()["suppression"] == "manual"


async def test_webhooks_do_not_reach_private_addresses(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    guarded = settings.model_copy(update={"webhook_allow_private": False})
    ids = []
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.5/x"):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": "webhook", "to": url, "data": {"a": 1}})
        ids.append(r.json()["id"])
    await sending.send_due(sessionmaker, guarded)
    for i in ids:
        got = (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json()
        assert got["status"] == "failed" and "non-public address" in got["last_error"]


async def test_double_opt_in(apps, workspace, sessionmaker, settings, mailbox, internal_client) -> None:
    from sqlalchemy import text

    from services.delivery import feedback

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = settings || '{\"double_opt_in\": true}' "
                             "where id = :ws"), {"ws": workspace.workspace_id})
    await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": "doi-1"})
    to = f"doi-{uuid.uuid4().hex[:6]}@example.com"

    async def marketing() -> str:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Offer", "text": "x", "topic": "offers"})
        return r.json()["status"]

    assert await marketing() == "suppressed"  # not confirmed yet
    r = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to.upper(), "topics": ["offers"],
                                                                    "locale": "fr", "user_id": "doi-1"})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    await sending.send_due(sessionmaker, settings)
    mail = next(m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == r.json()["message_id"])
    assert mail["subject"] == "Confirmez votre inscription" and "List-Unsubscribe" not in mail["headers"]
    link = re.search(r"(/confirm/[A-Za-z0-9_-]+)", mail["text"]).group(1)
    page = await apps["delivery"].get(link, headers={"Accept-Language": "fr"})
    assert page.status_code == 200 and '<html lang="fr">' in page.text and "<form method=\"post\">" in page.text
    assert await marketing() == "suppressed"  # looking at the page is not confirming
    done = await apps["delivery"].post(link)
    assert done.status_code == 200 and "is subscribed" in done.text
    assert await marketing() == "queued"
    again = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to})
    assert again.json() == {"status": "confirmed", "message_id": None}
    while await feedback.forward(sessionmaker, internal_client):
        pass
    events = (await apps["ingest"].get("/v1/profiles/doi-1/events", headers=h)).json()["events"]
    assert "Opted In" in [e["event"] for e in events]
