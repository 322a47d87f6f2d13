"""Identity resolution through HTTP: anonymous history joins the user, alias merges, group keeps accounts."""

import uuid

import pytest

from shared.testing import feed_head, feed_pages


async def _profile(apps, workspace, ref: str) -> dict:
    r = await apps["ingest"].get(f"/v1/profiles/{ref}", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert r.status_code == 200, r.text
    return r.json()


async def test_login_merges_the_anonymous_profile_into_the_known_user(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    head = await feed_head(c)
    await c.post("/v1/identify", auth=auth, json={"userId": "m-1", "traits": {"email": "m1@example.com", "plan": "pro"},
                                                  "timestamp": "2026-01-02T00:00:00Z"})
    # a separate anonymous history on another device, with a newer trait
    await c.post("/v1/track", auth=auth, json={"anonymousId": "dev-9", "event": "Viewed Pricing"})
    await c.post("/v1/identify", auth=auth, json={"anonymousId": "dev-9", "traits": {"plan": "team"},
                                                  "timestamp": "2026-01-03T00:00:00Z"})
    anon_id = (await _profile(apps, workspace, "dev-9"))["id"]
    # logging in on that device proves both are one person
    r = await c.post("/v1/track", auth=auth, json={"userId": "m-1", "anonymousId": "dev-9", "event": "Logged In",
                                                   "messageId": "login-1"})
    assert r.status_code == 200
    user = await _profile(apps, workspace, "m-1")
    assert (await _profile(apps, workspace, "dev-9"))["id"] == user["id"] != anon_id
    assert (await _profile(apps, workspace, anon_id))["id"] == user["id"]  # the old id redirects
    assert user["traits"] == {"email": "m1@example.com", "plan": "team"}  # newest per trait
    assert [(m["profile_id"], m["reason"], m["message_id"]) for m in user["merged_from"]] == [
        (anon_id, "identify", "login-1")]
    mine = [e async for page in feed_pages(c, after=head) for e in page["events"]
            if e["workspace_id"] == str(workspace.workspace_id)]
    assert {e["profile_id"] for e in mine} == {user["id"]}  # history re-attributed
    assert [e["properties"]["merged_profile_id"] for e in mine if e["type"] == "merge"] == [anon_id]


async def test_alias_merges_previous_id_into_user_id(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    await c.post("/v1/identify", auth=auth, json={"userId": "old-id", "traits": {"name": "Old"}})
    await c.post("/v1/identify", auth=auth, json={"userId": "new-id", "traits": {"email": "n@example.com"}})
    r = await c.post("/v1/alias", auth=auth, json={"previousId": "old-id", "userId": "new-id"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    merged = await _profile(apps, workspace, "old-id")
    assert merged["user_id"] == "new-id" and merged["traits"] == {"email": "n@example.com", "name": "Old"}
    assert merged["merged_from"][0]["reason"] == "alias"
    # alias of an id never seen before simply links it
    await c.post("/v1/alias", auth=auth, json={"previousId": "fresh-anon", "userId": "new-id"})
    assert (await _profile(apps, workspace, "fresh-anon"))["id"] == merged["id"]


async def test_the_profile_list_finds_a_user_by_a_user_id_merged_into_it(apps, workspace) -> None:
    """After an alias, ``GET /v1/profiles/kx`` led to the survivor but ``?user_id=kx`` and ``?q=kx`` found
    nothing: the list read the survivor's ``user_id`` column only (the merged profile's is emptied)."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    await c.post("/v1/identify", auth=auth, json={"userId": "kx-old", "traits": {"name": "Kay"}})
    await c.post("/v1/identify", auth=auth, json={"userId": "ky-new"})
    await c.post("/v1/alias", auth=auth, json={"previousId": "kx-old", "userId": "ky-new"})
    await c.post("/v1/alias", auth=auth, json={"previousId": "kz-unseen", "userId": "ky-new"})
    await c.post("/v1/identify", auth=auth, json={"userId": "other", "anonymousId": "kx-device"})
    survivor = (await _profile(apps, workspace, "kx-old"))["id"]

    async def listed(**params: str) -> list[tuple[str, str]]:
        r = await c.get("/v1/profiles", headers=h, params=params)
        assert r.status_code == 200, r.text
        return [(p["id"], p["user_id"]) for p in r.json()["profiles"]]

    for ref in ("kx-old", "kz-unseen", "ky-new"):
        assert await listed(user_id=ref) == [(survivor, "ky-new")], ref
    assert await listed(user_id="kx-device") == [] and await listed(user_id="kx") == []  # an anonymousId; exact
    assert await listed(q="KX-OL") == [(survivor, "ky-new")]
    assert await listed(q="kz-") == [(survivor, "ky-new")]
    assert await listed(q="kx-device") == []  # anonymousIds are not searched
    assert await listed(q="kay") == [(survivor, "ky-new")]


async def test_two_known_users_on_one_device_are_not_merged(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    await c.post("/v1/identify", auth=auth, json={"userId": "alice", "anonymousId": "shared-tablet"})
    await c.post("/v1/identify", auth=auth, json={"userId": "bob"})
    await c.post("/v1/track", auth=auth, json={"userId": "bob", "anonymousId": "shared-tablet", "event": "E"})
    assert (await _profile(apps, workspace, "alice"))["id"] != (await _profile(apps, workspace, "bob"))["id"]


async def test_group_keeps_account_traits_and_membership(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    await c.post("/v1/group", auth=auth, json={"userId": "g-1", "groupId": "acme",
                                               "traits": {"industry": "retail", "employees": 40}})
    await c.post("/v1/group", auth=auth, json={"userId": "g-2", "groupId": 42, "traits": {"plan": "gold"}})
    await c.post("/v1/group", auth=auth, json={"userId": "g-1", "groupId": "acme", "traits": {"employees": 45}})
    p = await _profile(apps, workspace, "g-1")
    assert p["groups"] == [{"group_id": "acme", "traits": {"industry": "retail", "employees": 45}}]
    assert (await _profile(apps, workspace, "g-2"))["groups"][0]["group_id"] == "42"
    bad = await c.post("/v1/group", auth=auth, json={"userId": "g-1", "traits": {}})
    assert bad.status_code == 422
    bad_alias = await c.post("/v1/alias", auth=auth, json={"anonymousId": "x", "previousId": "y"})
    assert bad_alias.status_code == 422


async def test_an_alias_chain_keeps_every_merge_in_the_history(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    for uid in ("ch-a", "ch-b", "ch-c"):
        await c.post("/v1/identify", auth=auth, json={"userId": uid, "traits": {uid: True}})
    first = (await _profile(apps, workspace, "ch-a"))["id"]
    await c.post("/v1/alias", auth=auth, json={"previousId": "ch-a", "userId": "ch-b", "messageId": "alias-ab"})
    second = (await _profile(apps, workspace, "ch-b"))["id"]
    await c.post("/v1/alias", auth=auth, json={"previousId": "ch-b", "userId": "ch-c", "messageId": "alias-bc"})
    for ref in ("ch-a", "ch-b", "ch-c"):
        p = await _profile(apps, workspace, ref)
        assert p["traits"] == {"ch-a": True, "ch-b": True, "ch-c": True}
        # a→b used to be left out: it was recorded against b's profile, merged away by b→c
        assert [(m["profile_id"], m["message_id"]) for m in p["merged_from"]] == [(first, "alias-ab"),
                                                                                   (second, "alias-bc")]


async def test_profiles_list_filters_and_paginates(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    batch = [{"type": "identify", "userId": f"l-{i}", "traits": {"email": f"l{i}@example.com",
                                                                  "plan": "pro" if i % 2 else "free"}}
             for i in range(7)]
    assert (await c.post("/v1/batch", auth=auth, json={"batch": batch})).json()["accepted"] == 7
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "trait.plan": "pro", **({"after": cursor} if cursor else {})}
        page = (await c.get("/v1/profiles", headers=h, params=params)).json()
        seen += [p["user_id"] for p in page["profiles"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == ["l-1", "l-3", "l-5"]
    found = (await c.get("/v1/profiles", headers=h, params={"q": "L4@EXAMPLE"})).json()["profiles"]
    assert [p["user_id"] for p in found] == ["l-4"]
    assert (await c.get("/v1/profiles", headers=h, params={"email": "l6@example.com"})).json()["profiles"][0][
        "user_id"] == "l-6"
    assert (await c.get("/v1/profiles", headers=h, params={"after": "junk"})).status_code == 400


async def test_profile_trait_filters_match_numbers_and_booleans_and_combine(apps, workspace) -> None:
    # a query string holds only text: numeric and boolean traits used to match nothing at all
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    batch = [{"type": "identify", "userId": f"t-{i}", "traits": {"age": 30 + i % 2, "vip": i % 3 == 0, "score": 1.5,
                                                                  "plan": "pro" if i < 3 else "free"}}
             for i in range(6)]
    assert (await c.post("/v1/batch", auth=auth, json={"batch": batch})).json()["accepted"] == 6

    async def users(**params: str) -> list[str]:
        r = await c.get("/v1/profiles", headers=h, params=params)
        assert r.status_code == 200, r.text
        return sorted(p["user_id"] for p in r.json()["profiles"])

    assert await users(**{"trait.age": "31"}) == ["t-1", "t-3", "t-5"]
    assert await users(**{"trait.vip": "true"}) == ["t-0", "t-3"]
    assert await users(**{"trait.score": "1.5", "trait.plan": "pro", "trait.age": "30"}) == ["t-0", "t-2"]
    assert await users(**{"trait.vip": "true", "trait.plan": "free"}) == ["t-3"]
    assert await users(**{"trait.age": "3"}) == []
    # the same trait twice used to match its last value only: a 422 naming it, as for limit or user_id
    twice = await c.get("/v1/profiles?trait.age=30&trait.plan=pro&trait.age=31", headers=h)
    assert twice.status_code == 422, twice.text
    assert [e["loc"] for e in twice.json()["errors"]] == [["query", "trait.age"]]


async def test_profile_events_newest_first_with_pagination(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    for i in range(5):
        await c.post("/v1/track", auth=auth, json={"userId": "ev-1", "event": f"Step {i}"})
    first = (await c.get("/v1/profiles/ev-1/events", headers=h, params={"limit": 3})).json()
    second = (await c.get("/v1/profiles/ev-1/events", headers=h,
                          params={"limit": 3, "after": first["next_cursor"]})).json()
    assert [e["event"] for e in first["events"] + second["events"]] == [f"Step {i}" for i in range(4, -1, -1)]
    assert second["next_cursor"] is None
    assert (await c.get("/v1/profiles/nobody/events", headers=h)).status_code == 404


async def test_export_says_503_when_another_service_is_down(apps, workspace, settings) -> None:
    import httpx

    from shared.embedded import free_port
    from shared.http import InternalClient

    await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": "x-1"})
    ingest_app = apps["ingest"]._transport.app  # type: ignore[attr-defined]
    reachable = ingest_app.state.internal
    nowhere = settings.model_copy(update={f"{s}_url": f"http://127.0.0.1:{free_port()}"
                                          for s in ("segment", "campaign", "delivery")})
    async with httpx.AsyncClient(timeout=2) as http:
        ingest_app.state.internal = InternalClient(nowhere, http)  # the other services are down
        try:
            r = await apps["ingest"].get("/v1/privacy/export/x-1",
                                         headers={"Authorization": f"Bearer {workspace.secret_key}"})
        finally:
            ingest_app.state.internal = reachable
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"] == "5"


async def test_emails_find_their_profile_and_stay_suppressed_in_any_case(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Mail servers treat addresses case-insensitively (delivery keys them lowercased): a lookup, a filter or an
    erasure by ``ada@example.com`` finds the profile whose email is ``Ada@Example.COM``, and an erasure with
    suppression drops later messages naming the email in another case."""
    from services.ingest import privacy

    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    mixed, lower = f"Ada.{tag}@Example.COM", f"ada.{tag}@example.com"
    await c.post("/v1/identify", auth=auth, json={"userId": f"ada-{tag}", "traits": {"email": mixed}})
    pid = (await _profile(apps, workspace, f"ada-{tag}"))["id"]
    for ref in (lower, mixed, lower.upper()):
        assert (await _profile(apps, workspace, ref))["id"] == pid, ref
    listed = (await c.get("/v1/profiles", headers=h, params={"email": lower})).json()["profiles"]
    assert [p["id"] for p in listed] == [pid]

    r = await c.post("/v1/privacy/erasure", headers=h, json={"user": lower, "suppress": True})
    assert r.status_code == 202, r.text
    assert r.json()["profile_ids"] == [pid]
    await privacy.propagate(sessionmaker, internal_client, limit=1000)
    r = await c.post("/v1/identify", auth=auth, json={"userId": f"new-{tag}", "traits": {"email": lower.upper()}})
    assert r.json()["suppressed"] == 1, r.text
    assert (await c.get(f"/v1/profiles/new-{tag}", headers=h)).status_code == 404


async def test_a_new_user_on_a_shared_device_gets_a_profile_of_their_own(apps, workspace) -> None:
    # Bob logs in for the first time on the tablet Alice used: his userId used to join the device's profile
    # (Alice's), so his traits overwrote hers and GET /v1/profiles/bob answered with Alice
    c, auth = apps["ingest"], (workspace.write_key, "")
    await c.post("/v1/identify", auth=auth, json={"userId": "sd-alice", "anonymousId": "sd-tablet",
                                                  "traits": {"name": "Alice"}})
    await c.post("/v1/identify", auth=auth, json={"userId": "sd-bob", "anonymousId": "sd-tablet",
                                                  "traits": {"name": "Bob"}})
    await c.post("/v1/track", auth=auth, json={"userId": "sd-bob", "anonymousId": "sd-tablet", "event": "Bob Did"})
    alice, bob = await _profile(apps, workspace, "sd-alice"), await _profile(apps, workspace, "sd-bob")
    assert alice["id"] != bob["id"]
    assert (alice["user_id"], alice["traits"]) == ("sd-alice", {"name": "Alice"})
    assert (bob["user_id"], bob["traits"], bob["merged_from"]) == ("sd-bob", {"name": "Bob"}, [])
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    events = (await c.get("/v1/profiles/sd-bob/events", headers=h)).json()["events"]
    assert [e["type"] for e in events] == ["track", "identify"]
    assert (await _profile(apps, workspace, "sd-tablet"))["id"] == alice["id"]  # the device stays where it was


async def test_one_batch_naming_one_device_with_several_users(apps, workspace) -> None:
    # the same anonymousId with three userIds in one batch: the first user takes the device's profile (it
    # was anonymous), each other user gets their own; and the profile created anonymous earlier in the batch
    # gets its userId (it used to keep none: the user's id led to it, yet ?user_id= did not find it)
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "anonymousId": "bd-kiosk", "event": "Opened"},
        {"type": "identify", "userId": "bd-1", "anonymousId": "bd-kiosk", "traits": {"n": 1}},
        {"type": "identify", "userId": "bd-2", "anonymousId": "bd-kiosk", "traits": {"n": 2}},
        {"type": "track", "userId": "bd-3", "anonymousId": "bd-kiosk", "event": "E"}]})
    assert r.json()["accepted"] == 4
    profiles = [await _profile(apps, workspace, f"bd-{i}") for i in (1, 2, 3)]
    assert len({p["id"] for p in profiles}) == 3
    assert [(p["user_id"], p["traits"]) for p in profiles] == [("bd-1", {"n": 1}), ("bd-2", {"n": 2}), ("bd-3", {})]
    assert (await _profile(apps, workspace, "bd-kiosk"))["id"] == profiles[0]["id"]
    listed = (await c.get("/v1/profiles", headers=h, params={"user_id": "bd-1"})).json()["profiles"]
    assert [p["id"] for p in listed] == [profiles[0]["id"]]


async def test_an_alias_of_an_unseen_id_leads_to_the_user_whichever_way_the_id_comes_back(apps, workspace) -> None:
    # previousId was recorded only as an anonymousId: a server still sending the old id as userId made a
    # second profile for the same person
    c, auth = apps["ingest"], (workspace.write_key, "")
    await c.post("/v1/identify", auth=auth, json={"userId": "un-new", "traits": {"plan": "pro"}})
    await c.post("/v1/alias", auth=auth, json={"previousId": "un-old", "userId": "un-new"})
    await c.post("/v1/track", auth=auth, json={"userId": "un-old", "event": "Old Server Event"})
    await c.post("/v1/track", auth=auth, json={"anonymousId": "un-old", "event": "Old Device Event"})
    user = await _profile(apps, workspace, "un-new")
    assert (await _profile(apps, workspace, "un-old"))["id"] == user["id"]
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    listed = (await c.get("/v1/profiles", headers=h, params={"user_id": "un-old"})).json()["profiles"]
    assert [(p["id"], p["user_id"]) for p in listed] == [(user["id"], "un-new")]  # no second profile
    events = (await c.get("/v1/profiles/un-new/events", headers=h)).json()["events"]
    assert [e["event"] for e in events if e["type"] == "track"] == ["Old Device Event", "Old Server Event"]


async def test_concurrent_first_sightings_of_one_user_make_one_profile(apps, workspace) -> None:
    import asyncio

    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    calls = [c.post("/v1/identify", auth=auth, json={"userId": "cf-1", "anonymousId": f"cf-dev-{i}",
                                                      "traits": {f"t{i}": i}}) for i in range(8)]
    calls += [c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "cf-1", "anonymousId": f"cf-batch-{i}", "event": "Opened"},
        {"type": "identify", "userId": "cf-1", "anonymousId": f"cf-batch-{i}"}]}) for i in range(4)]
    assert all(r.status_code == 200 for r in await asyncio.gather(*calls))
    listed = (await c.get("/v1/profiles", headers=h, params={"user_id": "cf-1"})).json()["profiles"]
    assert len(listed) == 1
    p = await _profile(apps, workspace, "cf-1")
    assert sorted(p["anonymous_ids"]) == sorted([f"cf-dev-{i}" for i in range(8)] + [f"cf-batch-{i}" for i in range(4)])
    assert p["traits"] == {f"t{i}": i for i in range(8)} and p["merged_from"] == []


