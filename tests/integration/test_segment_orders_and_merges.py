"""Segment facts that were wrong in edge cases an audit found: orders sent twice, refunds naming only the order,
windows inside property filters, date attributes ordered, merged-away profiles, the referred side of a referral,
numbers stored as text. Definitions saved and members read through the API; events folded as the feed consumer
folds them."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.segment import evaluation
from tests.integration import test_segment_conditions as conditions_ctx

NOW = datetime.now(UTC)


def _ev(ws, pid, kind="track", *, event=None, props=None, traits=None, days_ago=0.0) -> dict:
    return {"workspace_id": str(ws), "profile_id": str(pid), "type": kind, "event": event,
            "message_id": uuid.uuid4().hex, "properties": props or {}, "traits": traits or {},
            "timestamp": (NOW - timedelta(days=days_ago)).isoformat()}


class Ctx(conditions_ctx.Ctx):
    """test_segment_conditions' context, plus folding feed pages and reading attributes and stages."""

    async def fold(self, *events) -> None:
        """One page of the feed, folded and its profiles re-evaluated (as the worker does)."""
        async with self.sm() as s, s.begin():
            affected = await evaluation.apply_events(s, list(events))
            for ws, pids in affected.items():
                await evaluation.reevaluate(s, ws, pids)

    async def attributes(self, pid) -> dict:
        r = await self.seg.get(f"/v1/profiles/{pid}/attributes", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    async def stage(self, pid) -> str | None:
        r = await self.seg.get(f"/v1/lifecycle/{pid}", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()["stage"]


@pytest.fixture
def ctx(apps, workspace, sessionmaker) -> Ctx:
    return Ctx(apps, workspace, sessionmaker)


def _order(ws, pid, order_id, revenue, **kw) -> dict:
    return _ev(ws, pid, event="Order Completed", props={"order_id": order_id, "revenue": revenue}, **kw)


async def test_an_order_sent_twice_counts_once(ctx) -> None:
    ws, user, device = ctx.ws, uuid.uuid4(), uuid.uuid4()
    three_orders = await ctx.segment({"type": "performed", "event": "Order Completed", "count": 3})
    three_by_count = await ctx.segment({"type": "attribute", "attribute": "order_count", "op": "gte", "value": 3})
    three_stored = await ctx.segment({"type": "aggregate", "event": "Order Completed", "property": "revenue",
                                      "function": "count", "op": "gte", "value": 3})
    # the same order twice in one page and once more in a later one (a re-send: a new messageId each time)
    await ctx.fold(_order(ws, user, "A-1", 50, days_ago=1), _order(ws, user, "A-1", 50, days_ago=1),
                   _order(ws, user, 7, 30))
    await ctx.fold(_order(ws, user, "A-1", 50), _order(ws, device, "A-1", 50, days_ago=1))
    attrs = await ctx.attributes(user)
    assert (attrs["order_count"], attrs["total_revenue"], attrs["average_order_value"]) == (2, 80.0, 40.0)
    for sid in (three_orders, three_by_count, three_stored):
        assert await ctx.members(sid) == set()
    # the device bought the same order before login: merged in, it is still one order
    await ctx.fold(_ev(ws, user, "merge", props={"merged_profile_id": str(device)}))
    attrs = await ctx.attributes(user)
    assert (attrs["order_count"], attrs["total_revenue"]) == (2, 80.0)
    for sid in (three_orders, three_by_count, three_stored):
        assert await ctx.members(sid) == set()
    # orders without an order id are counted as before
    await ctx.fold(_ev(ws, user, event="Order Completed", props={"revenue": 5}))
    assert (await ctx.attributes(user))["order_count"] == 3
    for sid in (three_orders, three_by_count, three_stored):
        assert await ctx.members(sid) == {str(user)}


async def test_a_refund_with_only_a_total_or_an_order_id_lowers_cltv(ctx) -> None:
    ws, user = ctx.ws, uuid.uuid4()
    big = await ctx.segment({"type": "attribute", "attribute": "total_revenue", "op": "gte", "value": 100})
    await ctx.fold(_order(ws, user, "A", 100, days_ago=2), _order(ws, user, "B", 40, days_ago=2))
    assert (await ctx.attributes(user))["total_revenue"] == 140.0 and await ctx.members(big) == {str(user)}
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "A", "total": 30}, days_ago=1))
    assert (await ctx.attributes(user))["total_revenue"] == 110.0
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "B"}))  # the whole order
    attrs = await ctx.attributes(user)
    assert (attrs["total_revenue"], attrs["order_count"]) == (70.0, 2)
    assert await ctx.members(big) == set()
    # revenue still wins over total
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "A", "revenue": 10, "total": 99}))
    assert (await ctx.attributes(user))["total_revenue"] == 60.0
    # a refund naming only its order, stamped before the order by another system's clock, in the same page
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "C"}, days_ago=0.5),
                   _order(ws, user, "C", 25, days_ago=0.4))
    attrs = await ctx.attributes(user)
    assert (attrs["total_revenue"], attrs["order_count"]) == (60.0, 3)


