"""Every kind of segment condition on real PostgreSQL: definitions saved through the API, events folded
as the feed consumer folds them, members read back through the API."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.segment import conditions, evaluation, set_evaluation
from shared.core import create_workspace

NOW = datetime.now(UTC)


def _ev(ws, pid, kind="track", *, event=None, props=None, traits=None, days_ago=0.0) -> dict:
    return {"workspace_id": str(ws), "profile_id": str(pid), "type": kind, "event": event,
            "message_id": uuid.uuid4().hex, "properties": props or {}, "traits": traits or {},
            "timestamp": (NOW - timedelta(days=days_ago)).isoformat()}


async def _fold(sessionmaker, events) -> None:
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, events)
        for ws, pids in affected.items():
            await evaluation.reevaluate(s, ws, pids, today=NOW.date())  # NOW's date, also past midnight


class Ctx:
    def __init__(self, apps, workspace, sessionmaker):
        self.seg = apps["segment"]
        self.ws = workspace.workspace_id
        self.h = {"Authorization": f"Bearer {workspace.secret_key}"}
        self.sm = sessionmaker

    async def segment(self, definition: dict) -> str:
        r = await self.seg.post("/v1/segments", headers=self.h, json={"name": uuid.uuid4().hex, "definition": definition})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        await evaluation.evaluate_fully(self.sm, self.ws, {uuid.UUID(sid)}, today=NOW.date())
        return sid

    async def members(self, sid: str) -> set[str]:
        r = await self.seg.get(f"/v1/segments/{sid}/members", headers=self.h)
        assert r.status_code == 200, r.text
        return {m["profile_id"] for m in r.json()["members"]}


@pytest.fixture
def ctx(apps, workspace, sessionmaker) -> Ctx:
    return Ctx(apps, workspace, sessionmaker)


async def test_behaviour_with_property_filters_windows_and_aggregates(ctx) -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    ws = ctx.ws
    await _fold(ctx.sm, [
        _ev(ws, a, event="Order Completed", props={"revenue": 120, "category": "shoes"}, days_ago=2),
        _ev(ws, a, event="Order Completed", props={"revenue": 400, "category": "shoes"}, days_ago=40),
        _ev(ws, b, event="Order Completed", props={"revenue": 80, "category": "hats"}, days_ago=1),
        _ev(ws, b, event="Order Completed", props={"revenue": 90, "category": "shoes", "item": {"brand": "Acme"}},
            days_ago=3),
        _ev(ws, c, event="Product Viewed", props={"category": "hats"}, days_ago=5),
        _ev(ws, c, event="Product Viewed", props={"category": "shoes"}, days_ago=1),
        _ev(ws, c, event="Signed Up", days_ago=100),
    ])
    shoes_twice = await ctx.segment({"type": "performed", "event": "Order Completed", "count": 2,
                                     "where": [{"property": "category", "value": "shoes"}]})
    assert await ctx.members(shoes_twice) == {str(a)}
    recent_shoes = await ctx.segment({"type": "performed", "event": "Order Completed", "within_days": 7,
                                      "where": [{"property": "category", "op": "in", "value": ["shoes", "boots"]}]})
    assert await ctx.members(recent_shoes) == {str(a), str(b)}
    nested = await ctx.segment({"type": "performed", "event": "Order Completed",
                                "where": [{"property": "item.brand", "op": "starts_with", "value": "Ac"}]})
    assert await ctx.members(nested) == {str(b)}
    day = (NOW - timedelta(days=40)).date()
    between = await ctx.segment({"type": "performed", "event": "Order Completed",
                                 "between": {"start": str(day - timedelta(days=1)), "end": str(day)}})
    assert await ctx.members(between) == {str(a)}
    big_spenders = await ctx.segment({"type": "aggregate", "event": "Order Completed", "property": "revenue",
                                      "function": "sum", "within_days": 30, "op": "gte", "value": 150})
    assert await ctx.members(big_spenders) == {str(b)}  # a's 400 is outside the window
    high_avg = await ctx.segment({"type": "aggregate", "event": "Order Completed", "property": "revenue",
                                  "function": "avg", "op": "gt", "value": 200})
    assert await ctx.members(high_avg) == {str(a)}
    last_viewed_shoes = await ctx.segment({"type": "last_event_property", "event": "Product Viewed",
                                           "property": "category", "value": "shoes"})
    assert await ctx.members(last_viewed_shoes) == {str(c)}
    old_signup = await ctx.segment({"type": "performed_time", "event": "Signed Up", "which": "first",
                                    "op": "over_days_ago", "value": 90})
    assert await ctx.members(old_signup) == {str(c)}
    recent_buyer = await ctx.segment({"type": "performed_time", "event": "Order Completed", "which": "last",
                                      "op": "within_last_days", "value": 2})
    assert await ctx.members(recent_buyer) == {str(b)}
    never_bought = await ctx.segment({"type": "not", "child": {"type": "performed", "event": "Order Completed"}})
    assert await ctx.members(never_bought) == {str(c)}


async def test_keyed_condition_follows_one_cart(ctx) -> None:
    ws = ctx.ws
    abandoned, bought, second_cart = (uuid.uuid4() for _ in range(3))
    await _fold(ctx.sm, [
        _ev(ws, abandoned, event="Product Added", props={"cart_id": "c1"}, days_ago=1),
        _ev(ws, bought, event="Product Added", props={"cart_id": "c2"}, days_ago=1),
        _ev(ws, bought, event="Order Completed", props={"cart_id": "c2"}, days_ago=0.5),
        _ev(ws, second_cart, event="Product Added", props={"cart_id": "c3"}, days_ago=2),
        _ev(ws, second_cart, event="Order Completed", props={"cart_id": "c3"}, days_ago=1.5),
        _ev(ws, second_cart, event="Product Added", props={"cart_id": "c4"}, days_ago=1),
    ])
    sid = await ctx.segment({"type": "keyed", "key": "cart_id", "event": "Product Added",
                             "without": "Order Completed", "within_days": 7})
    assert await ctx.members(sid) == {str(abandoned), str(second_cart)}
    # checking out the open cart takes the profile out, through the feed
    await _fold(ctx.sm, [_ev(ws, abandoned, event="Order Completed", props={"cart_id": "c1"})])
    assert await ctx.members(sid) == {str(second_cart)}


async def test_traits_accounts_and_email_engagement(ctx) -> None:
    ws = ctx.ws
    a, b = uuid.uuid4(), uuid.uuid4()
    signed = (NOW - timedelta(days=3)).isoformat()
    await _fold(ctx.sm, [
        _ev(ws, a, "identify", traits={"email": "ada@example.com", "signed_up_at": signed, "plan": "pro"}),
        _ev(ws, b, "identify", traits={"email": "bob@other.org", "signed_up_at": "2020-01-01", "plan": "free"}),
        _ev(ws, a, "group", props={"groupId": "acme"}, traits={"industry": "retail", "employees": 500}),
        _ev(ws, b, "group", props={"groupId": "tiny"}, traits={"industry": "retail", "employees": 3}),
        _ev(ws, b, event="Email Opened", days_ago=1),
        _ev(ws, b, event="Email Link Clicked", days_ago=20),
    ])
    recent = await ctx.segment({"type": "trait", "trait": "signed_up_at", "op": "within_last_days", "value": 7})
    assert await ctx.members(recent) == {str(a)}
    old = await ctx.segment({"type": "trait", "trait": "signed_up_at", "op": "before", "value": "2021-01-01"})
    assert await ctx.members(old) == {str(b)}
    domain = await ctx.segment({"type": "trait", "trait": "email", "op": "contains", "value": "@example.com"})
    assert await ctx.members(domain) == {str(a)}
    in_plans = await ctx.segment({"type": "trait", "trait": "plan", "op": "not_in", "value": ["pro", "team"]})
    assert await ctx.members(in_plans) == {str(b)}
    big_accounts = await ctx.segment({"type": "account_trait", "trait": "employees", "op": "gte", "value": 100})
    assert await ctx.members(big_accounts) == {str(a)}
    opened = await ctx.segment({"type": "email_engagement", "action": "opened", "within_days": 7})
    clicked_recently = await ctx.segment({"type": "email_engagement", "action": "clicked", "within_days": 7})
    assert await ctx.members(opened) == {str(b)} and await ctx.members(clicked_recently) == set()
    # the account grows: its members are re-evaluated although they sent nothing themselves
    await _fold(ctx.sm, [_ev(ws, b, "group", props={"groupId": "tiny"}, traits={"employees": 250},
                             days_ago=-0.01)])
    assert await ctx.members(big_accounts) == {str(a), str(b)}


async def test_stage_and_segment_of_segment_follow_their_sources(ctx) -> None:
    ws = ctx.ws
    a, b = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ws, a, event="Order Completed", props={"revenue": 10}),
                         _ev(ws, b, event="Page Viewed")])
    buyers = await ctx.segment({"type": "performed", "event": "Order Completed"})
    engaged = await ctx.segment({"type": "stage", "stage": "engaged"})
    onboarding = await ctx.segment({"type": "stage", "stage": "onboarding"})
    assert await ctx.members(engaged) == {str(a)} and await ctx.members(onboarding) == {str(b)}
    nested = await ctx.segment({"type": "and", "children": [
        {"type": "segment", "segment_id": buyers}, {"type": "trait", "trait": "vip", "value": True}]})
    assert await ctx.members(nested) == set()
    await _fold(ctx.sm, [_ev(ws, a, "identify", traits={"vip": True}), _ev(ws, b, "identify", traits={"vip": True})])
    assert await ctx.members(nested) == {str(a)}
    # editing the source segment re-evaluates the one that reads it
    r = await ctx.seg.put(f"/v1/segments/{buyers}", headers=ctx.h,
                          json={"definition": {"type": "performed", "event": "Page Viewed"}})
    assert r.status_code == 200
    await evaluation.evaluate_fully(ctx.sm, ws, {uuid.UUID(buyers)}, today=NOW.date())
    assert await ctx.members(buyers) == {str(b)} and await ctx.members(nested) == {str(b)}
    # a cycle, or a segment that does not exist, is refused with the reason
    r = await ctx.seg.put(f"/v1/segments/{buyers}", headers=ctx.h,
                          json={"definition": {"type": "segment", "segment_id": nested}})
    assert r.status_code == 422 and "cycle" in r.text
    r = await ctx.seg.post("/v1/segments", headers=ctx.h, json={"name": "ghost", "definition": {
        "type": "segment", "segment_id": str(uuid.uuid4())}})
    assert r.status_code == 422 and "no segment" in r.text


async def test_search_lists_profiles_with_counts_and_attributes(ctx, settings) -> None:
    ws = ctx.ws
    async with ctx.sm() as s, s.begin():
        from sqlalchemy import text
        await s.execute(text("update core.workspaces set settings = settings || CAST(:s AS jsonb) where id = :ws"),
                        {"ws": ws, "s": '{"lead_score": {"events": {"Demo Requested": 20}, '
                                          '"traits": [{"trait": "title", "op": "contains", "value": "VP", '
                                          '"points": 15}]}}'})
    people = [uuid.uuid4() for _ in range(5)]
    events = []
    for i, pid in enumerate(people):
        events += [_ev(ws, pid, event="Order Completed", props={"revenue": 10}) for _ in range(i)]
        events.append(_ev(ws, pid, "identify", traits={"title": "VP Sales" if i % 2 else "Engineer"}))
    events += [_ev(ws, people[4], event="Demo Requested"), _ev(ws, people[4], event="NPS Survey Submitted",
                                                              props={"score": 10})]
    await _fold(ctx.sm, events)
    body = {"definition": {"type": "attribute", "attribute": "order_count", "op": "gte", "value": 2}, "limit": 2}
    first = (await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json=body)).json()
    assert first["count"] == 3 and len(first["profiles"]) == 2 and first["next_cursor"]
    second = (await ctx.seg.post("/v1/profiles/search", headers=ctx.h,
                                 json={**body, "after": first["next_cursor"]})).json()
    found = [p["profile_id"] for p in first["profiles"] + second["profiles"]]
    assert sorted(found) == sorted(str(p) for p in people[2:]) and second["next_cursor"] is None
    attrs = (await ctx.seg.get(f"/v1/profiles/{people[4]}/attributes", headers=ctx.h)).json()
    assert attrs["order_count"] == 4 and attrs["lead_score"] == 20 and attrs["last_nps"] == 10
    attrs = (await ctx.seg.get(f"/v1/profiles/{people[3]}/attributes", headers=ctx.h)).json()
    assert attrs["lead_score"] == 15 and attrs["last_nps"] is None
    scored = await ctx.segment({"type": "attribute", "attribute": "lead_score", "op": "gte", "value": 15})
    assert await ctx.members(scored) == {str(people[1]), str(people[3]), str(people[4])}
    r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={**body, "after": "nope"})
    assert r.status_code == 400 and r.json()["errors"][0]["loc"] == ["body", "after"]


async def test_attributes_of_an_unknown_profile_are_a_404(ctx) -> None:
    """GET …/attributes answered 200 with zero orders and null dates for any id, even one the workspace has
    never seen (a typo, another workspace's profile), so a client could not tell it from a real profile."""
    known = uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, known, "identify", traits={"plan": "pro"})])
    r = await ctx.seg.get(f"/v1/profiles/{known}/attributes", headers=ctx.h)
    assert r.status_code == 200 and r.json()["profile_id"] == str(known) and r.json()["order_count"] == 0
    async with ctx.sm() as s, s.begin():
        other = await create_workspace(s, f"test-{uuid.uuid4().hex[:8]}")
    elsewhere = uuid.uuid4()
    await _fold(ctx.sm, [_ev(other.workspace_id, elsewhere, event="Order Completed", props={"revenue": 5})])
    for pid in (uuid.uuid4(), elsewhere):
        r = await ctx.seg.get(f"/v1/profiles/{pid}/attributes", headers=ctx.h)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["type"].endswith("/not-found") and str(pid) in r.json()["detail"]
    h = {"Authorization": f"Bearer {other.secret_key}"}
    assert (await ctx.seg.get(f"/v1/profiles/{elsewhere}/attributes", headers=h)).json()["order_count"] == 1
    spec = ctx.seg._transport.app.openapi()  # type: ignore[attr-defined]
    assert "404" in spec["paths"]["/v1/profiles/{profile_id}/attributes"]["get"]["responses"]


