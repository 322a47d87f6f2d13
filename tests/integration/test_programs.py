"""Referral and loyalty programs through the HTTP APIs, on real PostgreSQL, with a controllable clock:
events go in through ingest's tracking API, the campaign worker's functions run with a given ``now``
(feed consumption, program events forwarded to ingest, maintenance), and answers come from campaign's
programs API and ingest's profile events."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.campaign import triggering
from services.campaign.programs import maintenance
from services.campaign.programs import outbox as program_outbox
from shared.testing import drain_feed, run_due_journeys

# the recent past: events are "old enough" to be real, and their points expire in the future of the real
# clock (balances read through the API use it), while maintenance runs at any moment the test picks
T0 = (datetime.now(UTC) - timedelta(days=20)).replace(microsecond=0)


class Programs:
    def __init__(self, apps, workspace, sessionmaker, internal):
        self.apps, self.sm, self.internal = apps, sessionmaker, internal
        self.ws = workspace.workspace_id
        self.h = {"Authorization": f"Bearer {workspace.secret_key}"}
        self.wk = (workspace.write_key, "")

    async def program(self, kind: str, **config) -> dict:
        r = await self.apps["campaign"].put(f"/v1/programs/{kind}", headers=self.h, json={"config": config})
        assert r.status_code == 200, r.text
        return r.json()

    async def send(self, kind: str, body: dict, at: datetime) -> None:
        r = await self.apps["ingest"].post(f"/v1/{kind}", auth=self.wk, json={**body, "timestamp": at.isoformat()})
        assert r.status_code == 200, r.text

    async def identify(self, uid: str, at: datetime = T0, **traits) -> str:
        await self.send("identify", {"userId": uid, "traits": traits}, at)
        return (await self.apps["ingest"].get(f"/v1/profiles/{uid}", headers=self.h)).json()["id"]

    async def track(self, uid: str, event: str, at: datetime, context: dict | None = None, **props) -> None:
        await self.send("track", {"userId": uid, "event": event, "properties": props, "context": context or {}}, at)

    async def consume(self, now: datetime) -> None:
        await drain_feed(self.sm, lambda s: triggering.consume_page(s, self.internal, "events", 500, now=now), 500)

    async def pump(self, now: datetime) -> None:
        """What the campaign worker does: the feed, program events to ingest (and their feed), journeys."""
        await self.consume(now)
        while await program_outbox.forward(self.sm, self.internal):
            pass
        await self.consume(now)
        await run_due_journeys(self.sm, self.internal, now)

    async def code(self, uid: str) -> dict:
        r = await self.apps["campaign"].post("/v1/referral/codes", headers=self.h, json={"user": uid})
        assert r.status_code == 200, r.text
        return r.json()

    async def referrals(self, **params) -> list[dict]:
        r = await self.apps["campaign"].get("/v1/referrals", headers=self.h, params=params)
        assert r.status_code == 200, r.text
        return r.json()["referrals"]

    async def get(self, path: str, **params) -> dict:
        r = await self.apps["campaign"].get(path, headers=self.h, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def balance(self, uid: str) -> int:
        return (await self.get(f"/v1/loyalty/members/{uid}/balance"))["balance"]

    async def history(self, uid: str) -> list[dict]:
        entries, after = [], None
        while True:
            page = await self.get(f"/v1/loyalty/members/{uid}/history", limit=3, **({"after": after} if after else {}))
            entries += page["entries"]
            after = page["next_cursor"]
            if not after:
                return entries

    async def events(self, uid: str) -> list[dict]:
        """The profile's events in ingest, oldest first."""
        r = await self.apps["ingest"].get(f"/v1/profiles/{uid}/events", headers=self.h, params={"limit": 1000})
        assert r.status_code == 200, r.text
        return sorted(r.json()["events"], key=lambda e: e["timestamp"])

    async def redeem(self, uid: str, points: int, key: str):
        return await self.apps["campaign"].post(f"/v1/loyalty/members/{uid}/redeem", headers={
            **self.h, "Idempotency-Key": key}, json={"points": points, "reason": "voucher"})


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> Programs:
    return Programs(apps, workspace, sessionmaker, internal_client)


def _uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


REFERRAL = {"landing_url": "https://acme.example/join", "attribution_window_days": 30,
            "referrer_reward": {"type": "points", "points": 500},
            "referred_reward": {"type": "coupon", "pool": "welcome"}}


async def test_attribution_from_landing_links_and_signup_properties_first_touch_within_the_window(world) -> None:
    await world.program("referral", **REFERRAL)
    ann, bob = _uid("ann"), _uid("bob")
    await world.identify(ann, email=f"{ann}@example.com")
    await world.identify(bob, email=f"{bob}@example.com")
    code = await world.code(ann)
    assert (await world.code(ann))["code"] == code["code"]  # stable
    assert code["code"] != (await world.code(bob))["code"]
    assert set(code["links"]) == {"email", "sms", "social"}
    assert code["links"]["sms"] == f"https://acme.example/join?ref={code['code']}&channel=sms"
    bob_code = (await world.code(bob))["code"]

    # a visitor lands through Ann's SMS link, then signs up: attributed, with the channel
    anon, lea = uuid.uuid4().hex, _uid("lea")
    await world.send("page", {"anonymousId": anon, "name": "Join", "context": {
        "page": {"url": "https://acme.example/join", "search": f"?ref={code['code']}&channel=sms"}}}, T0)
    await world.send("identify", {"userId": lea, "anonymousId": anon, "traits": {"email": f"{lea}@example.com"}},
                     T0 + timedelta(days=2))
    await world.send("track", {"userId": lea, "anonymousId": anon, "event": "Signed Up"}, T0 + timedelta(days=2))
    # the code typed at signup (case and dashes do not matter)
    max_ = _uid("max")
    await world.track(max_, "Signed Up", T0 + timedelta(days=3),
                      referral_code=f"{code['code'][:5].lower()}-{code['code'][5:]}")
    # first touch wins: Bob's link first, Ann's code at signup
    kim = _uid("kim")
    await world.track(kim, "Landing Viewed", T0, url=f"https://acme.example/join?ref={bob_code}&channel=social")
    await world.track(kim, "Signed Up", T0 + timedelta(days=1), referral_code=code["code"])
    # a touch older than the window does not count
    old = _uid("old")
    await world.track(old, "Landing Viewed", T0 - timedelta(days=40), search=f"?ref={code['code']}")
    await world.track(old, "Signed Up", T0 + timedelta(days=1))
    # an unknown code attributes nothing
    await world.track(_uid("nobody"), "Signed Up", T0, referral_code="NOTACODE42")
    await world.pump(T0 + timedelta(days=4))

    by_ann = {r["referred_profile_id"]: r for r in await world.referrals(referrer=ann)}
    pids = {u: (await world.apps["ingest"].get(f"/v1/profiles/{u}", headers=world.h)).json()["id"]
            for u in (lea, max_, kim, old)}
    assert by_ann[pids[lea]]["status"] == "converted" and by_ann[pids[lea]]["channel"] == "sms"
    assert by_ann[pids[max_]]["status"] == "converted"
    assert by_ann[pids[old]]["status"] == "rejected"
    assert by_ann[pids[old]]["reason"] == "attribution_window_expired"
    assert pids[kim] not in by_ann
    assert [r["referred_profile_id"] for r in await world.referrals(referrer=bob)] == [pids[kim]]
    # both sides hear of it in ingest: journeys and segments can use it
    converted = [e for e in await world.events(ann) if e["event"] == "Referral Converted"]
    assert len(converted) == 2 and {e["properties"]["role"] for e in converted} == {"referrer"}
    assert [e["properties"]["role"] for e in await world.events(lea) if e["event"] == "Referral Converted"] == [
        "referred"]
    assert len(await world.referrals(referrer=ann)) == 3  # two converted, one rejected
    board = await world.get("/v1/referral/leaderboard", period="all")
    assert [r["user_id"] for r in board["referrers"]] == [ann, bob]
    assert board["referrers"][0]["referrals"] == 2  # the rejected one is not counted


