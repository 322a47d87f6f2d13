"""Journeys through the HTTP API, on real PostgreSQL, with a controllable clock: events go in through
ingest's tracking API, the campaign worker's functions run with a given ``now``, messages come out
through delivery's API."""

import re
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from services.campaign import dispatch, journeys, triggering
from services.delivery import sending
from shared.testing import drain_feed, run_due_journeys

T0 = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # a Wednesday; 10:00 in New York, 16:00 in Paris


def _coming(weekday: int, at: str, tz: str = "UTC", *, weeks: int = 0) -> datetime:
    """The first ``at`` local time on ``weekday`` (Monday is 0) more than an hour from now, ``weeks`` later, in
    UTC. Schedules fire only slots after their campaign's (real) creation, so a fixed date expires."""
    zone = ZoneInfo(tz)
    start = datetime.now(zone) + timedelta(hours=1)
    hour, minute = map(int, at.split(":"))
    day = start.date() + timedelta(days=(weekday - start.weekday()) % 7)
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    if local <= start:
        local += timedelta(days=7)
    local += timedelta(days=7 * weeks)  # wall-clock arithmetic: the same local time across a DST change
    return local.astimezone(UTC)


class World:
    def __init__(self, apps, workspace, sessionmaker, internal):
        self.apps, self.sm, self.internal = apps, sessionmaker, internal
        self.deliver = False
        self.ws = workspace.workspace_id
        self.h = {"Authorization": f"Bearer {workspace.secret_key}"}
        self.wk = (workspace.write_key, "")

    async def template(self, name: str, subject: str, **kw) -> str:
        r = await self.apps["campaign"].post("/v1/templates", headers=self.h, json={
            "name": f"{name}-{uuid.uuid4().hex[:6]}", "subject": subject, "text": kw.pop("text", "body"), **kw})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def campaign(self, **body) -> dict:
        r = await self.apps["campaign"].post("/v1/campaigns", headers=self.h,
                                             json={"name": f"c-{uuid.uuid4().hex[:8]}", **body})
        assert r.status_code == 201, r.text
        return r.json()

    async def identify(self, uid: str, **traits) -> str:
        r = await self.apps["ingest"].post("/v1/identify", auth=self.wk, json={"userId": uid, "traits": traits})
        assert r.status_code == 200, r.text
        return (await self.apps["ingest"].get(f"/v1/profiles/{uid}", headers=self.h)).json()["id"]

    async def track(self, uid: str, event: str, at: datetime, **props) -> None:
        r = await self.apps["ingest"].post("/v1/track", auth=self.wk, json={
            "userId": uid, "event": event, "properties": props, "timestamp": at.isoformat()})
        assert r.status_code == 200, r.text

    async def pump(self, now: datetime) -> None:
        """What the campaign worker does when woken, at ``now``: feeds, due timers, dispatch."""
        for feed in ("events", "transitions"):
            await drain_feed(self.sm, lambda s, feed=feed: triggering.consume_page(s, self.internal, feed, 500, now=now),
                             500)
        await run_due_journeys(self.sm, self.internal, now)
        if self.deliver:  # what delivery's worker does (webhooks are messages too)
            await sending.send_due(self.sm, self.internal.settings)

    async def fold_traits(self, pid: str, traits: dict) -> None:
        """What segment's worker does with an identify carrying ``traits``, without the feed: for a test setting up
        an audience (the traits' time is T0; trait conditions do not read it)."""
        from services.segment import evaluation

        async with self.sm() as s, s.begin():
            await evaluation.apply_events(s, [{"workspace_id": str(self.ws), "profile_id": pid, "type": "identify",
                                               "event": None, "traits": traits, "properties": {},
                                               "message_id": f"traits-{uuid.uuid4().hex}", "timestamp": T0.isoformat()}])
            await evaluation.reevaluate(s, self.ws, [uuid.UUID(pid)])

    async def fold_segments(self, pid: str, today: date | None = None) -> None:
        """What segment's worker does with the new events: fold the feed, re-evaluate the profile (on ``today``, the
        real date unless given: a test whose events are at T0 passes T0's, or its users go idle as time passes)."""
        from services.segment import evaluation

        await drain_feed(self.sm, lambda s: evaluation.consume_page(s, self.internal, 500), 500)
        async with self.sm() as s, s.begin():
            await evaluation.reevaluate(s, self.ws, [uuid.UUID(pid)], today=today)

    async def mail(self, to: str) -> list[dict]:
        r = await self.apps["delivery"].get("/v1/messages", headers=self.h, params={"to": to})
        return sorted(r.json()["messages"], key=lambda m: m["created_at"])

    async def path(self, pid: str) -> list[dict]:
        r = await self.apps["campaign"].get(f"/v1/profiles/{pid}/journeys", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()["journeys"]

    async def settings(self, **values) -> None:
        import json
        async with self.sm() as s, s.begin():
            await s.execute(text("update core.workspaces set settings = settings || CAST(:v AS jsonb) where id = :ws"),
                            {"v": json.dumps(values), "ws": self.ws})


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> World:
    return World(apps, workspace, sessionmaker, internal_client)


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@journeys.example"


async def test_welcome_series_waits_in_local_time_and_speaks_the_users_language(world) -> None:
    welcome = await world.template("welcome", "Welcome {{ profile.first_name }}",
                                   locales={"fr": {"subject": "Bienvenue {{ profile.first_name }}",
                                                   "text": "Bienvenue"}})
    tips = await world.template("tips", "Three tips", locales={"fr": {"subject": "Trois astuces"}})
    camp = await world.campaign(trigger={"type": "event", "event": "Signed Up"}, steps=[
        {"id": "welcome", "type": "send", "template_id": welcome, "next": "wait"},
        {"id": "wait", "type": "delay", "seconds": 86400, "next": "morning"},
        {"id": "morning", "type": "wait_until", "time": "09:00", "weekdays": [0, 1, 2, 3, 4], "next": "tips"},
        {"id": "tips", "type": "send", "template_id": tips}])
    fr, ny = _email("fr"), _email("ny")
    await world.identify("w-fr", email=fr, first_name="Amélie", locale="fr-CA", timezone="Europe/Paris")
    pid_ny = await world.identify("w-ny", email=ny, first_name="Ann", timezone="America/New_York")
    for uid in ("w-fr", "w-ny"):
        await world.track(uid, "Signed Up", T0)
    await world.pump(T0)
    assert [m["subject"] for m in await world.mail(fr)] == ["Bienvenue Amélie"]  # fr-CA → fr
    assert [m["locale"] for m in await world.mail(fr)] == ["fr-CA"]  # (delivery's footer and pages speak it too)
    assert [m["subject"] for m in await world.mail(ny)] == ["Welcome Ann"]
    await world.pump(T0 + timedelta(hours=23))  # the day has not passed: nothing
    assert len(await world.mail(ny)) == 1
    await world.pump(T0 + timedelta(days=1))  # Thursday 10:00 in New York: wait for Friday 09:00 local
    journey = (await world.path(pid_ny))[0]
    assert journey["step"] == "tips" and journey["wake_at"].startswith("2026-11-27T14:00:00")
    await world.pump(datetime(2026, 11, 27, 13, 59, tzinfo=UTC))
    assert len(await world.mail(ny)) == 1
    await world.pump(datetime(2026, 11, 27, 14, 0, tzinfo=UTC))
    assert [m["subject"] for m in await world.mail(ny)] == ["Welcome Ann", "Three tips"]
    assert [m["subject"] for m in await world.mail(fr)] == ["Bienvenue Amélie", "Trois astuces"]
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["entered"] == 2 and stats["completed"] == 2
    assert stats["sends_by_step"]["welcome"]["dispatched"] == 2
    kinds = [e["kind"] for e in (await world.path(pid_ny))[0]["log"]]
    assert kinds == ["entered", "sent", "waiting", "waiting", "sent", "completed"]


async def test_cart_abandonment_follows_one_cart_id(world) -> None:
    reminder = await world.template("cart", "You left something in cart {{ event.properties.cart_id }}")
    await world.campaign(trigger={"type": "event", "event": "Product Added"}, entry={"rule": "every_time"}, steps=[
        {"id": "wait", "type": "wait_for_event", "event": "Order Completed", "timeout_seconds": 3600,
         "match": {"property": "cart_id", "trigger_property": "cart_id"}, "on_timeout": "remind", "on_event": None},
        {"id": "remind", "type": "send", "template_id": reminder}])
    buyer, other_cart, same_page = _email("buyer"), _email("other"), _email("same")
    for uid, email in (("cart-1", buyer), ("cart-2", other_cart), ("cart-3", same_page)):
        await world.identify(uid, email=email)
    await world.track("cart-1", "Product Added", T0, cart_id="A")
    await world.track("cart-2", "Product Added", T0, cart_id="B")
    await world.pump(T0 + timedelta(minutes=1))
    await world.track("cart-1", "Order Completed", T0 + timedelta(minutes=20), cart_id="A")
    await world.track("cart-2", "Order Completed", T0 + timedelta(minutes=20), cart_id="some other cart")
    # added and bought before the worker saw either: the order still counts
    await world.track("cart-3", "Product Added", T0, cart_id="C")
    await world.track("cart-3", "Order Completed", T0 + timedelta(minutes=5), cart_id="C")
    await world.pump(T0 + timedelta(minutes=21))
    await world.pump(T0 + timedelta(minutes=61))
    assert await world.mail(buyer) == [] and await world.mail(same_page) == []
    assert [m["subject"] for m in await world.mail(other_cart)] == ["You left something in cart B"]


async def test_entry_rules_hold_when_the_triggers_arrive_in_one_page(world) -> None:
    """Three triggers of one user read in the same page of the feed count for each other."""
    tpl = await world.template("page", "Page")
    rules = {"once": {"rule": "once"}, "period": {"rule": "once_per_period", "period_seconds": 5400},
             "every": {"rule": "every_time"}}
    camps = {name: await world.campaign(trigger={"type": "event", "event": "Browsed"}, entry=entry,
                                        steps=[{"id": "s", "type": "send", "template_id": tpl}])
             for name, entry in rules.items()}
    await world.identify("page-1", email=_email("page"))
    for hours in (0, 1, 2):  # (1.5 h apart or more: hours 0 and 2 for once_per_period)
        await world.track("page-1", "Browsed", T0 + timedelta(hours=hours))
    await world.pump(T0 + timedelta(hours=2, minutes=30))
    entered = {name: (await world.apps["campaign"].get(f"/v1/campaigns/{c['id']}/stats", headers=world.h)).json()[
        "entered"] for name, c in camps.items()}
    assert entered == {"once": 1, "period": 2, "every": 3}


async def test_entry_rules_holdout_goal_and_exit_events(world) -> None:
    tpl = await world.template("promo", "Promo")
    once = await world.campaign(trigger={"type": "event", "event": "Visited"}, steps=[
        {"id": "s", "type": "send", "template_id": tpl}])
    period = await world.campaign(trigger={"type": "event", "event": "Visited"},
                                  entry={"rule": "once_per_period", "period_seconds": 86400},
                                  steps=[{"id": "s", "type": "send", "template_id": tpl}])
    held = await world.campaign(trigger={"type": "event", "event": "Visited"}, entry={"holdout_percent": 100},
                                goal={"event": "Order Completed", "within_seconds": 7 * 86400},
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    goal = await world.campaign(trigger={"type": "event", "event": "Visited"},
                                goal={"event": "Order Completed", "within_seconds": 7 * 86400},
                                exit_on=["Unsubscribed From Promos"],
                                steps=[{"id": "d", "type": "delay", "seconds": 3600, "next": "s"},
                                       {"id": "s", "type": "send", "template_id": tpl}])
    await world.identify("rules-1", email=_email("rules"))
    for hours in (0, 1, 30):
        await world.track("rules-1", "Visited", T0 + timedelta(hours=hours))
        await world.pump(T0 + timedelta(hours=hours, minutes=1))
    await world.track("rules-1", "Order Completed", T0 + timedelta(hours=30, minutes=30))
    await world.pump(T0 + timedelta(hours=31))

    async def stats(c: dict) -> dict:
        return (await world.apps["campaign"].get(f"/v1/campaigns/{c['id']}/stats", headers=world.h)).json()

    assert (await stats(once))["entered"] == 1
    assert (await stats(period))["entered"] == 2  # hour 0 and hour 30
    h = await stats(held)
    assert h["entered"] == 1 and h["holdout"] == 1 and h["sends_by_step"] == {} and h["holdout_converted"] == 1
    g = await stats(goal)
    # entered once (rule "once"); sent after the hour's delay; converted within the window
    assert g["entered"] == 1 and g["sends_by_step"]["s"]["dispatched"] == 1 and g["converted"] == 1
    # an exit event ends a journey that is still waiting
    await world.identify("rules-2", email=_email("rules2"))
    await world.track("rules-2", "Visited", T0)
    await world.pump(T0 + timedelta(minutes=1))
    await world.track("rules-2", "Unsubscribed From Promos", T0 + timedelta(minutes=2))
    await world.pump(T0 + timedelta(hours=2))
    pid = (await world.apps["ingest"].get("/v1/profiles/rules-2", headers=world.h)).json()["id"]
    mine = [j for j in await world.path(pid) if j["campaign_id"] == goal["id"]]
    assert mine[0]["status"] == "exited" and mine[0]["log"][-1]["detail"] == "exit event Unsubscribed From Promos"


async def test_quiet_hours_defer_and_frequency_caps_skip_with_reasons(world) -> None:
    await world.settings(quiet_hours={"email": {"start": "21:00", "end": "08:00", "action": "defer"}},
                         frequency_caps=[{"channel": "email", "max": 1, "period_days": 7, "action": "skip"}])
    tpl = await world.template("news", "News")
    first = await world.campaign(trigger={"type": "event", "event": "Opened App"},
                                 steps=[{"id": "s", "type": "send", "template_id": tpl}])
    second = await world.campaign(trigger={"type": "event", "event": "Opened App"},
                                  steps=[{"id": "s", "type": "send", "template_id": tpl}])
    receipt = await world.campaign(trigger={"type": "event", "event": "Opened App"}, message_type="transactional",
                                   steps=[{"id": "s", "type": "send", "template_id": tpl}])
    night = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # 04:00 in Paris: quiet until 08:00 local (07:00 UTC)
    email = _email("quiet")
    pid = await world.identify("quiet-1", email=email, timezone="Europe/Paris")
    await world.track("quiet-1", "Opened App", night)
    await world.pump(night)
    assert len(await world.mail(email)) == 1  # only the transactional one: exempt
    await world.pump(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    mails = await world.mail(email)
    assert len(mails) == 2  # one marketing email at 08:00 local; the other is over the cap
    path = {j["campaign_id"]: j for j in await world.path(pid)}
    assert path[receipt["id"]]["status"] == "completed"
    logs = [e for c in (first, second) for e in path[c["id"]]["log"]]
    assert sum(e["kind"] == "deferred" and "quiet hours for email" in e["detail"] for e in logs) == 2
    skipped = [e for e in logs if e["kind"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["detail"] == "frequency cap: 1 email per 7 days"


async def test_branch_split_update_attribute_and_api_trigger(world) -> None:
    vip, regular = await world.template("vip", "For our VIPs"), await world.template("reg", "Hello")
    a, b = await world.template("a", "Subject A"), await world.template("b", "Subject B")
    camp = await world.campaign(trigger={"type": "api"}, message_type="transactional", steps=[
        {"id": "tier", "type": "branch", "condition": {"type": "trait", "trait": "plan", "value": "vip"},
         "yes": "vip", "no": "regular"},
        {"id": "vip", "type": "send", "template_id": vip, "next": "ab"},
        {"id": "regular", "type": "send", "template_id": regular, "next": "ab"},
        {"id": "ab", "type": "split", "variants": [{"name": "A", "weight": 50, "next": "sa"},
                                                   {"name": "B", "weight": 50, "next": "sb"}]},
        {"id": "sa", "type": "send", "template_id": a, "next": "mark"},
        {"id": "sb", "type": "send", "template_id": b, "next": "mark"},
        {"id": "mark", "type": "update_attribute", "traits": {"welcomed": True}}])
    users = [(f"api-{i}", _email(f"api{i}")) for i in range(8)]
    for i, (uid, email) in enumerate(users):
        await world.identify(uid, email=email, plan="vip" if i == 0 else "free")
    for uid, _ in users:
        r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                              json={"user": uid, "data": {"code": "X1"}, "idempotency_key": uid})
        assert r.status_code == 202 and r.json()["entered"], r.text
    again = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                              json={"user": users[0][0], "data": {"code": "X1"},
                                                    "idempotency_key": users[0][0]})
    assert again.status_code == 200 and again.json()["entered"] is True  # the first answer, replayed
    missing = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                                json={"user": "nobody-at-all"})
    assert missing.status_code == 404
    await world.pump(datetime.now(UTC) + timedelta(seconds=1))  # API triggers enter at the real time
    subjects = {uid: {m["subject"] for m in await world.mail(email)} for uid, email in users}
    assert "For our VIPs" in subjects["api-0"] and all("Hello" in s for u, s in subjects.items() if u != "api-0")
    for uid, got in subjects.items():  # one arm each, the one the profile's stable bucket picks
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
        arm = "A" if journeys._bucket("split", camp["id"], "ab", pid) < 50 else "B"
        assert got & {"Subject A", "Subject B"} == {f"Subject {arm}"}
    profile = (await world.apps["ingest"].get("/v1/profiles/api-3", headers=world.h)).json()
    assert profile["traits"]["welcomed"] is True
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert sum(v["entered"] for v in stats["variants"].values()) == 8


async def test_edits_make_versions_and_users_inside_finish_theirs(world) -> None:
    one, two = await world.template("v1", "Version one"), await world.template("v2", "Version two")
    camp = await world.campaign(trigger={"type": "event", "event": "Joined"}, entry={"rule": "every_time"}, steps=[
        {"id": "d", "type": "delay", "seconds": 600, "next": "s"}, {"id": "s", "type": "send", "template_id": one}])
    email = _email("ver")
    await world.identify("ver-1", email=email)
    await world.track("ver-1", "Joined", T0)
    await world.pump(T0)
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Joined"}, "entry": {"rule": "every_time"},
        "steps": [{"id": "s", "type": "send", "template_id": two}]})
    assert r.status_code == 200 and r.json()["version"] == 2
    await world.track("ver-1", "Joined", T0 + timedelta(minutes=1))
    await world.pump(T0 + timedelta(minutes=11))
    assert sorted(m["subject"] for m in await world.mail(email)) == ["Version one", "Version two"]
    bad = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Joined"},
        "steps": [{"id": "s", "type": "send", "template_id": two, "next": "nowhere"}]})
    assert bad.status_code == 422 and "unknown step 'nowhere'" in bad.text


async def test_concurrent_workers_fire_each_timer_once_and_a_rolled_back_run_loses_nothing(world) -> None:
    import asyncio

    tpl = await world.template("once", "Exactly once")
    await world.campaign(trigger={"type": "event", "event": "Tick"}, steps=[
        {"id": "d", "type": "delay", "seconds": 60, "next": "s"}, {"id": "s", "type": "send", "template_id": tpl}])
    emails = []
    for i in range(12):
        emails.append(_email(f"tick{i}"))
        await world.identify(f"tick-{i}", email=emails[-1])
        await world.track(f"tick-{i}", "Tick", T0)
    await world.pump(T0)
    later = T0 + timedelta(minutes=2)
    # a worker that dies mid-batch: its transaction rolls back and the timers are still due
    async with world.sm() as s:
        async with s.begin():
            claimed = (await s.execute(text(
                "select id from campaign.journeys where status = 'active' and wake_at <= :now "
                "for update skip locked"), {"now": later})).all()
            assert claimed
            await s.rollback()
    # two replicas at once: SKIP LOCKED gives each journey to one of them
    await asyncio.gather(*(journeys.advance_due(world.sm, world.internal, world.internal._http, now=later, limit=5)
                           for _ in range(2)))
    await world.pump(later)
    for email in emails:
        assert [m["subject"] for m in await world.mail(email)] == ["Exactly once"]