async def test_stage_and_segments_of_an_unknown_profile_are_a_404(ctx) -> None:
    """GET /v1/lifecycle/{id} answered 200 with a null stage and GET /v1/profiles/{id}/segments 200 with an
    empty list for any id, so a typo or another workspace's profile read as a real profile in no segment.
    They answer 404 as …/attributes does (the same check); a known profile in no segment still gets []."""
    known = uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, known, "identify", traits={"plan": "free"})])
    pro = await ctx.segment({"type": "trait", "trait": "plan", "value": "pro"})
    r = await ctx.seg.get(f"/v1/profiles/{known}/segments", headers=ctx.h)
    assert r.status_code == 200, r.text
    assert r.json() == {"profile_id": str(known), "segment_ids": [], "stage": "onboarding"}  # in no segment
    r = await ctx.seg.get(f"/v1/lifecycle/{known}", headers=ctx.h)
    assert r.status_code == 200 and r.json()["stage"] == "onboarding", r.text
    buyer = uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, buyer, "identify", traits={"plan": "pro"}),
                         _ev(ctx.ws, buyer, event="Order Completed", props={"revenue": 5})])
    r = await ctx.seg.get(f"/v1/profiles/{buyer}/segments", headers=ctx.h)
    assert r.status_code == 200 and r.json()["segment_ids"] == [pro] and r.json()["stage"] == "engaged", r.text
    assert (await ctx.seg.get(f"/v1/lifecycle/{buyer}", headers=ctx.h)).json()["stage"] == "engaged"

    async with ctx.sm() as s, s.begin():
        other = await create_workspace(s, f"test-{uuid.uuid4().hex[:8]}")
    elsewhere = uuid.uuid4()
    await _fold(ctx.sm, [_ev(other.workspace_id, elsewhere, event="Order Completed", props={"revenue": 5})])
    for pid in (uuid.uuid4(), elsewhere):
        for path in (f"/v1/profiles/{pid}/segments", f"/v1/lifecycle/{pid}", f"/v1/profiles/{pid}/attributes"):
            r = await ctx.seg.get(path, headers=ctx.h)
            assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert r.json()["type"].endswith("/not-found") and str(pid) in r.json()["detail"], r.text
    h = {"Authorization": f"Bearer {other.secret_key}"}
    assert (await ctx.seg.get(f"/v1/lifecycle/{elsewhere}", headers=h)).json()["stage"] == "engaged"
    spec = ctx.seg._transport.app.openapi()  # type: ignore[attr-defined]
    for path in ("/v1/profiles/{profile_id}/segments", "/v1/lifecycle/{profile_id}"):
        assert "404" in spec["paths"][path]["get"]["responses"], path