async def test_referrals_list_the_newest_first(world) -> None:
    """GET /v1/referrals was in id order, a UUIDv4's: a program's referrals came in no order a reader could follow.
    Newest first now (the sign-up's time, then the id), paged without skipping or repeating, filtered or not."""
    await world.program("referral", **REFERRAL)
    ann = _uid("ann")
    await world.identify(ann, email=f"{ann}@example.com")
    code = (await world.code(ann))["code"]
    friends = [_uid(f"friend{n}") for n in range(4)]
    for n, friend in enumerate([friends[2], friends[0], friends[3], friends[1]]):  # signed up out of list order
        await world.track(friend, "Signed Up", T0 + timedelta(days=[3, 1, 4, 2][n]), referral_code=code)
    await world.pump(T0 + timedelta(days=5))
    pids = [(await world.apps["ingest"].get(f"/v1/profiles/{f}", headers=world.h)).json()["id"] for f in friends]
    expected = pids[::-1]
    assert [r["referred_profile_id"] for r in await world.referrals()] == expected
    for params in ({}, {"referrer": ann}, {"status": "converted"}):
        paged, after = [], None
        while True:
            page = await world.get("/v1/referrals", limit=1, **params, **({"after": after} if after else {}))
            paged += [r["referred_profile_id"] for r in page["referrals"]]
            if not (after := page["next_cursor"]):
                break
        assert paged == expected, params


async def test_self_referral_and_duplicate_accounts_are_rejected_with_their_reason(world) -> None:
    await world.program("referral", **REFERRAL)
    ref = _uid("ref")
    await world.identify(ref, email=f"jane.doe+{ref}@gmail.com", phone="+1 (555) 010-2030")
    await world.track(ref, "App Opened", T0, context={"device": {"id": f"device-{ref}"}})
    code = (await world.code(ref))["code"]
    cases = {
        "self": ({"userId": ref}, "self_referral"),
        "email": ({"userId": _uid("e"), "traits": {"email": "JaneDoe@googlemail.com"}}, "duplicate_email"),
        "phone": ({"userId": _uid("p"), "traits": {"phone": "555-010-2030"}}, "duplicate_phone"),
        "device": ({"userId": _uid("d"), "context": {"device": {"id": f"device-{ref}"}}}, "duplicate_device"),
        "fine": ({"userId": _uid("ok"), "traits": {"email": f"friend-{ref}@example.com"}}, None),
    }
    for who, _ in cases.values():
        if who.get("traits"):
            await world.send("identify", {"userId": who["userId"], "traits": who["traits"]}, T0)
        await world.send("track", {"userId": who["userId"], "event": "Signed Up", "context": who.get("context", {}),
                                   "properties": {"referral_code": code}}, T0 + timedelta(hours=1))
    await world.pump(T0 + timedelta(hours=2))
    got = {r["referred_profile_id"]: r for r in await world.referrals(referrer=ref)}
    for who, reason in cases.values():
        pid = (await world.apps["ingest"].get(f"/v1/profiles/{who['userId']}", headers=world.h)).json()["id"]
        assert got[pid]["reason"] == reason, (who, got[pid])
        assert got[pid]["status"] == ("rejected" if reason else "converted")
    assert len(await world.referrals(referrer=ref, status="rejected")) == 4

    # the clean signup later shows the referrer's phone at checkout: no reward is paid for it
    late = cases["fine"][0]["userId"]
    await world.track(late, "Order Completed", T0 + timedelta(days=1), order_id="o-1", revenue=30,
                      phone="+15550102030")
    await world.pump(T0 + timedelta(days=1, hours=1))
    late_pid = (await world.apps["ingest"].get(f"/v1/profiles/{late}", headers=world.h)).json()["id"]
    (after,) = [r for r in await world.referrals(referrer=ref) if r["referred_profile_id"] == late_pid]
    assert (after["status"], after["reason"]) == ("rejected", "duplicate_phone")
    detail = await world.get(f"/v1/referrals/{after['id']}")
    assert detail["rewards"] == []