async def test_windows_in_property_filters_and_last_event_properties_are_rechecked(ctx) -> None:
    ws, user = ctx.ws, uuid.uuid4()
    today = NOW.date()
    trial_ending = await ctx.segment({"type": "performed", "event": "Trial Started", "where": [
        {"property": "ends_on", "op": "within_last_days", "value": 3}]})
    renewed_lately = await ctx.segment({"type": "last_event_property", "event": "Plan Renewed",
                                        "property": "renewed_on", "op": "within_last_days", "value": 3})
    await ctx.fold(_ev(ws, user, event="Trial Started", props={"ends_on": today.isoformat()}),
                   _ev(ws, user, event="Plan Renewed", props={"renewed_on": today.isoformat()}))
    assert await ctx.members(trial_ending) == {str(user)} and await ctx.members(renewed_lately) == {str(user)}
    await evaluation.recheck_windows(ctx.sm, today + timedelta(days=2))
    assert await ctx.members(trial_ending) == {str(user)}
    await evaluation.recheck_windows(ctx.sm, today + timedelta(days=3))  # time passes, no new event
    assert await ctx.members(trial_ending) == set() and await ctx.members(renewed_lately) == set()


async def test_first_and_last_seen_take_ordering_operators(ctx) -> None:
    ws, old, new = ctx.ws, uuid.uuid4(), uuid.uuid4()
    await ctx.fold(_ev(ws, old, event="App Opened", days_ago=10), _ev(ws, old, event="App Opened", days_ago=1),
                   _ev(ws, new, event="App Opened", days_ago=2))
    cut = (NOW - timedelta(days=5)).date().isoformat()
    early = await ctx.segment({"type": "attribute", "attribute": "first_seen", "op": "lt", "value": cut})
    recent = await ctx.segment({"type": "attribute", "attribute": "first_seen", "op": "gte", "value": cut})
    both = await ctx.segment({"type": "attribute", "attribute": "last_seen", "op": "gt", "value": cut})
    assert await ctx.members(early) == {str(old)} and await ctx.members(recent) == {str(new)}
    assert await ctx.members(both) == {str(old), str(new)}
    # operators that could never match are refused on save, naming the field
    for definition, at in (
            ({"type": "attribute", "attribute": "order_count", "op": "within_last_days", "value": 30},
             "definition.attribute.op"),
            ({"type": "and", "children": [{"type": "attribute", "attribute": "first_seen", "op": "gte",
                                           "value": 5}]}, "definition.and.children.0.attribute.op"),
            ({"type": "attribute", "attribute": "last_seen", "op": "equals", "value": cut}, "definition.attribute.op"),
            ({"type": "attribute", "attribute": "first_seen", "op": "not_in", "value": [cut]},
             "definition.attribute.op")):
        r = await ctx.seg.post("/v1/segments", headers=ctx.h, json={"name": "never", "definition": definition})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert [e["at"] for e in r.json()["errors"]] == [at]


