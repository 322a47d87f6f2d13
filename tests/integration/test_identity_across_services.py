"""Ingest's profile merges followed into the other services, through the HTTP API: segment's traits, counts
and memberships, campaign's journeys, per-profile routes asked with a merged-away id, and erasure and export of a
merged user."""

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
    assert user["id"] != anon["id"]
    (journey,) = await w.path(user["id"])
    assert await w.path(anon["id"]) == [journey]  # the old id answers as the survivor
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


PROBLEM = "application/problem+json"
_SEGMENT_ROUTES = ("/v1/profiles/{}/segments", "/v1/lifecycle/{}", "/v1/profiles/{}/attributes")


async def _per_profile(w: World, pid: str) -> dict[str, dict]:
    """What segment's and campaign's per-profile routes answer for ``pid``."""
    out = {}
    for route in _SEGMENT_ROUTES:
        r = await w.apps["segment"].get(route.format(pid), headers=w.h)
        assert r.status_code == 200, (route, r.text)
        out[route] = r.json()
    r = await w.apps["campaign"].get(f"/v1/profiles/{pid}/journeys", headers=w.h)
    assert r.status_code == 200, r.text
    out["journeys"] = r.json()
    return out


async def _merge_world(w: World, t: str) -> tuple[dict, str]:
    """A trait segment and a "once" campaign started by an event, for the merge tests: (segment, event)."""
    seg = (await w.apps["segment"].post("/v1/segments", headers=w.h, json={"name": f"vip-{t}", "definition": {
        "type": "trait", "trait": "tier", "value": f"vip-{t}"}})).json()
    hello = await w.template("hello", "Hello")
    await w.campaign(trigger={"type": "event", "event": f"Started {t}"}, entry={"rule": "once"}, steps=[
        {"id": "wait", "type": "delay", "seconds": 3600, "next": "hello"},
        {"id": "hello", "type": "send", "template_id": hello}])
    return seg, f"Started {t}"


async def test_a_merged_away_profile_id_answers_as_the_survivor_in_segment_and_campaign(world) -> None:
    # support asks "why didn't X get the email" with the id X had before logging in: segment answered 404 (or the
    # old profile's empty state) and campaign an empty page, though the person's journeys and segments live on
    w, t = world, _tag()
    c = w.apps["ingest"]
    seg, started = await _merge_world(w, t)
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"ma-{t}", "event": started,
                                                "timestamp": T0.isoformat()})
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"mu-{t}", "traits": {"name": "Mo"}})  # an account
    anon = await _profile(w, f"ma-{t}")
    await _pump(w, T0)
    await _fold(w, anon["id"])
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"mu-{t}", "anonymousId": f"ma-{t}",
                                                   "traits": {"tier": f"vip-{t}"}})
    user = await _profile(w, f"mu-{t}")
    assert user["id"] != anon["id"] and anon["id"] in [m["profile_id"] for m in user["merged_from"]]
    await _pump(w, T0 + timedelta(minutes=1))
    await _fold(w, user["id"], anon["id"])
    old, new = await _per_profile(w, anon["id"]), await _per_profile(w, user["id"])
    assert old == new
    assert {body["profile_id"] for body in old.values()} == {user["id"]}
    assert old["/v1/profiles/{}/segments"]["segment_ids"] == [seg["id"]]
    assert old["/v1/lifecycle/{}"]["stage"] is not None
    assert [j["status"] for j in old["journeys"]["journeys"]] == ["active"]


async def test_a_chain_of_merges_leads_to_the_last_survivor(world) -> None:
    # an anonymous visitor logs in (A into B), then the account is aliased to a newer user id (B into C): A's and
    # B's ids both answer as C, whether both merges come in one feed page or, as here, one after the other
    w, t = world, _tag()
    c = w.apps["ingest"]
    seg, started = await _merge_world(w, t)
    await c.post("/v1/track", auth=w.wk, json={"anonymousId": f"ca-{t}", "event": started,
                                                "timestamp": T0.isoformat()})
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"cb-{t}", "traits": {"tier": f"vip-{t}"}})
    a, b = await _profile(w, f"ca-{t}"), await _profile(w, f"cb-{t}")
    await c.post("/v1/track", auth=w.wk, json={"userId": f"cb-{t}", "anonymousId": f"ca-{t}", "event": "Login"})
    await _pump(w, T0 + timedelta(minutes=1))
    await _fold(w, a["id"], b["id"])
    assert (await _per_profile(w, a["id"]))["journeys"]["profile_id"] == b["id"]  # the first merge alone
    await c.post("/v1/identify", auth=w.wk, json={"userId": f"cc-{t}"})
    c_id = (await _profile(w, f"cc-{t}"))["id"]
    await c.post("/v1/alias", auth=w.wk, json={"previousId": f"cb-{t}", "userId": f"cc-{t}"})
    assert (await _profile(w, a["id"]))["id"] == c_id  # ingest's own answer
    await _pump(w, T0 + timedelta(minutes=2))
    await _fold(w, a["id"], b["id"], c_id)
    survivor = await _per_profile(w, c_id)
    assert survivor["/v1/profiles/{}/segments"]["segment_ids"] == [seg["id"]]
    assert len(survivor["journeys"]["journeys"]) == 1
    for old in (a["id"], b["id"]):
        assert await _per_profile(w, old) == survivor


async def test_an_unknown_profile_id_is_a_404_in_segment_and_campaign(world) -> None:
    """Campaign answered an empty page for an id that is no profile (a typo read as "no journeys"), where the README
    says an unknown id is a 404: it asks ingest, as its programs' profile routes do, when it holds no journey of the
    id; a profile ingest knows with no journey is an empty page."""
    w, nobody = world, str(uuid.uuid4())
    for route in _SEGMENT_ROUTES:
        r = await w.apps["segment"].get(route.format(nobody), headers=w.h)
        assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), (route, r.text)
    r = await w.apps["campaign"].get(f"/v1/profiles/{nobody}/journeys", headers=w.h)
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), r.text
    pid = await w.identify(f"nojourney-{uuid.uuid4().hex[:6]}", plan="free")
    r = await w.apps["campaign"].get(f"/v1/profiles/{pid}/journeys", headers=w.h)
    assert r.status_code == 200 and r.json() == {"profile_id": pid, "journeys": [], "next_cursor": None}