async def test_two_sided_rewards_are_granted_exactly_once_and_reversed_on_refund(world) -> None:
    await world.program("referral", **REFERRAL, qualifying={"event": "Order Completed"})
    await world.program("loyalty", **LOYALTY)
    r = await world.apps["campaign"].put("/v1/coupon-pools/welcome", headers=world.h,
                                         json={"codes": ["WELCOME-A", "WELCOME-B", "WELCOME-A"]})
    assert r.status_code == 200 and r.json()["added"] == 2 and r.json()["available"] == 2
    sam, tia = _uid("sam"), _uid("tia")
    await world.identify(sam, email=f"{sam}@example.com")
    code = (await world.code(sam))["code"]
    await world.track(tia, "Signed Up", T0, referral_code=code)
    await world.pump(T0 + timedelta(minutes=1))
    assert await world.balance(sam) == 0  # signing up is not the qualifying event

    async with world.sm() as s:  # where the feed was before the orders
        before = (await s.execute(text("select cursor from campaign.consumers where name = 'events'"))).scalar_one()
    await world.track(tia, "Order Completed", T0 + timedelta(days=1), order_id="o-1", revenue=30)
    await world.track(tia, "Order Completed", T0 + timedelta(days=2), order_id="o-2", revenue=40)
    # a worker that crashes before committing the page leaves nothing behind
    with pytest.raises(RuntimeError):
        async with world.sm() as s, s.begin():
            await triggering.consume_page(s, world.internal, "events", 500, now=T0 + timedelta(days=3))
            raise RuntimeError("crash before commit")
    await world.pump(T0 + timedelta(days=3))
    # and a page consumed twice (the cursor moved back) grants nothing twice
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.consumers set cursor = :c where name = 'events'"), {"c": before})
    await world.pump(T0 + timedelta(days=3))

    [ref] = await world.referrals(referrer=sam)
    assert ref["status"] == "rewarded" and ref["order_id"] == "o-1"
    detail = await world.get(f"/v1/referrals/{ref['id']}")
    rewards = {x["side"]: x for x in detail["rewards"]}
    assert rewards["referrer"]["kind"] == "points" and rewards["referrer"]["points"] == 500
    assert rewards["referred"]["coupon_code"] == "WELCOME-A" and rewards["referred"]["status"] == "granted"
    assert await world.balance(sam) == 500
    assert [e["source"].split(":")[0] for e in await world.history(sam)] == ["referral"]
    assert (await world.get("/v1/coupon-pools/welcome"))["available"] == 1
    granted = [e for e in await world.events(sam) + await world.events(tia) if e["event"] == "Referral Reward Granted"]
    assert sorted(e["properties"]["side"] for e in granted) == ["referred", "referrer"]

    # Sam spends 200 of the 500; then the qualifying order is refunded (another order's refund changes nothing)
    assert (await world.redeem(sam, 200, "spend-1")).status_code == 201
    await world.track(tia, "Order Refunded", T0 + timedelta(days=4), order_id="o-2")
    await world.pump(T0 + timedelta(days=4))
    assert (await world.get(f"/v1/referrals/{ref['id']}"))["status"] == "rewarded"
    await world.track(tia, "Order Refunded", T0 + timedelta(days=5), order_id="o-1")
    await world.pump(T0 + timedelta(days=5))
    await world.track(tia, "Order Refunded", T0 + timedelta(days=6), order_id="o-1")  # twice: once
    await world.pump(T0 + timedelta(days=6))
    detail = await world.get(f"/v1/referrals/{ref['id']}")
    assert detail["status"] == "reversed"
    rewards = {x["side"]: x for x in detail["rewards"]}
    assert {x["status"] for x in rewards.values()} == {"reversed"}
    assert rewards["referrer"]["detail"] == "200 points had already been spent"
    assert await world.balance(sam) == 0  # never negative
    assert [e["points"] for e in await world.history(sam)] == [-300, -200, 500]
    pool = await world.get("/v1/coupon-pools/welcome")
    assert pool["revoked"] == 1 and pool["available"] == 1
    reversed_ = [e for e in await world.events(sam) + await world.events(tia) if e["event"] == "Referral Reward Reversed"]
    assert len(reversed_) == 2
    # the 500 points lifted Sam to Gold; reversed, none of them counts toward the tier (200 were spent)
    assert (await world.get(f"/v1/loyalty/members/{sam}/tier"))["qualifying_value"] == 0


LOYALTY = {
    "earn": [{"event": "Order Completed", "per_unit": 1, "property": "revenue"},
             {"event": "Order Completed", "points": 100, "first_time_only": True, "name": "first order bonus"},
             {"event": "Review Submitted", "points": 50, "name": "review bonus"}],
    "expiry_months": 12,
    "tiers": [{"name": "Silver", "threshold": 0}, {"name": "Gold", "threshold": 500, "benefits": ["free shipping"]},
              {"name": "Platinum", "threshold": 1000, "benefits": ["free shipping", "exclusive offers"]}],
    "tier_window_days": 365, "tier_retain_days": 30,
}


async def test_points_are_earned_once_spent_oldest_first_and_expire_with_the_clock(world) -> None:
    await world.program("loyalty", **LOYALTY)
    uid = _uid("lia")
    await world.identify(uid, email=f"{uid}@example.com")
    await world.track(uid, "Order Completed", T0, order_id="a", revenue=120.7)
    await world.track(uid, "Order Completed", T0 + timedelta(days=2), order_id="b", revenue=10)
    await world.track(uid, "Review Submitted", T0 + timedelta(days=5))
    await world.track(uid, "Page Viewed", T0 + timedelta(days=5))
    await world.pump(T0 + timedelta(days=6))
    assert await world.balance(uid) == 120 + 100 + 10 + 50
    # spent soonest-expiring first: the 120 lot and 30 of the first-order bonus
    r = await world.redeem(uid, 150, "r-1")
    assert r.status_code == 201 and r.json()["points"] == -150 and r.json()["balance_after"] == 130
    again = await world.redeem(uid, 150, "r-1")
    assert again.status_code == 200 and again.json()["seq"] == r.json()["seq"]  # idempotent
    assert (await world.redeem(uid, 20, "r-1")).status_code == 409  # same key, other amount
    short = await world.redeem(uid, 1000, "r-2")
    assert short.status_code == 409 and short.headers["content-type"] == "application/problem+json"
    assert short.json()["balance"] == 130
    missing = await world.apps["campaign"].post(f"/v1/loyalty/members/{uid}/redeem", headers=world.h,
                                                json={"points": 1})
    assert missing.status_code == 422  # no Idempotency-Key

    # twelve months after the first orders: what is left of them expires; the review's points do not yet
    await maintenance.run(world.sm, now=T0 + timedelta(days=3) + timedelta(days=366))
    history = await world.history(uid)
    assert [(e["kind"], e["points"]) for e in history if e["kind"] == "expire"] == [("expire", -10), ("expire", -70)]
    assert await world.balance(uid) == 50
    await maintenance.run(world.sm, now=T0 + timedelta(days=3) + timedelta(days=366))  # again: nothing more
    assert await world.balance(uid) == 50
    await maintenance.run(world.sm, now=T0 + timedelta(days=6 + 366))
    assert await world.balance(uid) == 0
    history = await world.history(uid)
    assert sum(e["points"] for e in history) == 0 and all(e["balance_after"] >= 0 for e in history)
    assert [e["seq"] for e in history] == sorted((e["seq"] for e in history), reverse=True)  # newest first
    assert len({e["seq"] for e in history}) == len(history) == 8  # 4 earned, 1 redeemed, 3 expired