async def test_a_merged_away_profile_leaves_every_segment_and_stays_out(ctx) -> None:
    ws, user, device = ctx.ws, uuid.uuid4(), uuid.uuid4()
    never_ordered = await ctx.segment({"type": "not", "child": {"type": "performed", "event": "Order Completed"}})
    never_opened = await ctx.segment({"type": "not", "child": {"type": "performed", "event": "App Opened"}})
    await ctx.fold(_ev(ws, device, event="App Opened", days_ago=1), _order(ws, user, "A", 10))
    assert await ctx.members(never_ordered) == {str(device)} and await ctx.members(never_opened) == {str(user)}
    await ctx.fold(_ev(ws, user, "merge", props={"merged_profile_id": str(device)}))
    assert await ctx.members(never_ordered) == set() and await ctx.members(never_opened) == set()
    # later passes over every profile (a re-check, a backfill) do not bring it back either
    await evaluation.evaluate_all(ctx.sm, ws, segment_ids=None)
    assert await ctx.members(never_ordered) == set() and await ctx.members(never_opened) == set()


async def test_an_erased_profile_marked_for_re_evaluation_does_not_come_back(ctx) -> None:
    """A profile segment had marked dirty when its erasure came: the mark outlived the erasure, the worker
    re-evaluated the profile with no data left, and it entered every "has not done X" segment (campaign then started
    journeys for it). The erasure takes the marks too, and a profile segment holds nothing of is in no segment."""
    from services.segment import partitioning, privacy

    ws, erased, kept = ctx.ws, uuid.uuid4(), uuid.uuid4()
    never_ordered = await ctx.segment({"type": "not", "child": {"type": "performed", "event": "Order Completed"}})
    await ctx.fold(_order(ws, erased, "E", 10), _order(ws, kept, "K", 10))
    async with ctx.sm() as s, s.begin():
        await partitioning.mark_dirty(s, {ws: {erased, kept}})  # (events of theirs on their way)
        await privacy.erase(s, ws, [erased])
    async with ctx.sm() as s, s.begin():  # (this workspace's marks only: other tests' are their workers')
        marked = set((await s.execute(text("delete from segment.dirty_profiles where workspace_id = :ws "
                                           "returning profile_id"), {"ws": ws})).scalars())
        assert marked == {kept}
        await evaluation.reevaluate(s, ws, [erased, kept, uuid.uuid4()])  # (and an id segment never had)
    assert await ctx.members(never_ordered) == set()
    async with ctx.sm() as s:
        left = (await s.execute(text("select count(*) from segment.transitions where workspace_id = :ws "
                                     "and profile_id = :p"), {"ws": ws, "p": erased})).scalar_one()
    assert left == 0


async def test_only_the_referrer_of_a_referral_becomes_an_advocate(ctx) -> None:
    ws, referrer, referred = ctx.ws, uuid.uuid4(), uuid.uuid4()
    props = {"referral_id": "r1", "code": "FRIEND"}
    await ctx.fold(_ev(ws, referrer, event="App Opened"), _ev(ws, referred, event="App Opened"),
                   _ev(ws, referrer, event="Referral Converted", props={**props, "role": "referrer"}),
                   _ev(ws, referred, event="Referral Converted", props={**props, "role": "referred"}))
    assert await ctx.stage(referrer) == "advocacy"
    assert await ctx.stage(referred) == "onboarding"
    # once they refer someone themselves, they are one
    await ctx.fold(_ev(ws, referred, event="Referral Converted", props={"referral_id": "r2", "role": "referrer"}))
    assert await ctx.stage(referred) == "advocacy"