async def test_segment_and_stage_triggers_attribute_dates_webhooks_and_engagement(world) -> None:
    import asyncio
    import json


    hits: list[dict] = []

    async def hook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        hits.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    world.deliver = True
    server = await asyncio.start_server(hook, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"pro-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "plan", "value": "pro"}})).json()
    renew, bye, opened = (await world.template("renew", "Renews tomorrow"), await world.template("bye", "Sorry"),
                          await world.template("opened", "Thanks for reading"))
    entered = await world.campaign(trigger={"type": "segment_entered", "segment_id": seg["id"]}, steps=[
        {"id": "hook", "type": "webhook", "url": url, "next": "when"},
        {"id": "when", "type": "wait_until_attribute", "trait": "renews_at", "offset_seconds": -86400,
         "next": "remind", "on_missing": "stop"},
        {"id": "remind", "type": "send", "template_id": renew, "next": "read"},
        {"id": "read", "type": "delay", "seconds": 3600, "next": "check"},
        {"id": "check", "type": "branch", "condition": {"type": "engaged", "step": "remind", "action": "opened"},
         "yes": "thanks", "no": "stop"},
        {"id": "thanks", "type": "send", "template_id": opened},
        {"id": "stop", "type": "exit"}])
    left = await world.campaign(trigger={"type": "segment_exited", "segment_id": seg["id"]},
                                steps=[{"id": "s", "type": "send", "template_id": bye}])
    staged = await world.campaign(trigger={"type": "segment_entered", "stage": "onboarding"},
                                  steps=[{"id": "s", "type": "send", "template_id": bye}])
    email = _email("seg")
    pid = await world.identify("seg-1", email=email, plan="pro", renews_at="2026-12-01T12:00:00Z")

    await world.fold_segments(pid)
    await world.pump(T0)
    assert hits and hits[0]["journey_id"] and hits[0]["profile"]["traits"]["plan"] == "pro"
    journey = next(j for j in await world.path(pid) if j["campaign_id"] == entered["id"])
    assert journey["step"] == "remind" and journey["wake_at"].startswith("2026-11-30T12:00:00")
    await world.pump(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    # the onboarding-stage campaign's "Sorry" came at entry; the reminder a day before the renewal
    assert sorted(m["subject"] for m in await world.mail(email)) == ["Renews tomorrow", "Sorry"]
    # delivery reports the open as an engagement event carrying the journey and step
    await world.track("seg-1", "Email Opened", datetime(2026, 11, 30, 12, 5, tzinfo=UTC),
                      journey_id=journey["id"], step="remind")
    await world.pump(datetime(2026, 11, 30, 13, 1, tzinfo=UTC))
    assert "Thanks for reading" in {m["subject"] for m in await world.mail(email)}
    # leaving the segment triggers the other campaign
    await world.identify("seg-1", plan="free")
    await world.fold_segments(pid)
    await world.pump(datetime(2026, 11, 30, 14, 0, tzinfo=UTC))
    stats = {c["id"]: (await world.apps["campaign"].get(f"/v1/campaigns/{c['id']}/stats", headers=world.h)).json()
             for c in (left, staged)}
    assert stats[left["id"]]["entered"] == 1 and stats[staged["id"]]["entered"] == 1
    server.close()


async def test_scheduled_broadcasts_fire_once_per_slot_to_the_segment(world) -> None:
    from services.campaign import schedules

    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"news-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "news", "value": True}})).json()
    tpl = await world.template("weekly", "This week")
    bad = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": "bad cron", "trigger": {"type": "schedule", "segment_id": seg["id"], "cron": "every monday"},
        "steps": [{"id": "s", "type": "send", "template_id": tpl}]})
    assert bad.status_code == 422 and "not a valid cron" in bad.text
    weekly = await world.campaign(trigger={"type": "schedule", "segment_id": seg["id"], "cron": "0 9 * * 1",
                                           "timezone": "Europe/Paris"}, entry={"rule": "every_time"},
                                  steps=[{"id": "s", "type": "send", "template_id": tpl}])
    emails = {}
    for i in range(3):
        emails[i] = _email(f"news{i}")
        pid = await world.identify(f"news-{i}", email=emails[i], news=i < 2)
        await world.fold_traits(pid, {"news": i < 2})

    async def entered() -> int:  # (run_pending's own count takes in other tests' schedules in this database)
        return (await world.apps["campaign"].get(f"/v1/campaigns/{weekly['id']}/stats", headers=world.h)).json()[
            "entered"]

    monday = _coming(0, "09:30", "Europe/Paris")  # the 09:00 slot in Paris is due
    await schedules.run_pending(world.sm, world.internal, now=monday)
    assert await entered() == 2
    await schedules.run_pending(world.sm, world.internal, now=monday)
    assert await entered() == 2  # the slot fired once
    await world.pump(monday)
    assert [len(await world.mail(emails[i])) for i in range(3)] == [1, 1, 0]
    await schedules.run_pending(world.sm, world.internal, now=monday + timedelta(days=6))
    assert await entered() == 2
    await schedules.run_pending(world.sm, world.internal, now=_coming(0, "09:30", "Europe/Paris", weeks=1))
    assert await entered() == 4


async def test_a_broadcast_pages_through_its_segment_with_the_segments_cursors(world, monkeypatch) -> None:
    """A run keeps the members list's next_cursor between pages (segment's cursors are opaque and its own), so a
    segment larger than a page is entered whole, once."""
    from services.campaign import schedules

    monkeypatch.setattr(schedules, "PAGE", 1)
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"paged-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "paged", "value": True}}))
    tpl = await world.template("paged", "Paged")
    camp = await world.campaign(trigger={"type": "schedule", "segment_id": seg.json()["id"], "cron": "0 9 * * 1"},
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    for i in range(3):
        pid = await world.identify(f"paged-{i}", email=_email(f"paged{i}"), paged=True)
        await world.fold_traits(pid, {"paged": True})
    await schedules.run_pending(world.sm, world.internal, now=_coming(0, "09:30"))
    journeys_in = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/journeys", headers=world.h)).json()
    assert len(journeys_in["journeys"]) == 3


async def test_a_broadcast_whose_stored_cursor_segment_refuses_starts_over(world, monkeypatch) -> None:
    """A run keeps segment's cursor in PostgreSQL across pages; one given before an upgrade that changed cursors (or
    before the signing secret was rotated) is a 400 now, and the run retried it forever as an outage. It starts
    over instead: entering is idempotent per slot, so the audience is entered whole, once."""
    import base64

    from services.campaign import schedules

    monkeypatch.setattr(schedules, "PAGE", 2)
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"stale-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "stale", "value": True}}))
    tpl = await world.template("stale", "Stale")
    camp = await world.campaign(trigger={"type": "schedule", "segment_id": seg.json()["id"], "cron": "0 9 * * 1"},
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    pids = []
    for i in range(3):
        pids.append(pid := await world.identify(f"stale-{i}", email=_email(f"stale{i}"), stale=True))
        await world.fold_traits(pid, {"stale": True})
    monday = _coming(0, "09:30")
    stale = base64.urlsafe_b64encode(f"0123456789ab.{min(pids)}".encode()).rstrip(b"=").decode()
    async with world.sm() as s, s.begin():
        await schedules.start_due(s, monday)
        runs = await s.execute(text("update campaign.schedule_runs set cursor = :cur where campaign_id = :c"),
                               {"cur": stale, "c": camp["id"]})
        assert runs.rowcount == 1
    await schedules.run_pending(world.sm, world.internal, now=monday)
    journeys_in = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/journeys", headers=world.h)).json()
    assert sorted(j["profile_id"] for j in journeys_in["journeys"]) == sorted(pids)


async def test_ab_split_picks_the_winner_on_a_date_once_and_for_good(world) -> None:
    """`winner_at`: from that time the winner takes the rest; with no conversion yet the variant listed first wins
    the tie (it used to be whichever had more entrants), and the decision stands when conversions come later."""
    a, b = await world.template("da", "Arm A"), await world.template("db", "Arm B")
    camp = await world.campaign(trigger={"type": "event", "event": "Dated"}, goal={
        "event": "Bought", "within_seconds": 86400, "exit_on_conversion": False}, steps=[
        {"id": "ab", "type": "split", "winner_at": (T0 + timedelta(hours=1)).isoformat(), "variants": [
            {"name": "A", "weight": 10, "next": "a"}, {"name": "B", "weight": 90, "next": "b"}]},
        {"id": "a", "type": "send", "template_id": a}, {"id": "b", "type": "send", "template_id": b}])

    async def enter(uids: list[str], at: datetime) -> dict[str, str]:
        for uid in uids:
            await world.identify(uid, email=_email(uid))
            await world.track(uid, "Dated", at)
        await world.pump(at + timedelta(minutes=1))
        out = {}
        for uid in uids:
            pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
            out[uid] = next(j for j in await world.path(pid) if j["campaign_id"] == camp["id"])
        return out

    early = await enter([f"dated-{i}" for i in range(8)], T0)  # by weight before the date: B most likely
    assert all(e["kind"] != "split" or "winner" not in e["detail"] for j in early.values() for e in j["log"])
    decided = await enter([f"dated-late-{i}" for i in range(3)], T0 + timedelta(hours=2))
    assert {j["variant"] for j in decided.values()} == {"A"}  # no conversion yet: the first listed
    split = next(e for e in next(iter(decided.values()))["log"] if e["kind"] == "split")
    assert split["detail"] == f"A (the winner, decided at {(T0 + timedelta(hours=1)).isoformat()})"
    for uid, j in early.items():
        if j["variant"] == "B":
            await world.track(uid, "Bought", T0 + timedelta(hours=3))
    await world.pump(T0 + timedelta(hours=3, minutes=1))
    later = await enter([f"dated-later-{i}" for i in range(3)], T0 + timedelta(hours=4))
    assert {j["variant"] for j in later.values()} == {"A"}  # decided for good


async def test_ab_split_ties_on_conversions_go_to_engagement_and_the_winner_shows_in_stats(world) -> None:
    """Nobody converted yet: the tie goes to the variant whose messages were clicked (then opened), not to the one
    listed first nor to the one with more entrants; the decision is in the stats (`experiment.winners`) and in
    each later entrant's path."""
    a, b = await world.template("ta", "Arm A"), await world.template("tb", "Arm B")
    decide = T0 + timedelta(hours=1)
    camp = await world.campaign(trigger={"type": "event", "event": "Tied"}, goal={
        "event": "Bought", "within_seconds": 86400}, steps=[
        {"id": "ab", "type": "split", "winner_at": decide.isoformat(), "winner_after": 1000, "variants": [
            {"name": "A", "weight": 50, "next": "a"}, {"name": "B", "weight": 50, "next": "b"}]},
        {"id": "a", "type": "send", "template_id": a}, {"id": "b", "type": "send", "template_id": b}])

    async def enter(uid: str, at: datetime) -> dict:
        await world.identify(uid, email=_email(uid))
        await world.track(uid, "Tied", at)
        await world.pump(at)
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
        return next(j for j in await world.path(pid) if j["campaign_id"] == camp["id"])

    early: dict[str, dict] = {}
    for i in range(40):  # by weight until both variants have entrants
        early[f"tied-{i}"] = await enter(f"tied-{i}", T0 + timedelta(seconds=i))
        if {j["variant"] for j in early.values()} == {"A", "B"} and i >= 3:
            break
    for uid, j in early.items():  # every message opened, only B's clicked
        step = j["variant"].lower()
        await world.track(uid, "Email Opened", T0 + timedelta(minutes=5), journey_id=j["id"], step=step)
        if j["variant"] == "B":
            await world.track(uid, "Email Link Clicked", T0 + timedelta(minutes=6), journey_id=j["id"], step=step)
    await world.pump(T0 + timedelta(minutes=10))
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["experiment"]["leader"] == "B" and stats["experiment"]["winners"] == {}
    later = [await enter(f"tied-late-{i}", decide + timedelta(minutes=i)) for i in range(3)]
    assert [j["variant"] for j in later] == ["B"] * 3
    assert [e["detail"] for e in later[0]["log"] if e["kind"] == "split"] == [
        f"B (the winner, decided at {decide.isoformat()})"]
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert {k: v for k, v in stats["experiment"]["winners"]["ab"].items() if k != "decided_at"} == {
        "variant": "B", "reason": f"at {decide.isoformat()}"}


async def test_ab_split_picks_the_winner_after_n_entrants(world) -> None:
    a, b = await world.template("wa", "Arm A"), await world.template("wb", "Arm B")
    camp = await world.campaign(trigger={"type": "event", "event": "Shown"}, goal={
        "event": "Bought", "within_seconds": 86400, "exit_on_conversion": False}, steps=[
        {"id": "ab", "type": "split", "winner_after": 10, "variants": [
            {"name": "A", "weight": 50, "next": "a"}, {"name": "B", "weight": 50, "next": "b"}]},
        {"id": "a", "type": "send", "template_id": a}, {"id": "b", "type": "send", "template_id": b}])
    first = [f"ab-{i}" for i in range(10)]
    for uid in first:
        await world.identify(uid, email=_email(uid))
        await world.track(uid, "Shown", T0)
    await world.pump(T0)

    async def arm(uid: str) -> str:
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
        return next(j["variant"] for j in await world.path(pid) if j["campaign_id"] == camp["id"])

    arms = {uid: await arm(uid) for uid in first}
    best = arms[first[0]]
    for uid in first:  # only the first user's arm converts
        if arms[uid] == best:
            await world.track(uid, "Bought", T0 + timedelta(minutes=5))
    await world.pump(T0 + timedelta(minutes=6))
    later = [f"ab-late-{i}" for i in range(6)]
    for uid in later:
        await world.identify(uid, email=_email(uid))
        await world.track(uid, "Shown", T0 + timedelta(minutes=7))
    await world.pump(T0 + timedelta(minutes=8))
    assert {await arm(uid) for uid in later} == {best}
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["experiment"]["leader"] == best and stats["variants"][best]["converted"] >= 1


async def test_split_weights_whose_sum_overflows_are_refused_and_stored_ones_still_split(world) -> None:
    """Two weights of 1e308 were accepted, and their sum is infinite: every entrant fell through to the last
    variant. A save is a 422 naming the split's variants; a campaign stored before that still loads and splits
    its entrants as the weights' ratio says (evenly here), not all to B."""
    a, b = await world.template("oa", "Arm A"), await world.template("ob", "Arm B")
    steps = [{"id": "sp", "type": "split", "variants": [{"name": "A", "weight": 1e308, "next": "a"},
                                                        {"name": "B", "weight": 1e308, "next": "b"}]},
             {"id": "a", "type": "send", "template_id": a}, {"id": "b", "type": "send", "template_id": b}]
    r = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"c-{uuid.uuid4().hex[:8]}", "trigger": {"type": "api"}, "steps": steps})
    assert r.status_code == 422 and [e["at"] for e in r.json()["errors"]] == ["steps.0.variants"], r.text
    assert "finite" in r.json()["errors"][0]["msg"]
    assert await _campaign_rows(world) == 0
    # large weights that add up are fine (they are relative)
    big = await world.campaign(trigger={"type": "api"}, steps=[
        {**steps[0], "variants": [{**v, "weight": 8e307} for v in steps[0]["variants"]]}, *steps[1:]])
    # one saved before the check: its stored definition (every version of it) has the overflowing weights
    camp = await world.campaign(trigger={"type": "api"}, steps=[
        {**steps[0], "variants": [{**v, "weight": 1} for v in steps[0]["variants"]]}, *steps[1:]])
    async with world.sm() as s, s.begin():
        for table in ("campaigns", "campaign_versions"):
            key = "id" if table == "campaigns" else "campaign_id"
            await s.execute(text(f"update campaign.{table} set definition = jsonb_set(definition, "
                                 "'{steps,0,variants}', CAST(:v AS jsonb)) where " + key + " = :id"),
                            {"v": '[{"name": "A", "weight": 1e308, "next": "a"}, '
                                  '{"name": "B", "weight": 1e308, "next": "b"}]', "id": camp["id"]})
    users = [f"ovf-{i}" for i in range(30)]
    for uid in users:
        await world.identify(uid, email=_email(uid))
        for c in (camp, big):
            r = await world.apps["campaign"].post(f"/v1/campaigns/{c['id']}/trigger", headers=world.h,
                                                  json={"user": uid})
            assert r.status_code == 202, r.text
    await world.pump(datetime.now(UTC) + timedelta(seconds=1))
    for c in (camp, big):
        stats = (await world.apps["campaign"].get(f"/v1/campaigns/{c['id']}/stats", headers=world.h)).json()
        entered = {k: v["entered"] for k, v in stats["variants"].items()}
        assert sum(entered.values()) == 30 and min(entered.get("A", 0), entered.get("B", 0)) >= 5, entered
        for uid in users[:5]:  # each the variant its stable bucket picks
            pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
            arm = "A" if journeys._bucket("split", c["id"], "sp", pid) < 50 else "B"
            assert [j["variant"] for j in await world.path(pid) if j["campaign_id"] == c["id"]] == [arm]


async def test_preview_test_send_snippets_and_generated_text(world) -> None:
    r = await world.apps["campaign"].put("/v1/snippets/footer", headers=world.h,
                                         json={"content": "<p class='f'>Acme · {{ profile.city | default: '' }}</p>"})
    assert r.status_code == 200
    bad = await world.apps["campaign"].put("/v1/snippets/broken", headers=world.h, json={"content": "{% if %}"})
    assert bad.status_code == 422
    tpl = await world.template("styled", "Hello {{ profile.first_name }}", text=None, html=(
        "<html><head><style>.f { color: #888 }</style></head><body><p>Hi {{ profile.first_name }}, "
        "your code is {{ event.properties.code }}.</p>{% render 'footer', profile: profile %}</body></html>"),
        locales={"de": {"subject": "Hallo {{ profile.first_name }}"}})
    await world.identify("prev-1", email=_email("prev"), first_name="Lena", city="Wien", locale="de-AT")
    out = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h,
                                            json={"user": "prev-1", "data": {"code": "X9"}})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["subject"] == "Hallo Lena" and body["locale"] == "de"
    assert '<p class="f" style="color: #888;">Acme · Wien</p>' in body["html"]
    assert body["text"] == "Hi Lena, your code is X9.\n\nAcme · Wien"
    forced = (await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h,
                                                json={"user": "prev-1", "locale": "en"})).json()
    assert forced["subject"] == "Hello Lena" and forced["locale"] is None
    to = _email("tester")
    sent = await world.apps["campaign"].post(f"/v1/templates/{tpl}/test", headers=world.h,
                                             json={"to": to, "user": "prev-1", "data": {"code": "T1"}})
    assert sent.status_code == 202, sent.text
    assert [m["subject"] for m in await world.mail(to)] == ["[test] Hallo Lena"]
    missing = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h,
                                                json={"user": "nobody-here"})
    assert missing.status_code == 404


async def test_users_moved_while_waiting_for_an_event_wait_as_the_new_version_says(world) -> None:
    """Moved users kept the old version's wait: when its timeout led to a step the new version renamed, the timer
    failed every 5 minutes for ever and the user never got the next message. Now they wait as the new step says;
    one waiting where the new version no longer waits is left to finish its version."""
    survey, offer, better = (await world.template("mig-s", "Survey"), await world.template("mig-o", "Offer"),
                             await world.template("mig-b", "Better offer"))
    camp = await world.campaign(trigger={"type": "event", "event": "Risky"}, steps=[
        {"id": "survey", "type": "send", "template_id": survey, "next": "answer"},
        {"id": "answer", "type": "wait_for_event", "event": "Survey Submitted", "timeout_seconds": 3600,
         "on_timeout": "offer"},
        {"id": "offer", "type": "send", "template_id": offer}])
    quiet, answers = _email("mig-quiet"), _email("mig-answers")
    pids = {}
    for uid, email in (("mig-quiet", quiet), ("mig-answers", answers)):
        pids[uid] = await world.identify(uid, email=email)
        await world.track(uid, "Risky", T0)
    await world.pump(T0)
    steps = [{"id": "survey", "type": "send", "template_id": survey, "next": "answer"},
             {"id": "answer", "type": "wait_for_event", "event": "Feedback Given", "timeout_seconds": 600,
              "on_event": "thanks", "on_timeout": "offer-v2"},
             {"id": "offer-v2", "type": "send", "template_id": better},
             {"id": "thanks", "type": "exit"}]
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Risky"}, "steps": steps})
    assert r.status_code == 200, r.text
    moved = (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)).json()
    assert moved == {"moved": 2, "kept": 0, "not_movable": [], "version": 2}
    await world.track("mig-answers", "Feedback Given", T0 + timedelta(minutes=20))  # the new version's event
    await world.pump(T0 + timedelta(minutes=21))
    assert [m["subject"] for m in await world.mail(quiet)] == ["Survey"]  # its deadline is still the old one
    await world.pump(T0 + timedelta(hours=1, minutes=1))
    assert [m["subject"] for m in await world.mail(quiet)] == ["Survey", "Better offer"]
    assert [m["subject"] for m in await world.mail(answers)] == ["Survey"]
    journeys_now = {uid: (await world.path(pid))[0] for uid, pid in pids.items()}
    assert {uid: (j["status"], j["version"]) for uid, j in journeys_now.items()} == {
        "mig-quiet": ("completed", 2), "mig-answers": ("exited", 2)}
    assert not any(e["kind"] == "error" for j in journeys_now.values() for e in j["log"])
    # a version where `answer` is no longer a wait: a user waiting there stays in version 2
    await world.identify("mig-late", email=_email("mig-late"))
    await world.track("mig-late", "Risky", T0 + timedelta(hours=2))
    await world.pump(T0 + timedelta(hours=2))
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Risky"},
        "steps": [{"id": "survey", "type": "send", "template_id": survey, "next": "answer"},
                  {"id": "answer", "type": "send", "template_id": better}]})
    assert r.status_code == 200, r.text
    moved = (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)).json()
    assert moved == {"moved": 0, "kept": 1, "version": 3, "not_movable": [{
        "version": 2, "step": "answer", "users": 1,
        "reason": "they wait for an event at 'answer', which is no longer a wait for an event in version 3"}]}
    # and one where the step is gone altogether
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Risky"}, "steps": [{"id": "survey", "type": "send", "template_id": survey}]})
    assert r.status_code == 200, r.text
    moved = (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)).json()
    assert moved["not_movable"] == [{"version": 2, "step": "answer", "users": 1,
                                     "reason": "version 4 has no step 'answer'"}]