async def test_segment_names_postgresql_cannot_hold_are_a_422_naming_the_field(ctx) -> None:
    """A NUL in a segment's name got a 422 naming no field (from the database) and a lone surrogate a 500;
    both are refused by the schema, on create and on rename, with ``name`` named."""
    saved = await ctx.segment({"type": "trait", "trait": "plan", "value": "pro"})
    headers = {**ctx.h, "content-type": "application/json"}
    definition = {"type": "trait", "trait": "plan", "value": "pro"}
    for name in ("a\x00b", "\ud800", "ok \udfff"):
        for method, path, body in (("POST", "/v1/segments", {"name": name, "definition": definition}),
                                   ("PUT", f"/v1/segments/{saved}", {"name": name}),
                                   ("PUT", f"/v1/segments/{saved}", {"name": name, "definition": definition})):
            r = await ctx.seg.request(method, path, headers=headers, content=json.dumps(body))  # \u escapes
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert [e["loc"] for e in r.json()["errors"]] == [["body", "name"]], r.text
    r = await ctx.seg.get("/v1/segments", headers=ctx.h)
    assert [(s["id"], s["version"]) for s in r.json()["segments"]] == [(saved, 1)]  # nothing saved or renamed
    r = await ctx.seg.put(f"/v1/segments/{saved}", headers=ctx.h, json={"name": "Pro ✓ 🎉"})
    assert r.status_code == 200 and r.json()["name"] == "Pro ✓ 🎉"


async def test_non_finite_numbers_are_refused_not_saved_as_null(ctx) -> None:
    """JSON bodies may carry NaN, Infinity or 1e999 (read as infinity). Saved, they became null: the
    definition changed meaning (``equals NaN`` turned into ``equals null``) or no longer parsed, and every
    later save, preview and evaluation in the workspace failed with a 500."""
    cases = [
        ('{"type": "aggregate", "event": "Order Completed", "property": "revenue", "value": 1e999}',
         "definition.aggregate.value"),
        ('{"type": "trait", "trait": "score", "op": "equals", "value": NaN}', "definition.trait.value"),
        ('{"type": "not", "child": {"type": "trait", "trait": "plan", "op": "in", "value": ["pro", Infinity]}}',
         "definition.not.child.trait.value"),
        ('{"type": "attribute", "attribute": "total_revenue", "op": "gt", "value": -Infinity}', "definition.attribute.value"),
        ('{"type": "random_bucket", "percent": NaN}', "definition.random_bucket.percent"),
    ]
    headers = {**ctx.h, "content-type": "application/json"}
    for definition, at in cases:
        for path in ("/v1/segments", "/v1/segments/preview"):
            r = await ctx.seg.post(path, headers=headers, content=f'{{"name": "n", "definition": {definition}}}')
            assert r.status_code == 422, (definition, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert [e["at"] for e in r.json()["errors"]] == [at], r.text
            # the same place as FastAPI's own 422s name one, so a client reads every refusal one way
            assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(["body", *at.split(".")], "value_error")]
    assert (await ctx.seg.get("/v1/segments", headers=ctx.h)).json()["segments"] == []
    await ctx.segment({"type": "trait", "trait": "plan", "value": "pro"})  # the workspace still works