async def test_numbers_stored_as_text_compare_as_numbers(ctx) -> None:
    ws, texty, numeric, wordy = ctx.ws, uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await ctx.fold(_ev(ws, texty, "identify", traits={"age": "42", "seats": "9"}),
                   _ev(ws, numeric, "identify", traits={"age": 38, "seats": 12}),
                   _ev(ws, wordy, "identify", traits={"age": "forty"}))
    # evaluated in SQL (a backfill) and in Python (live, below): the same answer
    over_40 = await ctx.segment({"type": "trait", "trait": "age", "op": "gt", "value": 40})
    over_ten_as_text = await ctx.segment({"type": "trait", "trait": "seats", "op": "gte", "value": "10"})
    with_count = await ctx.segment({"type": "and", "children": [
        {"type": "trait", "trait": "age", "op": "lte", "value": "42"},
        {"type": "not", "child": {"type": "performed", "event": "Never Sent", "where": [
            {"property": "x", "value": 1}]}}]})  # a property filter keeps this one in Python
    assert await ctx.members(over_40) == {str(texty)}
    assert await ctx.members(over_ten_as_text) == {str(numeric)}  # "9" < 10 as numbers, though "9" > "10" as text
    assert await ctx.members(with_count) == {str(texty), str(numeric)}
    late = uuid.uuid4()
    await ctx.fold(_ev(ws, late, "identify", traits={"age": "41.5", "seats": "10"}))
    assert await ctx.members(over_40) == {str(texty), str(late)}
    assert await ctx.members(over_ten_as_text) == {str(numeric), str(late)}


async def test_someone_only_identified_is_onboarding_whatever_the_paging(ctx) -> None:
    """A CRM back-fill (an identify dated 100 days ago) was churned at once, and its first event made it
    "reactivated"; the same two messages in one page made it "onboarding". Activity alone moves recency."""
    ws, paged, batched, answered, promoter = ctx.ws, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    crm = {"email": "crm@example.com"}
    await ctx.fold(_ev(ws, paged, "identify", traits=crm, days_ago=100),
                   _ev(ws, answered, "identify", traits=crm, days_ago=120),
                   _ev(ws, promoter, "identify", traits={"nps": 10}, days_ago=120))
    attrs = await ctx.attributes(paged)
    assert attrs["days_since_last_activity"] is None and attrs["last_seen"] == attrs["first_seen"]
    assert await ctx.stage(paged) == "onboarding" and await ctx.stage(answered) == "onboarding"
    assert await ctx.stage(promoter) == "advocacy"
    idle = await ctx.segment({"type": "attribute", "attribute": "days_since_last_activity", "op": "gte", "value": 30})
    assert await ctx.members(idle) == set()
    # the daily re-check (a pass over every profile) agrees
    await evaluation.recheck_lifecycle(ctx.sm, NOW.date() + timedelta(days=1))
    assert await ctx.stage(paged) == "onboarding"
    await ctx.fold(_ev(ws, paged, event="Signed Up"),
                   _ev(ws, answered, event="NPS Survey Submitted", props={"score": 10}))
    await ctx.fold(_ev(ws, batched, "identify", traits=crm, days_ago=100), _ev(ws, batched, event="Signed Up"))
    assert await ctx.stage(paged) == "onboarding" == await ctx.stage(batched)
    assert await ctx.stage(answered) == "advocacy"
    attrs = await ctx.attributes(paged)
    assert attrs["days_since_last_activity"] == 0 and attrs["first_seen"] < attrs["last_seen"]
    # a customer who did something and then went quiet is churned, and returns reactivated, as before
    back = uuid.uuid4()
    await ctx.fold(_ev(ws, back, event="App Opened", days_ago=100))
    assert await ctx.stage(back) == "churned"
    await ctx.fold(_ev(ws, back, event="App Opened"))
    assert await ctx.stage(back) == "reactivated"


async def test_refunds_of_an_order_take_off_no_more_than_its_value(ctx) -> None:
    """A full refund (only ``order_id``) re-sent with a new messageId took the order's value off twice: revenue
    -70 of orders worth 130. Refunds stating amounts are capped per order too."""
    ws, user = ctx.ws, uuid.uuid4()
    await ctx.fold(_order(ws, user, "rr1", 100, days_ago=2), _order(ws, user, "rr2", 30, days_ago=2))
    refund = _ev(ws, user, event="Order Refunded", props={"order_id": "rr1"}, days_ago=1)
    await ctx.fold(refund)
    assert (await ctx.attributes(user))["total_revenue"] == 30.0
    await ctx.fold({**refund, "message_id": uuid.uuid4().hex})  # an SDK's re-send
    attrs = await ctx.attributes(user)
    assert (attrs["total_revenue"], attrs["average_order_value"], attrs["order_count"]) == (30.0, 15.0, 2)
    # stated amounts add up to the order's value at most: 20, then 20 of the 10 left, then a full refund
    partial = _ev(ws, user, event="Order Refunded", props={"order_id": "rr2", "revenue": 20})
    await ctx.fold(partial)
    assert (await ctx.attributes(user))["total_revenue"] == 10.0
    await ctx.fold({**partial, "message_id": uuid.uuid4().hex},
                   _ev(ws, user, event="Order Refunded", props={"order_id": "rr2"}))
    assert (await ctx.attributes(user))["total_revenue"] == 0.0
    # a refund naming no order takes off its amount, as before
    await ctx.fold(_order(ws, user, "rr3", 50), _ev(ws, user, event="Order Refunded", props={"total": 5}))
    assert (await ctx.attributes(user))["total_revenue"] == 45.0


