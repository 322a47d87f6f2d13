"""Retention: events older than a workspace's retention_days are dropped in small batches."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from services.ingest.worker import enforce_retention

TENURE = str(Path(sys.executable).parent / "tenure")


async def test_old_events_are_dropped_per_workspace(apps, workspace, sessionmaker, settings) -> None:
    other = workspace  # the policy applies to one workspace only
    from shared.core import create_workspace

    async with sessionmaker() as s, s.begin():
        keeper = await create_workspace(s, "keeps-everything")
    # by the events' own time, as segment's copy of them: history imported today is as old as it says (ingest once
    # went by the time of receipt, and kept for a year what segment dropped within the hour)
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    for ws in (other, keeper):
        for i in range(3):
            r = await apps["ingest"].post("/v1/track", auth=(ws.write_key, ""), json={
                "userId": "r", "event": f"E{i}", **({"timestamp": old} if i < 2 else {})})
            assert r.status_code == 200, r.text
    # E0 came in days ago; E1, as old, just now: the feed's readers have a day to see it before it goes
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update ingest.events set received_at = now() - interval '2 days' "
                             "where workspace_id = any(CAST(:ws AS uuid[])) and event = 'E0'"),
                        {"ws": [other.workspace_id, keeper.workspace_id]})
    r = subprocess.run([TENURE, "workspace", "configure", str(other.workspace_id), "--retention-days", "30"],
                       env={**os.environ, "TENURE_DATABASE_URL": settings.database_url,
                            "TENURE_REDIS_URL": settings.redis_url}, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert await enforce_retention({"sessionmaker": sessionmaker}) >= 1
    async with sessionmaker() as s:
        left = dict((await s.execute(text(
            "select workspace_id, count(*) from ingest.events where workspace_id = any(CAST(:ws AS uuid[])) "
            "group by workspace_id"), {"ws": [other.workspace_id, keeper.workspace_id]})).all())
    assert left == {other.workspace_id: 2, keeper.workspace_id: 3}


async def test_segment_drops_stored_event_properties_past_retention(workspace, sessionmaker) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta

    from services.segment import evaluation
    from services.segment.worker import enforce_retention as segment_retention

    ws, pid = workspace.workspace_id, uuid.uuid4()
    now = datetime.now(UTC)
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [
            {"workspace_id": str(ws), "profile_id": str(pid), "type": "track", "event": "Viewed",
             "message_id": f"m{d}", "properties": {"d": d}, "traits": {},
             "timestamp": (now - timedelta(days=d)).isoformat()} for d in (1, 45, 60)])
        await s.execute(text("update core.workspaces set settings = settings || '{\"retention_days\": 30}' "
                             "where id = :ws"), {"ws": ws})
    assert await segment_retention({"sessionmaker": sessionmaker}) >= 2
    async with sessionmaker() as s:
        left = (await s.execute(text("select properties->>'d' from segment.profile_events where workspace_id = :ws"),
                                {"ws": ws})).scalars().all()
        counts = (await s.execute(text("select sum(count) from segment.event_counts where workspace_id = :ws"),
                                  {"ws": ws})).scalar()
    assert left == ["1"] and counts == 3  # the content goes, the counts stay


async def test_a_retention_value_that_is_not_days_keeps_everything_and_fails_no_workspace(
        apps, sessionmaker, settings) -> None:
    """``retention_days`` was cast to an integer in SQL for every workspace at once: one workspace holding
    1000000000 (which the settings check let through), null or a word failed the retention job of every
    workspace. Such a value now keeps everything, as no value does; a string of digits, which older releases
    stored as given, still counts; and the check refuses the out-of-range value, naming it."""
    from shared.core import create_workspace

    values = {"huge": 1_000_000_000, "null": None, "word": "soon", "fraction": 30.5, "digits": "30", "number": 30}
    made = {}
    async with sessionmaker() as s, s.begin():
        for label, days in values.items():
            made[label] = ws = await create_workspace(s, f"retention-{label}-{uuid.uuid4().hex[:8]}")
            await s.execute(text("update core.workspaces set settings = jsonb_build_object('retention_days', "
                                 "CAST(:v AS jsonb)) where id = :ws"),
                            {"v": json.dumps(days), "ws": ws.workspace_id})
    for ws in made.values():
        for event in ("Old", "New"):
            r = await apps["ingest"].post("/v1/track", auth=(ws.write_key, ""), json={"userId": "r", "event": event})
            assert r.status_code == 200, r.text
    ids = [ws.workspace_id for ws in made.values()]
    try:
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update ingest.events set timestamp = now() - interval '40 days', "
                                 "received_at = now() - interval '40 days' "
                                 "where workspace_id = any(CAST(:ws AS uuid[])) and event = 'Old'"), {"ws": ids})
        assert await enforce_retention({"sessionmaker": sessionmaker}) >= 2
        async with sessionmaker() as s:
            left = dict((await s.execute(text(
                "select workspace_id, count(*) from ingest.events where workspace_id = any(CAST(:ws AS uuid[])) "
                "group by workspace_id"), {"ws": ids})).all())
        assert {label: left[ws.workspace_id] for label, ws in made.items()} == {
            "huge": 2, "null": 2, "word": 2, "fraction": 2, "digits": 1, "number": 1}
        r = subprocess.run([TENURE, "workspace", "configure", str(made["number"].workspace_id),
                            "--retention-days", "1000000000"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "TENURE_DATABASE_URL": settings.database_url,
                                "TENURE_REDIS_URL": settings.redis_url, "COLUMNS": "200"})
        assert r.returncode == 2 and "retention_days: " in r.stderr and "nothing was changed" in r.stderr, r.stderr
    finally:  # other tests' retention runs share these workspaces' table
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update core.workspaces set settings = '{}' where id = any(CAST(:ws AS uuid[]))"),
                            {"ws": ids})


async def test_sent_messages_lose_their_content_past_retention_and_their_links_keep_working(
        apps, workspace, sessionmaker, settings, mailbox) -> None:
    """Past the workspace's retention a sent email keeps its row (the log, the funnel, its links) but not its
    subject, HTML or text; a message still queued keeps them until it is sent; other workspaces keep everything."""
    import re
    from urllib.parse import urlsplit

    from services.delivery import retention as delivery_retention
    from services.delivery import sending
    from services.delivery.worker import redact_expired
    from shared.core import create_workspace

    tag = uuid.uuid4().hex[:6]
    async with sessionmaker() as s, s.begin():
        keeper = await create_workspace(s, f"keeps-mail-{tag}")

    async def queue(ws, to: str) -> str:
        r = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {ws.secret_key}"}, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": f"Your order, Ada {tag}",
            "html": '<p>Hi Ada, <a href="https://acme.example/orders/1">your order</a></p>', "text": "Hi Ada"})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    old = [await queue(workspace, f"old{i}-{tag}@example.com") for i in range(5)]
    later = await queue(workspace, f"later-{tag}@example.com")  # past retention, but after the waiting one
    recent = await queue(workspace, f"new-{tag}@example.com")
    kept = await queue(keeper, f"kept-{tag}@example.com")
    await sending.send_due(sessionmaker, settings)
    waiting = await queue(workspace, f"waiting-{tag}@example.com")  # not sent yet
    async with sessionmaker() as s, s.begin():
        for ids, days in ((old + [kept], 41), ([waiting], 40), ([later], 39)):
            await s.execute(text("update delivery.messages set created_at = now() - make_interval(days => :d) "
                                 "where id = any(CAST(:ids AS uuid[]))"), {"ids": ids, "d": days})
        await s.execute(text("update core.workspaces set settings = settings || '{\"retention_days\": 30}' "
                             "where id = :ws"), {"ws": workspace.workspace_id})

    # in batches of two; a message still queued holds none of the others back
    assert await delivery_retention.redact_expired(sessionmaker, batch=2) == 6

    async def message(ws, mid: str) -> dict:
        r = await apps["delivery"].get(f"/v1/messages/{mid}", headers={"Authorization": f"Bearer {ws.secret_key}"})
        assert r.status_code == 200, r.text
        return r.json()

    async def content(mid: str) -> tuple:
        async with sessionmaker() as s:
            return tuple((await s.execute(text("select subject, html, text from delivery.messages where id = :id"),
                                          {"id": mid})).one())

    for mid in old:
        got = await message(workspace, mid)
        assert (got["status"], got["subject"], got["to"]) == ("sent", "", f"old{old.index(mid)}-{tag}@example.com")
        assert await content(mid) == ("", None, None)
    assert await content(later) == ("", None, None)
    for ws, mid in ((workspace, recent), (workspace, waiting), (keeper, kept)):
        assert (await message(ws, mid))["subject"] == f"Your order, Ada {tag}"
        assert (await content(mid))[2] == "Hi Ada"

    # the email in the recipient's inbox still works: its click redirect and one-click unsubscribe
    mail = next(m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == old[0])

    def path(url: str) -> str:
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    click = path(re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&"))
    followed = await apps["delivery"].get(click, headers={"User-Agent": "Mozilla/5.0"})
    assert followed.status_code == 302 and followed.headers["location"] == "https://acme.example/orders/1"
    done = await apps["delivery"].post(path(mail["headers"]["List-Unsubscribe"].strip("<>")),
                                       content=b"List-Unsubscribe=One-Click",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200, done.text
    prefs = await apps["delivery"].get(f"/v1/preferences/old0-{tag}@example.com",
                                       headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert prefs.json()["suppression"] == "unsubscribed", prefs.text

    # the waiting message is cleared by the first pass after it is sent (the mark stopped before it); then a pass
    # has nothing left to clear
    await sending.send_due(sessionmaker, settings)
    assert await redact_expired({"sessionmaker": sessionmaker}) == 1
    assert await content(waiting) == ("", None, None)
    assert await delivery_retention.redact_expired(sessionmaker) == 0


async def test_campaign_copies_of_trigger_data_lose_their_properties_past_retention(
        apps, workspace, sessionmaker, internal_client) -> None:
    """An API trigger's data (an order, a reset link) stays with the journey and its sends while they may use it;
    once ended longer ago than the workspace's retention it is cleared, variant and step kept, as ingest drops the
    events; an open journey and a workspace without retention keep everything."""
    from types import SimpleNamespace

    from services.campaign import retention as campaign_retention
    from services.campaign.worker import redact_expired
    from shared.core import create_workspace
    from tests.integration.test_journeys import World

    async with sessionmaker() as s, s.begin():
        other = await create_workspace(s, "keeps-triggers")
    worlds = {name: World(apps, ws, sessionmaker, internal_client)
              for name, ws in (("expiring", workspace), ("keeping", SimpleNamespace(
                  workspace_id=other.workspace_id, write_key=other.write_key, secret_key=other.secret_key)))}
    secret = {"order": "A-1001", "reset_link": "https://acme.example/reset/s3cr3t"}
    journeys: dict[str, list[str]] = {}
    for name, world in worlds.items():
        tpl = await world.template("receipt", "Your order {{ event.properties.order }}")
        camp = await world.campaign(trigger={"type": "api"}, message_type="transactional", steps=[
            {"id": "receipt", "type": "send", "template_id": tpl, "next": "later"},
            {"id": "later", "type": "delay", "seconds": 86400 * 365}])
        for uid in (f"{name}-done", f"{name}-open"):
            await world.identify(uid, email=f"{uid}-{uuid.uuid4().hex[:6]}@retention.example")
            r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                                  json={"user": uid, "data": secret})
            assert r.status_code == 202, r.text
            journeys.setdefault(name, []).append(r.json()["journey_id"])
        await world.pump(datetime.now(UTC) + timedelta(seconds=1))
    async with sessionmaker() as s, s.begin():
        done = [journeys["expiring"][0], journeys["keeping"][0]]
        # (ended by an archive while it waited for a matching event: its wait and what it saw hold property values)
        await s.execute(text("update campaign.journeys set status = 'exited', wake_at = null, "
                             "entered_at = now() - interval '41 days', ended_at = now() - interval '40 days', "
                             "goal_deadline = now() + interval '300 days', "
                             "wait = '{\"event\": \"Order Completed\", \"match_value\": \"A-1001\"}', "
                             "seen = '[\"event:Order Completed\", \"event:Order Completed|order=\\\"A-1001\\\"\"]' "
                             "where id = any(CAST(:ids AS uuid[]))"), {"ids": done})
        await s.execute(text("update campaign.journeys set entered_at = now() - interval '41 days' "
                             "where id = any(CAST(:ids AS uuid[]))"), {"ids": [journeys["expiring"][1]]})
        await s.execute(text("update campaign.sends set created_at = now() - interval '41 days' "
                             "where journey_id = any(CAST(:ids AS uuid[]))"),
                        {"ids": [j for js in journeys.values() for j in js]})
        await s.execute(text("update core.workspaces set settings = settings || '{\"retention_days\": 30}' "
                             "where id = :ws"), {"ws": workspace.workspace_id})

    assert await campaign_retention.redact_expired(sessionmaker) == 3  # the ended journey, both sends

    async def trigger_data(jid: str) -> tuple[dict, list[dict]]:
        async with sessionmaker() as s:
            journey, wait, seen = (await s.execute(text(
                "select trigger_data, wait, seen from campaign.journeys where id = :id"), {"id": jid})).one()
            journey = {**journey, "(wait)": wait, "(seen)": seen}
            sends = [r for r, in await s.execute(text("select trigger_data from campaign.sends where journey_id = :id"),
                                                  {"id": jid})]
        return journey, sends

    journey, sends = await trigger_data(journeys["expiring"][0])  # (its goal window still open: no matter)
    assert "properties" not in journey and journey["name"] == "api"
    assert journey["(wait)"] is None and journey["(seen)"] == ["event:Order Completed"]
    assert sends and all("properties" not in d and d["step"] == "receipt" for d in sends), sends
    journey, sends = await trigger_data(journeys["expiring"][1])  # still open: its later steps may read it
    assert journey["properties"] == secret and all("properties" not in d for d in sends)
    for jid in journeys["keeping"]:
        journey, sends = await trigger_data(jid)
        assert journey["properties"] == secret and all(d["properties"] == secret for d in sends)
    assert await redact_expired({"sessionmaker": sessionmaker}) == 0  # nothing left to clear