async def test_tiers_go_up_at_once_down_after_retention_and_journeys_hear_of_it(world) -> None:
    await world.program("loyalty", **LOYALTY)
    await world.program("referral", **REFERRAL)
    tpl = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"tier-{uuid.uuid4().hex[:6]}",
        "subject": "You're {{ event.properties.tier }}: {{ loyalty.points }} points, code {{ referral.code }}",
        "text": "Benefits: {{ loyalty.benefits | join: ', ' }}. Next: {{ loyalty.next_tier }} in "
                "{{ loyalty.needed_for_next }}. Invite friends: {{ referral.links.email }}"})
    assert tpl.status_code == 201, tpl.text
    camp = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"tier-{uuid.uuid4().hex[:6]}", "entry": {"rule": "every_time"},
        "trigger": {"type": "event", "event": "Loyalty Tier Changed", "max_age_seconds": 0,
                    "where": [{"property": "direction", "op": "equals", "value": "up"}]},
        "steps": [{"id": "mail", "type": "send", "template_id": tpl.json()["id"]}]})
    assert camp.status_code == 201, camp.text
    uid = _uid("tom")
    email = f"{uid}@example.com"
    await world.identify(uid, email=email)
    await world.track(uid, "Order Completed", T0, order_id="1", revenue=450)  # + 100 first-order bonus
    await world.pump(T0 + timedelta(minutes=1))
    tier = await world.get(f"/v1/loyalty/members/{uid}/tier")
    assert tier["tier"] == "Gold" and tier["benefits"] == ["free shipping"]
    assert tier["next_tier"] == "Platinum" and tier["needed_for_next"] == 450
    await world.track(uid, "Order Completed", T0 + timedelta(days=1), order_id="2", revenue=500)
    await world.pump(T0 + timedelta(days=1))
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Platinum"
    changes = [e["properties"] for e in await world.events(uid) if e["event"] == "Loyalty Tier Changed"]
    assert [(c["previous_tier"], c["tier"], c["direction"]) for c in changes] == [
        (None, "Gold", "up"), ("Gold", "Platinum", "up")]
    sent = (await world.apps["delivery"].get("/v1/messages", headers=world.h, params={"to": email})).json()["messages"]
    code = (await world.code(uid))["code"]
    assert sorted(m["subject"] for m in sent) == [f"You're Gold: 550 points, code {code}",
                                                  f"You're Platinum: 1050 points, code {code}"]
    preview = await world.apps["campaign"].post(f"/v1/templates/{tpl.json()['id']}/preview", headers=world.h,
                                                json={"user": uid, "data": {"tier": "Platinum"}})
    assert preview.status_code == 200, preview.text
    assert f"?ref={code}&channel=email" in preview.json()["text"]
    assert "Benefits: free shipping, exclusive offers." in preview.json()["text"]

    # a refund takes its points back, but a tier is kept for 30 days
    await world.track(uid, "Order Refunded", T0 + timedelta(days=2), order_id="2")
    await world.pump(T0 + timedelta(days=2))
    assert await world.balance(uid) == 550
    await maintenance.run(world.sm, now=T0 + timedelta(days=20))
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Platinum"
    await maintenance.run(world.sm, now=T0 + timedelta(days=32))
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Gold"
    # a year later nothing earned in the window: down to Silver (the base tier)
    await maintenance.run(world.sm, now=T0 + timedelta(days=400))
    await world.pump(T0 + timedelta(days=400))
    changes = [e["properties"] for e in await world.events(uid) if e["event"] == "Loyalty Tier Changed"]
    # (both dated on their receipt: the simulated clock is ahead of ingest's, and one forward carried both)
    assert sorted((c["tier"], c["direction"]) for c in changes[2:]) == [("Gold", "down"), ("Silver", "down")]
    assert len((await world.apps["delivery"].get("/v1/messages", headers=world.h,
                                                 params={"to": email})).json()["messages"]) == 2  # ups only


async def test_badges_need_every_event_within_the_period_and_leaderboards_rank_by_period(world) -> None:
    await world.program("loyalty", earn=[{"event": "Order Completed", "per_unit": 1}], badges=[
        {"name": "Explorer", "events": ["Project Created", "Report Shared", "Teammate Invited"], "within_days": 7,
         "points": 70}])
    ada, ben = _uid("ada"), _uid("ben")
    for uid in (ada, ben):
        await world.identify(uid)
    await world.track(ada, "Project Created", T0)
    await world.track(ada, "Report Shared", T0 + timedelta(days=3))
    await world.track(ada, "Teammate Invited", T0 + timedelta(days=9))  # the project is too long ago
    await world.pump(T0 + timedelta(days=9))
    [badge] = (await world.get(f"/v1/loyalty/members/{ada}/badges"))["badges"]
    assert badge["earned_at"] is None and len(badge["events_done"]) == 3
    await world.track(ada, "Project Created", T0 + timedelta(days=10))
    await world.track(ada, "Project Created", T0 + timedelta(days=11))
    await world.pump(T0 + timedelta(days=11))
    [badge] = (await world.get(f"/v1/loyalty/members/{ada}/badges"))["badges"]
    assert badge["earned_at"] is not None
    assert await world.balance(ada) == 70
    assert [e["properties"]["badge"] for e in await world.events(ada) if e["event"] == "Badge Earned"] == ["Explorer"]

    await world.track(ben, "Order Completed", T0, revenue=50)
    await world.track(ben, "Order Completed", T0 - timedelta(days=40), revenue=500)
    await world.pump(T0 + timedelta(days=11))
    month = await world.get("/v1/loyalty/leaderboard", period="month", at=T0.isoformat())
    ranks = [(m["user_id"], m["points"]) for m in month["members"]]
    assert ranks[0] == (ben, 500) or (ben, 50) in ranks  # the 500 may fall in the month before
    alltime = await world.get("/v1/loyalty/leaderboard", period="all")
    assert [(m["user_id"], m["points"]) for m in alltime["members"]] == [(ben, 550), (ada, 70)]


async def test_a_member_credited_only_by_hand_is_named_by_their_user_id_on_the_leaderboard(world) -> None:
    """Points given with POST …/adjust alone made an account without the member's ids: the loyalty leaderboard
    listed them as ``user_id: null`` though the referral leaderboard named the same profile."""
    await world.program("loyalty", earn=[{"event": "Order Completed", "per_unit": 1}])
    ada = _uid("ada")
    pid = await world.identify(ada, email=f"{ada}@example.com")
    r = await world.apps["campaign"].post(f"/v1/loyalty/members/{ada}@example.com/adjust", headers={
        **world.h, "Idempotency-Key": "goodwill"}, json={"points": 40, "reason": "goodwill"})
    assert r.status_code == 201, r.text
    board = await world.get("/v1/loyalty/leaderboard", period="all")
    assert [(m["profile_id"], m["user_id"], m["points"]) for m in board["members"]] == [(pid, ada, 40)]