async def test_a_user_moved_onto_a_wait_whose_event_already_came_goes_on_at_once(world) -> None:
    """Waiting for version 1's event, the user did what version 2 waits for: moved there, they would have waited
    for an event already behind them until the timeout; a user reaching that wait after the event goes on at
    once (the journey's events since entry count), and so does a moved one."""
    survey, thanks, offer = (await world.template("mig2-s", "Survey"), await world.template("mig2-t", "Thanks"),
                             await world.template("mig2-o", "Offer"))
    wait_v1 = {"id": "answer", "type": "wait_for_event", "event": "Survey Submitted", "timeout_seconds": 86400,
               "on_event": "thanks", "on_timeout": "offer"}
    tail = [{"id": "thanks", "type": "send", "template_id": thanks}, {"id": "offer", "type": "send", "template_id": offer}]
    camp = await world.campaign(trigger={"type": "event", "event": "Risky"}, steps=[
        {"id": "survey", "type": "send", "template_id": survey, "next": "answer"}, wait_v1, *tail])
    did, didnt = _email("mig2-did"), _email("mig2-didnt")
    pids = {uid: await world.identify(uid, email=email) for uid, email in (("mig2-did", did), ("mig2-didnt", didnt))}
    for uid in pids:
        await world.track(uid, "Risky", T0)
    await world.pump(T0)
    await world.track("mig2-did", "Feedback Given", T0 + timedelta(minutes=5))  # not what version 1 waits for
    await world.pump(T0 + timedelta(minutes=6))
    assert [m["subject"] for m in await world.mail(did)] == ["Survey"]
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Risky"}, "steps": [
            {"id": "survey", "type": "send", "template_id": survey, "next": "answer"},
            {**wait_v1, "event": "Feedback Given"}, *tail]})
    assert r.status_code == 200, r.text
    moved = (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)).json()
    assert moved == {"moved": 2, "kept": 0, "not_movable": [], "version": 2}
    # due at once (the migration's own time, the database's: later than this test's clock, so not pumped here)
    path = (await world.path(pids["mig2-did"]))[0]
    assert (path["status"], path["step"], path["version"]) == ("active", "thanks", 2)
    assert datetime.fromisoformat(path["wake_at"]) <= datetime.now(UTC)
    assert [(e["kind"], e["detail"]) for e in path["log"]][-2:] == [
        ("migrated", "to version 2"), ("event", "Feedback Given already happened")]
    waiting = (await world.path(pids["mig2-didnt"]))[0]  # still waiting, as version 2 says
    assert (waiting["status"], waiting["step"], waiting["version"]) == ("waiting", "answer", 2)


async def test_a_journey_whose_step_is_missing_from_its_version_exits_saying_why(world) -> None:
    """A journey the old migrate moved kept its old version's wait: when it timed out toward a step the new version
    renamed, it failed with `RuntimeError: coroutine raised StopIteration` every 5 minutes for ever. A step missing
    from a journey's version now ends it, with the reason in its path, and the timer does not come back."""
    survey, offer = await world.template("gone-s", "Survey"), await world.template("gone-o", "Offer")
    steps = [{"id": "survey", "type": "send", "template_id": survey, "next": "answer"},
             {"id": "answer", "type": "wait_for_event", "event": "Survey Submitted", "timeout_seconds": 3600,
              "on_timeout": "offer"},
             {"id": "offer", "type": "send", "template_id": offer}]
    camp = await world.campaign(trigger={"type": "event", "event": "Gone"}, steps=steps)
    email = _email("gone")
    pid = await world.identify("gone-1", email=email)
    await world.track("gone-1", "Gone", T0)
    await world.pump(T0)
    steps[1]["on_timeout"], steps[2]["id"] = "offer-v2", "offer-v2"
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Gone"}, "steps": steps})
    assert r.status_code == 200, r.text
    async with world.sm() as s, s.begin():  # what the old migrate did: version 2, the wait of version 1
        await s.execute(text("update campaign.journeys set version = 2 where campaign_id = :c"), {"c": camp["id"]})
    await world.pump(T0 + timedelta(hours=2))
    await world.pump(T0 + timedelta(hours=3))
    journey = (await world.path(pid))[0]
    assert (journey["status"], journey["wake_at"]) == ("exited", None), journey
    assert [(e["kind"], e["detail"]) for e in journey["log"][-2:]] == [
        ("timeout", "no Survey Submitted in time"), ("exited", "version 2 of the campaign has no step 'offer'")]
    assert not any(e["kind"] == "error" for e in journey["log"])
    assert [m["subject"] for m in await world.mail(email)] == ["Survey"]


async def test_send_time_optimisation_migration_and_revenue(world) -> None:
    tpl = await world.template("sto", "Best time")
    camp = await world.campaign(trigger={"type": "event", "event": "Ready"}, entry={"rule": "every_time"},
                                goal={"event": "Order Completed", "within_seconds": 86400},
                                steps=[{"id": "wait", "type": "delay", "seconds": 600, "next": "s"},
                                       {"id": "s", "type": "send", "template_id": tpl, "optimize_send_time": True}])
    habitual, fresh = _email("habit"), _email("fresh")
    await world.identify("sto-1", email=habitual)
    await world.identify("sto-2", email=fresh)
    for day in range(1, 4):  # sto-1 reads email at 18:xx UTC
        await world.track("sto-1", "Email Opened", T0.replace(hour=18, minute=10) - timedelta(days=day))
    await world.track("sto-1", "Ready", T0)
    await world.track("sto-2", "Ready", T0)
    await world.pump(T0)
    # an edit while both wait at their delay; migrating moves them to the new version's same step
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "event", "event": "Ready"}, "entry": {"rule": "every_time"},
        "goal": {"event": "Order Completed", "within_seconds": 86400},
        "steps": [{"id": "s", "type": "send", "template_id": tpl, "optimize_send_time": True}]})
    assert r.json()["version"] == 2
    moved = (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)).json()
    assert moved == {"moved": 2, "kept": 0, "not_movable": [], "version": 2}
    await world.pump(T0 + timedelta(minutes=11))
    assert len(await world.mail(fresh)) == 1  # no history: sent at the campaign's time
    assert await world.mail(habitual) == []  # waits for 18:00 UTC
    await world.pump(T0.replace(hour=18))
    assert len(await world.mail(habitual)) == 1
    await world.track("sto-2", "Order Completed", T0 + timedelta(hours=4), revenue=120.5)
    await world.pump(T0 + timedelta(hours=4, minutes=1))
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["converted"] == 1
    async with world.sm() as s:
        value = (await s.execute(text("select sum(converted_value) from campaign.journeys where campaign_id = :c"),
                                 {"c": camp["id"]})).scalar()
    assert float(value) == 120.5


async def test_branch_on_segment_membership_and_events_since_entry(world) -> None:

    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"vip-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "vip", "value": True}})).json()
    yes, no, done = (await world.template("in", "In the segment"), await world.template("out", "Not in it"),
                     await world.template("done", "Already did it"))
    await world.campaign(trigger={"type": "event", "event": "Started"}, steps=[
        {"id": "wait", "type": "delay", "seconds": 60, "next": "did"},
        {"id": "did", "type": "branch", "condition": {"type": "performed_since_entry", "event": "Finished"},
         "yes": "done", "no": "vip"},
        {"id": "done", "type": "send", "template_id": done, "next": "stop"},
        {"id": "stop", "type": "exit"},
        {"id": "vip", "type": "branch", "condition": {"type": "segment", "segment_id": seg["id"]},
         "yes": "in", "no": "out"},
        {"id": "in", "type": "send", "template_id": yes}, {"id": "out", "type": "send", "template_id": no}])
    people = {"br-vip": (_email("vip"), True), "br-plain": (_email("plain"), False), "br-done": (_email("done"), True),
              "br-unseen": (_email("unseen"), True)}
    for uid, (email, vip) in people.items():
        pid = await world.identify(uid, email=email, vip=vip)
        if uid == "br-unseen":  # segment has not folded this one's events yet: its 404 reads as "not in it"
            await world.track(uid, "Started", T0)
            continue
        await world.fold_traits(pid, {"vip": vip})
        await world.track(uid, "Started", T0)
    await world.track("br-done", "Finished", T0 + timedelta(seconds=30))
    await world.pump(T0 + timedelta(seconds=31))
    await world.pump(T0 + timedelta(minutes=2))
    got = {uid: [m["subject"] for m in await world.mail(email)] for uid, (email, _) in people.items()}
    assert got == {"br-vip": ["In the segment"], "br-plain": ["Not in it"], "br-done": ["Already did it"],
                   "br-unseen": ["Not in it"]}
    # the path says why someone got nothing: here delivery's suppression list
    await world.apps["delivery"].post("/v1/suppressions", headers=world.h, json={"address": people["br-vip"][0]})
    await world.campaign(trigger={"type": "event", "event": "Nudged"}, steps=[
        {"id": "nudge", "type": "send", "template_id": yes}])
    await world.track("br-vip", "Nudged", T0 + timedelta(minutes=5))
    await world.pump(T0 + timedelta(minutes=7))
    vip = (await world.apps["ingest"].get("/v1/profiles/br-vip", headers=world.h)).json()["id"]
    last = [e for j in await world.path(vip) for e in j["log"]]
    assert {"kind": "skipped", "detail": "suppressed: manual"}.items() <= next(
        e for e in last if e["kind"] == "skipped").items()
    pid = (await world.apps["ingest"].get("/v1/profiles/br-done", headers=world.h)).json()["id"]
    assert (await world.path(pid))[0]["status"] == "exited"


async def test_old_events_from_an_import_do_not_start_journeys(world) -> None:
    tpl = await world.template("old", "Hello")
    fresh = await world.campaign(trigger={"type": "event", "event": "Imported"},
                                 steps=[{"id": "s", "type": "send", "template_id": tpl}])
    any_age = await world.campaign(trigger={"type": "event", "event": "Imported", "max_age_seconds": 0},
                                   steps=[{"id": "s", "type": "send", "template_id": tpl}])
    await world.identify("old-1", email=_email("old"))
    await world.track("old-1", "Imported", T0 - timedelta(days=3))
    await world.pump(T0)

    async def entered(c: dict) -> int:
        return (await world.apps["campaign"].get(f"/v1/campaigns/{c['id']}/stats", headers=world.h)).json()["entered"]

    assert await entered(fresh) == 0 and await entered(any_age) == 1


async def test_sms_templates_go_to_the_phone_and_email_gets_its_preheader(world) -> None:
    sms_tpl = (await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"sms-{uuid.uuid4().hex[:6]}", "channel": "sms", "text": "Hi {{ profile.first_name }}, code {{ "
        "event.properties.code }}", "locales": {"fr": {"text": "Salut {{ profile.first_name }}"}}}))
    assert sms_tpl.status_code == 201, sms_tpl.text
    bad = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": "sms-bad", "channel": "sms", "text": "x", "subject": "no subjects in SMS"})
    assert bad.status_code == 422
    push_tpl = (await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"push-{uuid.uuid4().hex[:6]}", "channel": "push", "subject": "Code ready",
        "text": "{{ profile.first_name }}, your code is in", "deep_link": "acme://codes/{{ event.properties.code }}",
        "image": "https://cdn.acme.test/code.png"})).json()
    not_push = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": "mail-with-image", "subject": "Hi", "text": "x", "image": "https://cdn.acme.test/x.png"})
    assert not_push.status_code == 422
    mail = await world.template("pre", "News", preheader="Inside: {{ profile.first_name }}'s picks",
                                html="<html><body><p>Hello</p></body></html>", text=None)
    camp = await world.campaign(trigger={"type": "event", "event": "Code Requested"}, message_type="transactional",
                                entry={"rule": "every_time"},
                                steps=[{"id": "sms", "type": "send", "template_id": sms_tpl.json()["id"], "next": "mail"},
                                       {"id": "mail", "type": "send", "template_id": mail, "next": "push"},
                                       {"id": "push", "type": "send", "template_id": push_tpl["id"]}])
    email = _email("sms")
    await world.identify("sms-1", email=email, phone="+14155550142", first_name="Ada")
    await world.identify("sms-2", email=_email("nophone"), first_name="Bob")
    await world.track("sms-1", "Code Requested", T0, code="9876")
    await world.track("sms-2", "Code Requested", T0, code="1111")
    await world.pump(T0)
    texts = (await world.apps["delivery"].get("/v1/messages", headers=world.h,
                                              params={"to": "+14155550142"})).json()["messages"]
    assert [(m["channel"], m["message_type"]) for m in texts] == [("sms", "transactional")]
    pushes = (await world.apps["delivery"].get("/v1/messages", headers=world.h,
                                               params={"channel": "push", "user": "sms-1"})).json()["messages"]
    assert [(m["to"], m["subject"]) for m in pushes] == [("sms-1", "Code ready")]
    assert pushes[0]["metadata"]["push_data"] == {"deep_link": "acme://codes/9876",
                                                  "image": "https://cdn.acme.test/code.png"}
    push_preview = (await world.apps["campaign"].post(f"/v1/templates/{push_tpl['id']}/preview", headers=world.h,
                                                      json={"user": "sms-1", "data": {"code": "42"}})).json()
    assert (push_preview["deep_link"], push_preview["text"]) == ("acme://codes/42", "Ada, your code is in")
    [html_mail] = await world.mail(email)
    assert html_mail["subject"] == "News"
    sends = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/sends", headers=world.h)).json()["sends"]
    assert sorted(s["reason"] or "" for s in sends if s["status"] == "skipped") == ["profile has no phone trait"]
    preview = (await world.apps["campaign"].post(f"/v1/templates/{mail}/preview", headers=world.h,
                                                 json={"user": "sms-1"})).json()
    assert 'aria-hidden="true">Inside: Ada&#x27;s picks</div><p>Hello</p>' in preview["html"]
    assert preview["text"] == "Hello"


async def test_review_regressions_in_the_engine(world) -> None:
    """One journey's failure does not stall the others; the trigger is not its own goal; send-time
    optimisation and quiet hours do not defer each other forever; `contains` with a non-text value."""
    await world.settings(quiet_hours={"email": {"start": "21:00", "end": "08:00", "action": "defer"}})
    tpl = await world.template("rr", "Regression")
    goal = await world.campaign(trigger={"type": "event", "event": "Bought"},
                                goal={"event": "Bought", "within_seconds": 86400},
                                steps=[{"id": "d", "type": "delay", "seconds": 60, "next": "s"},
                                       {"id": "s", "type": "send", "template_id": tpl,
                                        "optimize_send_time": True}])
    weird = await world.campaign(trigger={"type": "event", "event": "Bought",
                                          "where": [{"property": "sku", "op": "contains", "value": 5}]},
                                 steps=[{"id": "s", "type": "send", "template_id": tpl}])
    email = _email("rr")
    await world.identify("rr-1", email=email, timezone="Europe/Paris")
    for day in range(1, 4):  # reads mail at 22:xx UTC: inside Paris quiet hours
        await world.track("rr-1", "Email Opened", T0.replace(hour=22) - timedelta(days=day))
    await world.track("rr-1", "Bought", T0, sku="ABC")  # a text sku and a numeric `contains`: no match, no crash
    await world.track("rr-1", "Started Broken", T0)
    await world.pump(T0)
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{goal['id']}/stats", headers=world.h)).json()
    assert stats["entered"] == 1 and stats["converted"] == 0  # the trigger is not its own conversion
    assert (await world.apps["campaign"].get(f"/v1/campaigns/{weird['id']}/stats", headers=world.h)).json()[
        "entered"] == 0
    # a journey broken by hand (its step is gone) ends alone, saying why; the others go on
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.journeys set step = 'gone', wake_at = :t where campaign_id = :c"),
                        {"t": T0, "c": goal["id"]})
    other = await world.campaign(trigger={"type": "event", "event": "Started Broken"}, entry={"rule": "every_time"},
                                 message_type="transactional", steps=[{"id": "s", "type": "send", "template_id": tpl}])
    await world.track("rr-1", "Started Broken", T0 + timedelta(seconds=1))
    await world.pump(T0 + timedelta(seconds=2))
    assert (await world.apps["campaign"].get(f"/v1/campaigns/{other['id']}/stats", headers=world.h)).json()[
        "sends_by_step"]["s"]["dispatched"] == 1
    pid = (await world.apps["ingest"].get("/v1/profiles/rr-1", headers=world.h)).json()["id"]
    broken = next(j for j in await world.path(pid) if j["campaign_id"] == goal["id"])
    assert (broken["status"], broken["log"][-1]["kind"]) == ("exited", "exited"), broken
    assert broken["log"][-1]["detail"] == "version 1 of the campaign has no step 'gone'"
    # repaired by hand: optimisation picks 22:00 UTC, quiet hours push that to 08:00 Paris, and then it sends
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.journeys set step = 's', status = 'active', ended_at = null, "
                             "wake_at = :t where campaign_id = :c"), {"t": T0, "c": goal["id"]})
    for hour in (T0, T0.replace(hour=22), T0.replace(hour=22) + timedelta(hours=9)):
        await world.pump(hour)
    assert [m["subject"] for m in await world.mail(email) if m["subject"] == "Regression"] == ["Regression"] * 2


async def test_a_step_nothing_leads_to_is_refused_with_where_and_why(apps, workspace) -> None:
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    tpl = (await apps["campaign"].post("/v1/templates", headers=mgmt, json={
        "name": "t", "subject": "Hi", "text": "Hi"})).json()["id"]
    r = await apps["campaign"].post("/v1/campaigns", headers=mgmt, json={
        "name": "forgot next", "trigger": {"type": "event", "event": "Joined"},
        "steps": [{"id": "wait", "type": "delay", "seconds": 60},
                  {"id": "mail", "type": "send", "template_id": tpl}]})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"] == [{"loc": ["body", "steps", "1"], "at": "steps.1", "type": "value_error",
                                   "msg": "step 'mail' is unreachable: no step leads to it (steps do not fall "
                                          "through; set `next` on the step before it)"}]


