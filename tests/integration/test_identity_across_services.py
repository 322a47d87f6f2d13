"""Ingest's profile merges followed into the other services, through the HTTP API: segment's traits, counts
and memberships, campaign's journeys, and erasure and export of a merged user."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.testing import feed_head, internal_headers
from tests.integration.test_journeys import World


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> World:
    return World(apps, workspace, sessionmaker, internal_client)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _profile(w: World, ref: str) -> dict:
    r = await w.apps["ingest"].get(f"/v1/profiles/{ref}", headers=w.h)
    assert r.status_code == 200, r.text
    return r.json()


async def _settled(w: World) -> None:
    """Wait until every committed event is visible in ingest's feed: a transaction open anywhere on the server
    (another database's too) holds the feed's horizon back for a moment."""
    for _ in range(600):
        cursor = await feed_head(w.apps["ingest"])
        page = (await w.apps["ingest"].get("/v1/events", params={"after": cursor, "limit": 1},
                                           headers=internal_headers())).json()
        if not page["events"] and page["behind"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("ingest's feed did not catch up")


async def _pump(w: World, now: datetime) -> None:
    await _settled(w)
    await w.pump(now)


async def _fold(w: World, *refs: str) -> None:
    """What segment's worker does: fold the whole feed (other tests may have left a backlog), then re-evaluate."""
    from services.segment import evaluation

    await _settled(w)
    while True:
        async with w.sm() as s, s.begin():
            if (await evaluation.consume_page(s, w.internal, 500)).events < 500:
                break
    async with w.sm() as s, s.begin():
        await evaluation.reevaluate(s, w.ws, [uuid.UUID(r) for r in refs])


async def _members(w: World, segment_id: str) -> list[str]:
    r = await w.apps["segment"].get(f"/v1/segments/{segment_id}/members", headers=w.h)
    assert r.status_code == 200, r.text
    return [m["profile_id"] for m in r.json()["members"]]


async def test_a_logins_own_traits_survive_the_merge_it_makes_in_segment(world) -> None:
    # identify(userId, traits) from a device with anonymous history: ingest merges, then applies the traits;
    # segment folded the identify first and the merge's older copy of the traits then replaced them
    w, t = world, _tag()
    c = w.apps["ingest"]
    seg = (await w.apps["segment"].post("/v1/segments", headers=w.h, json={"name": f"gold-{t}", "definition": {
        "type": "trait", "trait": "tier", "value": f"gold-{t}"}})).json()
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"lg-{t}", "traits": {"name": "Lu"}})
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"la-{t}", "event": "Browsed"})
    r = await c.post("/v1/identify", auth=w.wk, json={"userId": f"lg-{t}", "anonymousId": f"la-{t}",
                                                       "traits": {"tier": f"gold-{t}"}})
    assert r.json()["accepted"] == 1
    user = await _profile(w, f"lg-{t}")
    assert user["traits"] == {"name": "Lu", "tier": f"gold-{t}"} and len(user["merged_from"]) == 1
    await _fold(w, user["id"])
    assert await _members(w, seg["id"]) == [user["id"]]


async def test_orders_from_before_the_login_count_once_for_the_user(world) -> None:
    w, t = world, _tag()
    c = w.apps["ingest"]
    seg = (await w.apps["segment"].post("/v1/segments", headers=w.h, json={"name": f"two-{t}", "definition": {
        "type": "performed", "event": "Order Completed", "count": 2}})).json()
    await c.post("/v1/track", auth=w.wk, json={"userId": f"oo-{t}", "event": "Order Completed",
                                                "properties": {"revenue": 10}})
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"oa-{t}", "event": "Order Completed",
                                                "properties": {"revenue": 5}})
    anon, user = await _profile(w, f"oa-{t}"), await _profile(w, f"oo-{t}")
    await _fold(w, user["id"], anon["id"])  # segment has counted both, on two profiles
    await c.post("/v1/track", auth=w.wk, json={"userId": f"oo-{t}", "anonymousId": f"oa-{t}", "event": "Login"})
    # and a third order, anonymous again, after the merge (the anonymousId now leads to the user)
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"oa-{t}", "event": "Order Completed",
                                                "properties": {"revenue": 1}})
    await _fold(w, user["id"], anon["id"])
    attrs = (await w.apps["segment"].get(f"/v1/profiles/{user['id']}/attributes", headers=w.h)).json()
    assert (attrs["order_count"], attrs["total_revenue"]) == (3, 16.0), attrs
    assert await _members(w, seg["id"]) == [user["id"]]
    assert (await _profile(w, anon["id"]))["id"] == user["id"]  # the old profile id answers as the survivor