async def test_text_postgresql_cannot_hold_is_refused_at_its_field(ctx) -> None:
    """A NUL character (or a lone surrogate) in a name or value of a definition was accepted by validation,
    then PostgreSQL refused it: a 500 from previews and searches (bound as text), a 422 naming no field on
    save. Every such string is refused with the node and field named, before anything is read or written."""
    pid = uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, pid, "identify", traits={"plan": "pro"}),
                         _ev(ctx.ws, pid, event="Order Completed", props={"revenue": 5})])
    ok = {"type": "trait", "trait": "plan", "value": "pro"}
    order = {"type": "performed", "event": "Order Completed"}
    cases = [
        ({"type": "trait", "trait": "pl\x00an", "value": "pro"}, "definition.trait.trait"),
        ({"type": "trait", "trait": "plan", "value": "p\x00ro"}, "definition.trait.value"),
        ({"type": "not", "child": {"type": "trait", "trait": "plan", "op": "in", "value": ["basic", "p\x00"]}},
         "definition.not.child.trait.value"),
        ({"type": "account_trait", "trait": "industry\x00"}, "definition.account_trait.trait"),
        ({"type": "performed", "event": "Order\x00Completed"}, "definition.performed.event"),
        ({"type": "and", "children": [ok, {**order, "where": [{"property": "category\x00", "value": "shoes"}]}]},
         "definition.and.children.1.performed.where.0.property"),
        ({"type": "or", "children": [ok, {**order, "where": [{"property": "item", "value": {"bra\x00nd": "A"}}]}]},
         "definition.or.children.1.performed.where.0.value"),
        ({"type": "performed_time", "event": "Signed\x00Up", "op": "within_last_days", "value": 7},
         "definition.performed_time.event"),
        ({"type": "aggregate", "event": "Order Completed", "property": "reve\x00nue", "value": 1},
         "definition.aggregate.property"),
        ({"type": "last_event_property", "event": "Product Viewed\x00", "property": "category"},
         "definition.last_event_property.event"),
        ({"type": "keyed", "key": "cart_id", "event": "Product Added", "without": "Order\x00"},
         "definition.keyed.without"),
        ({"type": "attribute", "attribute": "order_count", "op": "in", "value": [1, "2\x00"]},
         "definition.attribute.value"),
        ({"type": "random_bucket", "percent": 10, "seed": "holdout\x00"}, "definition.random_bucket.seed"),
        ({"type": "trait", "trait": "plan", "value": "\ud83d"}, "definition.trait.value"),  # a lone surrogate
    ]
    saved = await ctx.segment(ok)
    headers = {**ctx.h, "content-type": "application/json"}
    for definition, at in cases:
        body = json.dumps({"name": uuid.uuid4().hex, "definition": definition})  # \u0000 and \ud83d escapes
        for method, path in (("POST", "/v1/segments"), ("PUT", f"/v1/segments/{saved}"),
                             ("POST", "/v1/segments/preview"), ("POST", "/v1/profiles/search")):
            r = await ctx.seg.request(method, path, headers=headers, content=body)
            assert r.status_code == 422, (path, definition, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            [error] = r.json()["errors"]
            assert error["at"] == at, (path, r.text)
            assert ("lone surrogate" if "\\ud83d" in body else "NUL character (\\u0000)") in error["msg"], r.text
    r = await ctx.seg.get("/v1/segments", headers=ctx.h)
    assert [(s["id"], s["version"]) for s in r.json()["segments"]] == [(saved, 1)]  # nothing saved or changed
    r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": ok})
    assert r.status_code == 200 and r.json()["count"] == 1


async def test_dates_beyond_the_utc_range_compare_instead_of_crashing(ctx) -> None:
    """Dates in year 1 or 9999 with an offset fall outside year 1–9999 once moved to UTC: a user's trait
    like that made every date condition on it a 500 (previews) or a failed evaluation, and so did such a
    value in a definition. ``within_last_days`` with a large N overflowed the same way."""
    ws = ctx.ws
    ancient, modern, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [
        _ev(ws, ancient, "identify", traits={"born": "0001-01-01T00:00:00+05:00"}),
        _ev(ws, modern, "identify", traits={"born": "1990-06-01"}),
        _ev(ws, recent, "identify", traits={"born": "9999-12-31T23:00:00-05:00"}),
    ])

    async def preview(definition: dict) -> int:
        r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200, r.text
        return r.json()["count"]

    assert await preview({"type": "trait", "trait": "born", "op": "before", "value": "2000-01-01"}) == 2
    assert await preview({"type": "trait", "trait": "born", "op": "after", "value": "2000-01-01"}) == 1
    assert await preview({"type": "trait", "trait": "born", "op": "within_last_days", "value": 1_000_000}) == 2
    far = {"type": "trait", "trait": "born", "op": "before", "value": "9999-12-31T23:00:00-05:00"}
    assert await preview(far) == 2
    sid = await ctx.segment(far)
    assert await ctx.members(sid) == {str(ancient), str(modern)}
    huge = await ctx.segment({"type": "trait", "trait": "born", "op": "within_last_days", "value": 10**12})
    assert await ctx.members(huge) == {str(ancient), str(modern)}


async def test_deeply_nested_definitions_are_refused_before_anything_is_saved(ctx) -> None:
    """A definition nested 150 levels deep was saved, then the answer (and every later listing of the
    workspace's segments) failed to serialize: a 500 after the write, and a retry got a 409."""
    leaf = {"type": "trait", "trait": "plan", "value": "pro"}
    deep: dict = leaf
    for _ in range(150):
        deep = {"type": "and", "children": [deep]}
    r = await ctx.seg.post("/v1/segments", headers=ctx.h, json={"name": "deep", "definition": deep})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    error = r.json()["errors"][0]
    assert error["at"] == "definition" + ".and.children.0" * 33 and "32 levels" in error["msg"]
    r = await ctx.seg.get("/v1/segments", headers=ctx.h)
    assert r.status_code == 200 and r.json()["segments"] == []
    shallow: dict = leaf
    for _ in range(32):
        shallow = {"type": "not", "child": shallow}
    assert (await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": shallow})).status_code == 200


async def test_reference_errors_name_the_node(ctx) -> None:
    """A segment or list that does not exist, or a reference that closes a cycle, is reported at its node
    (it was reported at ``definition``, whatever the node, so a large tree left the user searching)."""
    lst = (await ctx.seg.post("/v1/lists", headers=ctx.h, json={"name": uuid.uuid4().hex})).json()["id"]
    ghost_segment, ghost_list = str(uuid.uuid4()), str(uuid.uuid4())
    definition = {"type": "and", "children": [
        {"type": "list", "list_id": lst},
        {"type": "or", "children": [{"type": "trait", "trait": "plan", "op": "exists"},
                                    {"type": "segment", "segment_id": ghost_segment}]},
        {"type": "not", "child": {"type": "list", "list_id": ghost_list}},
    ]}
    expected = [
        {"at": "definition.and.children.1.or.children.1.segment.segment_id",
         "msg": f"no segment {ghost_segment} in this workspace"},
        {"at": "definition.and.children.2.not.child.list.list_id", "msg": f"no list {ghost_list} in this workspace"},
    ]
    for path in ("/v1/segments", "/v1/segments/preview", "/v1/profiles/search"):
        r = await ctx.seg.post(path, headers=ctx.h, json={"name": "refs", "definition": definition})
        assert r.status_code == 422, r.text
        assert [{k: e[k] for k in ("at", "msg")} for e in r.json()["errors"]] == expected
        assert [(e["loc"][:2], e["type"]) for e in r.json()["errors"]] == [(["body", "definition"], "not_found")] * 2
    pro = await ctx.segment({"type": "trait", "trait": "plan", "value": "pro"})
    reader = await ctx.segment({"type": "or", "children": [{"type": "trait", "trait": "vip", "value": True},
                                                          {"type": "segment", "segment_id": pro}]})
    r = await ctx.seg.put(f"/v1/segments/{pro}", headers=ctx.h, json={"definition": {"type": "and", "children": [
        {"type": "trait", "trait": "plan", "value": "pro"}, {"type": "segment", "segment_id": reader}]}})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"at": "definition.and.children.1.segment.segment_id",
                                   "loc": ["body", "definition", "and", "children", "1", "segment", "segment_id"],
                                   "msg": "segments would read each other in a cycle", "type": "value_error"}]