async def test_a_failing_journey_rolls_back_alone(world) -> None:
    """The database refuses one user's send (a trigger raising, for that profile only): the batch, first
    run without savepoints, rolls back and runs again with one per journey; the others go on, each sent
    once, and the failing one waits five minutes with the error on its path."""
    tpl = await world.template("fault", "Fault")
    await world.campaign(trigger={"type": "event", "event": "Faulty"}, entry={"rule": "every_time"},
                         steps=[{"id": "s", "type": "send", "template_id": tpl}])
    tag = uuid.uuid4().hex[:6]
    good = [await world.identify(f"fine-{i}-{tag}", email=_email(f"fine{i}{tag}")) for i in range(3)]
    bad = await world.identify(f"bad-{tag}", email=_email(f"bad{tag}"))
    fn = f"campaign.refuse_{tag}"
    async with world.sm() as s, s.begin():
        await s.execute(text(f"create function {fn}() returns trigger language plpgsql as $$ begin "
                             f"if new.profile_id = '{bad}' then raise exception 'refused for this test'; end if; "
                             f"return new; end $$"))
        await s.execute(text(f"create trigger refuse_{tag} before insert on campaign.sends for each row "
                             f"execute function {fn}()"))
    try:
        for uid in [f"fine-{i}-{tag}" for i in range(3)] + [f"bad-{tag}"]:
            await world.track(uid, "Faulty", T0)
        await world.pump(T0 + timedelta(minutes=1))
    finally:
        async with world.sm() as s, s.begin():
            await s.execute(text(f"drop trigger refuse_{tag} on campaign.sends"))
            await s.execute(text(f"drop function {fn}()"))
    for pid in good:
        (journey,) = await world.path(pid)
        assert journey["status"] == "completed" and [e["kind"] for e in journey["log"]] == [
            "entered", "sent", "completed"]
    (failed,) = await world.path(bad)
    assert failed["status"] == "active" and [e["kind"] for e in failed["log"]] == ["entered", "error"]
    assert "refused for this test" in failed["log"][-1]["detail"]
    assert failed["wake_at"].startswith((T0 + timedelta(minutes=6)).isoformat()[:16])
    async with world.sm() as s:
        counts = (await s.execute(text("select profile_id, count(*) from campaign.sends "
                                       "where profile_id = any(CAST(:p AS uuid[])) group by profile_id"),
                                  {"p": [*good, bad]})).all()
    assert sorted(n for _, n in counts) == [1, 1, 1]  # once each, none for the refused one


async def test_a_replayed_trigger_does_not_count_as_a_new_entry(sessionmaker) -> None:
    """A trigger read again (a duplicate feed item) is not an entry: under once_per_period it must not
    refuse a genuinely new trigger in the same page (found by a differential test against one-by-one entry)."""
    d = journeys.parse({"trigger": {"type": "segment_entered", "segment_id": str(uuid.uuid4())},
                        "entry": {"rule": "once_per_period", "period_seconds": 600},
                        "steps": [{"id": "s", "type": "delay", "seconds": 60}]})
    c, p = {"id": uuid.uuid4(), "workspace_id": uuid.uuid4(), "version": 1}, uuid.uuid4()
    async with sessionmaker() as s, s.begin():  # occurrence A entered an hour ago
        assert await journeys.enter(s, c, d, p, "A", {}, T0 - timedelta(hours=1))
    async with sessionmaker() as s, s.begin():  # one page: A again (no time: now), then a new B half an hour ago
        got = await journeys.enter_many(s, [journeys.Candidate(c, d, p, "A", {}, None),
                                            journeys.Candidate(c, d, p, "B", {}, T0 - timedelta(minutes=30))], T0)
    assert got[0] is None and got[1] is not None


async def test_a_send_step_run_again_is_logged_as_a_replay_and_sends_nothing(world) -> None:
    """Sends and journey updates of a timer batch are written together at its end: a send whose step
    already sent (here: the journey put back on the step by hand) is found then, and its line corrected."""
    tpl = await world.template("replay", "Once only")
    camp = await world.campaign(trigger={"type": "event", "event": "Replay Me"}, steps=[
        {"id": "s", "type": "send", "template_id": tpl, "next": "d"},
        {"id": "d", "type": "delay", "seconds": 3600}])
    email, other = _email("replay"), _email("replay-other")
    pid = await world.identify("replay-1", email=email)
    await world.identify("replay-2", email=other)
    await world.track("replay-1", "Replay Me", T0)
    await world.pump(T0)
    assert len(await world.mail(email)) == 1
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.journeys set step = 's', status = 'active', wake_at = :t "
                             "where campaign_id = :c and profile_id = :p"),
                        {"t": T0 + timedelta(seconds=1), "c": camp["id"], "p": pid})
    await world.track("replay-2", "Replay Me", T0 + timedelta(seconds=1))  # a first send in the same batch
    await world.pump(T0 + timedelta(seconds=1))
    assert len(await world.mail(email)) == 1 and len(await world.mail(other)) == 1
    [j] = [j for j in await world.path(pid) if j["campaign_id"] == camp["id"]]
    lines = [(e["kind"], e["detail"]) for e in j["log"]]
    assert lines.count(("sent", "email message queued")) == 1
    assert lines[-2:] == [("skipped", "already sent (replayed step)"), ("waiting", "delay 3600 s")]
    assert j["status"] == "active" and datetime.fromisoformat(j["wake_at"]) == T0 + timedelta(seconds=3601)


async def test_an_archived_campaign_stays_archived(world) -> None:
    """Archive is final: pause and resume answer 409 (resume used to make it active again, so it took
    entries and ran the journeys it had ended); the trigger API refuses it too, and so does an edit, with the
    same 409 (it answered 404 "No campaign … (or it is archived)" for a campaign GET still shows)."""
    tpl = await world.template("arch", "Archived")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/archive", headers=world.h)
    assert r.status_code == 200 and r.json()["status"] == "archived"
    for action in ("resume", "pause"):
        r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/{action}", headers=world.h)
        assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json"), r.text
    edit = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "api"}, "steps": [{"id": "s", "type": "send", "template_id": tpl}]})
    assert edit.status_code == 409 and "archived" in edit.json()["detail"], edit.text
    got = await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}", headers=world.h)
    assert got.json()["status"] == "archived" and got.json()["version"] == 1
    await world.identify("arch-1", email=_email("arch"))
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                          json={"user": "arch-1"})
    assert r.status_code == 409
    missing = await world.apps["campaign"].post(f"/v1/campaigns/{uuid.uuid4()}/resume", headers=world.h)
    assert missing.status_code == 404


async def test_campaigns_as_code_keep_a_templates_channel_preheader_and_push_fields(world, settings) -> None:
    """`tenure apply` and `tenure get campaigns`: an SMS or push template in the file is created as one (it used
    to be posted without its channel, so as an email, refused for want of a subject), preheader, deep link and
    image are applied and compared, and the export carries them back."""
    from services import resources

    api = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    doc = """
templates:
  - name: code-sms
    channel: sms
    text: "Your code is {{ event.properties.code }}"
  - name: shipped-push
    channel: push
    subject: Your order shipped
    text: On its way
    deep_link: "acme://orders/{{ event.properties.order_id }}"
    image: https://cdn.acme.test/box.png
  - name: news-mail
    channel: email
    subject: News
    preheader: Three things inside
    html: <p>Hi</p>
    text: "   "
    locales: {fr: {subject: Nouvelles, html: "  "}}
campaigns:
  - name: codes
    trigger: {type: api}
    message_type: transactional
    entry: {rule: every_time}
    steps: [{id: s, type: send, template: code-sms}]
"""
    changes = await resources.plan(api, resources.load(doc))
    assert [c.action for c in changes] == ["create"] * 4
    await resources.apply(api, changes)
    got = {t["name"]: t for t in (await world.apps["campaign"].get("/v1/templates", headers=world.h)).json()[
        "templates"]}
    assert got["code-sms"]["channel"] == "sms" and got["shipped-push"]["channel"] == "push"
    assert got["shipped-push"]["deep_link"] == "acme://orders/{{ event.properties.order_id }}"
    assert got["shipped-push"]["image"] == "https://cdn.acme.test/box.png"
    assert got["news-mail"]["preheader"] == "Three things inside"
    assert {c.action for c in await resources.plan(api, resources.load(doc))} == {"unchanged"}
    edited = await resources.plan(api, resources.load(doc.replace("Three things inside", "Four things inside")))
    assert [(c.name, c.action) for c in edited if c.action != "unchanged"] == [("news-mail", "update")]
    assert "+preheader: Four things inside" in edited[2].diff
    exported = resources.load(await resources.export(api))
    by_name = {t["name"]: t for t in exported["templates"]}
    assert by_name["code-sms"]["channel"] == "sms" and by_name["shipped-push"]["image"].endswith("box.png")
    assert by_name["news-mail"]["preheader"] == "Three things inside"


async def test_an_export_carries_its_snippets_to_another_workspace(world, settings) -> None:
    """Templates render the workspace's snippets: an export without them was refused by any other workspace
    ("no snippet named 'footer'") after the templates before it were written. A one-off broadcast whose time
    has passed is refused before anything is written, naming it."""
    from services import resources
    from shared.core import create_workspace

    await world.apps["campaign"].put("/v1/snippets/footer", headers=world.h,
                                     json={"content": "<p>Acme Inc, {{ who }}</p>"})
    await world.template("newsletter", "News", html="<p>Hi</p>{% render 'footer', who: profile.first_name %}")
    source = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    exported = await resources.export(source)
    assert resources.load(exported)["snippets"] == [{"name": "footer", "content": "<p>Acme Inc, {{ who }}</p>"}]
    async with world.sm() as s, s.begin():
        other = await create_workspace(s, f"prod-{uuid.uuid4().hex[:6]}")
    target = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")},
                           {"Authorization": f"Bearer {other.secret_key}"})
    tname = next(t["name"] for t in resources.load(exported)["templates"] if t["name"].startswith("newsletter"))
    changes = await resources.plan(target, resources.load(exported))
    created = [(c.kind, c.name) for c in changes if c.action == "create"]
    assert created[0] == ("snippets", "footer") and ("templates", tname) in created
    await resources.apply(target, changes)
    there = await world.apps["campaign"].get("/v1/templates", headers={"Authorization": f"Bearer {other.secret_key}"})
    assert tname in [t["name"] for t in there.json()["templates"]]
    assert {c.action for c in await resources.plan(target, resources.load(exported))} == {"unchanged"}
    assert {c.action for c in await resources.plan(source, resources.load(exported))} == {"unchanged"}
    # a broadcast that fired here: refused for the other workspace before anything is written
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    doc = f"""
segments:
  - name: everyone
    definition: {{type: trait, trait: email, op: exists}}
campaigns:
  - name: Last week's news
    trigger: {{type: schedule, segment: everyone, at: "{past}"}}
    steps: [{{id: s, type: send, template: {tname}}}]
"""
    with pytest.raises(resources.ResourceError, match="Last week's news.*has passed"):
        await resources.plan(target, resources.load(doc))


async def test_campaigns_as_code_keep_traits_named_segment_or_template(world, settings) -> None:
    """An ``update_attribute`` step setting a trait called ``segment`` (a customer segment, ``enterprise``) was
    read as a reference to a segment named ``enterprise``: ``tenure apply`` refused the file ("no segment named
    'enterprise'"), so a campaign made through the API could not be exported and applied back."""
    from services import resources

    api = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    name = f"tier-{uuid.uuid4().hex[:6]}"
    doc = f"""
templates:
  - name: {name}-mail
    subject: Welcome aboard
    text: Hi
campaigns:
  - name: {name}
    trigger: {{type: event, event: Plan Chosen, where: [{{property: segment, op: equals, value: {{segment: x}}}}]}}
    steps:
      - {{id: mark, type: update_attribute, traits: {{segment: enterprise, template: gold}}, next: mail}}
      - {{id: mail, type: send, template: {name}-mail}}
"""
    changes = await resources.plan(api, resources.load(doc))
    assert [c.action for c in changes] == ["create", "create"]
    await resources.apply(api, changes)
    got = {c["name"]: c for c in (await world.apps["campaign"].get("/v1/campaigns", headers=world.h)).json()[
        "campaigns"]}[name]
    assert got["definition"]["steps"][0]["traits"] == {"segment": "enterprise", "template": "gold"}
    assert got["definition"]["trigger"]["where"][0]["value"] == {"segment": "x"}
    assert {c.action for c in await resources.plan(api, resources.load(doc))} == {"unchanged"}
    exported = await resources.export(api)
    assert {c.action for c in await resources.plan(api, resources.load(exported))} == {"unchanged"}


async def test_an_export_applies_to_another_workspace_archived_campaigns_included(world, settings) -> None:
    """`tenure get campaigns -o yaml` of one workspace applied to another (staging to production): an archived
    campaign was POSTed with ``status: archived``, which creation refuses, and the error named the field but not
    the campaign; a trigger naming a lifecycle stage by its segment id (GET /v1/lifecycle) was exported with that
    id, which is this workspace's only ("no segment … in this workspace" in the other). An archived campaign is
    created paused and archived, a stage is exported by its name, the copy exports the same, and a refusal names
    the item."""
    from services import resources
    from shared.core import create_workspace

    urls = {s: settings.url_of(s) for s in ("segment", "campaign")}
    source = resources.Api(world.internal._http, urls, world.h)
    tpl = await world.template("old", "Old news")
    old = await world.campaign(trigger={"type": "api"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    assert (await world.apps["campaign"].post(f"/v1/campaigns/{old['id']}/archive", headers=world.h)).is_success
    stages = {s["stage"]: s["segment_id"] for s in (await world.apps["segment"].get("/v1/lifecycle", headers=world.h)
                                                    ).json()["stages"]}
    by_id = await world.campaign(trigger={"type": "segment_entered", "segment_id": stages["at_risk"]},
                                 exit_on_leaving=[{"segment_id": stages["at_risk"]}], template_id=tpl)
    exported = await resources.export(source)
    assert {c.action for c in await resources.plan(source, resources.load(exported))} == {"unchanged"}
    [mine] = [c for c in resources.load(exported)["campaigns"] if c["name"] == by_id["name"]]
    assert mine["trigger"] == {"type": "segment_entered", "stage": "at_risk"}  # (its id is this workspace's)
    assert mine["exit_on_leaving"] == [{"stage": "at_risk"}]

    async with world.sm() as s, s.begin():
        other = await create_workspace(s, f"copy-{uuid.uuid4().hex[:8]}")
    target = resources.Api(world.internal._http, urls, {"Authorization": f"Bearer {other.secret_key}"})
    await resources.apply(target, await resources.plan(target, resources.load(exported)))
    copied = {c["name"]: c for c in await target.all("campaign", "/v1/campaigns", "campaigns")}
    assert copied[old["name"]]["status"] == "archived"
    assert {c.action for c in await resources.plan(target, resources.load(exported))} == {"unchanged"}
    def by_name(doc: str) -> dict[str, dict[str, dict]]:  # (an export lists items in id order)
        return {kind: {i["name"]: i for i in items} for kind, items in resources.load(doc).items()}

    assert by_name(await resources.export(target)) == by_name(exported)

    late = f"late-{uuid.uuid4().hex[:6]}"  # (a one-off time in the past: refused by the plan, naming the item)
    bad = f"""
segments: [{{name: {late}, definition: {{type: trait, trait: plan, op: exists}}}}]
campaigns:
  - {{name: {late}, trigger: {{type: schedule, segment: {late}, at: '2020-01-01T00:00:00Z'}},
     steps: [{{id: s, type: send, template_id: {tpl}}}]}}
"""
    with pytest.raises(resources.ResourceError) as refused:
        await resources.apply(source, await resources.plan(source, resources.load(bad)))
    assert str(refused.value).startswith(f"campaign {late!r}: its one-off time"), refused.value
    assert "trigger.at" in str(refused.value)
    segments = (await world.apps["segment"].get("/v1/segments", headers=world.h)).json()["segments"]
    assert late not in [s["name"] for s in segments]  # nothing of the file was written
    with pytest.raises(resources.ResourceError, match="status is active, paused or archived, not 'deleted'"):
        await resources.plan(source, resources.load(exported.replace("status: archived", "status: deleted")))


async def test_campaigns_as_code_create_a_segment_before_the_segments_reading_it(world, settings) -> None:
    """A file defining ``vip buyers`` (which reads ``vip``) before ``vip``: segments were created in file order, so
    segment was asked about ``vip``'s placeholder id and refused ("no segment 05dfbfd8-… in this workspace", an id
    the user never saw). A segment the plan creates is now created before the segments reading it."""
    from services import resources

    api = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    tag = uuid.uuid4().hex[:6]
    doc = f"""
segments:
  - name: vip buyers {tag}
    definition: {{type: and, children: [{{type: segment, segment: vip {tag}}},
                                        {{type: performed, event: Order Completed, op: at_least, count: 1}}]}}
  - name: any {tag}
    definition: {{type: or, children: [{{type: segment, segment: vip buyers {tag}}}, {{type: segment, segment: vip {tag}}}]}}
  - name: vip {tag}
    definition: {{type: trait, trait: vip, op: equals, value: true}}
"""
    changes = await resources.plan(api, resources.load(doc))
    assert [c.name for c in changes] == [f"vip {tag}", f"vip buyers {tag}", f"any {tag}"]
    await resources.apply(api, changes)
    got = {s["name"]: s for s in await api.all("segment", "/v1/segments", "segments")}
    assert got[f"vip buyers {tag}"]["definition"]["children"][0]["segment_id"] == got[f"vip {tag}"]["id"]
    assert {c.action for c in await resources.plan(api, resources.load(doc))} == {"unchanged"}


async def test_apply_refuses_a_file_the_services_would_refuse_before_writing_and_says_what_a_later_refusal_left(
        world, settings) -> None:
    """A file with a good template, then one reading ``{{ profle.first_name }}``, then a campaign: the plan
    announced three creates, then campaign refused the second template after the first was written, and the
    campaign was not, with only "template 'part2-bad': … 422" to go by. Every check a service makes on save that
    needs no database is now made by the plan, against the snippets the workspace will have (its own overlaid
    with the file's), so such a file is refused naming the item before anything is written. A refusal only the
    service can make (a list that does not exist) says which items were applied and which were not."""
    import json

    from services import resources

    api = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    tag = uuid.uuid4().hex[:6]

    async def names(kind: str, service: str = "campaign") -> set[str]:
        return {i["name"] for i in await api.all(service, f"/v1/{kind}", kind)}

    await world.apps["campaign"].put("/v1/snippets/sig", headers=world.h, json={"content": "Acme"})
    good = f"""
snippets:
  - {{name: footer-{tag}, content: "{{% render 'sig' %}}, {{{{ who }}}}"}}
templates:
  - {{name: ok-{tag}, subject: hi, text: "hello {{% render 'footer-{tag}', who: profile.first_name %}}"}}
campaigns:
  - name: camp-{tag}
    trigger: {{type: event, event: Part2}}
    steps: [{{id: m, type: send, template: ok-{tag}}}]
"""
    deep: dict = {"type": "trait", "trait": "x", "op": "exists"}
    for _ in range(40):
        deep = {"type": "not", "child": deep}
    bad_files = {  # what is wrong: what the error says, naming the item
        "unknown variable": (good.replace("campaigns:", f"""  - name: bad-{tag}
    subject: "hi {{{{ profle.first_name }}}}"
    text: hello
campaigns:"""), f"template 'bad-{tag}': Template subject is not valid: unknown variable 'profle'"),
        "a snippet neither has": (good.replace("render 'sig'", "render 'nowhere'"),
                                  f"snippet 'footer-{tag}': does not parse: no snippet named 'nowhere'"),
        "a template the channel refuses": (good.replace("text: \"hello", "channel: sms, text: \"hello"),
                                           f"template 'ok-{tag}': subject: an SMS template has text only"),
        "a step nothing leads to": (good.replace("[{id: m, type: send", "[{id: x, type: exit}, {id: m, type: send"),
                                    f"campaign 'camp-{tag}': The campaign is not valid\n  steps.1: step 'm' is "
                                    "unreachable"),
        "split weights that overflow": (good.replace("steps: [", "steps: [{id: ab, type: split, variants: ["
                                                     "{name: A, weight: 1.0e+308, next: m}, {name: B, weight: 1.0e+308, "
                                                     "next: m}]}, "),
                                        f"campaign 'camp-{tag}': The campaign is not valid\n  steps.0.variants: "
                                        "the weights sum to inf"),
        "a segment nested too deep": (good + f"segments: [{{name: deep-{tag}, definition: {json.dumps(deep)}}}]\n",
                                      f"segment 'deep-{tag}': The segment definition is not valid"),
        # (an export from another workspace: its lists are not exported; found before anything is written)
        "a list the workspace does not have": (
            good + f"segments: [{{name: listed-{tag}, definition: {{type: or, children: [{{type: list, list_id: "
                   f"{uuid.UUID(int=7)}}}]}}}}]\n",
            f"segment 'listed-{tag}': definition.children.0.list_id: no list {uuid.UUID(int=7)} in this workspace"),
        "a template name nothing has": (good.replace(f"template: ok-{tag}", "template: nowhere"),
                                        f"campaign 'camp-{tag}': steps.0.template: no template named 'nowhere'"),
    }
    for case, (doc, says) in bad_files.items():
        with pytest.raises(resources.ResourceError) as refused:
            await resources.plan(api, resources.load(doc))
        assert str(refused.value).startswith(says), (case, str(refused.value))
    assert f"ok-{tag}" not in await names("templates") and f"footer-{tag}" not in await names("snippets")

    # a refusal only the service can make (someone made a segment of that name since the plan): segment refuses it
    # once the snippet and the template are written
    partial = good + f"""segments:
  - name: raced-{tag}
    definition: {{type: trait, trait: plan, op: exists}}
"""
    changes = await resources.plan(api, resources.load(partial))
    assert [(c.action, c.name) for c in changes] == [("create", f"footer-{tag}"), ("create", f"ok-{tag}"),
                                                      ("create", f"raced-{tag}"), ("create", f"camp-{tag}")]
    meanwhile = await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"raced-{tag}", "definition": {"type": "trait", "trait": "tier", "op": "exists"}})
    assert meanwhile.status_code == 201, meanwhile.text
    with pytest.raises(resources.PartlyApplied) as stopped:
        await resources.apply(api, changes)
    lines = str(stopped.value).splitlines()
    assert lines[0].startswith(f"segment 'raced-{tag}': POST segment/v1/segments: 409"), lines
    assert f"applied: create snippet 'footer-{tag}', create template 'ok-{tag}'" in lines, lines
    assert f"not applied: create segment 'raced-{tag}'" in lines and f"not applied: create campaign 'camp-{tag}'" in lines
    assert f"ok-{tag}" in await names("templates") and f"camp-{tag}" not in await names("campaigns")
    # the first write refused: nothing was applied, and it says so
    with pytest.raises(resources.ResourceError) as first:
        await resources.apply(api, [c for c in changes if c.kind == "segments"])
    assert not isinstance(first.value, resources.PartlyApplied)
    assert str(first.value).startswith(f"segment 'raced-{tag}'") and "(nothing was applied)" in str(first.value)
    # the good file applies (what was applied shows as unchanged), and then is unchanged
    changes = await resources.plan(api, resources.load(good))
    assert [c.action for c in changes] == ["unchanged", "unchanged", "create"]
    await resources.apply(api, changes)
    assert {c.action for c in await resources.plan(api, resources.load(good))} == {"unchanged"}