async def test_an_event_whose_write_raced_the_login_merge_is_still_the_users(apps, workspace, sessionmaker) -> None:
    """A tracking write that resolved the device's profile before a login merged it, and committed after the merge
    moved that profile's events, keeps the merged-away id; the user's events and export still show it."""
    from datetime import UTC, datetime

    from services.ingest import tracking
    from services.ingest.schemas import TrackMessage

    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    head = await feed_head(c)
    await c.post("/v1/identify", auth=auth, json={"userId": "race-user", "traits": {"plan": "pro"}})  # signed up
    await c.post("/v1/track", auth=auth, json={"anonymousId": "race-dev", "event": "Opened App"})  # a new device
    device = (await _profile(apps, workspace, "race-dev"))["id"]
    now = datetime.now(UTC)
    raced = tracking.normalize(TrackMessage.model_validate(
        {"type": "track", "anonymousId": "race-dev", "event": "Added To Cart", "messageId": f"race-{device}"}), now)
    async with sessionmaker() as session, session.begin():  # the racing write, as the committer makes it
        result = await tracking.record(session, workspace.workspace_id, [raced], now)
        assert result.inserted[0].profile_id == uuid.UUID(device)  # resolved before the merge
        login = await c.post("/v1/identify", auth=auth, json={"userId": "race-user", "anonymousId": "race-dev"})
        assert login.status_code == 200, login.text  # the merge commits while the write is still open
    user = await _profile(apps, workspace, "race-user")
    assert user["id"] != device and (await _profile(apps, workspace, "race-dev"))["id"] == user["id"]
    events = (await c.get("/v1/profiles/race-user/events", headers=h)).json()["events"]
    assert sorted(e["event"] for e in events if e["type"] == "track") == ["Added To Cart", "Opened App"]
    # segment and campaign read it as the user's, wherever it falls in the feed
    mine = [e async for page in feed_pages(c, after=head) for e in page["events"]
            if e["workspace_id"] == str(workspace.workspace_id)]
    assert "Added To Cart" in {e["event"] for e in mine} and {e["profile_id"] for e in mine} == {user["id"]}
    export = (await c.get("/v1/privacy/export/race-user", headers=h))
    if export.status_code == 200:  # (503 when another service's part is missing: not what this test looks at)
        assert "Added To Cart" in {e["event"] for e in export.json()["events"]}


