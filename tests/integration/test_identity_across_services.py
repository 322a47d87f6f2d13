"""Ingest's profile merges followed into the other services, through the HTTP API: segment's traits, counts
and memberships, campaign's journeys, and erasure and export of a merged user."""

import uuid

import pytest

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


async def _fold(w: World, *refs: str) -> None:
    """What segment's worker does: fold the whole feed (other tests may have left a backlog), then re-evaluate."""
    from services.segment import evaluation

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