async def test_locale_variants_fall_back_field_by_field_along_the_chain(world) -> None:
    """fr-CA → fr → default for each field: a fr-CA variant that only words the subject differently gets its
    body from fr (it used to get the English default's), and variants keyed pt_BR serve pt-BR profiles."""
    tpl = await world.template("loc", "Hello", text="Your order shipped", locales={
        "fr": {"subject": "Bonjour", "text": "Votre commande est partie"}, "fr-CA": {"subject": "Allô"},
        "pt_BR": {"subject": "Olá", "text": "Seu pedido foi enviado"}})
    await world.identify("loc-qc", email=_email("qc"), locale="fr-CA")
    await world.identify("loc-br", email=_email("br"), locale="pt-BR")

    async def preview(user: str) -> dict:
        r = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"user": user})
        assert r.status_code == 200, r.text
        return r.json()

    qc = await preview("loc-qc")
    assert (qc["subject"], qc["text"], qc["locale"]) == ("Allô", "Votre commande est partie", "fr-ca")
    br = await preview("loc-br")
    assert (br["subject"], br["text"]) == ("Olá", "Seu pedido foi enviado")


async def test_one_journey_sends_with_and_without_computed_attributes(world) -> None:
    """"Variables: profile traits, computed attributes …": `attributes` is refused no more; a send, a preview and
    a template that does not use them (no request to segment) each get what they need."""
    tpl = await world.template("cltv", "{{ attributes.order_count }} orders, {{ attributes.total_revenue }} spent",
                               text="Thanks, {{ profile.first_name }}")
    plain = await world.template("no-attrs", "Hello {{ profile.first_name }}")
    await world.campaign(trigger={"type": "event", "event": "Loyal"}, message_type="transactional",
                         steps=[{"id": "s", "type": "send", "template_id": tpl, "next": "t"},
                                {"id": "t", "type": "send", "template_id": plain}])
    email = _email("cltv")
    pid = await world.identify("cltv-1", email=email, first_name="Ada")
    for i, revenue in enumerate((30, 12.5)):
        await world.track("cltv-1", "Order Completed", T0 - timedelta(days=3 - i), revenue=revenue)
    await world.fold_segments(pid)
    await world.track("cltv-1", "Loyal", T0)
    await world.pump(T0)
    assert sorted(m["subject"] for m in await world.mail(email)) == ["2 orders, 42.5 spent", "Hello Ada"]
    r = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"user": "cltv-1"})
    assert r.status_code == 200 and r.json()["subject"] == "2 orders, 42.5 spent", r.text


async def test_an_emails_body_comes_from_one_language(world) -> None:
    """A variant with a French HTML part and no text part used to be sent with the default's English text part
    (and one with text alone, with the English HTML): the body now comes whole from the first variant of the
    chain that has any of it — the text part made from its HTML, or a text-only email."""
    tpl = await world.template("body-loc", "Welcome", html="<p>Welcome aboard</p>", text="Welcome aboard", locales={
        "fr": {"subject": "Bienvenue", "html": "<p>Bienvenue à bord</p>"},
        "de": {"text": "Willkommen an Bord"}, "fr-CA": {"subject": "Bienvenue au Québec"}})
    await world.identify("body-qc", email=_email("body-qc"), locale="fr-CA")
    await world.identify("body-de", email=_email("body-de"), locale="de-AT")
    await world.identify("body-en", email=_email("body-en"), locale="en-GB")
    got = {}
    for user in ("body-qc", "body-de", "body-en"):
        r = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"user": user})
        assert r.status_code == 200, r.text
        got[user] = (r.json()["subject"], r.json()["html"], r.json()["text"].strip())
    assert got == {"body-qc": ("Bienvenue au Québec", "<p>Bienvenue à bord</p>", "Bienvenue à bord"),
                   "body-de": ("Welcome", None, "Willkommen an Bord"),
                   "body-en": ("Welcome", "<p>Welcome aboard</p>", "Welcome aboard")}


class _Recording:
    """An InternalClient that remembers the paths it asked each service (to see which requests a batch cost)."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []
        self.settings, self._http = inner.settings, inner._http

    async def request(self, method, service, path, **kw):
        self.asked.append((service, path))
        return await self.inner.request(method, service, path, **kw)


def _segment_down(world):
    """The world's internal client, but nothing listens at segment's URL (no retries: the test needs no wait)."""
    import httpx

    from shared.embedded import free_port
    from shared.http import InternalClient

    settings = world.internal.settings
    moved = settings.model_copy(update={"segment_url": f"http://127.0.0.1:{free_port()}", "http_retries": 0})
    mounts = {settings.url_of(s): world.apps[s]._transport for s in ("ingest", "campaign", "delivery")}
    return InternalClient(moved, httpx.AsyncClient(mounts=mounts, timeout=5))


async def _buyer(world, uid: str, *revenues: float, **traits) -> str:
    email = _email(uid)
    pid = await world.identify(uid, email=email, **traits)
    for i, revenue in enumerate(revenues):
        await world.track(uid, "Order Completed", T0 - timedelta(days=5 - i), revenue=revenue)
    await world.fold_segments(pid)
    return email


async def test_templates_show_computed_attributes_from_segment(world) -> None:
    """"Variables: profile traits, computed attributes …": `{{ attributes.order_count }}` was refused ("unknown
    variable 'attributes'") and nothing asked segment for them. Now a send, a preview and a test send show the
    profile's computed attributes (through a snippet too); a batch of sends asks segment once, and a batch whose
    templates do not read them does not ask at all."""
    c = world.apps["campaign"]
    assert (await c.put("/v1/snippets/cltv", headers=world.h, json={
        "content": "Lifetime: {{ attributes.total_revenue | money: 'USD' }}"})).status_code == 200
    tpl = await world.template("attrs", "{{ attributes.order_count }} orders so far", text="{% render 'cltv' %}")
    plain = await world.template("no-attrs", "Hello {{ profile.first_name }}")
    await world.campaign(trigger={"type": "event", "event": "Greeted"}, message_type="transactional",
                         steps=[{"id": "s", "type": "send", "template_id": plain}])
    await world.campaign(trigger={"type": "event", "event": "Thanked"}, message_type="transactional",
                         steps=[{"id": "s", "type": "send", "template_id": tpl}])
    ada, bob = await _buyer(world, "attr-ada", 30, 12.5, first_name="Ada"), await _buyer(world, "attr-bob", 8)
    internal, world.internal = world.internal, _Recording(world.internal)
    try:
        for uid in ("attr-ada", "attr-bob"):
            await world.track(uid, "Greeted", T0)
        await world.pump(T0)
        assert ("segment", "/v1/attributes/lookup") not in world.internal.asked  # (the hot path: no request)
        for uid in ("attr-ada", "attr-bob"):
            await world.track(uid, "Thanked", T0 + timedelta(minutes=1))
        await world.pump(T0 + timedelta(minutes=1))
        assert world.internal.asked.count(("segment", "/v1/attributes/lookup")) == 1  # (both sends: one request)
    finally:
        world.internal = internal
    got = {to: [m["subject"] for m in await world.mail(to)] for to in (ada, bob)}
    assert got == {ada: ["Hello Ada", "2 orders so far"], bob: ["Hello", "1 orders so far"]}, got
    r = await c.post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"user": "attr-ada"})
    assert r.status_code == 200 and (r.json()["subject"], r.json()["text"]) == ("2 orders so far", "Lifetime: $42.50")
    tester = _email("attr-test")
    r = await c.post(f"/v1/templates/{tpl}/test", headers=world.h, json={"to": tester, "user": "attr-bob"})
    assert r.status_code == 202, r.text
    assert [m["subject"] for m in await world.mail(tester)] == ["[test] 1 orders so far"]


async def test_segments_batch_attributes_lookup_is_internal_and_knows_new_profiles(world) -> None:
    from shared.testing import internal_headers

    pid = await world.identify("attr-new", email=_email("attr-new"))
    body = {"profile_ids": [pid, str(uuid.uuid4())]}
    r = await world.apps["segment"].post("/v1/attributes/lookup", headers=world.h, json=body)
    assert r.status_code in (401, 403), r.text  # (the workspace's secret key: internal token only)
    r = await world.apps["segment"].post("/v1/attributes/lookup", headers=internal_headers(world.ws), json=body)
    assert r.status_code == 200, r.text
    found = r.json()["attributes"]
    assert sorted(found) == sorted(body["profile_ids"])
    assert {(a["profile_id"], a["order_count"], a["total_revenue"]) for a in found.values()} == {
        (p, 0, 0.0) for p in body["profile_ids"]}


async def test_a_send_reading_attributes_waits_while_segment_is_down(world) -> None:
    """Segment down: a send whose template reads `attributes` is retried later with the reason (as when ingest
    is down), never sent with the values missing; one whose template does not read them goes out meanwhile."""
    tpl = await world.template("attrs-down", "You ordered {{ attributes.order_count }} times")
    plain = await world.template("plain-down", "Thanks")
    camp = await world.campaign(trigger={"type": "event", "event": "Ping"}, message_type="transactional",
                                steps=[{"id": "a", "type": "send", "template_id": tpl, "next": "b"},
                                       {"id": "b", "type": "send", "template_id": plain}])
    email = await _buyer(world, "attr-down", 20, 20, 20)
    await world.track("attr-down", "Ping", T0)
    await drain_feed(world.sm, lambda s: triggering.consume_page(s, world.internal, "events", 500, now=T0), 500)
    down = _segment_down(world)
    try:
        await run_due_journeys(world.sm, down, T0)  # (the journey runs and decides both sends while segment is down)
    finally:
        await down._http.aclose()
    sends = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/sends", headers=world.h)).json()["sends"]
    assert [m["subject"] for m in await world.mail(email)] == ["Thanks"]
    [waiting] = [s for s in sends if s["status"] == "pending"]
    assert "segment unreachable looking up computed attributes" in waiting["reason"], waiting
    async with world.sm() as s, s.begin():  # (its back-off has passed)
        await s.execute(text("update campaign.sends set next_attempt_at = now() where campaign_id = :c"),
                        {"c": camp["id"]})
    await world.pump(T0 + timedelta(minutes=1))
    assert sorted(m["subject"] for m in await world.mail(email)) == ["Thanks", "You ordered 3 times"]


@pytest.mark.parametrize("locales, key, said", [
    ({"fr_CA": {"subject": "A"}, "fr-CA": {"subject": "B"}}, "fr-CA", "same variant"),
    ({"fr": {"subject": "A"}, "FR": {"subject": "B"}}, "FR", "same variant"),
    ({"": {"subject": "A"}}, "", "not a locale"),
    ({"French!": {"subject": "A"}}, "French!", "not a locale"),
])
async def test_a_template_naming_a_locale_variant_twice_or_no_locale_is_refused(world, locales, key, said) -> None:
    """``fr_CA`` and ``fr-CA`` are one variant (docs/campaigns.md): both were saved, and the fr-CA profile got
    whichever the stored order put last ("A", though "B" came last in the request); a key that is no locale was
    saved and never chosen. Both are 422s naming the key, on create and on update."""
    h, campaign = world.h, world.apps["campaign"]
    body = {"name": f"loc-{uuid.uuid4().hex[:6]}", "subject": "Hello", "text": "Hi", "locales": locales}
    for r in (await campaign.post("/v1/templates", headers=h, json=body),
              await campaign.put(f"/v1/templates/{await world.template('loc-ok', 'Hello')}", headers=h, json=body)):
        assert r.status_code == 422, r.text
        (error,) = r.json()["errors"]
        assert error["loc"] == ["body", "locales", key] and said in error["msg"], r.text


@pytest.mark.parametrize("channel, base, locales, loc", [
    ("sms", {"text": "Code 1234"}, {"fr": {"text": "Code 1234", "subject": "Votre code"}}, "subject"),
    ("sms", {"text": "Code 1234"}, {"de": {"html": "<p>Code</p>"}}, "html"),
    ("push", {"subject": "Shipped", "text": "On its way"}, {"fr": {"preheader": "En route"}}, "preheader"),
    ("email", {"subject": "Hi", "text": "Hello"}, {"fr": {"deep_link": "acme://x"}}, "deep_link"),
])
async def test_a_locale_variant_may_only_translate_its_channels_fields(world, channel, base, locales, loc) -> None:
    """An SMS template's French variant with a subject was saved and the subject never used (an SMS has none):
    a 422 naming the variant's field, on create and on update."""
    h, campaign = world.h, world.apps["campaign"]
    body = {"name": f"var-{uuid.uuid4().hex[:6]}", "channel": channel, **base, "locales": locales}
    for r in (await campaign.post("/v1/templates", headers=h, json=body),
              await campaign.put(f"/v1/templates/{await world.template('var-ok', 'Hello')}", headers=h, json=body)):
        assert r.status_code == 422, r.text
        (error,) = r.json()["errors"]
        code = next(iter(locales))
        assert error["loc"] == ["body", "locales", code, loc] and code in error["msg"], r.text


async def test_a_blank_body_part_is_no_part(world) -> None:
    """Blanks in ``html`` or ``text`` are no part: an email of blank HTML gets its text part alone (it was sent
    with an empty HTML part), an email or SMS whose every part is blank is refused on save (it was saved, and
    sent empty), and a locale variant's blank part falls back as an omitted one does."""
    h, campaign = world.h, world.apps["campaign"]
    for body in ({"subject": "Hi", "html": "  ", "text": "\n"}, {"channel": "sms", "text": "   "}):
        r = await campaign.post("/v1/templates", headers=h, json={"name": f"blank-{uuid.uuid4().hex[:6]}", **body})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] in ("html", "text"), r.text
    r = await campaign.post("/v1/templates", headers=h, json={
        "name": f"blank-{uuid.uuid4().hex[:6]}", "subject": "Hi", "html": " ", "text": "Hello {{ profile.first_name }}",
        "locales": {"fr": {"text": "Bonjour", "html": "\t"}}})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["html"] is None and saved["locales"]["fr"]["html"] is None
    preview = await campaign.post(f"/v1/templates/{saved['id']}/preview", headers=h, json={})
    assert preview.status_code == 200 and preview.json()["html"] is None, preview.text


async def test_a_template_with_an_unknown_filter_or_snippet_is_refused_on_save(world) -> None:
    """Both parse, so they used to be saved, and then every send of them failed ("template did not render");
    now saving says which field and what is missing. Snippets are checked the same way."""
    tpl = {"name": f"typo-{uuid.uuid4().hex[:6]}", "subject": "Hi {{ profile.first_name | capitalise }}",
           "text": "Hello"}
    r = await world.apps["campaign"].post("/v1/templates", headers=world.h, json=tpl)
    assert r.status_code == 422 and r.json()["field"] == "subject" and "capitalise" in r.json()["detail"], r.text
    r = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        **tpl, "subject": "Hi", "locales": {"fr": {"html": "<p>Salut</p>{% render 'pied' %}"}}})
    assert r.status_code == 422 and r.json()["field"] == "locales.fr.html" and "pied" in r.json()["detail"], r.text
    r = await world.apps["campaign"].put("/v1/snippets/sig", headers=world.h,
                                         json={"content": "{{ profile.first_name | upcaes }}"})
    assert r.status_code == 422 and "upcaes" in r.json()["detail"], r.text
    assert (await world.apps["campaign"].put("/v1/snippets/pied", headers=world.h,
                                             json={"content": "<p>{{ 'Acme' | upcase }}</p>"})).status_code == 200
    ok = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        **tpl, "subject": "Hi {{ profile.first_name | capitalize }}",
        "locales": {"fr": {"html": "<p>Salut</p>{% render 'pied' %}"}}})
    assert ok.status_code == 201, ok.text
    r = await world.apps["campaign"].put(f"/v1/templates/{ok.json()['id']}", headers=world.h,
                                         json={**tpl, "text": "{% include 'nowhere' %}", "subject": "Hi"})
    assert r.status_code == 422 and r.json()["field"] == "text", r.text
    assert (await world.apps["campaign"].get("/v1/templates", headers=world.h)).json()["templates"][0][
        "subject"] == "Hi {{ profile.first_name | capitalize }}"


async def test_property_filters_and_event_matches_reach_into_nested_properties(world) -> None:
    """`where` and `match` name nested properties with dots, as segment conditions do (``product.category``);
    the filter used to read a top-level key of that name, so the campaign silently never started."""
    tpl = await world.template("nested", "Still thinking about {{ event.properties.product.name }}?")
    await world.campaign(
        trigger={"type": "event", "event": "Product Viewed",
                 "where": [{"property": "product.category", "value": "shoes"}]},
        entry={"rule": "every_time"}, steps=[
            {"id": "wait", "type": "wait_for_event", "event": "Product Added", "timeout_seconds": 3600,
             "match": {"property": "item.sku", "trigger_property": "product.sku"}, "on_timeout": "nudge"},
            {"id": "nudge", "type": "send", "template_id": tpl}])
    shoes, hats, added = _email("shoes"), _email("hats"), _email("added")
    for uid, email in (("nest-1", shoes), ("nest-2", hats), ("nest-3", added)):
        await world.identify(uid, email=email)
    await world.track("nest-1", "Product Viewed", T0, product={"category": "shoes", "sku": "S1", "name": "Runner"})
    await world.track("nest-2", "Product Viewed", T0, product={"category": "hats", "sku": "H1", "name": "Cap"})
    await world.track("nest-3", "Product Viewed", T0, product={"category": "shoes", "sku": "S2", "name": "Boot"})
    await world.pump(T0 + timedelta(minutes=1))
    await world.track("nest-1", "Product Added", T0 + timedelta(minutes=5), item={"sku": "other"})
    await world.track("nest-3", "Product Added", T0 + timedelta(minutes=5), item={"sku": "S2"})
    await world.pump(T0 + timedelta(minutes=6))
    await world.pump(T0 + timedelta(hours=1, minutes=1))
    assert [m["subject"] for m in await world.mail(shoes)] == ["Still thinking about Runner?"]
    assert await world.mail(hats) == [] and await world.mail(added) == []