async def test_search_results_carry_each_profiles_stage(ctx) -> None:
    """Search answers list each profile's lifecycle stage; it was null unless the condition itself read a
    stage or another segment."""
    ws = ctx.ws
    buyer, visitor = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ws, buyer, event="Order Completed", props={"revenue": 10}),
                         _ev(ws, visitor, event="Page Viewed")])
    for definition in ({"type": "attribute", "attribute": "order_count", "op": "gte", "value": 0},
                       {"type": "or", "children": [{"type": "stage", "stage": "engaged"},
                                                   {"type": "stage", "stage": "onboarding"}]}):
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200, r.text
        assert {p["profile_id"]: p["stage"] for p in r.json()["profiles"]} == {
            str(buyer): "engaged", str(visitor): "onboarding"}


async def test_search_gives_a_profiles_attributes_as_its_attributes_endpoint_does(ctx) -> None:
    """Without lead score rules, ``lead_score`` was ``0.0`` in GET …/attributes (a float, as its schema says) and
    ``0`` in a search: the same profile's attributes are the same values of the same types in both."""
    ws = ctx.ws
    buyer, visitor = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ws, buyer, event="Order Completed", props={"revenue": 10}, days_ago=3),
                         _ev(ws, visitor, event="Page Viewed")])
    for definition in ({"type": "attribute", "attribute": "order_count", "op": "gte", "value": 0},  # in SQL
                       {"type": "or", "children": [{"type": "stage", "stage": "engaged"},  # in Python
                                                   {"type": "stage", "stage": "onboarding"}]}):
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200, r.text
        for found in r.json()["profiles"]:
            attrs = (await ctx.seg.get(f"/v1/profiles/{found['profile_id']}/attributes", headers=ctx.h)).json()
            del attrs["profile_id"]
            assert found["attributes"] == attrs
            assert {k: type(v) for k, v in found["attributes"].items()} == {k: type(v) for k, v in attrs.items()}
            assert isinstance(found["attributes"]["lead_score"], float)
        assert len(r.json()["profiles"]) == 2


async def test_first_and_last_seen_are_usable_in_conditions(ctx) -> None:
    """First / last seen are computed attributes like the others (readable on GET …/attributes), but a
    condition on them was refused: "new users of the last 7 days" could not be written."""
    ws = ctx.ws
    new, old = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ws, new, event="App Opened", days_ago=1), _ev(ws, old, event="App Opened", days_ago=40),
                         _ev(ws, old, event="App Opened", days_ago=2)])
    new_users = await ctx.segment({"type": "attribute", "attribute": "first_seen", "op": "within_last_days",
                                   "value": 7})
    assert await ctx.members(new_users) == {str(new)}
    seen_lately = await ctx.segment({"type": "attribute", "attribute": "last_seen", "op": "after",
                                     "value": (NOW - timedelta(days=3)).isoformat()})
    assert await ctx.members(seen_lately) == {str(new), str(old)}
    await evaluation.recheck_windows(ctx.sm, NOW.date() + timedelta(days=7))  # a week on, no new event
    assert await ctx.members(new_users) == set()