async def test_a_refund_that_comes_before_its_order_waits_for_it(ctx) -> None:
    """A refund whose order came in a later page of the feed was lost for good (revenue 80 of an order refunded in
    full); it now waits for its order, also across a merge (a stated amount is taken off at once, the excess over
    the order's value given back when it comes)."""
    ws, user, device, other = ctx.ws, uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "r1"}, days_ago=2),
                   _ev(ws, user, event="Order Refunded", props={"order_id": "r2", "total": 100}, days_ago=2))
    assert (await ctx.attributes(user))["total_revenue"] == -100.0
    await ctx.fold(_order(ws, user, "r1", 80, days_ago=3), _order(ws, user, "r2", 60, days_ago=3))
    attrs = await ctx.attributes(user)
    assert (attrs["order_count"], attrs["total_revenue"]) == (2, 0.0)  # r2: 100 stated, 60 to take
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "r1"}))  # nothing left of it
    assert (await ctx.attributes(user))["total_revenue"] == 0.0
    # the device was refunded before login; the order is the user's (and the other way round)
    await ctx.fold(_ev(ws, device, event="Order Refunded", props={"order_id": "m1", "total": 15}),
                   _order(ws, device, "m2", 40), _order(ws, user, "m1", 25),
                   _ev(ws, user, event="Order Refunded", props={"order_id": "m2"}),
                   _order(ws, device, "m3", 70), _order(ws, user, "m3", 70),
                   _ev(ws, device, event="Order Refunded", props={"order_id": "m3", "total": 50}),
                   _ev(ws, user, event="Order Refunded", props={"order_id": "m3", "total": 50}))
    await ctx.fold(_ev(ws, user, "merge", props={"merged_profile_id": str(device)}))
    attrs = await ctx.attributes(user)
    # m1 25 - 15, m2 40 - 40, m3 (one order) 70 - 70
    assert (attrs["order_count"], attrs["total_revenue"]) == (5, 10.0)
    await ctx.fold(_ev(ws, other, event="Order Refunded", props={"order_id": "z"}), _order(ws, other, "y", 9))
    assert (await ctx.attributes(other))["total_revenue"] == 9.0  # a refund waiting names its own order only