async def test_a_price_sent_as_text_is_ordered_as_a_number_by_trigger_filters(world) -> None:
    """SDKs and forms send numbers as text ("19.99"); `gte 10` compared text with a number, which never matched,
    so the campaign silently never started for them (segment conditions read such text as its number)."""
    tpl = await world.template("pricey", "About your {{ event.properties.product }}")
    await world.campaign(trigger={"type": "event", "event": "Product Added",
                                  "where": [{"property": "price", "op": "gte", "value": 10}]},
                         entry={"rule": "every_time"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    texts = {uid: _email(uid) for uid in ("price-text", "price-num", "price-low", "price-word")}
    for uid, email in texts.items():
        await world.identify(uid, email=email)
    for uid, price in (("price-text", "19.99"), ("price-num", 19.99), ("price-low", "9.5"), ("price-word", "ten")):
        await world.track(uid, "Product Added", T0, product="Bag", price=price)
    await world.pump(T0 + timedelta(minutes=1))
    assert [m["subject"] for m in await world.mail(texts["price-text"])] == ["About your Bag"]
    assert [m["subject"] for m in await world.mail(texts["price-num"])] == ["About your Bag"]
    assert await world.mail(texts["price-low"]) == [] and await world.mail(texts["price-word"]) == []


async def test_a_send_that_cannot_go_reads_as_skipped_where_it_was_decided_not_as_sent(world) -> None:
    """"Why didn't X get the email": the path said "sent — email message queued" at the send step, and only after
    "completed" that the send was skipped (no email address). The send step's line now says what happened."""
    tpl = await world.template("no-address", "Hello")
    await world.campaign(trigger={"type": "event", "event": "Asked"}, steps=[
        {"id": "mail", "type": "send", "template_id": tpl}])
    pid = await world.identify("no-email-user", first_name="Ann")
    await world.track("no-email-user", "Asked", T0)
    await world.pump(T0 + timedelta(minutes=1))
    log = [(e["kind"], e["step"], e["detail"]) for e in (await world.path(pid))[0]["log"]]
    assert ("skipped", "mail", "profile has no email trait") in log and not any(k == "sent" for k, _, _ in log), log
    assert [k for k, _, _ in log].index("skipped") < [k for k, _, _ in log].index("completed"), log


async def _ab_test_ended(world, name: str) -> tuple[dict, dict[str, dict]]:
    """An A/B test whose arms end with their send (steps `sa`, `sb`), six users through it: the campaign and each
    user's (completed) journey."""
    a, b = await world.template(f"{name}-a", "Arm A"), await world.template(f"{name}-b", "Arm B")
    camp = await world.campaign(trigger={"type": "event", "event": f"Offered {name}"}, steps=[
        {"id": "ab", "type": "split", "variants": [{"name": "A", "weight": 50, "next": "sa"},
                                                   {"name": "B", "weight": 50, "next": "sb"}]},
        {"id": "sa", "type": "send", "template_id": a}, {"id": "sb", "type": "send", "template_id": b}])
    users = [f"{name}-{i}-{uuid.uuid4().hex[:4]}" for i in range(6)]
    for uid in users:
        await world.identify(uid, email=_email(name))
        await world.track(uid, f"Offered {name}", T0)
    await world.pump(T0)
    journeys_of = {}
    for uid in users:
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
        [j] = await world.path(pid)
        assert j["status"] == "completed"
        journeys_of[uid] = j
    return camp, journeys_of


async def test_opens_and_clicks_count_after_the_journey_ended_and_per_variant(world) -> None:
    """An A/B test whose arms end with their send: the opens and clicks delivery reports come after the journey
    completed, and used to be dropped (only open journeys took events), so the funnel showed none. Each
    variant reports its messages sent, opened and clicked beside entries, conversions and revenue."""
    camp, journeys_of = await _ab_test_ended(world, "ab-open")
    for uid, j in journeys_of.items():
        step = "sa" if j["variant"] == "A" else "sb"
        await world.track(uid, "Email Opened", T0 + timedelta(minutes=5), journey_id=j["id"], step=step)
        if j["variant"] == "A":
            await world.track(uid, "Email Link Clicked", T0 + timedelta(minutes=6), journey_id=j["id"], step=step)
    await world.track(next(iter(journeys_of)), "Email Opened", T0 + timedelta(minutes=7), journey_id="not-a-uuid", step="sa")
    await world.pump(T0 + timedelta(minutes=10))
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    n = {arm: sum(j["variant"] == arm for j in journeys_of.values()) for arm in ("A", "B")}
    assert stats["sends_by_step"].get("sa", {}).get("opened", 0) == n["A"]
    assert stats["sends_by_step"].get("sa", {}).get("clicked", 0) == n["A"]
    for arm in ("A", "B"):
        if n[arm]:
            v = stats["variants"][arm]
            assert (v["entered"], v["sent"], v["opened"], v["clicked"]) == (
                n[arm], n[arm], n[arm], n[arm] if arm == "A" else 0)


async def test_the_funnel_counts_what_delivery_reports_per_step_and_variant(world) -> None:
    """entered, sent, delivered, opened, clicked: the delivery reports (SendGrid's, Twilio's) come back as events
    naming the journey and step, after the journey ended; a bounce is counted beside them."""
    camp, journeys_of = await _ab_test_ended(world, "funnel")
    users = list(journeys_of)
    bounced = users[0]
    for uid, j in journeys_of.items():
        step = "sa" if j["variant"] == "A" else "sb"
        report = "Email Bounced" if uid == bounced else "Email Delivered"
        await world.track(uid, report, T0 + timedelta(minutes=1), journey_id=j["id"], step=step)
        if uid != bounced:
            await world.track(uid, "Email Opened", T0 + timedelta(minutes=5), journey_id=j["id"], step=step)
    await world.pump(T0 + timedelta(minutes=10))
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    arm = {uid: j["variant"] for uid, j in journeys_of.items()}
    for variant, step in (("A", "sa"), ("B", "sb")):
        mine = [uid for uid in users if arm[uid] == variant]
        if not mine:
            continue
        lost = int(bounced in mine)
        got = stats["sends_by_step"][step]
        assert (got["dispatched"], got["delivered"], got["bounced"], got["opened"], got["clicked"]) == (
            len(mine), len(mine) - lost, lost, len(mine) - lost, 0)
        v = stats["variants"][variant]
        assert (v["entered"], v["sent"], v["delivered"], v["opened"]) == (
            len(mine), len(mine), len(mine) - lost, len(mine) - lost)


async def test_branch_on_delivered_asks_delivery_what_became_of_the_message(world, mailbox) -> None:
    """`engaged` with `action: delivered` was accepted and always took `no` (nothing ever marked a message
    delivered); it is now what delivery says of the step's message: sent or delivered (or opened) is yes,
    suppressed, bounced, failed or still queued is no."""
    world.deliver = True
    receipt = await world.template("rcpt", "Your receipt")
    await world.campaign(trigger={"type": "event", "event": "Paid"}, steps=[
        {"id": "receipt", "type": "send", "template_id": receipt, "next": "wait"},
        {"id": "wait", "type": "delay", "seconds": 60, "next": "check"},
        {"id": "check", "type": "branch", "condition": {"type": "engaged", "step": "receipt", "action": "delivered"},
         "yes": "done", "no": "done"},
        {"id": "done", "type": "exit"}])
    fine, blocked = _email("paid-ok"), _email("paid-blocked")
    await world.apps["delivery"].post("/v1/suppressions", headers=world.h, json={"address": blocked})
    pids = {uid: await world.identify(uid, email=email) for uid, email in (("paid-1", fine), ("paid-2", blocked))}
    for uid in pids:
        await world.track(uid, "Paid", T0)
    await world.pump(T0)
    await world.pump(T0 + timedelta(minutes=2))
    taken = {}
    for uid, pid in pids.items():
        [j] = await world.path(pid)
        taken[uid] = next(e["detail"] for e in j["log"] if e["kind"] == "branch")
    assert taken == {"paid-1": "yes", "paid-2": "no"}


async def test_a_date_trait_is_that_day_in_the_users_time_zone(world) -> None:
    """`wait_until_attribute` on a date without a time ("renews_on": "2026-12-01") counts from midnight where
    the user lives: "a day before" is 30 November 00:00 in Los Angeles, not 29 November 16:00 there (the date
    used to be read as midnight UTC). A time without an offset is local too; one with an offset is kept."""
    tpl = await world.template("renew-day", "Renews tomorrow")
    camp = await world.campaign(trigger={"type": "event", "event": "Subscribed"}, steps=[
        {"id": "when", "type": "wait_until_attribute", "trait": "renews_on", "offset_seconds": -86400,
         "next": "remind"},
        {"id": "remind", "type": "send", "template_id": tpl}])
    people = {"day-la": ("America/Los_Angeles", "2026-12-01", "2026-11-30T08:00:00+00:00"),
              "day-local-time": ("Asia/Tokyo", "2026-12-01T09:00:00", "2026-11-30T00:00:00+00:00"),
              "day-offset": ("Asia/Tokyo", "2026-12-01T09:00:00Z", "2026-11-30T09:00:00+00:00"),
              "day-utc": (None, "2026-12-01", "2026-11-30T00:00:00+00:00")}
    for uid, (tz, renews_on, _) in people.items():
        await world.identify(uid, email=_email(uid), renews_on=renews_on, **({"timezone": tz} if tz else {}))
        await world.track(uid, "Subscribed", T0)
    await world.pump(T0)
    for uid, (_, _, due) in people.items():
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
        [j] = [j for j in await world.path(pid) if j["campaign_id"] == camp["id"]]
        assert (uid, datetime.fromisoformat(j["wake_at"])) == (uid, datetime.fromisoformat(due))


async def test_a_test_send_goes_out_on_the_templates_channel(world) -> None:
    """An SMS template's test goes to a phone as an SMS (it used to be emailed, and only to an email address);
    an address that does not fit the channel is a 422 naming why, and nothing is queued."""
    sms = (await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"sms-test-{uuid.uuid4().hex[:6]}", "channel": "sms", "text": "Code {{ event.properties.code }}"}))
    assert sms.status_code == 201, sms.text
    url = f"/v1/templates/{sms.json()['id']}/test"
    sent = await world.apps["campaign"].post(url, headers=world.h, json={"to": "+14155550199", "data": {"code": "7"}})
    assert sent.status_code == 202, sent.text
    [msg] = (await world.apps["delivery"].get("/v1/messages", headers=world.h,
                                              params={"to": "+14155550199"})).json()["messages"]
    assert (msg["channel"], msg["id"]) == ("sms", sent.json()["message_id"])
    wrong = await world.apps["campaign"].post(url, headers=world.h, json={"to": "ops@example.com"})
    assert wrong.status_code == 422 and wrong.headers["content-type"].startswith("application/problem+json")
    assert "phone number" in wrong.text, wrong.text
    mail = await world.template("mail-test", "Hi")
    bad = await world.apps["campaign"].post(f"/v1/templates/{mail}/test", headers=world.h, json={"to": "nope"})
    assert bad.status_code == 422, bad.text
    assert (await world.apps["delivery"].get("/v1/messages", headers=world.h, params={"to": "ops@example.com"})).json()[
        "messages"] == []


async def test_an_unknown_journey_status_filter_is_a_422(world) -> None:
    """`?status=running` answered an empty list, as if nobody were inside; it names the statuses now."""
    tpl = await world.template("st", "Hi")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "d", "type": "delay", "seconds": 60,
                                                                 "next": "s"},
                                                                {"id": "s", "type": "send", "template_id": tpl}])
    await world.identify("st-1", email=_email("st"))
    await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h, json={"user": "st-1"})
    url = f"/v1/campaigns/{camp['id']}/journeys"
    bad = await world.apps["campaign"].get(url, headers=world.h, params={"status": "running"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json"), bad.text
    ok = await world.apps["campaign"].get(url, headers=world.h, params={"status": "active", "step": "d"})
    assert [j["step"] for j in ok.json()["journeys"]] == ["d"]


async def test_who_is_at_a_step_leaves_out_those_who_left_there_unless_asked(world) -> None:
    """``?step=s`` listed journeys that had exited at ``s`` beside those waiting there (the stats counted 3 in
    progress at a step, the list showed 7): it is who is inside, at that step; ``status=exited`` asks for the
    others."""
    tpl = await world.template("at-step", "Hi")
    camp = await world.campaign(trigger={"type": "event", "event": "Joined"}, exit_on=["Left"],
                                steps=[{"id": "w", "type": "delay", "seconds": 3600, "next": "s"},
                                       {"id": "s", "type": "send", "template_id": tpl}])
    for uid in ("stays", "leaves"):
        await world.identify(uid, email=_email(uid))
        await world.track(uid, "Joined", T0)
    await world.pump(T0 + timedelta(minutes=1))
    await world.track("leaves", "Left", T0 + timedelta(minutes=2))
    await world.pump(T0 + timedelta(minutes=3))
    url = f"/v1/campaigns/{camp['id']}/journeys"

    async def at(**params) -> list[tuple[str, str]]:
        r = await world.apps["campaign"].get(url, headers=world.h, params=params)
        assert r.status_code == 200, r.text
        return sorted((j["status"], j["step"]) for j in r.json()["journeys"])

    # (a journey sleeping in a delay is at the step after it)
    assert await at(step="s") == [("active", "s")]
    assert await at(step="s", status="exited") == [("exited", "s")]
    assert await at() == [("active", "s"), ("exited", "s")]
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["in_progress_by_step"] == {"s": 1}


async def _audience(world, name: str, uids: list[str]) -> dict:
    """A saved segment (trait ``name`` true) and its members, evaluated as segment's consumer would."""

    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"{name}-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": name, "value": True}})).json()
    for uid in uids:
        pid = await world.identify(uid, email=_email(uid), **{name: True})
        await world.fold_traits(pid, {name: True})
    return seg


async def test_entry_rule_defaults_follow_the_trigger(world) -> None:
    """Without an entry rule a journey entered each user once ever: a second password reset (API trigger,
    with steps) was refused, a weekly broadcast reached each member on its first slot only. API and
    schedule triggers default to every_time now; event and segment triggers keep once; a rule that is set
    is kept."""
    from services.campaign import schedules

    tpl = await world.template("reset", "Reset your password")
    steps = [{"id": "s", "type": "send", "template_id": tpl}]
    reset = await world.campaign(trigger={"type": "api"}, message_type="transactional", steps=steps)
    strict = await world.campaign(trigger={"type": "api"}, entry={"rule": "once"}, steps=steps)
    held = await world.campaign(trigger={"type": "api"}, entry={"holdout_percent": 0}, steps=steps)
    visited = await world.campaign(trigger={"type": "event", "event": "Visited Twice"}, steps=steps)
    shorthand = await world.campaign(trigger={"type": "event", "event": "Visited Twice"}, template_id=tpl,
                                     entry={"holdout_percent": 0})
    assert [c["definition"]["entry"]["rule"] for c in (reset, strict, held, visited, shorthand)] == [
        "every_time", "once", "every_time", "once", "every_time"]
    await world.identify("reset-1", email=_email("reset"))
    for camp, wanted in ((reset, [True, True]), (strict, [True, False]), (held, [True, True])):
        got = []
        for n in range(2):
            r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                                  json={"user": "reset-1", "idempotency_key": f"reset-{n}"})
            assert r.status_code == 202, r.text
            got.append(r.json()["entered"])
        assert got == wanted, camp["definition"]["entry"]
    seg = await _audience(world, "weekly_news", ["wn-1"])
    weekly = await world.campaign(trigger={"type": "schedule", "segment_id": seg["id"], "cron": "0 9 * * 2"},
                                  steps=steps)
    for tuesday in (_coming(1, "09:30"), _coming(1, "09:30", weeks=1)):
        await schedules.run_pending(world.sm, world.internal, now=tuesday)
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{weekly['id']}/stats", headers=world.h)).json()
    assert stats["entered"] == 2  # each slot


async def test_an_edit_without_message_type_keeps_it(world) -> None:
    """PUT without message_type turned a transactional campaign into marketing (its default), so receipts
    became subject to unsubscribes, quiet hours and frequency caps. Omitted, it is kept, as the name is."""
    tpl = await world.template("receipt", "Your receipt")
    camp = await world.campaign(trigger={"type": "api"}, message_type="transactional",
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    url = f"/v1/campaigns/{camp['id']}"
    r = await world.apps["campaign"].put(url, headers=world.h, json={"trigger": {"type": "api"}, "template_id": tpl})
    assert r.status_code == 200, r.text
    assert r.json()["message_type"] == "transactional" and r.json()["definition"]["message_type"] == "transactional"
    assert r.json()["name"] == camp["name"] and r.json()["version"] == 2
    r = await world.apps["campaign"].put(url, headers=world.h, json={"trigger": {"type": "api"}, "template_id": tpl,
                                                                     "message_type": "marketing"})
    assert r.json()["message_type"] == "marketing" and r.json()["definition"]["message_type"] == "marketing"
    missing = await world.apps["campaign"].put(f"/v1/campaigns/{uuid.uuid4()}", headers=world.h,
                                               json={"trigger": {"type": "api"}, "template_id": tpl})
    assert missing.status_code == 404


async def test_an_edit_without_topic_keeps_it(world) -> None:
    """PUT without topic dropped the campaign's subscription topic, so the next version reached everyone who
    had opted out of that topic. Omitted, it is kept; null clears it."""
    tpl = await world.template("offer", "An offer")
    camp = await world.campaign(trigger={"type": "api"}, topic="offers",
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    url = f"/v1/campaigns/{camp['id']}"
    steps = [{"id": "s2", "type": "send", "template_id": tpl}]
    r = await world.apps["campaign"].put(url, headers=world.h, json={"trigger": {"type": "api"}, "steps": steps})
    assert r.status_code == 200, r.text
    assert r.json()["definition"]["topic"] == "offers" and r.json()["definition"]["steps"][0]["id"] == "s2"
    r = await world.apps["campaign"].put(url, headers=world.h, json={"trigger": {"type": "api"}, "steps": steps,
                                                                     "topic": None})
    assert r.status_code == 200 and "topic" not in r.json()["definition"]


async def test_the_trigger_api_takes_an_idempotency_key_header_and_checks_the_status_as_it_enters(
        world, monkeypatch) -> None:
    """The trigger API was idempotent only with `idempotency_key` in the body: a client retrying with the
    standard Idempotency-Key header (as on delivery's and the loyalty endpoints) entered the user twice.
    And the campaign's status was read before asking ingest, in another transaction: a pause landing in
    between still let the user in."""
    from services.campaign import ingest_client

    tpl = await world.template("otp", "Your code")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    await world.identify("idem-1", email=_email("idem"))
    url = f"/v1/campaigns/{camp['id']}/trigger"
    keyed = {**world.h, "Idempotency-Key": "otp-77"}
    got = [await world.apps["campaign"].post(url, headers=keyed, json={"user": "idem-1"}) for _ in range(2)]
    assert [(r.status_code, r.json()["entered"]) for r in got] == [(202, True), (200, True)]  # the retry: replayed
    same = await world.apps["campaign"].post(url, headers=world.h, json={"user": "idem-1", "idempotency_key": "otp-77"})
    assert same.status_code == 200 and same.json() == got[0].json()
    differ = await world.apps["campaign"].post(url, headers=keyed, json={"user": "idem-1", "idempotency_key": "x"})
    assert differ.status_code == 422 and "differ" in differ.json()["detail"]
    resolve = ingest_client.resolve_user

    async def paused_meanwhile(internal, ws, ref):
        found = await resolve(internal, ws, ref)
        assert (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/pause", headers=world.h)).status_code == 200
        return found

    monkeypatch.setattr(ingest_client, "resolve_user", paused_meanwhile)
    late = await world.apps["campaign"].post(url, headers={**world.h, "Idempotency-Key": "otp-78"},
                                             json={"user": "idem-1"})
    assert late.status_code == 409 and late.headers["content-type"].startswith("application/problem+json"), late.text
    inside = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/journeys", headers=world.h)).json()
    assert len(inside["journeys"]) == 1


async def test_a_profiles_journeys_come_a_page_at_a_time(world) -> None:
    """GET /v1/profiles/{id}/journeys answered the newest 50 and nothing told there were more; it pages
    with limit / after / next_cursor like the other lists, newest first."""
    tpl = await world.template("many", "Again")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "d", "type": "delay", "seconds": 60,
                                                                 "next": "s"},
                                                                {"id": "s", "type": "send", "template_id": tpl}])
    pid = await world.identify("pages-1", email=_email("pages"))
    entered = []
    for n in range(3):
        r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                              json={"user": "pages-1", "idempotency_key": f"p{n}"})
        entered.append(r.json()["journey_id"])
    url = f"/v1/profiles/{pid}/journeys"
    first = (await world.apps["campaign"].get(url, headers=world.h, params={"limit": 2})).json()
    assert [j["id"] for j in first["journeys"]] == entered[::-1][:2] and first["next_cursor"]
    assert [e["kind"] for e in first["journeys"][0]["log"]] == ["entered"]
    second = (await world.apps["campaign"].get(url, headers=world.h, params={"limit": 2,
                                                                           "after": first["next_cursor"]})).json()
    assert [j["id"] for j in second["journeys"]] == entered[:1] and second["next_cursor"] is None
    assert len((await world.apps["campaign"].get(url, headers=world.h)).json()["journeys"]) == 3
    bad = await world.apps["campaign"].get(url, headers=world.h, params={"after": "nope"})
    assert bad.status_code == 400