async def test_program_configuration_and_errors_are_problem_documents(world) -> None:
    c = world.apps["campaign"]
    r = await c.get("/v1/programs/loyalty", headers=world.h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    bad = await c.put("/v1/programs/loyalty", headers=world.h, json={"config": {"earn": [{"event": "X"}]}})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    bad = await c.put("/v1/programs/referral", headers=world.h, json={"config": {"referrer_reward": {
        "type": "coupon", "pool": "has spaces"}}})
    assert bad.status_code == 422
    # an event no event can be (empty or blank) names no rule: stored, it never fired and nothing said so
    for kind, config, loc in (("referral", {"signup_events": ["Signed Up", "  "]}, ["signup_events", "1"]),
                              ("referral", {"refund_event": ""}, ["refund_event"]),
                              ("loyalty", {"badges": [{"name": "b", "events": [""]}]}, ["badges", "0", "events", "0"]),
                              ("loyalty", {"refund_event": " "}, ["refund_event"])):
        bad = await c.put(f"/v1/programs/{kind}", headers=world.h, json={"enabled": False, "config": config})
        assert bad.status_code == 422, (config, bad.text)
        assert [e["loc"][-len(loc):] for e in bad.json()["errors"]] == [loc], bad.text
    out = await world.program("loyalty", tiers=[{"name": "Gold", "threshold": 10}, {"name": "Base", "threshold": 0}])
    assert [t["name"] for t in out["config"]["tiers"]] == ["Base", "Gold"]  # sorted by threshold
    assert (await c.post("/v1/referral/codes", headers=world.h, json={"user": "nobody-here"})).status_code == 404
    uid = _uid("cfg")
    await world.identify(uid)
    assert (await c.post("/v1/referral/codes", headers=world.h, json={"user": uid})).status_code == 404  # no program
    await world.program("referral", **REFERRAL)
    r = await c.post("/v1/referral/invites", headers=world.h, json={"user": uid, "channel": "social",
                                                                     "idempotency_key": "k1"})
    assert r.status_code == 202 and "channel=social" in r.json()["link"]
    await c.post("/v1/referral/invites", headers=world.h, json={"user": uid, "channel": "social",
                                                                "idempotency_key": "k1"})
    await world.pump(T0)
    assert [e["event"] for e in await world.events(uid)].count("Referral Sent") == 1
    assert (await c.get("/v1/loyalty/members/x/history", headers=world.h, params={"after": "zz"})).status_code == 400
    assert (await c.get("/v1/coupon-pools/none", headers=world.h)).status_code == 404


async def test_an_invite_key_reused_for_another_channel_is_a_409_and_a_retry_gets_the_first_answer(world) -> None:
    """The same ``idempotency_key`` with channel email, then sms, then social answered 202 each time with that
    channel's link, while only the first ``Referral Sent`` was stored: the caller believed three shares were
    recorded. As on messages, the trigger and the ledger: the same content replays, other content is a 409."""
    c = world.apps["campaign"]
    await world.program("referral", **REFERRAL)
    uid, other = _uid("inviter"), _uid("inviter")
    await world.identify(uid)
    await world.identify(other)
    url, body = "/v1/referral/invites", {"user": uid, "channel": "email", "idempotency_key": "share-1"}
    first = await c.post(url, headers=world.h, json=body)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    await c.put("/v1/programs/referral", headers=world.h, json={"config": {"landing_url": "https://new.example/j"}})
    again = await c.post(url, headers=world.h, json=body)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()  # the stored answer (its link), not one made anew
    for channel in ("sms", "social"):
        r = await c.post(url, headers=world.h, json={**body, "channel": channel})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["idempotency_key"] == "share-1"
    mine = await c.post(url, headers=world.h, json={**body, "user": other, "channel": "sms"})  # a key is per referrer
    assert mine.status_code == 202 and "channel=sms" in mine.json()["link"]
    await world.pump(T0)
    sent = [e for e in await world.events(uid) if e["event"] == "Referral Sent"]
    assert [e["properties"]["channel"] for e in sent] == ["email"]


async def test_pausing_a_program_keeps_its_configuration_and_an_unknown_field_is_refused(world) -> None:
    """``{"enabled": false}`` alone (pausing) wiped the program back to its defaults: the landing URL, the rewards,
    the tiers (members lost theirs) and badges; a misspelt ``configuration`` did the same with a 200. Now a field
    the request leaves out keeps its stored value, and one the API does not know is a 422 naming it."""
    c = world.apps["campaign"]
    await world.program("referral", **REFERRAL)
    badges = [{"name": "Explorer", "events": ["Project Created"], "within_days": 7, "points": 10}]
    await world.program("loyalty", **LOYALTY, badges=badges)
    uid = _uid("paused")
    await world.identify(uid, email=f"{uid}@example.com")
    await world.track(uid, "Order Completed", T0, order_id="o-1", revenue=600)
    await world.pump(T0 + timedelta(hours=1))
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Gold"

    r = await c.put("/v1/programs/referral", headers=world.h, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False, r.text
    cfg = r.json()["config"]
    assert cfg["landing_url"] == REFERRAL["landing_url"] and cfg["referred_reward"] == {"type": "coupon",
                                                                                        "pool": "welcome"}
    r = await c.put("/v1/programs/loyalty", headers=world.h, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert [t["name"] for t in r.json()["config"]["tiers"]] == ["Silver", "Gold", "Platinum"]
    assert [b["name"] for b in r.json()["config"]["badges"]] == ["Explorer"]
    r = await c.put("/v1/programs/loyalty", headers=world.h, json={"enabled": True})
    assert r.json()["enabled"] is True and len(r.json()["config"]["earn"]) == 3
    tier = await world.get(f"/v1/loyalty/members/{uid}/tier")
    assert tier["tier"] == "Gold" and tier["next_tier"] == "Platinum"

    # a config key given replaces its value; the keys left out, and `enabled`, keep theirs
    r = await c.put("/v1/programs/referral", headers=world.h, json={"config": {"attribution_window_days": 7}})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["config"] == {**cfg, "attribution_window_days": 7}
    r = await c.put("/v1/programs/loyalty", headers=world.h, json={"config": {"expiry_months": 6}})
    assert r.json()["config"]["expiry_months"] == 6 and len(r.json()["config"]["tiers"]) == 3

    before = await world.get("/v1/programs/referral")
    for body, loc in [({"configuration": {"landing_url": "https://typo.example/"}}, ["body", "configuration"]),
                      ({"enabled": True, "enable": False}, ["body", "enable"]),
                      ({"config": {"landing_ulr": "https://typo.example/"}}, ["body", "config", "landing_ulr"])]:
        r = await c.put("/v1/programs/referral", headers=world.h, json=body)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(loc, "extra_forbidden")]
    assert await world.get("/v1/programs/referral") == before


# ------------------------------------------------------------------ concurrent redemptions (property test)

_redemptions = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), min_size=1, max_size=12)


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 200), redemptions=_redemptions)
def test_concurrent_redemptions_never_overspend_and_keep_the_ledger_consistent(world, start, redemptions) -> None:
    """Redemptions (amount, idempotency key) sent all at once for one member: the balance never goes
    negative, each key spends at most once, what succeeded is exactly what was taken, and the ledger's
    entries, lots and balance agree."""
    asyncio.get_event_loop().run_until_complete(_redeem_concurrently(world, start, redemptions))