async def test_a_lifecycle_stage_reads_as_a_segment(ctx) -> None:
    """GET /v1/lifecycle gives each stage's segment id (the glossary: stages have fixed ids too), but the segment
    and its members were a 404."""
    ws = ctx.ws
    people = sorted(str(uuid.uuid4()) for _ in range(3))
    await ctx.fold(*(_ev(ws, p, event="App Opened") for p in people))
    stages = (await ctx.seg.get("/v1/lifecycle", headers=ctx.h)).json()["stages"]
    onboarding = next(s["segment_id"] for s in stages if s["stage"] == "onboarding")
    r = await ctx.seg.get(f"/v1/segments/{onboarding}", headers=ctx.h)
    assert r.status_code == 200, r.text
    assert r.json()["definition"] == {"type": "stage", "stage": "onboarding"} and r.json()["id"] == onboarding
    seen, after = [], None
    while True:
        r = await ctx.seg.get(f"/v1/segments/{onboarding}/members", headers=ctx.h,
                              params={"limit": 2, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        seen += [m["profile_id"] for m in r.json()["members"]]
        if not (after := r.json()["next_cursor"]):
            break
    assert seen == people
    # a stage is defined by the workspace's lifecycle settings, not edited as a segment
    r = await ctx.seg.put(f"/v1/segments/{onboarding}", headers=ctx.h, json={"name": "mine"})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
    r = await ctx.seg.get(f"/v1/segments/{uuid.uuid4()}/members", headers=ctx.h)
    assert r.status_code == 404


async def test_a_refund_of_an_order_counted_before_orders_were_kept_takes_off_its_amount(ctx, sessionmaker) -> None:
    """An order folded before segment_0006 has no profile_orders row, and never comes again: a refund stating its
    amount took off nothing (it waited for the order for good), where it took that amount off before; revenue, CLTV
    and average order value stayed overstated. A refund stating no amount still waits (its value is unknown)."""
    ws, user = ctx.ws, uuid.uuid4()
    await ctx.fold(_order(ws, user, "old-1", 100, days_ago=5), _order(ws, user, "old-2", 50, days_ago=5))
    async with sessionmaker() as s, s.begin():  # as folded before segment_0006
        await s.execute(text("delete from segment.profile_orders where profile_id = :p"), {"p": user})
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "old-1", "revenue": 40}),
                   _ev(ws, user, event="Order Refunded", props={"order_id": "old-2"}))
    attrs = await ctx.attributes(user)
    assert (attrs["total_revenue"], attrs["order_count"], attrs["average_order_value"]) == (110.0, 2, 55.0)
    # the same refund re-sent is a second refund of 40 (nothing tells them apart)
    await ctx.fold(_ev(ws, user, event="Order Refunded", props={"order_id": "old-1", "total": 40}))
    assert (await ctx.attributes(user))["total_revenue"] == 70.0


_R30 = {"order_id": "p1", "revenue": 30}


@pytest.mark.parametrize(("pages", "revenue"), [
    # pages of (profile, event): "o" the order (100), "o2" its re-send, a dict a refund's properties
    ([[("u", _R30)], [("u", "o")], [("u", _R30)]], 40.0),
    ([[("u", {"order_id": "p1", "total": 150})], [("u", "o")]], 0.0),
    ([[("u", {"order_id": "p1"}), ("u", _R30)], [("u", "o")], [("u", {"order_id": "p1"})]], 0.0),
    ([[("u", _R30), ("u", "o")], [("u", "o2"), ("u", {"order_id": "p1", "revenue": 90})]], 0.0),
    ([[("u", "o"), ("u", _R30)], [("u", _R30), ("u", "o2")]], 40.0),
    ([[("d", _R30), ("u", "o")], [("merge", None)]], 70.0),
    ([[("d", {"order_id": "p1", "total": 150}), ("u", "o")], [("merge", None)]], 0.0),
    ([[("u", _R30), ("d", "o"), ("d", _R30)], [("merge", None)], [("u", _R30)]], 10.0),
    ([[("u", {"order_id": "p1"}), ("d", _R30)], [("merge", None)], [("u", "o")]], 0.0),
])
async def test_an_order_and_its_refunds_leave_the_same_revenue_whatever_their_order(ctx, pages, revenue) -> None:
    """An order of 100 and refunds naming it leave 100 - min(100, what they state) (0 after a refund stating no
    amount), whatever the pages and profiles (merged later) they come in."""
    ws, user, device = ctx.ws, uuid.uuid4(), uuid.uuid4()
    for page in pages:
        events = []
        for who, what in page:
            pid = device if who == "d" else user
            if who == "merge":
                events.append(_ev(ws, user, "merge", props={"merged_profile_id": str(device)}))
            elif isinstance(what, str):
                events.append(_order(ws, pid, "p1", 100, days_ago=1))
            else:
                events.append(_ev(ws, pid, event="Order Refunded", props=what, days_ago=1))
        await ctx.fold(*events)
    attrs = await ctx.attributes(user)
    assert (attrs["total_revenue"], attrs["order_count"]) == (revenue, 1)