async def test_a_one_off_broadcast_is_not_sent_in_the_past_or_late(world) -> None:
    """A one-off schedule with a past `at` (2020) was saved and fired at once to the whole segment; it is
    a 422 naming trigger.at (a minute of leeway for clock skew). A campaign paused over its one-off slot
    sent it when resumed, however late; a slot missed by more than an hour is skipped now."""
    from services.campaign import schedules

    seg = await _audience(world, "flash_sale", ["fs-1"])
    tpl = await world.template("flash", "The sale starts now")
    steps = [{"id": "s", "type": "send", "template_id": tpl}]

    def once(at: datetime) -> dict:
        return {"type": "schedule", "segment_id": seg["id"], "at": at.isoformat()}

    past = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": "too late", "trigger": once(datetime(2020, 1, 1, 9, tzinfo=UTC)), "steps": steps})
    assert past.status_code == 422, past.text
    assert [e["at"] for e in past.json()["errors"]] == ["trigger.at"]
    now = datetime.now(UTC)
    await world.campaign(trigger=once(now - timedelta(seconds=30)), steps=steps)  # clock skew
    at = now + timedelta(minutes=5)
    on_time, paused = await world.campaign(trigger=once(at), steps=steps), await world.campaign(trigger=once(at),
                                                                                                steps=steps)
    assert (await world.apps["campaign"].post(f"/v1/campaigns/{paused['id']}/pause", headers=world.h)).is_success
    await schedules.run_pending(world.sm, world.internal, now=at + timedelta(minutes=10))  # within the hour
    assert (await world.apps["campaign"].post(f"/v1/campaigns/{paused['id']}/resume", headers=world.h)).is_success
    await schedules.run_pending(world.sm, world.internal, now=at + timedelta(hours=2))
    await schedules.run_pending(world.sm, world.internal, now=at + timedelta(hours=2, minutes=1))

    async def entered(camp: dict) -> int:
        return (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()[
            "entered"]

    assert (await entered(on_time), await entered(paused)) == (1, 0)
    # an edit: a new past `at` is refused; the stored one (now past) is not re-judged
    url = f"/v1/campaigns/{on_time['id']}"
    r = await world.apps["campaign"].put(url, headers=world.h, json={"trigger": once(datetime(2020, 1, 1, tzinfo=UTC)),
                                                                     "steps": steps})
    assert r.status_code == 422 and r.json()["errors"][0]["at"] == "trigger.at"
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.campaigns set definition = jsonb_set(definition, '{trigger,at}', "
                             "'\"2020-01-01T09:00:00Z\"') where id = :id"), {"id": uuid.UUID(on_time["id"])})
    r = await world.apps["campaign"].put(url, headers=world.h, json={
        "trigger": once(datetime(2020, 1, 1, 10, tzinfo=timezone(timedelta(hours=1)))), "steps": steps})
    assert r.status_code == 200, r.text


async def test_a_campaign_naming_no_segment_or_matching_on_nothing_is_refused(world) -> None:
    """A segment trigger (or a broadcast's audience, or a branch) naming a segment that does not exist was
    saved and never did anything; a wait_for_event matching on a trigger property under a segment or
    schedule trigger (which have no properties) could only time out. Both are 422s naming the place."""
    seg = await _audience(world, "named_seg", [])
    tpl = await world.template("named", "Hi")
    send = {"id": "s", "type": "send", "template_id": tpl}
    nowhere = str(uuid.uuid4())

    async def post(**body):
        return await world.apps["campaign"].post("/v1/campaigns", headers=world.h,
                                                 json={"name": f"c-{uuid.uuid4().hex[:8]}", **body})

    for trigger in ({"type": "segment_entered", "segment_id": nowhere},
                    {"type": "schedule", "segment_id": nowhere, "cron": "0 9 * * 1"}):
        r = await post(trigger=trigger, steps=[send])
        assert r.status_code == 422 and r.json()["errors"] == [
            {"loc": ["body", "trigger", "segment_id"], "at": "trigger.segment_id", "type": "not_found",
             "msg": f"no segment {nowhere} in this workspace"}], r.text
    branch = {"id": "b", "type": "branch", "condition": {"type": "segment", "segment_id": nowhere}, "yes": "s"}
    r = await post(trigger={"type": "event", "event": "Named"}, steps=[branch, send])
    assert r.status_code == 422 and [e["at"] for e in r.json()["errors"]] == ["steps.0.condition.segment_id"]
    stage_id = next(s["segment_id"] for s in (await world.apps["segment"].get("/v1/lifecycle", headers=world.h)).json()[
        "stages"] if s["stage"] == "at_risk")
    for trigger in ({"type": "segment_entered", "segment_id": seg["id"]},
                    {"type": "segment_exited", "segment_id": stage_id}):  # a stage by its segment id
        assert (await post(trigger=trigger, steps=[send])).status_code == 201
    wait = {"id": "w", "type": "wait_for_event", "event": "Order Completed", "timeout_seconds": 3600,
            "match": {"property": "cart_id", "trigger_property": "cart_id"}, "on_timeout": "s"}
    for trigger in ({"type": "segment_entered", "segment_id": seg["id"]},
                    {"type": "schedule", "segment_id": seg["id"], "cron": "0 9 * * 1"}):
        r = await post(trigger=trigger, steps=[wait, send])
        assert r.status_code == 422 and [e["at"] for e in r.json()["errors"]] == ["steps.0.match"], r.text
        assert (await post(trigger=trigger, steps=[{**wait, "match": None}, send])).status_code == 201
    for trigger in ({"type": "event", "event": "Product Added"}, {"type": "api"}):
        assert (await post(trigger=trigger, steps=[wait, send])).status_code == 201
    camp = await world.campaign(trigger={"type": "segment_entered", "segment_id": seg["id"]}, steps=[send])
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "segment_entered", "segment_id": nowhere}, "steps": [send]})
    assert r.status_code == 422 and r.json()["errors"][0]["at"] == "trigger.segment_id"


async def _campaign_rows(world) -> int:
    async with world.sm() as s:
        return (await s.execute(text("select count(*) from campaign.campaigns where workspace_id = :ws"),
                                {"ws": world.ws})).scalar_one()


async def test_a_loop_that_never_waits_and_durations_past_a_year_are_refused_naming_the_place(world) -> None:
    """Branches pointing back at each other were saved, and a user inside ran them forever (50 steps, parked a
    minute, again: 150 log lines in two minutes); a goal window or an entry period of 10^15 s was saved, and
    every trigger of it answered 500 (the date arithmetic overflowed), as the event feed would have failed on
    it. Both are 422s naming the place; graph errors name theirs too (they said `at: ""`), and an unknown
    template the field that names it. Nothing is written."""
    tpl = await world.template("loop", "Hi")
    send = {"id": "s", "type": "send", "template_id": tpl}

    async def post(**body):
        return await world.apps["campaign"].post("/v1/campaigns", headers=world.h,
                                                 json={"name": f"c-{uuid.uuid4().hex[:8]}", **body})

    api = {"type": "api"}
    cases = [
        ([{**send, "next": "b"},
          {"id": "b", "type": "branch", "condition": {"type": "trait", "trait": "x"}, "yes": "c", "no": "c"},
          {"id": "c", "type": "branch", "condition": {"type": "trait", "trait": "y"}, "yes": "b"}], {}, "steps.2.yes"),
        ([{"id": "d", "type": "delay", "seconds": 0, "next": "d"}], {}, "steps.0.next"),
        ([send], {"goal": {"event": "G", "within_seconds": 10**15}}, "goal.within_seconds"),
        ([send], {"entry": {"rule": "once_per_period", "period_seconds": 10**15}}, "entry.period_seconds"),
        ([{"id": "w", "type": "wait_until_attribute", "trait": "renewal", "offset_seconds": -(10**12)}], {},
         "steps.0.offset_seconds"),
        ([{**send, "next": "nowhere"}], {}, "steps.0.next"),
        ([{**send, "next": "t"}, {**send, "id": "t"}, {**send, "id": "s"}], {}, "steps.2.id"),
        ([{"id": "b", "type": "branch", "condition": {"type": "engaged", "step": "b"}, "yes": "s"}, send], {},
         "steps.0.condition.step"),
        # (engagement with a message no path has sent yet: the branch could only take `no`)
        ([{"id": "b", "type": "branch", "condition": {"type": "engaged", "step": "s", "action": "opened"},
           "yes": "u", "no": "u"}, {"id": "u", "type": "delay", "seconds": 60, "next": "s"}, send], {},
         "steps.0.condition.step"),
        ([{"id": "x", "type": "split", "variants": [{"name": "A", "weight": 1, "next": "s"},
                                                    {"name": "B", "weight": 1, "next": "gone"}]}, send], {},
         "steps.0.variants.1.next"),
    ]
    for steps, extra, at in cases:
        r = await post(trigger=api, steps=steps, **extra)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert at in [e["at"] for e in r.json()["errors"]], (at, r.text)
        # the place as FastAPI's own 422s give it, so a client reads every 422 alike (`at` is kept for old ones)
        assert ["body", *at.split(".")] in [e["loc"] for e in r.json()["errors"]], (at, r.text)
    loop = await post(trigger=api, steps=[{**send, "next": "b"},
                                          {"id": "b", "type": "branch", "condition": {"type": "trait", "trait": "x"},
                                           "yes": "c", "no": "c"},
                                          {"id": "c", "type": "branch", "condition": {"type": "trait", "trait": "y"},
                                           "yes": "b"}])
    assert "loop without waiting" in loop.json()["errors"][0]["msg"] and "'b' → 'c' → 'b'" in loop.json()["errors"][0]["msg"]
    nowhere = str(uuid.uuid4())
    r = await post(trigger=api, steps=[{**send, "next": "t"}, {**send, "id": "t", "template_id": nowhere}])
    assert r.status_code == 404 and r.json()["errors"] == [
        {"loc": ["body", "steps", "1", "template_id"], "at": "steps.1.template_id", "type": "not_found",
         "msg": f"no template {nowhere} in this workspace"}], r.text
    r = await post(trigger=api, template_id=nowhere)
    assert r.status_code == 404 and [e["at"] for e in r.json()["errors"]] == ["template_id"], r.text
    assert await _campaign_rows(world) == 0
    # a reminder loop through a delay waits each time round: allowed; a year is the longest wait
    reminder = await post(trigger=api, goal={"event": "G", "within_seconds": 366 * 86400}, steps=[
        {**send, "next": "d"}, {"id": "d", "type": "delay", "seconds": 86400, "next": "b"},
        {"id": "b", "type": "branch", "condition": {"type": "performed_since_entry", "event": "G"}, "no": "s"}])
    assert reminder.status_code == 201, reminder.text
    # asking, in a loop, about the message the last time round sent: a path leads from the send to the branch
    again = await post(trigger=api, steps=[
        {"id": "b", "type": "branch", "condition": {"type": "engaged", "step": "s", "action": "opened"}, "no": "d"},
        {"id": "d", "type": "delay", "seconds": 86400, "next": "s"}, {**send, "next": "b"}])
    assert again.status_code == 201, again.text


async def test_a_duration_saved_before_it_was_bounded_or_a_date_at_the_calendars_end_fails_nothing(world) -> None:
    """A campaign stored with a goal window of 10^15 s (before save refused it) made its every trigger a 500;
    a date trait at the end of the calendar (9999-12-31 plus a day, or 0001-01-01 in Tokyo) made the journey
    fail and retry every five minutes forever. Now the window stops at the calendar's end and such a date
    counts as out of reach (``on_missing``)."""
    tpl = await world.template("far", "Far")
    camp = await world.campaign(trigger={"type": "api"}, goal={"event": "G", "within_seconds": 86400},
                                entry={"rule": "once_per_period", "period_seconds": 3600}, template_id=tpl)
    async with world.sm() as s, s.begin():
        await s.execute(text(
            "update campaign.campaign_versions set definition = jsonb_set(jsonb_set(definition, '{goal,within_seconds}', "
            "'1000000000000000'), '{entry,period_seconds}', '1000000000000000') where campaign_id = :c"),
            {"c": camp["id"]})
        await s.execute(text("update campaign.campaigns c set definition = v.definition from campaign.campaign_versions v "
                             "where v.campaign_id = c.id and c.id = :c"), {"c": camp["id"]})
    await world.identify("far-1", email=_email("far"))
    for expected in (True, False):  # the period (stopping at the calendar's start) refuses the second
        r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                              json={"user": "far-1"})
        assert r.status_code == 202 and r.json()["entered"] is expected, r.text
    dated = await world.campaign(trigger={"type": "api"}, steps=[
        {"id": "w", "type": "wait_until_attribute", "trait": "renewal", "offset_seconds": 2 * 86400, "next": "s",
         "on_missing": "m"},
        {"id": "s", "type": "send", "template_id": tpl}, {"id": "m", "type": "exit"}])
    pids = {uid: await world.identify(uid, email=_email(uid), renewal=day, timezone=tz)
            for uid, day, tz in (("end-1", "9999-12-31", "UTC"), ("start-1", "0001-01-01", "Asia/Tokyo"))}
    for uid in pids:
        r = await world.apps["campaign"].post(f"/v1/campaigns/{dated['id']}/trigger", headers=world.h,
                                              json={"user": uid})
        assert r.json()["entered"], r.text
    await world.pump(datetime.now(UTC) + timedelta(seconds=1))
    end, start = (await world.path(pids["end-1"]))[0], (await world.path(pids["start-1"]))[0]
    assert end["status"] == "active" and end["step"] == "s" and end["wake_at"].startswith("9999-12-31")
    assert start["status"] == "exited" and [e["kind"] for e in start["log"]] == ["entered", "branch", "exited"]
    assert not any(e["kind"] == "error" for e in end["log"] + start["log"])


async def test_a_cron_with_seconds_or_a_day_that_never_comes_is_refused_and_stops_no_other_broadcast(world) -> None:
    """croniter takes a sixth (seconds) field — ``* * * * * *``, a broadcast every second — and ``0 9 30 2 *``
    (February 30th), which it can never place: saved, the latter made every run of the scheduler fail, so no
    broadcast of any workspace fired. Both are 422s now; one stored before is skipped and logged."""
    from services.campaign import schedules

    seg = await _audience(world, "cron_news", ["cron-1"])
    tpl = await world.template("cron", "News")
    for cron, why in (("* * * * * *", "5-field"), ("0 9 * * 1 30", "5-field"), ("0 9 30 2 *", "never fires")):
        r = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
            "name": f"c-{uuid.uuid4().hex[:6]}", "trigger": {"type": "schedule", "segment_id": seg["id"], "cron": cron},
            "template_id": tpl})
        assert r.status_code == 422 and why in r.text, r.text
    assert await _campaign_rows(world) == 0
    broken = await world.campaign(trigger={"type": "schedule", "segment_id": seg["id"], "cron": "0 9 28 2 *"},
                                  template_id=tpl)
    async with world.sm() as s, s.begin():  # as saved before the check
        for table in ("campaigns", "campaign_versions"):
            await s.execute(text(f"update campaign.{table} set definition = jsonb_set(definition, '{{trigger,cron}}', "
                                 f"'\"0 9 30 2 *\"') where {'id' if table == 'campaigns' else 'campaign_id'} = :c"),
                            {"c": broken["id"]})
    hourly = await world.campaign(trigger={"type": "schedule", "segment_id": seg["id"], "cron": "0 * * * *"},
                                  template_id=tpl)
    assert await schedules.run_pending(world.sm, world.internal, now=datetime.now(UTC) + timedelta(hours=1)) >= 1
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{hourly['id']}/stats", headers=world.h)).json()
    assert stats["entered"] == 1


async def test_a_template_error_says_where_and_an_unknown_variable_is_refused(world) -> None:
    """A syntax error named the field but not where in it ("missing expression" in a 200-line HTML body), and
    ``{{ profle.first_name }}`` (a typo of a variable templates see) was saved and rendered nothing for
    everyone. Both are 422s with the field, the line and the column; variables a template makes itself
    (``assign``, ``for``) and the arguments a snippet is rendered with are fine."""
    async def save(**body):
        return await world.apps["campaign"].post("/v1/templates", headers=world.h,
                                                 json={"name": f"t-{uuid.uuid4().hex[:6]}", "subject": "Hi", **body})

    cases = [
        ({"html": "<p>Hi</p>\n<ul>\n  <li>{% for %}</li>"}, "html", 3, 10, "missing expression"),
        ({"subject": "Bonjour {{ profile.first_name ", "text": "x"}, "subject", 1, 9, "expected '}}'"),
        ({"subject": "Hi {{ profle.first_name }}", "text": "x"}, "subject", 1, 7, "unknown variable 'profle'"),
        ({"text": "Hi\n{{ evnt.properties.plan }}"}, "text", 2, 4, "unknown variable 'evnt'"),
        ({"text": "x", "locales": {"fr": {"html": "<p>{{ user.name }}</p>"}}}, "locales.fr.html", 1, 7,
         "unknown variable 'user'"),
        ({"text": "{{ profile.first_name | upcaes }}"}, "text", 1, 25, "unknown filter 'upcaes'"),
    ]
    for body, field, line, column, why in cases:
        r = await save(**body)
        problem = r.json()
        assert r.status_code == 422 and problem["field"] == field, r.text
        assert (problem["line"], problem["column"]) == (line, column) and why in problem["detail"], r.text
        assert f"(line {line}, column {column})" in problem["detail"]
        [error] = problem["errors"]  # the same, as the place in the body every 422 names
        assert (error["loc"], error["at"], error["type"]) == (["body", *field.split(".")], field, "value_error")
        assert (error["line"], error["column"]) == (line, column) and why in error["msg"], r.text
    assert (await world.apps["campaign"].put("/v1/snippets/sig", headers=world.h,
                                             json={"content": "-- {{ who }}"})).status_code == 200
    ok = await save(text="{% assign n = event.properties.items | size %}{% for i in event.properties.items %}"
                         "{{ forloop.index }}. {{ i.name }} {% endfor %}{{ n }} {{ traits.plan }} "
                         "{{ loyalty.points | default: 0 }}{% render 'sig', who: profile.first_name %}")
    assert ok.status_code == 201, ok.text
    preview = await world.apps["campaign"].post(f"/v1/templates/{ok.json()['id']}/preview", headers=world.h,
                                                json={"data": {"items": [{"name": "a"}, {"name": "b"}]}})
    assert preview.json()["text"] == "1. a 2. b 2  0-- ", preview.text
    async with world.sm() as s:
        assert (await s.execute(text("select count(*) from campaign.templates where workspace_id = :ws"),
                                {"ws": world.ws})).scalar_one() == 1


async def test_pausing_holds_the_sends_already_decided_and_archiving_skips_them(world) -> None:
    """A send decided before the pause but not yet handed to delivery waits for the resume (it used to go out
    while the campaign was paused); archiving skips it instead."""
    tpl = await world.template("held", "Held")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    c = world.apps["campaign"]
    addresses = {}
    for uid in ("held-1", "held-2"):
        addresses[uid] = _email(uid)
        await world.identify(uid, email=addresses[uid])

    async def decide(uid: str) -> None:  # entered, and the send decided: what the worker does before dispatch
        r = await c.post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h, json={"user": uid})
        assert r.status_code in (200, 202), r.text
        while (await journeys.advance_due(world.sm, world.internal, world.internal._http,
                                          now=datetime.now(UTC)))[0]:
            pass

    async def sends() -> list[tuple[str, str | None]]:
        page = (await c.get(f"/v1/campaigns/{camp['id']}/sends", headers=world.h)).json()["sends"]
        return sorted((s["status"], s["reason"]) for s in page)

    await decide("held-1")
    assert await sends() == [("pending", None)]
    assert (await c.post(f"/v1/campaigns/{camp['id']}/pause", headers=world.h)).status_code == 200
    while await dispatch.dispatch_due(world.sm, world.internal):
        pass
    assert await world.mail(addresses["held-1"]) == [] and await sends() == [("pending", None)]
    assert (await c.post(f"/v1/campaigns/{camp['id']}/resume", headers=world.h)).status_code == 200
    while await dispatch.dispatch_due(world.sm, world.internal):
        pass
    assert [m["subject"] for m in await world.mail(addresses["held-1"])] == ["Held"]

    await decide("held-2")
    assert (await c.post(f"/v1/campaigns/{camp['id']}/archive", headers=world.h)).status_code == 200
    while await dispatch.dispatch_due(world.sm, world.internal):
        pass
    assert await world.mail(addresses["held-2"]) == []
    assert await sends() == [("dispatched", None), ("skipped", "campaign archived")]