@pytest.mark.parametrize("stamp", [None, "2026-11-28T10:00:00.123Z"],
                         ids=["no timestamps", "same millisecond"])
async def test_of_two_identifies_at_the_same_time_the_later_call_wins(apps, workspace, stamp) -> None:
    """analytics-python stamps milliseconds, and a batch without timestamps gets one receive time for all: the
    order of the calls decides (the value that sorted higher used to win)."""
    times = {"timestamp": stamp} if stamp else {}
    user = f"tie-{stamp is None}"
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), json={"batch": [
        {"type": "identify", "userId": user, "traits": {"plan": "pro", "seats": 9}, **times},
        {"type": "identify", "userId": user, "traits": {"plan": "basic"}, **times},
        {"type": "track", "userId": user, "event": "Seen", **times},
        {"type": "identify", "userId": user, "traits": {"seats": 2}, **times}]})
    assert r.json()["accepted"] == 4
    headers = {"Authorization": f"Bearer {workspace.secret_key}"}
    profile = (await apps["ingest"].get(f"/v1/profiles/{user}", headers=headers)).json()
    assert (profile["traits"]["plan"], profile["traits"]["seats"]) == ("basic", 2)


async def test_an_identify_dated_in_the_future_does_not_freeze_a_trait(apps, workspace) -> None:
    """A device clock set years ahead, with no ``sentAt`` to correct it: the event is dated on receipt, so the next
    identify still wins (newer timestamp wins per trait) instead of losing every merge until 2030."""
    from datetime import UTC, datetime, timedelta

    wk, user = (workspace.write_key, ""), f"future-{uuid.uuid4().hex[:6]}"
    r = await apps["ingest"].post("/v1/identify", auth=wk, json={
        "userId": user, "traits": {"plan": "trial"}, "timestamp": "2030-01-01T00:00:00Z"})
    assert r.json()["accepted"] == 1
    r = await apps["ingest"].post("/v1/identify", auth=wk, json={"userId": user, "traits": {"plan": "paid"}})
    assert r.json()["accepted"] == 1
    assert (await _profile(apps, workspace, user))["traits"]["plan"] == "paid"
    events = (await apps["ingest"].get(f"/v1/profiles/{user}/events", headers={
        "Authorization": f"Bearer {workspace.secret_key}"})).json()["events"]
    assert all(datetime.fromisoformat(e["timestamp"]) <= datetime.now(UTC) + timedelta(seconds=1) for e in events)