async def test_the_upgrade_clears_the_last_seen_of_profiles_certainly_never_active(ctx, settings) -> None:
    """segment_0007 cleared the stored last seen (read as activity: churned at once, "reactivated" by the first
    event) only of identified profiles with no counted event at all: one Tenure had only emailed (delivery's events
    are counted, but are not activity) kept it. It clears it where every counted event is certainly Tenure's, and
    a trait time out of range (2026-02-30, +99:00) no longer aborts the upgrade."""
    from alembic import command

    from shared.migrate import alembic_config

    ws = ctx.ws
    t0, t1 = NOW - timedelta(days=100), NOW - timedelta(days=1)
    iso = lambda t: t.isoformat(timespec="microseconds")  # noqa: E731 - as evaluation._ts_key writes trait times
    bad = {"a": "2026-02-30T00:00:00Z", "b": "2026-01-01T00:00:00+99:00"}
    # name: (last seen, trait times, counted events [(event, messageId, stored)], cleared)
    cases = {
        "identified": (t0, {"email": iso(t0), **bad}, [], True),
        "emailed": (t0, {"email": iso(t0)}, [("Email Delivered", "delivery-1", True),
                                              ("Email Opened", "delivery-2", True),
                                              ("Loyalty Tier Changed", "program-3", True)], True),
        "emailed, retention deleted one": (t0, {"email": iso(t0)}, [("Email Delivered", "delivery-1", True),
                                                                     ("Email Delivered", "delivery-2", False)], False),
        "their own email tool's open": (t0, {"email": iso(t0)}, [("Email Opened", "sendgrid-source-1", True)], False),
        "active once, when identified": (t0, {"email": iso(t0)}, [("App Opened", "m-1", True)], False),
        "active later": (t1, {"email": iso(t0)}, [("App Opened", "m-1", True)], False),
        # an unnamed page view at t0 stores nothing, and a re-identification moved the trait times: the two
        # cannot be told apart, so neither is cleared
        "re-identified later": (t0, {"email": iso(t1)}, [], False),
        "only out-of-range trait times": (t0, bad, [], False),
    }
    pids = {name: uuid.uuid4() for name in cases}
    cfg = alembic_config("segment", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "segment_0006")
    async with ctx.sm() as s, s.begin():
        for name, (last, times, events, _) in cases.items():
            p = {"ws": ws, "p": pids[name], "t0": t0, "last": last}
            await s.execute(text("insert into segment.profile_stats (workspace_id, profile_id, first_seen, last_seen, "
                                 "order_count, revenue) values (:ws, :p, :t0, :last, 0, 0)"), p)
            await s.execute(text("insert into segment.profile_traits (workspace_id, profile_id, traits, trait_times) "
                                 "values (:ws, :p, '{}', CAST(:tt AS jsonb))"), {**p, "tt": json.dumps(times)})
            for event, mid, stored in events:
                await s.execute(text(
                    "insert into segment.event_counts (workspace_id, profile_id, event, day, count) "
                    "values (:ws, :p, :ev, :day, 1) on conflict (workspace_id, profile_id, event, day) "
                    "do update set count = segment.event_counts.count + 1"), {**p, "ev": event, "day": last.date()})
                if stored:
                    await s.execute(text("insert into segment.profile_events (workspace_id, profile_id, event, at, "
                                         "message_id) values (:ws, :p, :ev, :last, :mid)"),
                                    {**p, "ev": event, "mid": mid})

    async def cleared() -> set[str]:
        async with ctx.sm() as s:
            rows = (await s.execute(text("select profile_id from segment.profile_stats where workspace_id = :ws "
                                         "and profile_id = any(:p) and last_seen is null"),
                                    {"ws": ws, "p": list(pids.values())})).scalars().all()
        return {name for name, pid in pids.items() if pid in rows}

    expected = {name for name, case in cases.items() if case[3]}
    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert await cleared() == expected
    attrs = await ctx.attributes(pids["emailed"])
    assert attrs["days_since_last_activity"] is None and attrs["last_seen"] == attrs["first_seen"]
    await asyncio.to_thread(command.downgrade, cfg, "segment_0006")
    assert await cleared() == set()
    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert await cleared() == expected