async def test_a_run_hands_its_sends_over_itself_and_the_poll_covers_a_run_that_died(world) -> None:
    """The worker's run writes the sends it decides already claimed and hands them to delivery itself. They wait
    for no poll, yet nothing is lost or doubled: a pause before the hand-over holds them until the resume, and
    the sends of a run that died before handing over are the poll's once their lease runs out."""
    tpl = await world.template("handed", "Handed {{ profile.first_name }}")
    camp = await world.campaign(trigger={"type": "api"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    c = world.apps["campaign"]
    addresses = {uid: _email(uid) for uid in ("hand-1", "hand-2", "hand-3")}
    for uid, address in addresses.items():
        await world.identify(uid, email=address, first_name=uid)

    async def decide(uid: str) -> journeys.Advanced:
        r = await c.post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h, json={"user": uid})
        assert r.status_code in (200, 202), r.text
        done = await journeys.advance_due(world.sm, world.internal, world.internal._http, now=datetime.now(UTC),
                                          claim_sends=True)
        # (the run takes every due journey of the database: earlier tests' too)
        done = done._replace(claimed=[cl for cl in done.claimed if str(cl["workspace_id"]) == str(world.ws)])
        assert len(done.claimed) == 1, done
        assert await dispatch.dispatch_due(world.sm, world.internal) == 0  # claimed: not the poll's
        return done

    async def poll() -> None:
        while await dispatch.dispatch_due(world.sm, world.internal):
            pass

    done = await decide("hand-1")
    await dispatch.dispatch_claimed(world.sm, world.internal, done.claimed, done.profiles)
    assert [m["subject"] for m in await world.mail(addresses["hand-1"])] == ["Handed hand-1"]

    done = await decide("hand-2")  # paused between the run's commit and its hand-over
    assert (await c.post(f"/v1/campaigns/{camp['id']}/pause", headers=world.h)).status_code == 200
    await dispatch.dispatch_claimed(world.sm, world.internal, done.claimed, done.profiles)
    await poll()
    assert await world.mail(addresses["hand-2"]) == []
    assert (await c.post(f"/v1/campaigns/{camp['id']}/resume", headers=world.h)).status_code == 200
    await poll()
    assert [m["subject"] for m in await world.mail(addresses["hand-2"])] == ["Handed hand-2"]

    done = await decide("hand-3")  # the run dies before handing over: its lease runs out
    async with world.sm() as s, s.begin():
        lease = (await s.execute(text("select next_attempt_at - now() from campaign.sends where id = :id"),
                                 {"id": done.claimed[0]["id"]})).scalar_one()
        assert timedelta(seconds=dispatch.LEASE_S - 30) < lease <= timedelta(seconds=dispatch.LEASE_S)
        await s.execute(text("update campaign.sends set next_attempt_at = now() where id = :id"),
                        {"id": done.claimed[0]["id"]})
    await poll()
    await dispatch.dispatch_claimed(world.sm, world.internal, done.claimed, done.profiles)  # a late hand-over too
    assert [m["subject"] for m in await world.mail(addresses["hand-3"])] == ["Handed hand-3"]
    page = (await c.get(f"/v1/campaigns/{camp['id']}/sends", headers=world.h)).json()["sends"]
    assert sorted(s["status"] for s in page) == ["dispatched"] * 3


async def test_fields_the_api_does_not_know_are_refused_not_dropped(world) -> None:
    """A misspelt field would be saved as if it had not been sent (a campaign without its goal, a template
    without its French variant): it is a 422 naming it, and nothing is saved."""
    c = world.apps["campaign"]
    tpl = await world.template("strict", "Strict")
    before = len((await c.get("/v1/campaigns", headers=world.h, params={"limit": 1000})).json()["campaigns"])
    for body, where in (
        ({"goals": {"event": "Order Completed", "within_seconds": 86400}}, "goals"),
        ({"template_id": tpl}, "template_id"),  # beside steps: which one was meant?
    ):
        r = await c.post("/v1/campaigns", headers=world.h, json={
            "name": "strict", "trigger": {"type": "event", "event": "Signed Up"},
            "steps": [{"id": "s", "type": "send", "template_id": tpl}], **body})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert where in r.text
    after = len((await c.get("/v1/campaigns", headers=world.h, params={"limit": 1000})).json()["campaigns"])
    assert after == before
    r = await c.post("/v1/templates", headers=world.h, json={
        "name": "strict-fr", "subject": "Hi", "text": "x", "locales": {"fr": {"subjet": "Salut"}}})
    assert r.status_code == 422 and "subjet" in r.text, r.text
    r = await c.post("/v1/templates", headers=world.h, json={"name": "strict-2", "subject": "Hi", "txt": "x"})
    assert r.status_code == 422 and "txt" in r.text, r.text


@pytest.mark.parametrize("rule, plan, said", [("exit_on_leaving", "trial", "left"),
                                              ("exit_on_entering", "pro", "entered")])
async def test_leaving_or_entering_a_segment_ends_the_journeys_whose_exit_rule_names_it(world, rule, plan, said
                                                                                     ) -> None:
    """A trial journey ends when its user buys: leaving "on trial" (`exit_on_leaving`), or entering "paying"
    (`exit_on_entering`: leave when a condition becomes true). The nudge waiting a day is never sent; a journey
    without the rule goes on; an unknown segment or stage is refused on save."""
    tag = f"{rule}-{uuid.uuid4().hex[:6]}"
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": tag, "definition": {"type": "trait", "trait": "plan", "value": plan}})).json()
    nudge = await world.template(f"nudge-{tag}", "Your trial ends soon")
    steps = [{"id": "wait", "type": "delay", "seconds": 86400, "next": "nudge"},
             {"id": "nudge", "type": "send", "template_id": nudge}]
    trigger = {"type": "event", "event": f"Trial Started {tag}"}
    bad = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"bad-{tag}", "trigger": trigger, "steps": steps,
        rule: [{"segment_id": str(uuid.uuid4())}, {"stage": "asleep"}]})
    assert bad.status_code == 422 and rule in bad.text, bad.text
    exits = await world.campaign(trigger=trigger, steps=steps, **{rule: [{"segment_id": seg["id"]}, {"stage": "churned"}]})
    stays = await world.campaign(trigger=trigger, steps=steps)
    email = _email(tag)
    pid = await world.identify(tag, email=email, plan="trial")
    await world.fold_segments(pid, today=T0.date())
    await world.track(tag, trigger["event"], T0)
    await world.pump(T0)
    await world.identify(tag, plan="pro")  # bought
    await world.fold_segments(pid, today=T0.date())  # (on the real date, 90 days after T0 the user is churned)
    await world.pump(T0 + timedelta(hours=1))
    paths = {j["campaign_id"]: j for j in await world.path(pid)}
    assert paths[exits["id"]]["status"] == "exited", paths[exits["id"]]
    assert paths[exits["id"]]["log"][-1]["detail"] == f"{said} segment {seg['id']}"
    assert paths[stays["id"]]["status"] == "active" and paths[stays["id"]]["step"] == "nudge"
    await world.pump(T0 + timedelta(days=1, hours=1))
    assert [m["subject"] for m in await world.mail(email)] == ["Your trial ends soon"]  # from the other one only
    got = (await world.apps["campaign"].get(f"/v1/campaigns/{exits['id']}", headers=world.h)).json()
    assert got["definition"][rule] == [{"segment_id": seg["id"]}, {"stage": "churned"}]


async def test_erasure_removes_the_journeys_their_paths_and_engagement_hours(world) -> None:
    """Campaign's erasure deleted the sends and program records but kept the person's journeys (the trigger's
    data, the events awaited), each journey's path and the hours they engage at; the export left them out too."""
    from shared.testing import internal_headers

    tpl = await world.template("gdpr", "Hi")
    camp = await world.campaign(trigger={"type": "event", "event": "Cart Updated"}, steps=[
        {"id": "hi", "type": "send", "template_id": tpl, "next": "wait"},
        {"id": "wait", "type": "delay", "seconds": 86400}])
    gone, kept = _email("gdpr-gone"), _email("gdpr-kept")
    pid = await world.identify("gdpr-gone", email=gone)
    other = await world.identify("gdpr-kept", email=kept)
    for uid in ("gdpr-gone", "gdpr-kept"):
        await world.track(uid, "Cart Updated", T0, cart_id=f"secret-{uid}")
        await world.track(uid, "Email Opened", T0)  # counted in the hours they engage at
    await world.pump(T0)
    c, h = world.apps["campaign"], internal_headers(world.ws)
    exported = (await c.get("/v1/privacy/export", headers=h, params={"profile_id": pid})).json()
    assert [j["trigger_data"]["properties"]["cart_id"] for j in exported["journeys"]] == ["secret-gdpr-gone"]
    assert [line["kind"] for line in exported["journey_log"]] == ["entered", "sent", "waiting"]
    assert exported["engagement_hours"] and exported["sends"]
    erased = await c.post("/v1/privacy/erasure", headers=h, json={"profile_ids": [pid]})
    assert erased.status_code == 200, erased.text
    removed = erased.json()["removed"]
    assert removed["journeys"] == 1 and removed["journey_log"] == 3 and removed["engagement_hours"] >= 1
    assert removed["sends"] == 1
    after = (await c.get("/v1/privacy/export", headers=h, params={"profile_id": pid})).json()
    assert after["journeys"] == after["journey_log"] == after["engagement_hours"] == after["sends"] == []
    assert await world.path(pid) == []
    assert len(await world.path(other)) == 1  # the other person's journey is untouched
    page = (await c.get(f"/v1/campaigns/{camp['id']}/journeys", headers=world.h)).json()["journeys"]
    assert [j["profile_id"] for j in page] == [other]


async def test_metrics_count_the_journeys_and_messages_due_for_the_workers(world) -> None:
    """docs/scaling.md scales the campaign and delivery workers on the work waiting in PostgreSQL: the APIs' /metrics
    count the journeys whose timer is due and the messages due to be sent, and how long the oldest has waited.
    (Earlier tests of this run leave due work behind in this database: the figures are compared before and after.)"""
    from shared.testing import metric_samples, sample

    async def due(service: str, work: str) -> tuple[float, float]:
        samples = metric_samples((await world.apps[service].get("/metrics")).text)
        return (sample(samples, "tenure_due_work_items", service=service, work=work),
                sample(samples, "tenure_due_work_oldest_age_seconds", service=service, work=work))

    tpl = await world.template("due", "Due")
    camp = await world.campaign(trigger={"type": "event", "event": "Due Tested"}, steps=[
        {"id": "wait", "type": "delay", "seconds": 60, "next": "hi"}, {"id": "hi", "type": "send", "template_id": tpl}])
    journeys_before, _ = await due("campaign", "journeys")
    for uid in ("due-1", "due-2"):
        await world.identify(uid, email=_email(uid))
        await world.track(uid, "Due Tested", T0)
    await world.pump(T0)  # both wait until T0 + 60 s: days ago on the real clock, so due now
    journeys_after, oldest = await due("campaign", "journeys")
    assert journeys_after == journeys_before + 2 and oldest >= (datetime.now(UTC) - T0).total_seconds() - 120
    assert (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/pause", headers=world.h)).status_code == 200
    assert (await due("campaign", "journeys"))[0] == journeys_before  # a paused campaign's journeys wait for it

    messages_before, _ = await due("delivery", "messages")
    queued = await world.apps["delivery"].post("/v1/messages/batch", headers=world.h, json={
        "messages": [{"idempotency_key": uuid.uuid4().hex, "to": _email("due"), "subject": "Due", "text": "due"}
                     for _ in range(3)]})
    assert queued.status_code in (200, 202), queued.text
    messages_after, oldest = await due("delivery", "messages")
    assert messages_after == messages_before + 3 and oldest >= 0


async def test_a_campaigns_stats_count_the_unsubscribes_its_message_caused(world, settings) -> None:
    """An unsubscribe through a message's own link names the message and the campaign step that sent it (its
    `Unsubscribed` event), so the campaign's stats can say which message made people leave."""
    from urllib.parse import urlsplit

    from services.delivery import feedback
    from services.delivery.links import Links

    tpl = await world.template("unsub", "News")
    camp = await world.campaign(trigger={"type": "event", "event": "Unsub Tested"},
                                steps=[{"id": "news", "type": "send", "template_id": tpl}])
    leaving, staying = _email("leaving"), _email("staying")
    for uid, email in (("unsub-1", leaving), ("unsub-2", staying)):
        await world.identify(uid, email=email)
        await world.track(uid, "Unsub Tested", T0)
    await world.pump(T0)
    (message,) = await world.mail(leaving)
    link = Links.for_message("http://delivery", settings.signing_secret, world.ws, uuid.UUID(message["id"]))
    r = await world.apps["delivery"].post(urlsplit(link.unsubscribe).path, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200, r.text
    while await feedback.forward(world.sm, world.internal):
        pass
    events = (await world.apps["ingest"].get("/v1/profiles/unsub-1/events", headers=world.h)).json()["events"]
    (unsubscribed,) = [e for e in events if e["event"] == "Unsubscribed"]
    assert unsubscribed["properties"]["message_id"] == message["id"]
    assert unsubscribed["properties"]["campaign_id"] == camp["id"] and unsubscribed["properties"]["step"] == "news"
    await world.pump(T0 + timedelta(minutes=5))
    stats = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=world.h)).json()
    assert stats["sends_by_step"]["news"]["dispatched"] == 2 and stats["sends_by_step"]["news"]["unsubscribed"] == 1


async def test_style_rules_no_attribute_can_hold_stay_in_the_style_block(world, mailbox) -> None:
    """The `<style>` block was dropped once its rules were inlined, `@media` and `:hover` with it (a preview and a
    send had `<head></head>`): responsive and dark-mode templates lost their rules. Those stay in the block now,
    previewed and sent; the inlined ones leave it, and a block left empty goes."""
    world.deliver = True
    css = ".cta{color:#0a0} a:hover{color:red} @media (max-width:600px){.cta{font-size:20px !important}}"
    tpl = await world.template("css", "Sale", text=None, html=(
        f"<html><head><style>{css}</style></head><body><a class='cta' href='https://shop.example/'>Shop</a>"
        "</body></html>"))
    plain = await world.template("css-plain", "Plain", text=None, html=(
        "<html><head><style>p{color:#333}</style></head><body><p>Hi</p></body></html>"))
    await world.campaign(trigger={"type": "event", "event": "Sale Seen"},
                         steps=[{"id": "s", "type": "send", "template_id": tpl}])
    email = _email("css")
    await world.identify("css-1", email=email)
    r = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"user": "css-1"})
    assert r.status_code == 200, r.text
    await world.track("css-1", "Sale Seen", T0)
    await world.pump(T0)
    [sent] = [m for m in mailbox.messages if email in m["to"]]
    for html in (r.json()["html"], sent["html"]):
        assert 'class="cta"' in html and 'style="color: #0a0;"' in html
        [style] = re.findall(r"<style>(.*?)</style>", html, re.S)
        assert "a:hover { color: red; }" in style and "@media (max-width:600px){.cta{font-size:20px !important}}" in style
        assert ".cta{color" not in style and ".cta {" not in style
    inlined = (await world.apps["campaign"].post(f"/v1/templates/{plain}/preview", headers=world.h, json={})).json()
    assert inlined["html"] == '<html><head></head><body><p style="color: #333;">Hi</p></body></html>'


async def test_the_footer_speaks_the_language_of_the_body_sent(world, mailbox) -> None:
    """A fr-FR profile sent a template without a French variant got the English body under a French footer and a
    `?lang=fr` List-Unsubscribe: campaign passed the profile's locale to delivery. It now passes it only when the
    body is its variant's (a variant translating the subject alone still sends the default's body): else none,
    and delivery's footer is its default, English."""
    world.deliver = True
    english = await world.template("en-only", "Your week", text="Here is your week")
    subject_only = await world.template("fr-subject", "Your month", text="Here is your month",
                                        locales={"fr": {"subject": "Votre mois"}})
    french = await world.template("fr-body", "Your year", text="Here is your year",
                                  locales={"fr": {"subject": "Votre année", "text": "Voici votre année"}})
    await world.campaign(trigger={"type": "event", "event": "Digest Due"}, steps=[
        {"id": "a", "type": "send", "template_id": english, "next": "b"},
        {"id": "b", "type": "send", "template_id": subject_only, "next": "c"},
        {"id": "c", "type": "send", "template_id": french}])
    email = _email("fr-fr")
    await world.identify("fr-fr-1", email=email, locale="fr-FR")
    await world.track("fr-fr-1", "Digest Due", T0)
    await world.pump(T0)
    logged = {m["subject"]: m["locale"] for m in await world.mail(email)}
    assert logged == {"Your week": None, "Votre mois": None, "Votre année": "fr-FR"}
    got = {m["subject"]: m for m in mailbox.messages if email in m["to"]}
    for subject in ("Your week", "Votre mois"):
        mail = got[subject]
        assert "Unsubscribe: http" in mail["text"] and "Se désinscrire" not in mail["text"], subject
        assert "?lang=" not in mail["headers"]["List-Unsubscribe"], subject
    assert got["Votre année"]["text"].startswith("Voici votre année")
    assert "Se désinscrire: http" in got["Votre année"]["text"]
    assert got["Votre année"]["headers"]["List-Unsubscribe"].strip("<>").endswith("?lang=fr")


async def test_a_campaign_names_one_of_the_workspaces_topics(world, settings) -> None:
    """`"topic": "offerz"` was saved (201) and its sends reached everyone who had opted out of offers, while no
    one could opt out of "offerz": the preference page lists the workspace's topics only. A topic the workspace
    does not have is now a 422 naming `topic`, on create, on edit and through `tenure apply`; the default topics
    serve a workspace that sets none, and one that sets its own has those alone."""
    from services import resources

    tpl = await world.template("topic", "News")
    body = {"trigger": {"type": "event", "event": "Topic Test"}, "steps": [{"id": "s", "type": "send",
                                                                            "template_id": tpl}]}
    c = world.apps["campaign"]
    for topic in ("offerz", "Offers", ""):
        r = await c.post("/v1/campaigns", headers=world.h, json={"name": f"t-{uuid.uuid4().hex[:6]}", **body,
                                                                 "topic": topic})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "topic"], (topic, r.text)
        assert "product_news, offers" in r.json()["errors"][0]["msg"]
    camp = await world.campaign(**body, topic="offers")
    none = await world.campaign(**body, message_type="transactional")
    assert "topic" not in none["definition"]
    edited = await c.put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={**body, "topic": "offerz"})
    assert edited.status_code == 422 and edited.json()["errors"][0]["loc"] == ["body", "topic"], edited.text
    assert (await c.get(f"/v1/campaigns/{camp['id']}", headers=world.h)).json()["definition"]["topic"] == "offers"

    api = resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")}, world.h)
    name = f"applied-{uuid.uuid4().hex[:6]}"
    doc = f"""
campaigns:
  - name: {name}
    topic: offerz
    trigger: {{type: event, event: Topic Test}}
    steps: [{{id: s, type: send, template_id: {tpl}}}]
"""
    with pytest.raises(resources.ResourceError) as refused:
        await resources.apply(api, await resources.plan(api, resources.load(doc)))
    assert "topic: 'offerz' is not one of the workspace's topics" in str(refused.value)
    names = {x["name"] for x in (await c.get("/v1/campaigns", headers=world.h)).json()["campaigns"]}
    assert name not in names

    await world.settings(topics=[{"id": "news", "label": {"en": "News"}}])
    await world.campaign(**body, topic="news")
    r = await c.post("/v1/campaigns", headers=world.h, json={"name": f"t-{uuid.uuid4().hex[:6]}", **body,
                                                             "topic": "offers"})
    assert r.status_code == 422 and "(news)" in r.json()["errors"][0]["msg"], r.text
