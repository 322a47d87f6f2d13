"""Regressions from a review of delivery: consent checked again at send time, no webhooks to private
addresses, bounces outrank unsubscribes, recipients cannot lift the workspace's suppressions, addresses
normalised, single-line headers; a message erased or taken over after its claim is neither sent nor recorded."""

import asyncio
import re
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from services.delivery import links, outbox, privacy, sending, signing


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
    # any line break str.splitlines() knows: the MIME encoder turned U+2028 into a space, changing the subject
    for subject, sender in (("Hi\u2028there", None), ("Hi", "Ann\u2029Lee <ann@example.com>"), ("Hi\x85", None)):
        bad = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": subject, "text": "x",
            **({"from": sender} if sender else {})})
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == ("from" if sender else "subject")


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


async def _claimed(apps, workspace, sessionmaker, lease_s: float, **message) -> dict:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "subject": "Hi", "text": "Hello", "message_type": "transactional",
        **message})
    assert r.status_code == 202, r.text
    async with sessionmaker() as s, s.begin():
        return next(m for m in await outbox.claim(s, 500, lease_s) if str(m["id"]) == r.json()["id"])


async def test_a_message_being_sent_holds_its_erasure_back(apps, workspace, sessionmaker, settings, mailbox) -> None:
    """An erasure while a sender holds one of the person's messages is refused, deleting nothing (the message
    could otherwise leave after the erasure said it was done); once the send is recorded, it erases it all."""
    pid = uuid.uuid4()
    claimed = await _claimed(apps, workspace, sessionmaker, settings.delivery_lease_s,
                             to=f"erased-{pid.hex[:6]}@example.com", metadata={"profile_id": str(pid)})
    with pytest.raises(privacy.InFlight):
        async with sessionmaker() as s, s.begin():  # (DSAR) between the batch's claim and this message's turn
            await privacy.erase(s, workspace.workspace_id, [pid])
    assert await sending.send_one(sessionmaker, settings, claimed) == "sent"
    assert [m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == str(claimed["id"])]
    async with sessionmaker() as s, s.begin():
        removed = await privacy.erase(s, workspace.workspace_id, [pid])
    assert (removed["messages"], removed["attempts"]) == (1, 1)


async def test_a_holder_whose_lease_was_taken_over_records_nothing(apps, workspace, sessionmaker) -> None:
    first = await _claimed(apps, workspace, sessionmaker, 0.2, to="stale@example.com")
    await asyncio.sleep(0.3)  # its lease ran out: another worker claims it
    async with sessionmaker() as s, s.begin():
        second = next(m for m in await outbox.claim(s, 500, 60.0) if m["id"] == first["id"])
    async with sessionmaker() as s, s.begin():  # the first holder finishes late
        await outbox.record_many(s, [outbox.Outcome(first, datetime.now(UTC), "transient_error", "slow")])
    async with sessionmaker() as s:
        row = (await s.execute(text("select status, attempts, claimed_until from delivery.messages where id = :id"),
                               {"id": first["id"]})).one()
    assert row.status == "sending" and row.attempts == second["attempts"] and row.claimed_until is not None


async def test_a_broken_link_opened_in_a_browser_is_a_page(apps, workspace, settings) -> None:
    delivery = apps["delivery"]
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Accept-Language": "fr-CA,fr;q=0.9"}
    for path in ("/u/not-a-token", "/p/not-a-token", "/confirm/not-a-token", "/c/not-a-token?u=https://x.example"):
        page = await delivery.get(path, headers=browser)
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html"), path
        assert '<p role="alert">Ce lien n\'est pas valide.</p>' in page.text and 'lang="fr"' in page.text
        api = await delivery.get(path)  # no Accept: text/html (an API client) → problem+json as before
        assert api.status_code == 400 and api.headers["content-type"].startswith("application/problem+json")
    broken = await delivery.post("/u/not-a-token", headers={"Accept": "text/html"})  # the page's own button
    assert broken.status_code == 400 and "This link is not valid." in broken.text
    # a genuine link whose message is gone (erased) is not an error: its page says the data was erased
    # (test_consent_and_tracking), and a click still redirects
    subject = signing.Subject(workspace.workspace_id, uuid.uuid4())
    german = {"Accept": "text/html", "Accept-Language": "de"}
    erased = await delivery.get(f"/u/{signing.sign(settings.signing_secret, 'unsubscribe', subject)}", headers=german)
    assert erased.status_code == 200 and "Eine Abmeldung ist nicht nötig" in erased.text
    gone = await delivery.get(f"/confirm/{signing.sign(settings.signing_secret, 'confirm', subject)}", headers=german)
    assert gone.status_code == 200 and "Dieser Bestätigungslink kann nicht mehr verwendet werden" in gone.text
    # a 404 is a page too: confirming an address that never asked for a double opt-in
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await delivery.post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": "never-asked@example.com", "subject": "S", "text": "x"})
    held = signing.Subject(workspace.workspace_id, uuid.UUID(r.json()["id"]))
    nothing = await delivery.post(f"/confirm/{signing.sign(settings.signing_secret, 'confirm', held)}", headers=german)
    assert nothing.status_code == 404 and "Dieser Link ist nicht mehr gültig." in nothing.text
    # only the recipient pages: an API route keeps problem+json even for a browser
    assert (await delivery.get("/v1/messages/x", headers=browser)).headers["content-type"].startswith(
        "application/problem+json")