async def _redeem_concurrently(world, start: int, redemptions: list[tuple[int, int]]) -> None:
    if not (await world.apps["campaign"].get("/v1/programs/loyalty", headers=world.h)).status_code == 200:
        await world.program("loyalty", earn=[{"event": "Order Completed", "per_unit": 1}], expiry_months=12)
    uid = _uid("race")
    await world.identify(uid)
    if start:
        r = await world.apps["campaign"].post(f"/v1/loyalty/members/{uid}/adjust", headers={
            **world.h, "Idempotency-Key": "seed"}, json={"points": start, "reason": "seed"})
        assert r.status_code == 201, r.text
    keys = [f"k{key}" for _, key in redemptions]
    answers = await asyncio.gather(*(world.redeem(uid, points, key) for (points, _), key in
                                     zip(redemptions, keys, strict=True)))
    assert {a.status_code for a in answers} <= {200, 201, 409}
    spent: dict[str, int] = {}  # key -> points taken
    for (points, _), key, a in zip(redemptions, keys, answers, strict=True):
        if a.status_code in (200, 201):
            assert a.json()["points"] == -points and a.json()["balance_after"] >= 0
            assert spent.setdefault(key, points) == points  # a key never spends twice (nor another amount)
    balance = await world.balance(uid)
    assert balance == start - sum(spent.values()) >= 0
    for (points, _), key, a in zip(redemptions, keys, answers, strict=True):
        if a.status_code == 409 and key not in spent:
            assert a.json().get("balance", 0) < points  # refused only for want of points
    history = await world.history(uid)
    assert sum(e["points"] for e in history) == balance
    assert sum(e["remaining"] for e in history) == balance
    assert len([e for e in history if e["kind"] == "redeem"]) == len(spent)


async def test_the_demo_runs_the_referral_and_loyalty_examples_end_to_end(world, settings) -> None:
    """examples/lifecycle.yaml through `tenure apply`'s code, the demo's people, the worker: mail says so."""
    from services import demo, devserver, resources

    mesh = world.internal._http
    api = resources.Api(mesh, {s: settings.url_of(s) for s in ("ingest", "segment", "campaign", "delivery")},
                        world.h)
    async with world.sm() as s, s.begin():  # the welcome campaign `tenure dev` gives its demo workspace
        welcome = await devserver.create_welcome(s, world.ws)
    lines = await demo.run(mesh, api, settings.url_of("ingest"), world.wk[0])
    assert lines[0] == "lifecycle.yaml: 2 programs, 12 templates, 2 segments, 9 campaigns created or updated, 0 unchanged"
    assert lines[1].startswith("campaign 'Welcome email' (tenure dev's welcome) paused: Onboarding sends the welcome")
    assert (await world.get(f"/v1/campaigns/{welcome['id']}"))["status"] == "paused"
    del lines[1]
    again = await resources.plan(api, resources.load(demo.EXAMPLE.read_text()))
    assert {c.action for c in again} == {"unchanged"}  # applying twice changes nothing
    exported = resources.load(await resources.export(api))
    assert [p["name"] for p in exported["programs"]] == ["referral", "loyalty"]
    now = datetime.now(UTC)
    await world.pump(now)
    await world.pump(now)

    async def subjects(uid: str) -> set[str]:
        r = await world.apps["delivery"].get("/v1/messages", headers=world.h,
                                             params={"to": f"{uid}@demo.tenure.dev"})
        return {m["subject"] for m in r.json()["messages"]}

    assert "Du bist jetzt Gold-Mitglied" in await subjects("demo-klaus")  # 3 orders + first-order bonus: Gold
    # one welcome per sign-up: Onboarding's, not also the paused built-in one's
    assert {s for s in await subjects("demo-ada") if s.startswith("Welcome")} == {"Welcome to Acme, Ada!"}
    # the French and German variants name the tier's benefits in their language (the program's are English)
    tier = next(t for t in (await world.get("/v1/templates", limit=100))["templates"] if t["name"] == "loyalty-tier")
    for user, says in (("demo-klaus", "Deine Vorteile: Mitgliederpreise und kostenloser Versand."),
                       ("demo-jean", "Vos avantages : prix membres.")):
        r = await world.apps["campaign"].post(f"/v1/templates/{tier['id']}/preview", headers=world.h,
                                              json={"user": user, "data": {"tier": "Gold"}})
        assert r.status_code == 200 and says in r.json()["text"], r.text
        assert "member" not in r.json()["text"] and "shipping" not in r.json()["text"], r.text
    assert {"Glad you like Acme! Invite a friend, you both get a month",  # NPS 10: the invite with the link
            "Your friend joined Acme: +500 points"} <= await subjects("demo-yuki")
    assert "Your welcome gift: WELCOME-0001" in await subjects("demo-noah")
    assert await world.balance("demo-yuki") == 49 + 50 + 500
    [ref] = await world.referrals(referrer="demo-yuki")
    assert ref["status"] == "rewarded" and ref["channel"] == "email"
    tpl = next(t for t in (await world.get("/v1/templates", limit=100))["templates"] if t["name"] == "referral-reward")
    preview = await world.apps["campaign"].post(f"/v1/templates/{tpl['id']}/preview", headers=world.h,
                                                json={"user": "demo-yuki", "data": {"points": 500}})
    code = (await world.code("demo-yuki"))["code"]
    assert "You now have 599 points (Gold)" in preview.json()["text"] and code in preview.json()["text"]

    # a second `tenure demo` stores nothing again: no second welcome, Grace no repeat buyer, no second reward
    before = {uid: await subjects(uid) for uid in ("demo-ada", "demo-grace", "demo-yuki", "demo-jean")}
    counts = {uid: len((await world.apps["delivery"].get("/v1/messages", headers=world.h, params={
        "to": f"{uid}@demo.tenure.dev"})).json()["messages"]) for uid in before}
    lines = await demo.run(mesh, api, settings.url_of("ingest"), world.wk[0])
    assert all(line.endswith("(sent before: nothing new)") for line in lines[2:]), lines
    await world.pump(datetime.now(UTC))
    await world.pump(datetime.now(UTC))
    assert {uid: len((await world.apps["delivery"].get("/v1/messages", headers=world.h, params={
        "to": f"{uid}@demo.tenure.dev"})).json()["messages"]) for uid in before} == counts
    assert await world.balance("demo-yuki") == 49 + 50 + 500


