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