T0 = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


async def test_a_journey_the_anonymous_profile_was_in_continues_once_after_the_login(world) -> None:
    # journeys stayed with the merged-away profile: the user entered a "once" campaign a second time and got
    # its mail twice, and the survivor's events never reached the journey
    w, t = world, _tag()
    c = w.apps["ingest"]
    email = f"ju-{t}@journeys.example"
    hello = await w.template("hello", "Hello")
    camp = await w.campaign(trigger={"type": "event", "event": f"Started {t}"}, entry={"rule": "once"}, steps=[
        {"id": "wait", "type": "delay", "seconds": 3600, "next": "hello"},
        {"id": "hello", "type": "send", "template_id": hello}])
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"ja-{t}", "event": f"Started {t}",
                                                "timestamp": T0.isoformat()})
    anon = await _profile(w, f"ja-{t}")
    await _pump(w, T0)
    assert [j["status"] for j in await w.path(anon["id"])] == ["active"]
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"ju-{t}", "traits": {"email": email}})  # an account
    await c.post("/v1/track", auth=w.wk, json={"userId": f"ju-{t}", "anonymousId": f"ja-{t}", "event": "Logged In"})
    await c.post("/v1/track", auth=w.wk, json={"userId": f"ju-{t}", "event": f"Started {t}",
                                                "timestamp": (T0 + timedelta(minutes=2)).isoformat()})
    await _pump(w, T0 + timedelta(minutes=3))
    user = await _profile(w, f"ju-{t}")
    assert user["id"] != anon["id"] and await w.path(anon["id"]) == []
    (journey,) = await w.path(user["id"])
    assert journey["entered_at"].startswith("2026-11-25T15:00:00") and journey["log"][0]["kind"] == "entered"
    await _pump(w, T0 + timedelta(hours=2))
    assert [m["subject"] for m in await w.mail(email)] == ["Hello"]
    stats = (await w.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/stats", headers=w.h)).json()
    assert stats["entered"] == 1


async def test_when_both_profiles_were_in_a_once_campaign_the_earlier_journey_continues(world) -> None:
    w, t = world, _tag()
    c = w.apps["ingest"]
    email = f"jb-{t}@journeys.example"
    hello = await w.template("hello", "Hello")
    await w.campaign(trigger={"type": "event", "event": f"Started {t}"}, entry={"rule": "once"}, steps=[
        {"id": "wait", "type": "delay", "seconds": 3600, "next": "hello"},
        {"id": "hello", "type": "send", "template_id": hello}])
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"jb-{t}", "traits": {"email": email}})
    await c.post("/v1/track", auth=w.wk, json={"userId": f"jb-{t}", "event": f"Started {t}",
                                                "timestamp": (T0 + timedelta(minutes=1)).isoformat()})
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"jd-{t}", "event": f"Started {t}",
                                                "timestamp": T0.isoformat()})
    await _pump(w, T0 + timedelta(minutes=1))
    anon, user = await _profile(w, f"jd-{t}"), await _profile(w, f"jb-{t}")
    await c.post("/v1/alias", auth=w.wk, json={"previousId": f"jd-{t}", "userId": f"jb-{t}"})
    await _pump(w, T0 + timedelta(minutes=2))
    paths = sorted(await w.path(user["id"]), key=lambda j: j["entered_at"])
    assert [(j["entered_at"][:19], j["status"]) for j in paths] == [("2026-11-25T15:00:00", "active"),
                                                                    ("2026-11-25T15:01:00", "exited")]
    assert paths[1]["log"][-1]["detail"].startswith(f"merged: profile {anon['id']} became this one")
    await _pump(w, T0 + timedelta(hours=2))
    assert [m["subject"] for m in await w.mail(email)] == ["Hello"]
