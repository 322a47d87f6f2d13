"""The whole path with real processes: identify + track over HTTP → one personalised email in a real SMTP
server, exactly once, through `tenure serve` and `tenure worker` for all four services."""

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from services.devinbox.inbox import Mailbox
from tests.e2e.stack import TENURE, Stack, stack_env, start_sink, terminate, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(settings) -> Iterator[tuple[Stack, Mailbox]]:
    box, controller, smtp_port = start_sink()
    s = Stack(stack_env(settings, smtp_port, "e2e"))
    try:
        s.start_apis()
        s.start_workers()
        yield s, box
    finally:
        s.stop()
        controller.stop()


async def test_identify_and_track_send_exactly_one_personal_email(stack, workspace) -> None:
    s, box = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    async with httpx.AsyncClient(timeout=10) as c:
        tpl = await c.post(f"{s.url('campaign')}/v1/templates", headers=mgmt, json={
            "name": "welcome", "subject": "Welcome, {{ profile.first_name }}!",
            "html": "<p>Hello {{ profile.first_name }}</p>", "text": "Hello {{ profile.first_name }}"})
        assert tpl.status_code == 201, tpl.text
        camp = await c.post(f"{s.url('campaign')}/v1/campaigns", headers=mgmt, json={
            "name": "welcome", "trigger": {"type": "event", "event": "Signed Up"}, "template_id": tpl.json()["id"]})
        assert camp.status_code == 201, camp.text

        r = await c.post(f"{s.url('ingest')}/v1/identify", auth=wk, json={
            "userId": "e2e-ada", "traits": {"email": "ada@e2e.example", "first_name": "Ada"}})
        assert r.status_code == 200
        track = {"userId": "e2e-ada", "event": "Signed Up", "messageId": "e2e-signup-1"}
        assert (await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json=track)).json()["accepted"] == 1

        await wait_for(lambda: len(box.messages) >= 1)
        mail = box.messages[0]
        assert mail["to"] == ["ada@e2e.example"]
        assert mail["subject"] == "Welcome, Ada!"
        assert "Hello Ada" in mail["text"] and "Hello Ada" in mail["html"]

        # the same track again (a client retry), and the workers restarted: nothing more is sent
        assert (await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json=track)).json()["duplicates"] == 1
        s.stop_workers()
        s.start_workers()
        await asyncio.sleep(6)
        assert len(box.messages) == 1

        sends = (await c.get(f"{s.url('campaign')}/v1/campaigns/{camp.json()['id']}/sends", headers=mgmt)).json()
        assert [x["status"] for x in sends["sends"]] == ["dispatched"]
        msg = (await c.get(f"{s.url('delivery')}/v1/messages/{sends['sends'][0]['delivery_message_id']}",
                           headers=mgmt)).json()
        assert msg["status"] == "sent" and msg["attempts"] == 1