async def test_a_login_merge_keeps_the_known_users_locale_and_timezone(apps, workspace) -> None:
    """Context fills locale/timezone only where the profile never had them; a merge must not let the anonymous
    device's context-filled values replace the known user's (context values have no trait time: the absorbed
    profile won the tie). An identify's explicit trait, with its time, still follows newest-wins, and a survivor
    without a locale takes the device's."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    london = {"locale": "en-GB", "timezone": "Europe/London"}
    rome = {"locale": "it-IT", "timezone": "Europe/Rome"}
    assert (await c.post("/v1/identify", auth=auth, json={"userId": "lc-u", "context": london})).status_code == 200
    assert {k: v for k, v in (await _profile(apps, workspace, "lc-u"))["traits"].items() if k in london} == london
    await c.post("/v1/page", auth=auth, json={"anonymousId": "lc-a2", "name": "Home", "context": rome})
    r = await c.post("/v1/identify", auth=auth, json={"userId": "lc-u", "anonymousId": "lc-a2", "context": rome})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    merged = await _profile(apps, workspace, "lc-u")
    assert (await _profile(apps, workspace, "lc-a2"))["id"] == merged["id"] and merged["merged_from"]
    assert merged["traits"] == london

    # the device's user set a locale explicitly (an identify trait, newer): that wins over the context's
    await c.post("/v1/identify", auth=auth, json={"userId": "lc-v", "context": london})
    await c.post("/v1/identify", auth=auth, json={"anonymousId": "lc-a3", "traits": {"locale": "it-IT"},
                                                  "context": rome})
    await c.post("/v1/track", auth=auth, json={"userId": "lc-v", "anonymousId": "lc-a3", "event": "Logged In"})
    assert (await _profile(apps, workspace, "lc-v"))["traits"] == {"locale": "it-IT", "timezone": "Europe/London"}

    # a known user who never had them takes the device's
    await c.post("/v1/identify", auth=auth, json={"userId": "lc-w", "traits": {"plan": "pro"}})
    await c.post("/v1/page", auth=auth, json={"anonymousId": "lc-a4", "name": "Home", "context": rome})
    await c.post("/v1/track", auth=auth, json={"userId": "lc-w", "anonymousId": "lc-a4", "event": "Logged In"})
    assert (await _profile(apps, workspace, "lc-w"))["traits"] == {"plan": "pro", **rome}


@pytest.mark.parametrize("second_user", ["another", "same"])
async def test_a_device_profile_is_merged_once_when_two_requests_merge_it_at_once(apps, workspace, sessionmaker,
                                                                                   second_user) -> None:
    """Two requests carrying one anonymousId with a userId, committed by two replicas at once: two users logging in
    on one device (the second must not take the device's profile: it is the first's now), or the identify and the
    track an SDK sends together after a login (the same merge twice). The second read the device's profile before
    the first merged it away, and merged it again: into both users, or twice into one."""
    import asyncio
    from datetime import UTC, datetime

    from services.ingest import tracking

    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:8]
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    users = {"first": f"ua-{tag}", "second": f"ub-{tag}" if second_user == "another" else f"ua-{tag}"}
    for uid in set(users.values()):
        assert (await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""),
                                          json={"userId": uid})).status_code == 200
    device = f"anon-{tag}"
    r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""),
                                  json={"anonymousId": device, "traits": {"device_trait": 1}})
    assert r.status_code == 200

    def login(uid: str) -> tracking.Envelope:
        return tracking.Envelope(message_id=uuid.uuid4().hex, type="identify", event=None, user_id=uid,
                                 anonymous_id=device, properties={}, traits={}, context={},
                                 timestamp=datetime.now(UTC), sent_at=None)

    async def second() -> None:
        async with sessionmaker() as s, s.begin():
            await tracking.record(s, ws, [login(users["second"])])

    async with sessionmaker() as s, s.begin():  # the first replica merges, and commits a moment later
        await tracking.record(s, ws, [login(users["first"])])
        racing = asyncio.create_task(second())
        await asyncio.sleep(0.5)  # (the second has read the device's profile, and waits for its lock)
    await asyncio.wait_for(racing, 30)
    merged = {uid: [m["profile_id"] for m in (await apps["ingest"].get(f"/v1/profiles/{uid}", headers=h)).json()[
        "merged_from"]] for uid in set(users.values())}
    assert sorted(len(v) for v in merged.values()) == ([0, 1] if second_user == "another" else [1]), merged
    device_profile = (await apps["ingest"].get(f"/v1/profiles/{device}", headers=h)).json()
    assert device_profile["user_id"] == users["first"]  # the device leads to the first user, who has its traits
    assert device_profile["traits"]["device_trait"] == 1