async def test_erasure_removes_the_programs_records_and_export_lists_them(world) -> None:
    from services.campaign import privacy

    await world.program("referral", **REFERRAL)
    await world.program("loyalty", **LOYALTY)
    ref, friend = _uid("gdpr-ref"), _uid("gdpr-friend")
    await world.identify(ref, email=f"{ref}@example.com")
    code = (await world.code(ref))["code"]
    await world.track(friend, "Signed Up", T0, referral_code=code)
    await world.track(friend, "Order Completed", T0 + timedelta(hours=1), order_id="g1", revenue=20)
    await world.pump(T0 + timedelta(hours=2))
    assert await world.balance(ref) == 500 and await world.balance(friend) == 20 + 100
    pids = [uuid.UUID((await world.apps["ingest"].get(f"/v1/profiles/{u}", headers=world.h)).json()["id"])
            for u in (ref, friend)]
    async with world.sm() as s, s.begin():
        exported = await privacy.export(s, world.ws, pids[:1])
        assert [c["code"] for c in exported["referral_codes"]] == [code]
        assert len(exported["referrals"]) == 1 and exported["loyalty_accounts"][0]["balance"] == 500
        erased = await privacy.erase(s, world.ws, pids[:1])
    assert erased["referral_codes"] == 1 and erased["referrals"] == 1 and erased["loyalty_ledger"] == 1
    assert erased["referral_rewards"] == 2  # the referral's rewards on both sides
    assert await world.balance(ref) == 0 and await world.referrals(referrer=ref) == []
    assert await world.balance(friend) == 120  # the other person's points are theirs


async def test_a_referrals_two_sides_never_name_each_other(world) -> None:
    """Each side's referral events (and ledger entries) are filed in that person's history, which the other's
    erasure leaves alone: they named the counterpart's userId (``referred_user_id``, ``referrer_user_id``), and the
    referrer's reward events the referred user's order (whose id may name them). Only ``referral_id`` links the
    two now: once Alice is erased, nothing in Rita's export (ingest's events, segment's, campaign's) names her."""
    await world.program("referral", **{**REFERRAL, "referred_reward": {"type": "points", "points": 100}},
                        qualifying={"event": "Order Completed"})
    await world.program("loyalty", **LOYALTY)
    rita, alice = _uid("rita"), _uid("alice")
    await world.identify(rita, email=f"{rita}@example.com")
    code = (await world.code(rita))["code"]
    await world.identify(alice, email=f"{alice}@example.com")
    await world.track(alice, "Signed Up", T0, referral_code=code)
    order = f"{alice}-1"  # as shops number them
    await world.track(alice, "Order Completed", T0 + timedelta(hours=1), order_id=order, revenue=20)
    await world.pump(T0 + timedelta(hours=2))
    await world.track(alice, "Order Refunded", T0 + timedelta(hours=3), order_id=order)
    await world.pump(T0 + timedelta(hours=4))

    def referral_events(events: list[dict]) -> list[dict]:
        return [e for e in events if (e["event"] or "").startswith("Referral")]

    ritas = referral_events(await world.events(rita))
    alices = referral_events(await world.events(alice))
    names = ["Referral Converted", "Referral Reward Granted", "Referral Reward Reversed"]
    assert [e["event"] for e in ritas] == [e["event"] for e in alices] == names
    assert alice not in str(ritas) and rita not in str(alices)
    assert {e["properties"]["referral_id"] for e in ritas + alices} == {ritas[0]["properties"]["referral_id"]}
    assert [e["properties"].get("order_id") for e in alices[1:]] == [order, order]  # their own order
    assert alice not in str(await world.history(rita))

    r = await world.apps["ingest"].post("/v1/privacy/erasure", headers=world.h, json={"user": alice})
    assert r.status_code == 202, r.text
    await _erase(world, r.json()["id"])
    r = await world.apps["ingest"].get(f"/v1/privacy/export/{rita}", headers=world.h)
    assert r.status_code == 200 and [e["event"] for e in referral_events(r.json()["events"])] == names
    assert alice not in r.text


async def test_the_export_lists_the_first_touch_fingerprints_and_trigger_keys_the_erasure_deletes(world) -> None:
    """docs/programs.md says the export includes what the erasure deletes; the first touch, the fingerprints and an
    API trigger's idempotency key were left out. Through ingest's privacy API, fingerprints as the SHA-256 digests
    they are kept as."""
    await world.program("referral", **REFERRAL)
    rita, alice = _uid("rita"), _uid("alice")
    await world.identify(rita, email=f"{rita}@example.com")
    code = (await world.code(rita))["code"]
    await world.identify(alice, email=f"{alice}@example.com")
    await world.track(alice, "Signed Up", T0, referral_code=code, context={"device": {"id": f"device-{alice}"}})
    await world.pump(T0 + timedelta(hours=1))
    tag = uuid.uuid4().hex[:8]
    tpl = (await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"t-{tag}", "subject": "Hi", "text": "Hi"})).json()["id"]
    camp = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"api-{tag}", "trigger": {"type": "api"}, "steps": [{"id": "s", "type": "send", "template_id": tpl}]})
    assert camp.status_code == 201, camp.text
    entered = await world.apps["campaign"].post(f"/v1/campaigns/{camp.json()['id']}/trigger", headers={
        **world.h, "Idempotency-Key": f"key-{tag}"}, json={"user": alice})
    assert entered.status_code == 202, entered.text

    r = await world.apps["ingest"].get(f"/v1/privacy/export/{alice}", headers=world.h)
    assert r.status_code == 200, r.text
    theirs = r.json()["campaign"]
    assert [(t["code"], t["touched_at"][:19]) for t in theirs["referral_touches"]] == [(code, T0.isoformat()[:19])]
    prints = theirs["referral_fingerprints"]
    assert {p["kind"] for p in prints} == {"email", "device"} and all(len(p["digest"]) == 64 for p in prints), prints
    assert f"{alice}@example.com" not in str(prints) and f"device-{alice}" not in str(prints)
    assert [k["key"] for k in theirs["trigger_keys"]] == [f"key-{tag}"]

    r = await world.apps["ingest"].post("/v1/privacy/erasure", headers=world.h, json={"user": alice})
    assert r.status_code == 202, r.text
    removed = (await _erase(world, r.json()["id"]))["services"]["campaign"]["removed"]
    assert (removed["referral_touches"], removed["referral_fingerprints"], removed["trigger_keys"]) == (
        1, len(prints), 1)