async def test_an_outcome_recorded_during_an_erasure_leaves_no_trace(apps, workspace, sessionmaker) -> None:
    pid = uuid.uuid4()
    addr = f"erasing-{pid.hex[:6]}@example.com"
    # its holder's lease ran out (a worker that stalled): the erasure goes ahead, and the late outcome arrives
    claimed = await _claimed(apps, workspace, sessionmaker, 0.2, to=addr, metadata={"profile_id": str(pid)})
    await asyncio.sleep(0.3)
    async with sessionmaker() as eraser, eraser.begin():
        await privacy.erase(eraser, workspace.workspace_id, [pid])  # not committed yet: the row is locked

        async def record() -> set:
            async with sessionmaker() as s, s.begin():  # the worker's outcome arrives meanwhile
                return await outbox.record_many(s, [outbox.Outcome(
                    claimed, datetime.now(UTC), "permanent_error", f"RCPT refused: SMTP 550 <{addr}>")])

        recording = asyncio.create_task(record())
        await asyncio.sleep(0.3)
        assert not recording.done()  # waiting for the erasure
    assert await recording == set()
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from delivery.attempts where message_id = :id"),
                                {"id": claimed["id"]})).scalar() == 0


async def test_links_followed_during_an_erasure_record_nothing(apps, workspace, sessionmaker, settings) -> None:
    """A click, an open or a one-click unsubscribe arriving while an erasure is being committed waits for it,
    then finds the message gone: the reader still gets the page (or image), and nothing about them is
    written after their erasure (no engagement, consent entry or event for ingest)."""
    pid, ws = uuid.uuid4(), workspace.workspace_id
    r = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {workspace.secret_key}"}, json={
        "idempotency_key": uuid.uuid4().hex, "to": f"racing-{pid.hex[:6]}@example.com", "subject": "S",
        "text": "x", "metadata": {"profile_id": str(pid), "userId": f"racing-{pid.hex[:6]}"}})
    assert r.status_code == 202, r.text
    link = links.Links.for_message("", settings.signing_secret, ws, uuid.UUID(r.json()["id"]))
    browser = {"User-Agent": "Mozilla/5.0"}
    async with sessionmaker() as eraser, eraser.begin():
        await privacy.erase(eraser, ws, [pid])  # not committed yet: the row is locked
        followed = [asyncio.create_task(apps["delivery"].request(method, path, headers=browser, **kw))
                    for method, path, kw in (("GET", link.click("https://acme.example/a?b=1"), {}),
                                             ("GET", link.pixel, {}),
                                             ("POST", link.unsubscribe, {"data": {"List-Unsubscribe": "One-Click"}}))]
        await asyncio.sleep(0.3)
    click, pixel, unsubscribe = await asyncio.gather(*followed)
    assert click.status_code == 302 and click.headers["location"] == "https://acme.example/a?b=1"
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
    assert unsubscribe.status_code == 200 and "has been erased" in unsubscribe.text
    async with sessionmaker() as s:
        for table in ("engagements", "feedback", "consent_log", "suppressions"):
            assert (await s.execute(text(f"select count(*) from delivery.{table} where workspace_id = :ws"),
                                    {"ws": ws})).scalar_one() == 0, table


async def test_a_locale_is_a_bcp47_language_tag(apps, workspace) -> None:
    """``locale`` is documented as BCP 47, yet any text was stored and echoed back, line breaks included
    ("fr\\r\\nBcc: evil@example.com"). It is checked as a language tag: a 422 naming ``locale``, and in a batch
    that message alone is invalid."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]

    def message(locale: str, n: int = 0) -> dict:
        return {"idempotency_key": f"loc-{tag}-{n}-{len(locale)}", "to": f"loc-{tag}@example.com", "subject": "Hi",
                "text": "x", "locale": locale}

    for bad in ("fr\r\nBcc: evil@example.com", "fr CA", "français", ""):
        r = await apps["delivery"].post("/v1/messages", headers=h, json=message(bad))
        assert r.status_code == 422, (bad, r.text)
        assert [e["loc"] for e in r.json()["errors"]] == [["body", "locale"]], r.json()
        assert "BCP 47" in r.json()["errors"][0]["msg"]
    ok = await apps["delivery"].post("/v1/messages", headers=h, json=message("zh-Hant-TW"))
    assert ok.status_code == 202 and ok.json()["locale"] == "zh-Hant-TW"
    posix = await apps["delivery"].post("/v1/messages", headers=h, json=message("fr_CA.UTF-8"))  # as a device says
    assert posix.status_code == 202 and posix.json()["locale"] == "fr-CA"
    batch = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        message("fr-CA", 1), message("fr\nx", 2)]})
    assert [(m["result"], "locale" in (m.get("error") or "")) for m in batch.json()["results"]] == [
        ("queued", False), ("invalid", True)], batch.json()