async def test_segment_entry_triggers_a_campaign(stack, workspace) -> None:
    s, box = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    async with httpx.AsyncClient(timeout=10) as c:
        seg = await c.post(f"{s.url('segment')}/v1/segments", headers=mgmt, json={
            "name": "repeat buyers", "definition": {
                "type": "and", "children": [
                    {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"},
                    {"type": "performed", "event": "Order Completed", "op": "at_least", "count": 2,
                     "within_days": 30}]}})
        assert seg.status_code == 201, seg.text
        tpl = await c.post(f"{s.url('campaign')}/v1/templates", headers=mgmt, json={
            "name": "thanks", "subject": "Thanks for coming back, {{ profile.first_name }}", "text": "You rock"})
        await c.post(f"{s.url('campaign')}/v1/campaigns", headers=mgmt, json={
            "name": "loyal", "trigger": {"type": "segment_entered", "segment_id": seg.json()["id"]},
            "template_id": tpl.json()["id"]})
        await c.post(f"{s.url('ingest')}/v1/identify", auth=wk, json={
            "userId": "bob", "traits": {"email": "bob@e2e.example", "first_name": "Bob", "plan": "pro"}})
        await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": "bob", "event": "Order Completed"})
        await asyncio.sleep(3)
        assert box.messages == []  # one order is not enough
        await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": "bob", "event": "Order Completed"})
        await wait_for(lambda: len(box.messages) >= 1)
        assert box.messages[0]["subject"] == "Thanks for coming back, Bob"
        members = (await c.get(f"{s.url('segment')}/v1/segments/{seg.json()['id']}/members", headers=mgmt)).json()
        assert len(members["members"]) == 1
        await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": "bob", "event": "Order Completed"})
        await asyncio.sleep(3)
        assert len(box.messages) == 1  # still a member: no second entry, no second mail


async def test_erasure_reaches_every_service_and_suppresses_later_events(stack, workspace, settings) -> None:
    s, box = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    async with httpx.AsyncClient(timeout=10) as c:
        seg = (await c.post(f"{s.url('segment')}/v1/segments", headers=mgmt, json={
            "name": "signed up", "definition": {"type": "performed", "event": "Signed Up"}})).json()
        tpl = (await c.post(f"{s.url('campaign')}/v1/templates", headers=mgmt, json={
            "name": "hi", "subject": "Hi {{ profile.first_name }}", "text": "Hello"})).json()
        camp = (await c.post(f"{s.url('campaign')}/v1/campaigns", headers=mgmt, json={
            "name": "hi", "trigger": {"type": "event", "event": "Signed Up"}, "template_id": tpl["id"]})).json()
        await c.post(f"{s.url('ingest')}/v1/identify", auth=wk, json={
            "userId": "gdpr-1", "anonymousId": "gdpr-device", "traits": {"email": "gone@e2e.example",
                                                                         "first_name": "Eve"}})
        await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": "gdpr-1", "event": "Signed Up"})
        for user, token in (("gdpr-1", "fcm-token-of-eves-phone"), ("gdpr-device", "fcm-token-of-eves-tablet"),
                            ("someone-else", "fcm-token-of-another-user")):
            r = await c.post(f"{s.url('delivery')}/v1/devices", headers=mgmt,
                             json={"user": user, "platform": "android", "token": token})
            assert r.status_code == 201, r.text
        await wait_for(lambda: len(box.messages) == 1)
        export = (await c.get(f"{s.url('ingest')}/v1/privacy/export/gdpr-1", headers=mgmt)).json()
        assert export["profile"]["traits"]["first_name"] == "Eve" and len(export["events"]) == 2
        assert len(export["campaign"]["sends"]) == 1 and len(export["delivery"]["messages"]) == 1
        assert sorted(d["token"] for d in export["delivery"]["devices"]) == ["fcm-token-of-eves-phone",
                                                                             "fcm-token-of-eves-tablet"]
        assert export["segment"]["memberships"]

        r = await c.post(f"{s.url('ingest')}/v1/privacy/erasure", headers=mgmt,
                         json={"user": "gone@e2e.example", "suppress": True})
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 30
        while (req := (await c.get(f"{s.url('ingest')}/v1/privacy/requests/{rid}", headers=mgmt)).json())[
                "status"] != "completed":
            assert time.monotonic() < deadline, req
            await asyncio.sleep(0.3)
        assert req["removed"]["events"] == 2 and req["services"]["delivery"]["removed"]["messages"] == 1
        assert req["services"]["delivery"]["removed"]["devices"] == 2  # registered under her userId and device id
        from shared.testing import _asyncpg_dsn

        dsn, kw = _asyncpg_dsn(settings.database_url)
        conn = await asyncpg.connect(dsn, **kw)
        try:  # the ids were held for the other services only until they had all erased
            assert await conn.fetchval("select identities from ingest.privacy_requests where id = $1",
                                       uuid.UUID(rid)) is None
        finally:
            await conn.close()
        for user, left in (("gdpr-1", []), ("gdpr-device", []), ("someone-else", ["fcm-token-of-another-user"])):
            devices = (await c.get(f"{s.url('delivery')}/v1/devices", headers=mgmt, params={"user": user})).json()
            assert [d["token"] for d in devices["devices"]] == left

        for ref in ("gdpr-1", "gdpr-device", "gone@e2e.example"):
            assert (await c.get(f"{s.url('ingest')}/v1/profiles/{ref}", headers=mgmt)).status_code == 404
        members = (await c.get(f"{s.url('segment')}/v1/segments/{seg['id']}/members", headers=mgmt)).json()
        assert members["members"] == []
        sends = (await c.get(f"{s.url('campaign')}/v1/campaigns/{camp['id']}/sends", headers=mgmt)).json()
        assert sends["sends"] == []
        msgs = (await c.get(f"{s.url('delivery')}/v1/messages", headers=mgmt,
                            params={"to": "gone@e2e.example"})).json()
        assert msgs["messages"] == []
        again = await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": "gdpr-1", "event": "Signed Up"})
        assert again.json()["suppressed"] == 1 and again.json()["accepted"] == 0
        await asyncio.sleep(3)
        assert len(box.messages) == 1


async def test_manual_list_from_csv_drives_a_segment(stack, workspace) -> None:
    s, _ = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    async with httpx.AsyncClient(timeout=10) as c:
        for uid, email in (("list-1", "ada@list.example"), ("list-2", "bob@list.example"), ("list-3", None)):
            traits = {"email": email} if email else {}
            r = await c.post(f"{s.url('ingest')}/v1/identify", auth=wk, json={"userId": uid, "traits": traits})
            assert r.status_code == 200
        lst = (await c.post(f"{s.url('segment')}/v1/lists", headers=mgmt, json={"name": "beta"})).json()
        seg = (await c.post(f"{s.url('segment')}/v1/segments", headers=mgmt, json={
            "name": "beta testers", "definition": {"type": "list", "list_id": lst["id"]}})).json()
        csv_body = "email\nada@list.example\nnobody@list.example\n\nlist-3\n"
        r = await c.post(f"{s.url('segment')}/v1/lists/{lst['id']}/members/csv", headers={
            **mgmt, "Content-Type": "text/csv"}, content=csv_body)
        assert r.status_code == 200, r.text
        assert r.json()["added"] == 2 and r.json()["unknown"] == ["nobody@list.example"]
        ids = {(await c.get(f"{s.url('ingest')}/v1/profiles/{ref}", headers=mgmt)).json()["id"]
               for ref in ("list-1", "list-3")}
        members = (await c.get(f"{s.url('segment')}/v1/segments/{seg['id']}/members", headers=mgmt)).json()
        assert {m["profile_id"] for m in members["members"]} == ids
        r = await c.post(f"{s.url('segment')}/v1/lists/{lst['id']}/members/remove", headers=mgmt,
                         json={"ids": ["list-3"]})
        assert r.json()["removed"] == 1
        got = (await c.get(f"{s.url('segment')}/v1/lists/{lst['id']}", headers=mgmt)).json()
        assert got["members"] == 1
        members = (await c.get(f"{s.url('segment')}/v1/segments/{seg['id']}/members", headers=mgmt)).json()
        assert len(members["members"]) == 1
        missing = await c.post(f"{s.url('segment')}/v1/lists/{uuid.uuid4()}/members", headers=mgmt,
                               json={"ids": ["list-1"]})
        assert missing.status_code == 404


CAMPAIGN_FILE = """
templates:
  - name: welcome
    subject: "Welcome {{ profile.first_name }}"
    text: "Hello"
    locales:
      fr: {subject: "Bienvenue {{ profile.first_name }}"}
segments:
  - name: pros
    definition: {type: trait, trait: plan, value: pro}
campaigns:
  - name: Welcome pros
    trigger: {type: segment_entered, segment: pros}
    entry: {rule: once, holdout_percent: 5}
    steps:
      - {id: hello, type: send, template: welcome, next: later}
      - {id: later, type: delay, seconds: 3600}
"""


def test_campaigns_as_code_apply_is_idempotent_and_get_round_trips(stack, workspace, tmp_path) -> None:
    s, _ = stack
    env = {**s.env, "TENURE_SECRET_KEY": workspace.secret_key}
    path = tmp_path / "campaign.yaml"
    path.write_text(CAMPAIGN_FILE)

    def tenure(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TENURE, *args], env=env, capture_output=True, text=True, timeout=60)

    dry = tenure("apply", "-f", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "create    template welcome" in dry.stderr and "3 would change" in dry.stderr
    first = tenure("apply", "-f", str(path))
    assert first.returncode == 0 and "3 changed, 0 unchanged" in first.stderr, first.stderr
    again = tenure("apply", "-f", str(path))
    assert again.returncode == 0 and "0 changed, 3 unchanged" in again.stderr, again.stderr
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    camps = httpx.get(f"{s.url('campaign')}/v1/campaigns", headers=mgmt).json()["campaigns"]
    assert [c["version"] for c in camps] == [1]  # re-applying made no new version
    path.write_text(CAMPAIGN_FILE.replace("seconds: 3600", "seconds: 7200"))
    edit = tenure("apply", "-f", str(path))
    assert "update    campaign Welcome pros" in edit.stderr and "+    seconds: 7200" in edit.stderr, edit.stderr
    assert httpx.get(f"{s.url('campaign')}/v1/campaigns", headers=mgmt).json()["campaigns"][0]["version"] == 2
    exported = tenure("get", "campaigns", "-o", "yaml")
    assert exported.returncode == 0 and "segment: pros" in exported.stdout and "template: welcome" in exported.stdout
    path.write_text(exported.stdout)
    back = tenure("apply", "-f", str(path))
    assert "0 changed, 3 unchanged" in back.stderr, back.stderr
    broken = tenure("apply", "-f", str(path.with_suffix(".missing")))
    assert broken.returncode != 0


async def test_a_killed_campaign_worker_loses_no_timer_and_sends_nothing_twice(stack, workspace, settings) -> None:

    import asyncpg

    s, box = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    async with httpx.AsyncClient(timeout=10) as c:
        tpl = (await c.post(f"{s.url('campaign')}/v1/templates", headers=mgmt, json={
            "name": "later", "subject": "Three seconds later", "text": "hi"})).json()
        r = await c.post(f"{s.url('campaign')}/v1/campaigns", headers=mgmt, json={
            "name": "delayed", "trigger": {"type": "event", "event": "Waited"}, "steps": [
                {"id": "d", "type": "delay", "seconds": 3, "next": "s"},
                {"id": "s", "type": "send", "template_id": tpl["id"]}]})
        assert r.status_code == 201, r.text
        for i in range(5):
            await c.post(f"{s.url('ingest')}/v1/identify", auth=wk, json={
                "userId": f"crash-{i}", "traits": {"email": f"crash-{i}@e2e.example"}})
            await c.post(f"{s.url('ingest')}/v1/track", auth=wk, json={"userId": f"crash-{i}", "event": "Waited"})
    from shared.testing import _asyncpg_dsn

    dsn, kw = _asyncpg_dsn(settings.database_url)
    conn = await asyncpg.connect(dsn, **kw)
    try:
        async def waiting() -> int:
            return await conn.fetchval("select count(*) from campaign.journeys where workspace_id = $1 "
                                       "and status = 'active' and step = 's'", workspace.workspace_id)
        deadline = time.monotonic() + 30
        while await waiting() < 5:
            assert time.monotonic() < deadline, "journeys did not reach their delay"
            await asyncio.sleep(0.1)
        s.workers["campaign"][0].send_signal(signal.SIGKILL)  # dies while every user is waiting
        s.workers["campaign"][0].wait(timeout=10)
        await asyncio.sleep(4)  # the timers come due while no campaign worker runs
        assert not [m for m in box.messages if m["subject"] == "Three seconds later"]
        s.workers["campaign"] = [s.spawn("worker", "campaign")]
        await wait_for(lambda: len([m for m in box.messages if m["subject"] == "Three seconds later"]) >= 5)
        await asyncio.sleep(3)  # anything doubled would show up by now
        got = sorted(m["to"][0] for m in box.messages if m["subject"] == "Three seconds later")
        assert got == [f"crash-{i}@e2e.example" for i in range(5)]
    finally:
        await conn.close()


async def test_demo_runs_the_six_lifecycle_campaigns_in_several_languages(stack, workspace) -> None:
    s, box = stack
    r = subprocess.run([TENURE, "demo", "--write-key", workspace.write_key, "--key", workspace.secret_key],
                       env=s.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 programs, 12 templates, 2 segments, 9 campaigns created or updated" in " ".join(r.stderr.split())

    def subjects() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in box.messages:
            out.setdefault(m["to"][0].split("@")[0], set()).add(m["subject"])
        return out

    expected = [
        ("demo-ada", "Welcome to Acme, Ada!"),  # onboarding, English
        ("demo-amelie", "Bienvenue chez Acme, Amélie !"),  # onboarding, fr-FR
        ("demo-jean", "Les nouveautés d'Acme ce mois-ci"),  # engagement (engaged stage), fr-CA → fr
        ("demo-yuki", "Glad you like Acme! Invite a friend, you both get a month"),  # referral after NPS 10
        ("demo-yuki", "Your friend joined Acme: +500 points"),  # Noah signed up with Yuki's link and ordered
        ("demo-noah", "Your welcome gift: WELCOME-0001"),  # the referred side's coupon
        ("demo-klaus", "Du bist jetzt Gold-Mitglied"),  # loyalty: orders earned Gold, de-AT → de
    ]
    await wait_for(lambda: all(subj in subjects().get(uid, set()) for uid, subj in expected), timeout=60)
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    async with httpx.AsyncClient(timeout=10) as c:
        # the at-risk and churned users entered churn prevention and win-back (or their holdouts)
        names = {x["id"]: x["name"] for x in (await c.get(f"{s.url('campaign')}/v1/campaigns",
                                                        headers=mgmt)).json()["campaigns"]}
        for uid, campaign in (("demo-lena", "Churn prevention"), ("demo-grace", "Win-back")):
            pid = (await c.get(f"{s.url('ingest')}/v1/profiles/{uid}", headers=mgmt)).json()["id"]

            async def entered(pid: str = pid, campaign: str = campaign) -> bool:
                got = (await c.get(f"{s.url('campaign')}/v1/profiles/{pid}/journeys", headers=mgmt)).json()
                return any(names.get(j["campaign_id"]) == campaign for j in got["journeys"])

            deadline = time.monotonic() + 30
            while not await entered():
                if time.monotonic() > deadline:
                    stage = (await c.get(f"{s.url('segment')}/v1/lifecycle/{pid}", headers=mgmt)).json()
                    raise AssertionError(f"{uid} never entered {campaign}; stage {stage}")
                await asyncio.sleep(0.3)


async def test_preference_page_in_headless_chromium(stack, workspace) -> None:
    import re

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.e2e.browser import headless_chromium

    s, box = stack
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"browser-{uuid.uuid4().hex[:6]}@e2e.example"
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{s.url('delivery')}/v1/messages", headers=mgmt, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Monthly news", "topic": "offers",
            "html": "<p>News</p>", "text": "News"})
        assert r.status_code == 202, r.text
        await wait_for(lambda: any(m["to"] == [to] for m in box.messages))
        mail = next(m for m in box.messages if m["to"] == [to])
        prefs_url = re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1)
        browser = await asyncio.to_thread(headless_chromium)
        try:
            def use_the_page() -> tuple[str, bool, bool, str]:
                browser.get(prefs_url)
                offers = browser.find_element(By.CSS_SELECTOR, "input[name=topic][value=offers]")
                news = browser.find_element(By.CSS_SELECTOR, "input[name=topic][value=product_news]")
                assert offers.is_selected() and news.is_selected()
                label = browser.find_element(By.XPATH, "//label[input[@value='offers']]").text
                offers.click()  # opt out of offers, keep product news
                browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                # the form posts and the saved page loads: wait for it rather than race it
                status = WebDriverWait(browser, 15).until(
                    expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[role=status]"))).text
                browser.get(prefs_url)  # reload: the choice stuck
                after = browser.find_element(By.CSS_SELECTOR, "input[name=topic][value=offers]").is_selected()
                kept = browser.find_element(By.CSS_SELECTOR, "input[name=topic][value=product_news]").is_selected()
                return label + "|" + status, after, kept, browser.find_element(By.TAG_NAME, "html").get_attribute("lang")

            text_seen, offers_after, news_after, lang = await asyncio.to_thread(use_the_page)
        finally:
            await asyncio.to_thread(browser.quit)
        assert text_seen == "Offers and discounts|Your preferences are saved." and lang == "en"
        assert offers_after is False and news_after is True
        prefs = (await c.get(f"{s.url('delivery')}/v1/preferences/{to}", headers=mgmt)).json()
        assert {t["id"]: t["subscribed"] for t in prefs["topics"]} == {"product_news": True, "offers": False}


async def test_killing_the_delivery_worker_mid_send_loses_nothing(stack, workspace) -> None:
    """Repeated SIGKILLs of the delivery worker while it sends: every message arrives. SMTP takes no
    idempotency key, so a kill between the server's 250 and our commit re-sends that message after the
    lease — with the same Message-ID (documented); no other message may arrive twice."""
    import random

    s, box = stack
    s.env["TENURE_DELIVERY_LEASE_S"] = "2"  # a dead worker's messages come back quickly
    terminate(s.workers["delivery"], timeout=10)
    tag = uuid.uuid4().hex[:6]
    recipients = [f"k{i}-{tag}@e2e.example" for i in range(150)]
    await s.queue_emails(workspace.secret_key, recipients, "Kill test")
    kills = 3
    for _ in range(kills):
        s.workers["delivery"] = [s.spawn("worker", "delivery")]
        await asyncio.sleep(random.uniform(1.0, 2.0))  # start-up, then some sending
        s.workers["delivery"][0].send_signal(signal.SIGKILL)
        s.workers["delivery"][0].wait(timeout=10)
    s.workers["delivery"] = [s.spawn("worker", "delivery")]
    mine = set(recipients)
    await wait_for(lambda: len({m["to"][0] for m in box.messages if m["to"][0] in mine}) == len(mine), timeout=90)
    await asyncio.sleep(3)  # a re-send after a lease would show up by now
    by_recipient: dict[str, list[str]] = {}
    for m in box.messages:
        if m["to"][0] in mine:
            by_recipient.setdefault(m["to"][0], []).append(m["headers"]["Message-ID"])
    assert set(by_recipient) == mine  # zero lost
    doubled = {to: ids for to, ids in by_recipient.items() if len(ids) > 1}
    assert all(len(set(ids)) == 1 for ids in doubled.values())  # a re-send is the same message
    # at most what was in flight at each kill: the 10 senders' messages, and outcomes awaiting the
    # recorder's next write (a few milliseconds' worth); measured 0–3 in all over three trials
    assert len(doubled) <= kills * 20
