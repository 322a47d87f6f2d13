"""Retention metrics and the stage series, computed on real Postgres from a known population."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.segment import evaluation


def _ev(ws, pid, **kw) -> dict:
    return {"workspace_id": str(ws), "profile_id": str(pid), "timestamp": datetime.now(UTC).isoformat(),
            "traits": {}, "event": None, "properties": {}, **kw}


async def test_rates_follow_their_definitions(apps, workspace, sessionmaker) -> None:
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    people = [uuid.uuid4() for _ in range(10)]
    orders = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 2, 8: 3, 9: 4}  # 6 customers, 4 repeat, 2 loyal
    events = []
    for i, pid in enumerate(people):
        events.append(_ev(ws, pid, type="track", event="Signed Up"))
        events += [_ev(ws, pid, type="track", event="Order Completed", properties={"revenue": 10})
                   for _ in range(orders[i])]
    nps = {0: 10, 1: 9, 2: 8}  # with person 3's survey: 2 promoters, 1 passive, 1 detractor → NPS 25
    csat = {4: 5, 5: 2}
    for i, score in nps.items():
        events.append(_ev(ws, people[i], type="identify", traits={"nps": score}))
    # survey events answer too, newest first: person 3 said 9, then 3
    for score in (9, 3):
        events.append(_ev(ws, people[3], type="track", event="NPS Survey Submitted", properties={"score": score}))
    for i, score in csat.items():
        events.append(_ev(ws, people[i], type="identify", traits={"csat": score}))
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, events)
        await evaluation.reevaluate(s, ws, affected[ws])
    now = datetime.now(UTC)
    params = {"start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()}
    m = (await apps["segment"].get("/v1/metrics", headers=h, params=params)).json()
    assert (m["users"], m["customers"], m["repeat_customers"], m["loyal_customers"]) == (10, 6, 4, 2)
    assert m["activation_rate"] == 60.0 and m["repeat_customer_rate"] == round(400 / 6, 2)
    assert m["loyal_rate"] == 50.0 and m["churn_rate"] == 0.0
    assert m["average_cltv"] == round(130 / 6, 2)
    assert m["nps"] == 25.0 and m["nps_responses"] == 4 and m["csat"] == 50.0
    empty = (await apps["segment"].get("/v1/metrics", headers=h, params={
        "start": "2020-01-01T00:00:00Z", "end": "2020-02-01T00:00:00Z"})).json()
    assert empty["users"] == 0 and empty["activation_rate"] is None
    bad = await apps["segment"].get("/v1/metrics", headers=h, params={"start": params["end"], "end": params["start"]})
    assert bad.status_code == 422

    # the daily series counts today's stages; advocacy for the two promoters
    today = now.date()
    series = (await apps["segment"].get("/v1/metrics/stages", headers=h, params={
        "start": (today - timedelta(days=1)).isoformat(), "end": today.isoformat()})).json()["days"]
    assert [d["day"] for d in series] == [(today - timedelta(days=1)).isoformat(), today.isoformat()]
    assert sum(v for k, v in series[-1].items() if k != "day") == 10 and series[0]["onboarding"] == 0
    assert series[-1]["advocacy"] == 2


async def test_a_period_without_an_offset_is_utc(apps, workspace, sessionmaker, monkeypatch) -> None:
    """``start``/``end`` without an offset are UTC, as the stage series' days are: mixing one with an offset
    and one without was a 500 (naive and aware datetimes do not compare), and the database driver read
    them in the server's local time zone. The stage series' last day ended at local midnight the same way."""
    import time

    from sqlalchemy import text

    from services.segment import lifecycle

    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    user = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [_ev(ws, user, type="track", event="Signed Up",
                                              timestamp="2024-03-10T23:30:00+00:00")])
        await s.execute(text("insert into segment.transitions (workspace_id, segment_id, segment_version, profile_id, "
                             "kind, at) values (:ws, :sid, 0, :pid, 'entered', '2024-03-10T20:00:00Z')"),
                        {"ws": ws, "sid": lifecycle.stage_segment_id(ws, "onboarding"), "pid": user})
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a server whose clock is not set to UTC
    time.tzset()
    try:
        for start, end in (("2024-03-10T23:00:00Z", "2024-03-11T00:00:00"), ("2024-03-10T23:00:00", "2024-03-11"),
                           ("2024-03-11T01:00:00+02:00", "2024-03-11T09:00:00+09:00")):  # (answered in UTC, as
            # documented: the offset given came back as it was, "2024-03-11T01:00:00+02:00")
            r = await apps["segment"].get("/v1/metrics", headers=h, params={"start": start, "end": end})
            assert r.status_code == 200, r.text
            m = r.json()
            assert m["users"] == 1 and m["start"] == "2024-03-10T23:00:00Z" and m["end"] == "2024-03-11T00:00:00Z"
        r = await apps["segment"].get("/v1/metrics/stages", headers=h, params={"start": "2024-03-10", "end": "2024-03-10"})
        assert r.status_code == 200 and r.json()["days"][0]["onboarding"] == 1, r.text
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_metrics_of_a_segment_that_does_not_exist_are_a_404(apps, workspace, sessionmaker) -> None:
    """A mistyped, deleted or other workspace's segment id answered 200 with zero users and null rates,
    which reads as "nobody"; stage segments (GET /v1/lifecycle) are segments here too."""
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    user = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_ev(ws, user, type="track", event="Signed Up")])
        await evaluation.reevaluate(s, ws, affected[ws])
    now = datetime.now(UTC)
    period = {"start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()}
    r = await apps["segment"].get("/v1/metrics", headers=h, params={**period, "segment_id": str(uuid.uuid4())})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    stages = (await apps["segment"].get("/v1/lifecycle", headers=h)).json()["stages"]
    onboarding = next(s["segment_id"] for s in stages if s["stage"] == "onboarding")
    r = await apps["segment"].get("/v1/metrics", headers=h, params={**period, "segment_id": onboarding})
    assert r.status_code == 200 and r.json()["users"] == 1
    seg = (await apps["segment"].post("/v1/segments", headers=h, json={"name": "all", "definition": {
        "type": "performed", "event": "Signed Up"}})).json()
    r = await apps["segment"].get("/v1/metrics", headers=h, params={**period, "segment_id": seg["id"]})
    assert r.status_code == 200 and r.json()["segment_id"] == seg["id"]


async def test_nps_and_csat_count_only_answers_on_their_scales(apps, workspace, sessionmaker) -> None:
    """docs/metrics.md: NPS answers are 0–10, CSAT answers 1–5. A ``csat`` trait of 9 (another scale, or a
    typo) counted as a satisfied answer and 0 as an unsatisfied one; an ``nps`` trait of 42 as a promoter
    (survey events out of 0–10 were already ignored)."""
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    traits = [{"csat": 5, "nps": 10}, {"csat": 4, "nps": 8}, {"csat": 2, "nps": 42}, {"csat": 9, "nps": -3},
              {"csat": 0}, {"csat": 4.5}]
    events = [_ev(ws, uuid.uuid4(), type="identify", traits=t) for t in traits]
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, events)
    now = datetime.now(UTC)
    m = (await apps["segment"].get("/v1/metrics", headers=h, params={
        "start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()})).json()
    assert (m["csat_responses"], m["csat"]) == (4, 75.0)  # 5, 4, 2 and 4.5
    assert (m["nps_responses"], m["nps"]) == (2, 50.0)  # 10 (promoter) and 8 (passive)


async def test_the_stage_series_reaches_the_last_representable_day(apps, workspace, sessionmaker) -> None:
    """A series ending on 9999-12-31 (a valid date, and a natural "until the end" bound) was a 500: the
    end of its last day, and the day after it, are beyond what a date holds."""
    ws, h = workspace.workspace_id, {"Authorization": f"Bearer {workspace.secret_key}"}
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_ev(ws, uuid.uuid4(), type="track", event="Signed Up")])
        await evaluation.reevaluate(s, ws, affected[ws])
    today = datetime.now(UTC).date()
    # (the series stops at today: days to come repeated today's counts, as if nobody would pass a threshold)
    for start, end, last, profiles in [(today.isoformat(), (today + timedelta(days=30)).isoformat(), today.isoformat(), 1),
                                       ("0001-01-01", "0001-01-02", "0001-01-02", 0)]:
        r = await apps["segment"].get("/v1/metrics/stages", headers=h, params={"start": start, "end": end})
        assert r.status_code == 200, r.text
        days = r.json()["days"]
        if days[-1]["day"] != last and datetime.now(UTC).date() != today:  # (midnight UTC passed meanwhile)
            last = datetime.now(UTC).date().isoformat()
        assert days[0]["day"] == start and days[-1]["day"] == last
        assert [sum(v for k, v in d.items() if k != "day") for d in days] == [profiles] * len(days)
    for start, end in (("9999-12-30", "9999-12-31"), (today + timedelta(days=2), today + timedelta(days=5))):
        r = await apps["segment"].get("/v1/metrics/stages", headers=h, params={"start": str(start), "end": str(end)})
        assert r.status_code == 200 and r.json()["days"] == [], r.text


class Population:
    """A workspace's population built through ingest's tracking API, folded by what segment's worker does with
    the event feed (fold each page, re-evaluate the profiles it touched)."""

    def __init__(self, apps, workspace, sessionmaker, internal):
        self.apps, self.sm, self.internal = apps, sessionmaker, internal
        self.ws = workspace.workspace_id
        self.h = {"Authorization": f"Bearer {workspace.secret_key}"}
        self.wk = (workspace.write_key, "")

    async def send(self, kind: str, **body) -> None:
        r = await self.apps["ingest"].post(f"/v1/{kind}", auth=self.wk, json=body)
        assert r.status_code == 200, r.text

    async def track(self, uid: str, event: str, at: datetime, **props) -> None:
        await self.send("track", userId=uid, event=event, properties=props, timestamp=at.isoformat())

    async def pid(self, ref: str) -> str:
        r = await self.apps["ingest"].get(f"/v1/profiles/{ref}", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    async def fold(self) -> None:
        """Until segment's consumer has read everything ingest committed (the feed holds back rows while an older
        transaction anywhere is open, so one empty page does not mean drained)."""
        import asyncio

        from sqlalchemy import text

        from services.segment import partitioning
        from shared.testing import internal_headers

        for _ in range(400):
            async with self.sm() as s, s.begin():
                await evaluation.consume_page(s, self.internal, 500)
            await partitioning.process_dirty(self.sm, self.internal.settings.segment_partitions, 500,
                                             evaluation.reevaluate)
            async with self.sm() as s, s.begin():
                cursor = await s.scalar(text("select cursor from segment.consumers where name = 'ingest-events'"))
            page = (await self.apps["ingest"].get("/v1/events", headers=internal_headers(),
                                                  params={"after": cursor or "", "limit": 1})).json()
            if not page["events"] and not page["behind"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("segment did not catch up with ingest's feed")

    async def get(self, path: str, **params) -> dict:
        r = await self.apps["segment"].get(path, headers=self.h, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def attributes(self, uid: str) -> dict:
        return await self.get(f"/v1/profiles/{await self.pid(uid)}/attributes")

    async def stage(self, uid: str) -> str | None:
        return (await self.get(f"/v1/lifecycle/{await self.pid(uid)}"))["stage"]

    async def count(self, definition: dict) -> int:
        r = await self.apps["segment"].post("/v1/segments/preview", headers=self.h, json={"definition": definition})
        assert r.status_code == 200, r.text
        return r.json()["count"]


@pytest.fixture
def population(apps, workspace, sessionmaker, internal_client) -> Population:
    return Population(apps, workspace, sessionmaker, internal_client)


def _days_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)


async def test_an_nps_trait_off_the_scale_is_no_answer_for_stage_or_attribute(population) -> None:
    """docs/metrics.md: answers outside 0–10 are not answers. The NPS metric skipped an ``nps`` trait of 42, but
    the ``last_nps`` attribute read it (in Python and in the SQL of previews) and the stage made its profile an
    ``advocacy`` promoter."""
    p = population
    await p.send("identify", userId="off-scale", traits={"nps": 42})
    await p.send("identify", userId="negative", traits={"nps": -3})
    await p.send("identify", userId="as-text", traits={"nps": "10"})
    await p.send("identify", userId="promoter", traits={"nps": 9})
    await p.fold()
    for uid in ("off-scale", "negative", "as-text"):
        assert (await p.attributes(uid))["last_nps"] is None, uid
        assert await p.stage(uid) == "onboarding", uid
    assert (await p.attributes("promoter"))["last_nps"] == 9.0 and await p.stage("promoter") == "advocacy"
    promoters = {"type": "attribute", "attribute": "last_nps", "op": "gte", "value": 9}
    answered = {"type": "attribute", "attribute": "last_nps", "op": "exists"}
    assert await p.count(promoters) == 1 and await p.count(answered) == 1  # (compiled to SQL)
    assert await p.count({"type": "or", "children": [promoters, {"type": "stage", "stage": "advocacy"}]}) == 1
    now = datetime.now(UTC)
    m = await p.get("/v1/metrics", start=(now - timedelta(days=1)).isoformat(),
                    end=(now + timedelta(days=1)).isoformat())
    assert (m["users"], m["nps_responses"], m["nps"]) == (4, 1, 100.0)


async def test_an_event_dated_in_the_future_happened_when_it_was_received(population) -> None:
    """A client clock set 400 days ahead (ingest keeps a timestamp as sent when there is no ``sentAt``) made
    ``days_since_last_activity`` and ``days_since_last_order`` -400 and kept the profile active — never at
    risk — for 430 days."""
    p = population
    await p.track("early-clock", "Signed Up", _days_ago(40))
    await p.track("early-clock", "Order Completed", _days_ago(40), revenue=10)
    await p.track("late-clock", "Signed Up", _days_ago(40))
    await p.track("late-clock", "Order Completed", datetime.now(UTC) + timedelta(days=400), revenue=10)
    await p.fold()
    a = await p.attributes("late-clock")
    assert (a["days_since_last_activity"], a["days_since_last_order"], a["order_count"]) == (0, 0, 1)
    assert datetime.fromisoformat(a["last_seen"]) <= datetime.now(UTC)
    assert await p.stage("late-clock") == "engaged" and await p.stage("early-clock") == "at_risk"
    ordered_this_week = {"type": "performed", "event": "Order Completed", "within_days": 7}
    assert await p.count(ordered_this_week) == 1
    assert await p.count({"type": "attribute", "attribute": "days_since_last_order", "op": "lt", "value": 0}) == 0


async def test_what_tenure_records_about_a_customer_is_not_their_activity(population) -> None:
    """A churned customer sent a win-back email became ``reactivated`` the moment delivery reported the email
    delivered (its events reach ingest about the recipient, like the customer's own): churned customers could
    never stay churned while mailed, nor at-risk ones become churned. So did a journey's attribute update and a
    program's event. They still count as events."""
    p = population
    await p.track("lapsed", "Order Completed", _days_ago(100), revenue=30)
    await p.fold()
    assert await p.stage("lapsed") == "churned"
    # what delivery's feedback forwarder posts (services/delivery/consent.py: queue_event)
    delivery = {"library": {"name": "tenure-delivery"}}
    await p.send("batch", batch=[
        {"type": "track", "userId": "lapsed", "event": event, "messageId": f"delivery-{uuid.uuid4()}",
         "properties": {"message_id": str(uuid.uuid4())}, "context": delivery}
        for event in ("Email Delivered", "Email Opened", "SMS Delivered")] + [
        # a journey's attribute update (services/campaign/journeys.py) and a program's event (programs/outbox.py)
        {"type": "identify", "userId": "lapsed", "traits": {"winback": True}, "messageId": f"journey-{uuid.uuid4()}",
         "context": {"library": {"name": "tenure-campaign"}}},
        {"type": "track", "userId": "lapsed", "event": "Loyalty Tier Changed", "properties": {"tier": "bronze"},
         "messageId": f"program-{uuid.uuid4()}", "context": {"library": {"name": "tenure-programs"}}}])
    await p.fold()
    a = await p.attributes("lapsed")
    assert a["days_since_last_activity"] == 100 and await p.stage("lapsed") == "churned"
    assert await p.count({"type": "email_engagement", "action": "opened", "count": 1, "within_days": 7}) == 1
    assert await p.count({"type": "performed", "event": "Loyalty Tier Changed", "within_days": 1}) == 1
    assert await p.count({"type": "trait", "trait": "winback", "op": "equals", "value": True}) == 1
    # the customer's own visit does bring them back
    await p.track("lapsed", "Product Viewed", datetime.now(UTC))
    await p.fold()
    assert await p.stage("lapsed") == "reactivated"
    assert (await p.attributes("lapsed"))["days_since_last_activity"] == 0


async def test_who_someone_is_is_not_what_they_did(population) -> None:
    """A back office's nightly identify (a CRM sync), a group and an alias kept a churned customer "active" for
    good; their traits still count, and someone only identified has been seen once."""
    p = population
    await p.track("synced", "Order Completed", _days_ago(100), revenue=30)
    await p.fold()
    assert await p.stage("synced") == "churned"
    now = datetime.now(UTC).isoformat()
    await p.send("identify", userId="synced", traits={"plan": "gold"}, timestamp=now)
    await p.send("group", userId="synced", groupId="acme", traits={"industry": "retail"}, timestamp=now)
    await p.send("alias", userId="synced", previousId="crm-synced", timestamp=now)
    # someone only identified so far (an import, a sign-up from the back office) was seen once, then
    await p.send("identify", userId="imported", traits={"email": "imported@example.com"},
                 timestamp=_days_ago(10).isoformat())
    await p.fold()
    await p.send("identify", userId="imported", traits={"plan": "free"}, timestamp=now)
    await p.fold()
    a = await p.attributes("synced")
    assert a["days_since_last_activity"] == 100 and await p.stage("synced") == "churned"
    assert await p.count({"type": "trait", "trait": "plan", "op": "equals", "value": "gold"}) == 1
    imported = await p.attributes("imported")
    # seen once, ten days ago, but never active: no days since last activity
    assert imported["days_since_last_activity"] is None and imported["first_seen"] == imported["last_seen"]
    assert imported["first_seen"].startswith(_days_ago(10).date().isoformat())
    assert await p.stage("imported") == "onboarding"
    await p.send("page", userId="synced", name="Pricing", timestamp=now)  # a visit is
    await p.fold()
    assert await p.stage("synced") == "reactivated"


async def test_the_loyal_rate_is_a_share_of_the_repeat_customers(population, settings) -> None:
    """With ``lifecycle.loyal_orders`` 1 (allowed: 1–1000000) every customer is loyal, and loyal / repeat
    counted the one-time buyers over the repeat ones: 150 % for 3 customers of whom 2 came back."""
    from tests.integration.test_workspace_config import _configure

    p = population
    for uid, orders in (("once", 1), ("twice", 2), ("thrice", 3), ("browser", 0)):
        await p.track(uid, "Signed Up", _days_ago(3))
        for _ in range(orders):
            await p.track(uid, "Order Completed", _days_ago(2), revenue=10)
    await p.fold()
    now = datetime.now(UTC)
    period = {"start": (now - timedelta(days=7)).isoformat(), "end": (now + timedelta(days=1)).isoformat()}
    expected = {3: (1, 50.0), 1: (3, 100.0), 2: (2, 100.0), 4: (0, 0.0)}  # loyal_orders: (loyal, loyal rate)
    for loyal_orders, (loyal, rate) in expected.items():
        r = _configure(settings, p.ws, "--set", f'lifecycle={{"loyal_orders": {loyal_orders}}}')
        assert r.returncode == 0, r.stderr
        m = await p.get("/v1/metrics", **period)
        assert (m["users"], m["customers"], m["repeat_customers"]) == (4, 3, 2)
        assert (m["loyal_customers"], m["loyal_rate"]) == (loyal, rate), loyal_orders


async def test_an_absurd_revenue_counts_as_0_and_stops_nothing(population) -> None:
    """An order of 1e27 or more (no cents fit in the 28 digits ``money`` rounded with), or two of 1e308 (an
    infinite sum), made the profile's attributes a 500 and failed the re-evaluation of every profile of the
    workspace that came in the same page, over and over (they stayed dirty)."""
    p = population
    await p.track("big-spender", "Order Completed", _days_ago(2), revenue=10)
    for amount in (1e308, 1e308, "1e27", -1e20):
        await p.track("big-spender", "Order Completed", _days_ago(1), revenue=amount)
    await p.track("bystander", "Order Completed", _days_ago(1), revenue=999_999_999_999.99)  # just under 10¹⁵
    await p.fold()
    a = await p.attributes("big-spender")
    assert (a["order_count"], a["total_revenue"], a["average_order_value"]) == (5, 10.0, 2.0)
    assert await p.stage("big-spender") == "loyal" and await p.stage("bystander") == "engaged"
    assert (await p.attributes("bystander"))["total_revenue"] == 999_999_999_999.99
    now = datetime.now(UTC)
    m = await p.get("/v1/metrics", start=(now - timedelta(days=7)).isoformat(), end=now.isoformat())
    assert (m["customers"], m["average_cltv"]) == (2, round((10 + 999_999_999_999.99) / 2, 2))
    assert await p.count({"type": "attribute", "attribute": "total_revenue", "op": "gt", "value": 100}) == 1


async def test_a_visitor_merged_into_a_customer_counts_once(population) -> None:
    """Orders tracked anonymously, folded, then the visitor identified (ingest merges the profiles): the merged
    profile holds every order once, the cohort counts one user, and the visitor's old id leads to it."""
    p = population
    for days, amount in ((5, 10), (4, 15)):
        await p.send("track", anonymousId="visitor-1", event="Order Completed", properties={"revenue": amount},
                     timestamp=_days_ago(days).isoformat())
    await p.track("merged", "Order Completed", _days_ago(3), revenue=20)
    await p.fold()
    visitor = await p.pid("visitor-1")
    await p.send("identify", userId="merged", anonymousId="visitor-1", timestamp=_days_ago(2).isoformat())
    await p.send("alias", previousId="visitor-1", userId="merged")  # (a second merge attempt: nothing to do)
    await p.fold()
    a = await p.attributes("merged")
    assert (a["order_count"], a["total_revenue"], a["first_seen"][:10]) == (3, 45.0, str(_days_ago(5).date()))
    assert await p.stage("merged") == "loyal"
    # the visitor's own facts are gone: its id answers with the merged profile's (a redirect, not a second copy)
    r = await p.apps["segment"].get(f"/v1/profiles/{visitor}/attributes", headers=p.h)
    assert r.status_code == 200 and r.json() == a, r.text
    now = datetime.now(UTC)
    m = await p.get("/v1/metrics", start=(now - timedelta(days=7)).isoformat(), end=now.isoformat())
    assert (m["users"], m["customers"], m["loyal_customers"], m["average_cltv"]) == (1, 1, 1, 45.0)


async def test_windows_at_their_boundaries(population) -> None:
    """The cohort is [start, end); at_risk / churned start on the 30th / 90th idle day (UTC days)."""
    p = population
    noon = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    for days in (29, 30, 89, 90):
        await p.track(f"idle-{days}", "Signed Up", noon - timedelta(days=days))
    await p.fold()
    assert [await p.stage(f"idle-{d}") for d in (29, 30, 89, 90)] == ["onboarding", "at_risk", "at_risk", "churned"]
    first = (noon - timedelta(days=30)).isoformat()
    assert (await p.get("/v1/metrics", start=first, end=noon.isoformat()))["users"] == 2  # 30 and 29 days ago
    m = await p.get("/v1/metrics", start=(noon - timedelta(days=365)).isoformat(), end=first)
    assert (m["users"], m["churn_rate"]) == (2, 50.0)  # 90 and 89 days ago: not the one first seen at `end`


async def test_a_refund_comes_off_the_revenue(population, settings) -> None:
    """``Order Refunded`` (Segment's ecommerce spec; the loyalty program takes its points back on it) was ignored:
    a customer who bought 100 and got 30 back had a CLTV of 100. A refund's amount comes off whatever its sign;
    the order stays counted; a refund without an amount takes off what is left of the order it names (refunds of
    one order add up to its value at most), one naming no known order nothing."""
    from tests.integration.test_workspace_config import _configure

    p = population
    await p.track("refunded", "Order Completed", _days_ago(3), order_id="o-1", revenue=100)
    await p.track("refunded", "Order Completed", _days_ago(3), order_id="o-2", revenue=20)
    await p.track("refunded", "Order Refunded", _days_ago(2), order_id="o-1", revenue=30)
    await p.track("refunded", "Order Refunded", _days_ago(2), order_id="o-2", revenue="-5")
    await p.track("refunded", "Order Refunded", _days_ago(1), order_id="o-2")  # the rest of the order: 15
    await p.track("refunded", "Order Refunded", _days_ago(1), order_id="o-9")  # no such order: nothing
    await p.track("kept", "Order Completed", _days_ago(3), revenue=50)
    await p.fold()
    a = await p.attributes("refunded")
    assert (a["order_count"], a["total_revenue"], a["average_order_value"]) == (2, 70.0, 35.0)
    now = datetime.now(UTC)
    m = await p.get("/v1/metrics", start=(now - timedelta(days=7)).isoformat(), end=now.isoformat())
    assert (m["customers"], m["average_cltv"]) == (2, 60.0)
    assert await p.count({"type": "attribute", "attribute": "total_revenue", "op": "lt", "value": 90}) == 2
    # another refund event name (a workspace setting; [] turns refunds off)
    r = _configure(settings, p.ws, "--set", 'refund_events=["Return Processed"]')
    assert r.returncode == 0, r.stderr
    await p.track("kept", "Order Refunded", _days_ago(1), revenue=50)
    await p.track("kept", "Return Processed", _days_ago(1), revenue=10)
    await p.fold()
    assert (await p.attributes("kept"))["total_revenue"] == 40.0
    r = _configure(settings, p.ws, "--set", 'refund_events="Return Processed"')
    assert r.returncode == 2 and "refund_events" in r.stderr


async def test_an_nps_score_sent_as_text_is_an_answer_and_nps_has_two_decimals(apps, workspace, sessionmaker) -> None:
    """A survey answer whose ``score`` is numeric text ("4", as a form posts it) was no answer, though a revenue
    sent as text counts; text holding a number by the rule comparisons follow answers now ("9 " does not). And
    the NPS was rounded to one decimal, where docs/metrics.md rounds rates to two."""
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    people = [uuid.uuid4() for _ in range(4)]
    scores = ["4", 9, 9.0, "9 "]  # a detractor, two promoters, and no answer → 1/3 → 33.33
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [
            _ev(ws, pid, type="track", event="NPS Survey Submitted", properties={"score": score})
            for pid, score in zip(people, scores, strict=True)])
        await evaluation.reevaluate(s, ws, affected[ws])
    now = datetime.now(UTC)
    m = (await apps["segment"].get("/v1/metrics", headers=h, params={
        "start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()})).json()
    assert (m["nps_responses"], m["nps"]) == (3, 33.33)
    answers = [(await apps["segment"].get(f"/v1/profiles/{pid}/attributes", headers=h)).json()["last_nps"]
               for pid in people]
    assert answers == [4.0, 9.0, 9.0, None]