@pytest.mark.parametrize("in_sql", [True, False], ids=["evaluated in SQL", "evaluated in Python"])
async def test_search_gives_no_cursor_when_the_page_holds_the_last_match(ctx, in_sql) -> None:
    """A page that ends exactly on the last match had a next_cursor, so a client paging through asked for
    an extra, empty page; a cursor now means more matches follow."""
    ws = ctx.ws
    people = [uuid.uuid4() for _ in range(4)]
    await _fold(ctx.sm, [_ev(ws, p, "identify", traits={"tier": "gold" if i < 3 else "tin"})
                         for i, p in enumerate(people)])
    gold = {"type": "trait", "trait": "tier", "value": "gold"}
    if not in_sql:  # the same matches, through a condition only Python evaluates
        gold = {"type": "or", "children": [gold, {"type": "stage", "stage": "churned"}]}
    whole = (await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": gold, "limit": 3})).json()
    assert whole["count"] == 3 and len(whole["profiles"]) == 3 and whole["next_cursor"] is None
    first = (await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": gold, "limit": 2})).json()
    assert len(first["profiles"]) == 2 and first["next_cursor"]
    last = (await ctx.seg.post("/v1/profiles/search", headers=ctx.h,
                               json={"definition": gold, "limit": 1, "after": first["next_cursor"]})).json()
    assert len(last["profiles"]) == 1 and last["next_cursor"] is None
    found = {p["profile_id"] for p in first["profiles"] + last["profiles"]}
    assert found == {str(p) for p in people[:3]}


async def test_a_segment_is_renamed_without_its_definition_or_a_new_version(ctx) -> None:
    """PUT /v1/segments/{id} required the definition even to rename (a 422), and every PUT made a new
    version, re-evaluated in the background; a version now means the definition changed."""
    definition = {"type": "trait", "trait": "plan", "value": "pro"}
    sid = await ctx.segment(definition)
    stored = (await ctx.seg.get(f"/v1/segments/{sid}", headers=ctx.h)).json()["definition"]
    r = await ctx.seg.put(f"/v1/segments/{sid}", headers=ctx.h, json={"name": f"renamed-{sid}"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == f"renamed-{sid}" and r.json()["version"] == 1 and r.json()["definition"] == stored
    same = await ctx.seg.put(f"/v1/segments/{sid}", headers=ctx.h, json={"definition": dict(reversed(
        definition.items()))})
    assert same.status_code == 200 and same.json()["version"] == 1 and same.json()["name"] == f"renamed-{sid}"
    edited = await ctx.seg.put(f"/v1/segments/{sid}", headers=ctx.h, json={"definition": {**definition, "value": "x"}})
    assert edited.status_code == 200 and edited.json()["version"] == 2
    got = (await ctx.seg.get(f"/v1/segments/{sid}", headers=ctx.h)).json()
    assert got["name"] == f"renamed-{sid}" and got["definition"]["value"] == "x" and got["version"] == 2
    missing = await ctx.seg.put(f"/v1/segments/{uuid.uuid4()}", headers=ctx.h, json={"name": "nobody"})
    assert missing.status_code == 404


async def test_attribute_date_operators_need_a_date_or_a_number_of_days(ctx) -> None:
    """An attribute condition took any value with ``before`` / ``after`` / ``within_last_days``: on
    first_seen / last_seen a value that is not a date (or a whole number of days) made previews and searches
    a 500 (AssertionError, ValueError), and saved, every evaluation of the workspace failed. Refused on save
    now, naming the node, as for traits."""
    await _fold(ctx.sm, [_ev(ctx.ws, uuid.uuid4(), event="App Opened")])
    for op, value in [("before", "garbage"), ("after", 7), ("within_last_days", "x"), ("within_last_days", 0),
                      ("within_last_days", True)]:
        definition = {"type": "not", "child": {"type": "attribute", "attribute": "first_seen", "op": op,
                                               "value": value}}
        for path in ("/v1/segments", "/v1/segments/preview", "/v1/profiles/search"):
            r = await ctx.seg.post(path, headers=ctx.h, json={"name": uuid.uuid4().hex, "definition": definition})
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert [e["at"] for e in r.json()["errors"]] == ["definition.not.child.attribute"], r.text
    assert (await ctx.seg.get("/v1/segments", headers=ctx.h)).json()["segments"] == []
    r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": {
        "type": "attribute", "attribute": "first_seen", "op": "before", "value": "2999-01-01T00:00:00+02:00"}})
    assert r.status_code == 200 and r.json()["count"] == 1, r.text


async def test_counts_and_days_beyond_sql_integers_compare_instead_of_crashing(ctx) -> None:
    """Counts and numbers of days have no upper bound in a definition, but the statement PostgreSQL evaluates
    bound them as bigint / int: ``at_least 2**63`` times or ``over_days_ago 2**40`` made previews and searches a
    500, and a saved one failed every pass over the workspace's profiles (its other segments too)."""
    a, b = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, a, event="Order Completed", days_ago=3), _ev(ctx.ws, a, event="Email Opened"),
                         _ev(ctx.ws, b, event="App Opened")])
    huge = [
        ({"type": "performed", "event": "Order Completed", "count": 2**63}, set()),
        ({"type": "performed", "event": "Order Completed", "op": "at_most", "count": 10**30}, {a, b}),
        ({"type": "performed", "event": "Order Completed", "op": "exactly", "count": 10**30, "within_days": 7}, set()),
        ({"type": "email_engagement", "count": 10**30}, set()),
        ({"type": "performed_time", "event": "Order Completed", "op": "within_last_days", "value": 10**30}, {a}),
        ({"type": "performed_time", "event": "Order Completed", "op": "over_days_ago", "value": 2**40}, set()),
        ({"type": "performed_time", "event": "Order Completed", "op": "over_days_ago", "value": 2**31}, set()),
    ]
    for definition, expected in huge:
        r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": definition, "sample": 100})
        assert r.status_code == 200, (definition, r.text)
        assert set(r.json()["sample"]) == {str(p) for p in expected}, definition
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200 and r.json()["count"] == len(expected), (definition, r.text)
    sids = [await ctx.segment(definition) for definition, _ in huge]  # evaluated over every profile
    for sid, (_, expected) in zip(sids, huge, strict=True):
        assert await ctx.members(sid) == {str(p) for p in expected}


async def test_large_definitions_are_evaluated_whatever_postgresql_allows_one_statement(ctx) -> None:
    """A definition compiled to SQL whose statement needed more than 1664 columns (one per distinct per-day
    count) or 32767 parameters made previews and searches a 500 or a 503 ("the database is not reachable");
    saved, it failed every pass over the workspace's profiles, so no segment of the workspace was backfilled
    or re-checked again. Segments sharing a statement added up the same way. Such definitions are evaluated
    in Python now, and statements hold as many segments as fit."""
    a, b = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, a, event="e7"), _ev(ctx.ws, a, event="Order Completed"),
                         _ev(ctx.ws, b, "identify", traits={"t16999": 16999})])
    many_counts = {"type": "or", "children": [{"type": "performed", "event": f"e{i}", "count": 1}
                                              for i in range(1700)]}
    many_values = {"type": "or", "children": [{"type": "trait", "trait": f"t{i}", "value": i} for i in range(17000)]}
    for definition, expected in [(many_counts, {a}), (many_values, {b})]:
        r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200 and set(r.json()["sample"]) == {str(p) for p in expected}, r.text[:300]
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200 and r.json()["count"] == len(expected), r.text[:300]
    # each fits a statement alone, but not together (600 columns each)
    parts = [{"type": "or", "children": [{"type": "performed", "event": f"e{i}", "count": 1}
                                         for i in range(k * 600, k * 600 + 600)]} for k in range(3)]
    assert set_evaluation.compilable(conditions.parse(parts[0]))
    buyers = {"type": "performed", "event": "Order Completed"}
    expected = [{a}, {b}, {a}, set(), set(), {a}]
    sids = [await ctx.segment(d) for d in (many_counts, many_values, *parts, buyers)]
    await evaluation.evaluate_fully(ctx.sm, ctx.ws, {uuid.UUID(s) for s in sids}, today=NOW.date())  # all of them in one pass
    for sid, members in zip(sids, expected, strict=True):
        assert await ctx.members(sid) == {str(p) for p in members}


@pytest.mark.parametrize("in_sql", [True, False], ids=["evaluated in SQL", "evaluated in Python"])
async def test_a_preview_without_a_sample_counts(ctx, in_sql) -> None:
    """``sample: 0`` (the schema allows it: just the count) was a 500 whenever a profile matched."""
    await _fold(ctx.sm, [_ev(ctx.ws, uuid.uuid4(), "identify", traits={"tier": "gold"}) for _ in range(2)])
    gold = {"type": "trait", "trait": "tier", "value": "gold"}
    if not in_sql:
        gold = {"type": "or", "children": [gold, {"type": "stage", "stage": "churned"}]}
    r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": gold, "sample": 0})
    assert r.status_code == 200, r.text
    assert r.json() == {"count": 2, "sample": [], "profiles_evaluated": 2}


async def test_a_node_without_a_known_type_is_named(ctx) -> None:
    """The root node without a ``type``, or with one that is no condition, was reported at ``definition.``."""
    cases = [({"type": "bogus"}, "definition"), ({"trait": "plan"}, "definition"),
             ({"type": "or", "children": [{"type": "trait", "trait": "a"}, {"type": "bogus"}]}, "definition.or.children.1")]
    for definition, at in cases:
        for path in ("/v1/segments", "/v1/segments/preview", "/v1/profiles/search"):
            r = await ctx.seg.post(path, headers=ctx.h, json={"name": "n", "definition": definition})
            assert r.status_code == 422 and [e["at"] for e in r.json()["errors"]] == [at], (path, r.text)