async def _erase(world: Programs, request_id: str) -> dict:
    """Ingest's worker asks the other services to erase: the request, completed."""
    from services.ingest import privacy

    await privacy.propagate(world.sm, world.internal, limit=1000, backoff_base_s=0)
    done = (await world.apps["ingest"].get(f"/v1/privacy/requests/{request_id}", headers=world.h)).json()
    assert done["status"] == "completed", done
    return done


async def test_odd_events_never_stop_the_feed_and_junk_refs_take_no_first_touch(world) -> None:
    """What any client can send with the public write key: a free-form `context`, a broken URL, an absurd
    revenue, a refund of an order that earned nothing. Each is digested or skipped; the feed moves on, and
    the events around them still count."""
    await world.program("referral", **REFERRAL)
    await world.program("loyalty", **LOYALTY)
    ann, eve = _uid("ann"), _uid("eve")
    await world.identify(ann, email=f"{ann}@example.com")
    code = (await world.code(ann))["code"]
    await world.track(eve, "Landing Viewed", T0, url="https://acme.example/join?ref=producthunt")  # not a code
    await world.track(eve, "Landing Viewed", T0, context={"page": "home", "traits": "x", "device": 7})
    await world.track(eve, "Landing Viewed", T0, url="http://[::1/join?ref=" + code)  # not a URL
    await world.track(eve, "Order Completed", T0, order_id="huge", revenue=5e9)
    await world.track(eve, "Order Completed", T0, order_id="free")  # no revenue: only the first-order bonus
    await world.track(eve, "Order Refunded", T0 + timedelta(hours=1), order_id="free")
    await world.track(eve, "Signed Up", T0 + timedelta(days=1), referral_code=code)  # the real referral
    await world.track(eve, "Review Submitted", T0 + timedelta(days=1))
    await world.pump(T0 + timedelta(days=2))

    eve_pid = (await world.apps["ingest"].get(f"/v1/profiles/{eve}", headers=world.h)).json()["id"]
    (referral,) = await world.referrals(referrer=ann)
    assert referral["referred_profile_id"] == eve_pid  # `?ref=producthunt` did not take the first-touch slot
    assert await world.balance(eve) == 100 + 50  # the bonus and the review; the absurd revenue earned nothing
    async with world.sm() as s:
        cursor = (await s.execute(text("select cursor from campaign.consumers where name = 'events'"))).scalar_one()
    async with world.sm() as s:
        behind = (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws"),
                                  {"ws": world.ws})).scalar_one()
    assert cursor and behind >= 8


async def test_a_guest_who_logs_in_brings_points_and_code_to_the_account(world) -> None:
    """ingest merges the guest's profile into the known user's; the programs follow the merge."""
    await world.program("referral", **REFERRAL)
    await world.program("loyalty", **LOYALTY)
    uid, guest = _uid("member"), uuid.uuid4().hex
    await world.identify(uid, email=f"{uid}@example.com")
    await world.track(uid, "Order Completed", T0, order_id="m-1", revenue=40)  # 40 + the 100 first-order bonus
    await world.send("track", {"anonymousId": guest, "event": "Order Completed",
                               "properties": {"order_id": "g-1", "revenue": 25}}, T0 + timedelta(hours=1))
    await world.pump(T0 + timedelta(hours=2))
    member_code = (await world.code(uid))["code"]
    guest_code = (await world.code(guest))["code"]  # shared while browsing as a guest
    assert await world.balance(uid) == 140
    assert await world.balance(guest) == 125

    # the guest logs in: one person; then someone signs up with the code the guest had shared
    await world.send("identify", {"userId": uid, "anonymousId": guest}, T0 + timedelta(hours=3))
    friend = _uid("friend")
    await world.identify(friend, at=T0 + timedelta(hours=4), email=f"{friend}@example.com")
    await world.track(friend, "Signed Up", T0 + timedelta(hours=4), referral_code=guest_code)
    await world.pump(T0 + timedelta(hours=5))
    await world.pump(T0 + timedelta(hours=5))  # a replayed page moves nothing twice
    assert await world.balance(uid) == 140 + 125
    assert sorted(e["source"].split(":")[0] for e in await world.history(uid)) == ["event", "event", "first", "first"]
    member_pid = (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]
    (referral,) = await world.referrals(referrer=uid)
    assert referral["referrer_profile_id"] == member_pid and referral["code"] == guest_code
    assert (await world.code(uid))["code"] == member_code  # the member's own code stays theirs


async def test_a_refunded_order_stops_counting_toward_the_tier_even_after_its_points_were_spent(world) -> None:
    await world.program("loyalty", **LOYALTY)
    uid = _uid("buyer")
    await world.identify(uid, email=f"{uid}@example.com")
    await world.track(uid, "Order Completed", T0, order_id="big", revenue=600)  # 600 + 100 first-order bonus
    await world.pump(T0 + timedelta(hours=1))
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Gold"
    assert (await world.redeem(uid, 650, "spend-it")).status_code == 201  # spent before the refund
    await world.track(uid, "Order Refunded", T0 + timedelta(days=1), order_id="big")
    await world.pump(T0 + timedelta(days=1, hours=1))
    tier = await world.get(f"/v1/loyalty/members/{uid}/tier")
    assert await world.balance(uid) == 0  # only the 50 left could be taken back
    assert tier["qualifying_value"] == 0  # but the tier no longer counts any of the order's 700 points
    await maintenance.run(world.sm, now=T0 + timedelta(days=40))  # past the 30 days Gold is kept
    assert (await world.get(f"/v1/loyalty/members/{uid}/tier"))["tier"] == "Silver"