async def test_json_too_deep_or_too_long_to_read_says_so(ctx) -> None:
    """A definition nested a thousand levels deep is valid JSON that Python's reader gives up on, as is a
    number of 5000 digits: both got a 400 saying only "There was an error parsing the body"."""
    leaf = '{"type": "trait", "trait": "plan", "op": "exists"}'
    deep = '{"type": "and", "children": [' * 1000 + leaf + "]}" * 1000
    not_deep = '{"type": "not", "child": ' * 5000 + leaf + "}" * 5000
    long_number = '{"type": "trait", "trait": "n", "value": ' + "9" * 5000 + "}"
    headers = {**ctx.h, "content-type": "application/json"}
    for definition, words in [(deep, "too deeply"), (not_deep, "too deeply"), (long_number, "too many digits")]:
        for path in ("/v1/segments", "/v1/segments/preview", "/v1/profiles/search"):
            r = await ctx.seg.post(path, headers=headers, content=f'{{"name": "n", "definition": {definition}}}')
            assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
            assert words in r.json()["detail"], r.text
    assert (await ctx.seg.get("/v1/segments", headers=ctx.h)).json()["segments"] == []


async def test_revenue_that_reads_as_nan_or_infinity_counts_as_nothing(ctx, settings) -> None:
    """A purchase whose revenue was "NaN", "Infinity" or "1e999" (text a client may send through the Segment API)
    made the profile's revenue NaN or infinite for good: its attributes, every search and preview listing it
    and every live re-evaluation of its partition failed (a 500, a worker error at each event), and aggregates
    over the property were NaN. Such amounts count as 0 now, and the upgrade resets totals they poisoned."""
    from alembic import command

    from shared.migrate import alembic_config

    a, poisoned = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, a, event="Order Completed", props={"revenue": v})
                         for v in ("NaN", "Infinity", "-1e999", 10, "5.5")])
    r = await ctx.seg.get(f"/v1/profiles/{a}/attributes", headers=ctx.h)
    assert r.status_code == 200, r.text
    assert (r.json()["order_count"], r.json()["total_revenue"], r.json()["average_order_value"]) == (5, 15.5, 3.1)
    for definition in ({"type": "attribute", "attribute": "total_revenue", "op": "equals", "value": 15.5},
                       {"type": "aggregate", "event": "Order Completed", "property": "revenue", "function": "sum",
                        "op": "equals", "value": 15.5},
                       {"type": "aggregate", "event": "Order Completed", "property": "revenue", "function": "max",
                        "op": "equals", "value": 10}):
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": definition})
        assert r.status_code == 200 and [p["profile_id"] for p in r.json()["profiles"]] == [str(a)], r.text
    # a total an earlier release poisoned
    await _fold(ctx.sm, [_ev(ctx.ws, poisoned, event="Order Completed", props={"revenue": 1})])
    async with ctx.sm() as s, s.begin():
        await s.execute(text("update segment.profile_stats set revenue = 'Infinity' where profile_id = :p"),
                        {"p": poisoned})
    cfg = alembic_config("segment", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "segment_0003")
    await asyncio.to_thread(command.upgrade, cfg, "head")
    r = await ctx.seg.get(f"/v1/profiles/{poisoned}/attributes", headers=ctx.h)
    assert r.status_code == 200 and r.json()["total_revenue"] == 0.0, r.text
    m = await ctx.seg.get("/v1/metrics", headers=ctx.h, params={"start": "2000-01-01", "end": "2999-01-01"})
    assert m.status_code == 200 and m.json()["average_cltv"] == 7.75, m.text


async def test_values_that_could_never_match_are_refused_on_save_but_stored_ones_still_load(ctx) -> None:
    """``gt {"x": 1}`` or ``gt null``, ``in`` a list of lists or objects, and a random bucket without a seed (every
    holdout drew the same profiles) were saved with 201."""
    filtered = {"type": "performed", "event": "Order Completed"}
    cases = [
        ({"type": "trait", "trait": "plan", "op": "gt", "value": {"x": 1}}, "definition.trait.value"),
        ({"type": "trait", "trait": "plan", "op": "lte", "value": None}, "definition.trait.value"),
        ({"type": "and", "children": [{"type": "trait", "trait": "plan", "op": "in", "value": [[1], [2]]}]},
         "definition.and.children.0.trait.value"),
        ({"type": "account_trait", "trait": "plan", "op": "not_in", "value": [{"a": 1}]},
         "definition.account_trait.value"),
        ({**filtered, "where": [{"property": "a", "op": "exists"}, {"property": "a", "op": "gte", "value": [1]}]},
         "definition.performed.where.1.value"),
        ({"type": "last_event_property", "event": "X", "property": "a", "op": "gt", "value": {}},
         "definition.last_event_property.value"),
        ({"type": "attribute", "attribute": "order_count", "op": "in", "value": [[1]]}, "definition.attribute.value"),
        ({"type": "not", "child": {"type": "random_bucket", "percent": 10}}, "definition.not.child.random_bucket.seed"),
    ]
    saved = await ctx.segment({"type": "trait", "trait": "plan", "op": "in", "value": ["pro", 1, True, None]})
    for definition, at in cases:
        for method, path in (("POST", "/v1/segments"), ("PUT", f"/v1/segments/{saved}"),
                             ("POST", "/v1/segments/preview"), ("POST", "/v1/profiles/search")):
            named = {"name": uuid.uuid4().hex} if "/segments" in path and "preview" not in path else {}
            r = await ctx.seg.request(method, path, headers=ctx.h, json={**named, "definition": definition})
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert [e["at"] for e in r.json()["errors"]] == [at], (path, r.text)
    # what still saves: ordering by a number, a text, a boolean; a seed, even an empty one given on purpose
    for definition in ({"type": "trait", "trait": "age", "op": "gt", "value": "40"},
                       {"type": "trait", "trait": "age", "op": "gte", "value": True},
                       {"type": "random_bucket", "percent": 10, "seed": ""}):
        await ctx.segment(definition)
    # segments saved before the check still load and evaluate
    user = uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, user, "identify", traits={"plan": "pro"})])
    old = {uuid.uuid4(): {"type": "trait", "trait": "plan", "op": "gt", "value": {"x": 1}},
           uuid.uuid4(): {"type": "trait", "trait": "plan", "op": "in", "value": [["pro"]]},
           uuid.uuid4(): {"type": "random_bucket", "percent": 100}}
    async with ctx.sm() as s, s.begin():
        for sid, d in old.items():
            await s.execute(text("insert into segment.segments (id, workspace_id, name, definition) "
                                 "values (:id, :ws, :name, CAST(:d AS jsonb))"),
                            {"id": sid, "ws": ctx.ws, "name": str(sid), "d": json.dumps(d)})
    await evaluation.evaluate_fully(ctx.sm, ctx.ws, set(old), today=NOW.date())
    assert [await ctx.members(str(sid)) for sid in old] == [set(), set(), {str(user)}]
    for sid in old:
        assert (await ctx.seg.get(f"/v1/segments/{sid}", headers=ctx.h)).status_code == 200


@pytest.mark.parametrize("in_sql", [True, False], ids=["evaluated in SQL", "evaluated in Python"])
async def test_first_and_last_performed_compare_instants_with_a_date_time(ctx, in_sql) -> None:
    """``performed_time`` ``before`` / ``after`` compared the day of the first / last occurrence with the day of
    the value: its time of day and UTC offset were ignored ("before 18:00" matched no one who came at 10:00 that
    day), and a bare date matched as "after the whole day". Instants are compared now, as for a date trait; a bare
    date is the start of that (UTC) day."""
    early, late = uuid.uuid4(), uuid.uuid4()
    day = NOW.date() - timedelta(days=3)
    await _fold(ctx.sm, [
        {**_ev(ctx.ws, who, event="Visit2"), "timestamp": f"{day}T{hour}:00:00+00:00"}
        for who, hour in ((early, "10"), (late, "20"))])

    async def matching(which: str, op: str, value: str) -> set[str]:
        node = {"type": "performed_time", "event": "Visit2", "which": which, "op": op, "value": value}
        if not in_sql:  # the same matches, through a condition only Python evaluates
            node = {"type": "or", "children": [node, {"type": "stage", "stage": "churned"}]}
        r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": node, "sample": 10})
        assert r.status_code == 200, r.text
        return set(r.json()["sample"])

    both = {str(early), str(late)}
    assert await matching("first", "before", f"{day}T18:00:00Z") == {str(early)}
    assert await matching("last", "after", f"{day}T06:00:00Z") == both
    assert await matching("last", "after", f"{day}T18:00:00Z") == {str(late)}
    assert await matching("first", "before", f"{day}T12:00:00+03:00") == set()  # 09:00 UTC
    assert await matching("first", "before", f"{day}T12:00:00-03:00") == {str(early)}  # 15:00 UTC
    assert await matching("first", "after", f"{day}T21:00:00+02:00") == {str(late)}  # 19:00 UTC
    assert await matching("first", "after", f"{day}T10:00:00Z") == {str(late)}  # an instant is not after itself
    # a bare date is the start of that UTC day, as for traits
    assert await matching("last", "after", str(day)) == both
    assert await matching("last", "before", str(day)) == set()
    assert await matching("first", "before", str(day + timedelta(days=1))) == both
    assert await matching("first", "after", str(day + timedelta(days=1))) == set()
    # a merge folds the merged-away profile's occurrences in: its visit at 05:00 is the survivor's first
    device = uuid.uuid4()
    await _fold(ctx.sm, [{**_ev(ctx.ws, device, event="Visit2"), "timestamp": f"{day}T05:00:00+00:00"}])
    await _fold(ctx.sm, [_ev(ctx.ws, late, "merge", props={"merged_profile_id": str(device)})])
    assert await matching("first", "before", f"{day}T06:00:00Z") == {str(late)}
    assert await matching("last", "after", f"{day}T19:00:00Z") == {str(late)}


async def test_days_counted_before_instants_were_kept_read_as_their_start(ctx) -> None:
    """segment_0008 only adds the columns (filling them from stored occurrences rewrote the table under a lock that
    stopped every fold): a day counted before reads as its start, as days compared before, until a new occurrence
    that day gives it a time."""
    before = uuid.uuid4()
    day = NOW.date() - timedelta(days=3)
    await _fold(ctx.sm, [{**_ev(ctx.ws, before, event="Visit3"), "timestamp": f"{day}T{hour}:00:00+00:00"}
                         for hour in ("10", "20")])
    async with ctx.sm() as s, s.begin():  # as the release before left the day
        await s.execute(text("update segment.event_counts set first_at = null, last_at = null where profile_id = :p"),
                        {"p": before})

    async def matching(which: str, op: str, value: str) -> set[str]:
        node = {"type": "performed_time", "event": "Visit3", "which": which, "op": op, "value": value}
        r = await ctx.seg.post("/v1/segments/preview", headers=ctx.h, json={"definition": node, "sample": 10})
        assert r.status_code == 200, r.text
        return set(r.json()["sample"])

    assert await matching("first", "before", f"{day}T09:00:00Z") == {str(before)}  # at 00:00, as far as is known
    assert await matching("last", "after", f"{day}T19:00:00Z") == set()
    assert await matching("last", "before", str(day + timedelta(days=1))) == {str(before)}
    # a new occurrence that day is later than the start the day was read at
    await _fold(ctx.sm, [{**_ev(ctx.ws, before, event="Visit3"), "timestamp": f"{day}T21:00:00+00:00"}])
    assert await matching("last", "after", f"{day}T20:30:00Z") == {str(before)}
    assert await matching("first", "before", f"{day}T01:00:00Z") == {str(before)}


async def test_amounts_and_aggregates_read_numeric_text_by_the_rule_of_comparisons(ctx) -> None:
    """Revenue and aggregates read text with Python's float(): "1_000", Arabic-Indic digits "١٢" and " 25" were
    numbers there, though a trait or a ``where`` filter takes only digits, a sign, a point and an exponent. And an
    amount of a quadrillion or more counted as 0 in the revenue, but in full in an aggregate: two orders of 1e15
    made an aggregate sum of 2e15 and no revenue at all."""
    odd, huge = uuid.uuid4(), uuid.uuid4()
    await _fold(ctx.sm, [_ev(ctx.ws, odd, event="Order Completed", props={"revenue": v})
                         for v in ("1_000", "١٢", " 25", "25 ", "1e3", 10)]
                + [_ev(ctx.ws, huge, event="Order Completed", props={"revenue": v}) for v in (1e15, "-1e15", 4)])
    r = await ctx.seg.get(f"/v1/profiles/{odd}/attributes", headers=ctx.h)
    assert (r.json()["order_count"], r.json()["total_revenue"]) == (6, 1010.0), r.text
    r = await ctx.seg.get(f"/v1/profiles/{huge}/attributes", headers=ctx.h)
    assert (r.json()["order_count"], r.json()["total_revenue"]) == (3, 4.0), r.text

    async def found(function: str, op: str, value: float) -> set[str]:
        node = {"type": "aggregate", "event": "Order Completed", "property": "revenue", "function": function,
                "op": op, "value": value}
        r = await ctx.seg.post("/v1/profiles/search", headers=ctx.h, json={"definition": node})
        assert r.status_code == 200, r.text
        return {p["profile_id"] for p in r.json()["profiles"]}

    assert await found("sum", "equals", 1010) == {str(odd)}
    assert await found("count", "equals", 2) == {str(odd)}  # the texts that are no numbers are left out
    assert await found("sum", "equals", 4) == {str(huge)}
    assert await found("sum", "gte", 2e15) == set()
    assert await found("max", "gte", 1e15) == set()
