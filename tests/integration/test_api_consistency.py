"""What a client library relies on across the four APIs, checked through HTTP: a 405 names every method the path
takes, lists page through every item once, idempotency keys replay the first answer and refuse another request,
and credentials refused say why."""

import pytest

PROBLEM = "application/problem+json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("service", "path", "method", "allowed"), [
    ("campaign", "/v1/campaigns", "DELETE", {"GET", "HEAD", "POST"}),
    ("campaign", "/v1/campaigns/00000000-0000-4000-8000-000000000000", "PATCH", {"GET", "HEAD", "PUT"}),
    ("segment", "/v1/segments/00000000-0000-4000-8000-000000000000", "DELETE", {"GET", "HEAD", "PUT"}),
    ("delivery", "/v1/messages", "PUT", {"GET", "HEAD", "POST"}),
    ("delivery", "/v1/devices", "PUT", {"GET", "HEAD", "POST"}),
    ("ingest", "/v1/track", "GET", {"POST"}),
])
async def test_405_allow_names_every_method_of_the_path(apps, workspace, service, path, method, allowed) -> None:
    """RFC 9110: Allow lists the methods the resource supports, not only those of the first route that matched its
    path (a client told ``Allow: POST`` on ``/v1/campaigns`` would never list campaigns)."""
    r = await apps[service].request(method, path, headers=_bearer(workspace.secret_key))
    assert r.status_code == 405 and r.headers["content-type"].startswith(PROBLEM)
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
    assert r.json()["status"] == 405


@pytest.mark.parametrize(("service", "path"), [
    ("ingest", "/healthz"), ("ingest", "/v1/profiles/head-ada"), ("ingest", "/v1/profiles?limit=1"),
    ("segment", "/v1/segments"), ("campaign", "/v1/campaigns"), ("delivery", "/v1/suppressions"),
    ("campaign", "/v1/campaigns/00000000-0000-4000-8000-000000000000"), ("segment", "/openapi.json"),
])
async def test_head_answers_as_get_without_a_body(apps, workspace, service, path) -> None:
    """RFC 9110 §9.3.2: HEAD on a GET resource (uptime monitors, link checkers, ``curl -I``) gets GET's status and
    headers and no body, where it was a 405. Unauthenticated, it is refused as GET is."""
    await _identify(apps, workspace, "head-ada")
    for headers in (_bearer(workspace.secret_key), {}):
        get = await apps[service].get(path, headers=headers)
        head = await apps[service].head(path, headers=headers)
        assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.content == b""
    assert "head" not in (await apps[service].get("/openapi.json")).json()["paths"].get(path.split("?")[0], {})


async def _identify(apps, workspace, uid: str) -> str:
    r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""),
                                  json={"userId": uid, "traits": {"email": f"{uid}@example.com"}})
    assert r.status_code == 200, r.text
    return (await apps["ingest"].get(f"/v1/profiles/{uid}", headers=_bearer(workspace.secret_key))).json()["id"]


async def _api_campaign(apps, workspace, rule: str = "every_time") -> str:
    h = _bearer(workspace.secret_key)
    tpl = await apps["campaign"].post("/v1/templates", headers=h, json={"name": "t", "subject": "s", "text": "x"})
    camp = await apps["campaign"].post("/v1/campaigns", headers=h, json={
        "name": "c", "trigger": {"type": "api"}, "entry": {"rule": rule},
        "steps": [{"id": "w", "type": "delay", "seconds": 3600}, ]})
    assert tpl.status_code == 201 and camp.status_code == 201, camp.text
    return camp.json()["id"]


async def _journeys(apps, workspace, campaign_id: str) -> list[dict]:
    r = await apps["campaign"].get(f"/v1/campaigns/{campaign_id}/journeys", headers=_bearer(workspace.secret_key))
    return r.json()["journeys"]


async def test_a_trigger_retried_with_its_key_gets_the_first_answer(apps, workspace) -> None:
    """A client whose first trigger timed out retries with the same Idempotency-Key: it must learn the user entered
    (and in which journey), not ``entered: false``, as POST /v1/messages and the loyalty routes replay theirs."""
    campaign_id = await _api_campaign(apps, workspace)
    await _identify(apps, workspace, "trig-ada")
    url, h = f"/v1/campaigns/{campaign_id}/trigger", {**_bearer(workspace.secret_key), "Idempotency-Key": "k-1"}
    first = await apps["campaign"].post(url, headers=h, json={"user": "trig-ada", "data": {"code": "1"}})
    again = await apps["campaign"].post(url, headers=h, json={"user": "trig-ada", "data": {"code": "1"}})
    assert first.status_code == 202 and first.json()["entered"] is True
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(await _journeys(apps, workspace, campaign_id)) == 1


async def test_trigger_keys_are_forgotten_after_30_days_without_a_second_journey(apps, workspace, sessionmaker) -> None:
    """The hourly pruning (campaign worker) keeps the keys table from growing forever: a key past its 30 days no
    longer replays its first answer, but its retry still enters no second journey (occurrence ``api:<key>``)."""
    from datetime import UTC, datetime, timedelta

    from services.campaign.campaigns import TRIGGER_KEY_DAYS, prune_trigger_keys

    campaign_id = await _api_campaign(apps, workspace)
    await _identify(apps, workspace, "trig-old")
    url, h = f"/v1/campaigns/{campaign_id}/trigger", {**_bearer(workspace.secret_key), "Idempotency-Key": "k-old"}
    first = await apps["campaign"].post(url, headers=h, json={"user": "trig-old", "data": {}})
    assert first.status_code == 202 and first.json()["entered"] is True

    assert await prune_trigger_keys(sessionmaker, now=datetime.now(UTC) + timedelta(days=TRIGGER_KEY_DAYS - 1)) == 0
    again = await apps["campaign"].post(url, headers=h, json={"user": "trig-old", "data": {}})
    assert again.status_code == 200 and again.json() == first.json()  # still remembered: replayed

    assert await prune_trigger_keys(sessionmaker, now=datetime.now(UTC) + timedelta(days=TRIGGER_KEY_DAYS + 1)) >= 1
    late = await apps["campaign"].post(url, headers=h, json={"user": "trig-old", "data": {}})
    assert late.status_code == 202 and "idempotent-replayed" not in late.headers
    assert late.json()["entered"] is False
    assert [j["id"] for j in await _journeys(apps, workspace, campaign_id)] == [first.json()["journey_id"]]


@pytest.mark.parametrize("change", ["other-user", "other-data"])
async def test_a_trigger_key_reused_for_another_request_is_a_409(apps, workspace, change) -> None:
    """Stripe's rule (docs/decisions): the same key with other parameters is an error, never a second journey."""
    campaign_id = await _api_campaign(apps, workspace)
    await _identify(apps, workspace, "trig-ada")
    await _identify(apps, workspace, "trig-bob")
    url, h = f"/v1/campaigns/{campaign_id}/trigger", {**_bearer(workspace.secret_key), "Idempotency-Key": "k-2"}
    first = await apps["campaign"].post(url, headers=h, json={"user": "trig-ada", "data": {"code": "1"}})
    assert first.status_code == 202 and first.json()["entered"] is True
    other = {"user": "trig-bob", "data": {"code": "1"}} if change == "other-user" else {
        "user": "trig-ada", "data": {"code": "2"}}
    r = await apps["campaign"].post(url, headers=h, json=other)
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["idempotency_key"] == "k-2"
    assert [j["id"] for j in await _journeys(apps, workspace, campaign_id)] == [first.json()["journey_id"]]


async def _every_page(client, path: str, key: str, items: str, params: dict | None = None) -> list[dict]:
    got, after = [], None
    for _ in range(100):
        r = await client.get(path, headers=_bearer(key), params={**(params or {}), **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        got += r.json()[items]
        after = r.json()["next_cursor"]
        if not after:
            return got
    raise AssertionError("no last page")


async def test_suppressions_page_through_an_address_suppressed_on_two_channels(apps, workspace) -> None:
    """The list paged on the address alone: a page ending on an address suppressed on sms skipped its push
    suppression (same address, the next row)."""
    h = _bearer(workspace.secret_key)
    for channel, address in [("sms", "+14155552671"), ("push", "+14155552671"), ("push", "+14155552672"),
                             ("email", "a@example.com"), ("sms", "+14155552670")]:
        r = await apps["delivery"].post("/v1/suppressions", headers=h, json={"channel": channel, "address": address})
        assert r.status_code == 201, r.text
    whole = (await apps["delivery"].get("/v1/suppressions", headers=h)).json()["suppressions"]
    paged = await _every_page(apps["delivery"], "/v1/suppressions", workspace.secret_key, "suppressions", {"limit": 1})
    assert len(whole) == 5
    assert [(s["channel"], s["address"]) for s in paged] == [(s["channel"], s["address"]) for s in whole]


async def _two_of_each(apps, workspace) -> dict[tuple[str, str], str]:
    """Two items in several lists of the four services; each list's first next_cursor at limit=1."""
    h = _bearer(workspace.secret_key)
    for n in range(2):
        made = [
            await apps["segment"].post("/v1/segments", headers=h, json={
                "name": f"s{n}", "definition": {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}}),
            await apps["segment"].post("/v1/lists", headers=h, json={"name": f"l{n}"}),
            await apps["campaign"].post("/v1/templates", headers=h, json={"name": f"t{n}", "subject": "s", "text": "x"}),
            await apps["campaign"].post("/v1/campaigns", headers=h, json={
                "name": f"c{n}", "trigger": {"type": "api"}, "steps": [{"id": "w", "type": "delay", "seconds": 60}]}),
            await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"m{n}", "to": f"m{n}@example.com", "subject": "s", "text": "t"}),
            await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": f"s{n}@example.com"}),
        ]
        assert all(r.status_code in (201, 202) for r in made), [r.text for r in made]
        await _identify(apps, workspace, f"cursor-{n}")
    lists = [("segment", "/v1/segments"), ("segment", "/v1/lists"), ("campaign", "/v1/templates"),
             ("campaign", "/v1/campaigns"), ("delivery", "/v1/messages"), ("delivery", "/v1/suppressions"),
             ("ingest", "/v1/profiles")]
    cursors = {}
    for service, path in lists:
        page = (await apps[service].get(path, headers=h, params={"limit": 1})).json()
        assert page["next_cursor"], (path, page)
        cursors[(service, path)] = page["next_cursor"]
    return cursors


async def test_a_cursor_of_one_list_is_refused_by_another(apps, workspace) -> None:
    """Cursors were the last row's id (or address): one list's next_cursor handed to another was taken as a position
    in it and answered a 200 page starting somewhere, so a client mixing up two loops skipped rows silently. Each
    list refuses a cursor it did not give, with a 400 problem, and still takes its own."""
    cursors = await _two_of_each(apps, workspace)
    h = _bearer(workspace.secret_key)
    for service, path in cursors:
        for (_, other_path), cursor in cursors.items():
            r = await apps[service].get(path, headers=h, params={"after": cursor})
            if other_path == path:
                assert r.status_code == 200 and len(r.json()[next(iter(r.json()))]) == 1, (path, r.text)
            else:
                assert r.status_code == 400, (path, other_path, r.text)
                assert r.headers["content-type"].startswith(PROBLEM) and "cursor" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/profiles/cursor-0/events", "/v1/profiles", "/v1/loyalty/members/cursor-0/history"])
@pytest.mark.parametrize("cursor", ["nope", "12", "-1", str(2**70)])
async def test_a_bad_cursor_is_the_same_400_on_every_list(apps, workspace, path, cursor) -> None:
    """A profile's events took ``after`` as an integer: a bad cursor there was a 422 (and ``12`` a position) where
    every other list answers 400."""
    await _identify(apps, workspace, "cursor-0")
    service = "campaign" if "loyalty" in path else "ingest"
    r = await apps[service].get(path, headers=_bearer(workspace.secret_key), params={"after": cursor})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert "cursor" in r.json()["detail"]


@pytest.mark.parametrize(("service", "method", "path"), [
    ("ingest", "GET", "/v1/events"), ("segment", "GET", "/v1/transitions"),
    ("segment", "POST", "/v1/privacy/erasure"), ("ingest", "POST", "/v1/profiles/resolve"),
])
async def test_a_secret_key_on_an_internal_route_is_told_the_route_is_internal(apps, workspace, service, method,
                                                                               path) -> None:
    """The 403 said "use the workspace's write key for tracking calls" on routes no write key opens either."""
    r = await apps[service].request(method, path, headers=_bearer(workspace.secret_key), json={})
    assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)
    detail = r.json()["detail"]
    assert "write key" not in detail and "internal token" in detail, detail
    tracking = await apps["ingest"].post("/v1/track", headers=_bearer(workspace.secret_key), json={})
    assert tracking.status_code == 403 and "write key" in tracking.json()["detail"]


@pytest.mark.parametrize(("service", "path", "query", "items", "make"), [
    ("campaign", "/v1/snippets", {}, "snippets", lambda n: ("PUT", f"/v1/snippets/part{n}", {"content": f"Part {n}"})),
    ("delivery", "/v1/devices", {"user": "u-devices"}, "devices", lambda n: ("POST", "/v1/devices", {
        "user": "u-devices", "platform": "android", "token": f"token-{n:04d}-abcdefgh"})),
])
async def test_the_last_unpaged_lists_page_like_the_others(apps, workspace, service, path, query, items, make) -> None:
    """A workspace's snippets and a user's devices came back whole (``limit`` ignored, no ``next_cursor``), unlike
    every other list: a client's pager stopped after the first answer however long it was."""
    h = _bearer(workspace.secret_key)
    for n in range(5):
        method, url, body = make(n)
        assert (await apps[service].request(method, url, headers=h, json=body)).status_code in (200, 201)
    first = (await apps[service].get(path, headers=h, params={**query, "limit": 2})).json()
    assert len(first[items]) == 2 and first["next_cursor"]
    paged = await _every_page(apps[service], path, workspace.secret_key, items, {**query, "limit": 2})
    whole = (await apps[service].get(path, headers=h, params=query)).json()[items]
    assert len(whole) == 5 and paged == whole
    r = await apps[service].get(path, headers=h, params={**query, "limit": 0})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)


async def test_a_trigger_retried_after_a_pause_still_gets_its_first_answer(apps, workspace) -> None:
    """The user entered; the campaign was paused before the client's retry arrived: the retry learns the user
    entered, rather than a 409 that reads as "not entered"."""
    campaign_id = await _api_campaign(apps, workspace)
    await _identify(apps, workspace, "trig-ada")
    url, h = f"/v1/campaigns/{campaign_id}/trigger", {**_bearer(workspace.secret_key), "Idempotency-Key": "k-3"}
    first = await apps["campaign"].post(url, headers=h, json={"user": "trig-ada"})
    assert first.status_code == 202 and first.json()["entered"] is True
    paused = await apps["campaign"].post(f"/v1/campaigns/{campaign_id}/pause", headers=_bearer(workspace.secret_key))
    assert paused.status_code == 200
    again = await apps["campaign"].post(url, headers=h, json={"user": "trig-ada"})
    assert again.status_code == 200 and again.json() == first.json()
    fresh = await apps["campaign"].post(url, headers={**h, "Idempotency-Key": "k-4"}, json={"user": "trig-ada"})
    assert fresh.status_code == 409 and "paused" in fresh.json()["detail"]


async def test_every_idempotent_replay_says_so_in_the_same_header(apps, workspace) -> None:
    """POST /v1/messages and the trigger mark a replay with ``Idempotent-Replayed: true``; the loyalty routes
    answered theirs with a bare 200, so one client check could not tell replays everywhere."""
    h = _bearer(workspace.secret_key)
    assert (await apps["campaign"].put("/v1/programs/loyalty", headers=h, json={})).status_code == 200
    await _identify(apps, workspace, "loyal-ada")
    for path, body in [("adjust", {"points": 100, "reason": "welcome"}), ("redeem", {"points": 10})]:
        url, keyed = f"/v1/loyalty/members/loyal-ada/{path}", {**h, "Idempotency-Key": f"replay-{path}"}
        first = await apps["campaign"].post(url, headers=keyed, json=body)
        again = await apps["campaign"].post(url, headers=keyed, json=body)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
    for service in ("campaign", "delivery"):
        for path, op in _spec_operations(service):
            if any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in op.get("parameters", [])):
                replay = op["responses"].get("200", {})
                assert "Idempotent-Replayed" in replay.get("headers", {}), path


def _spec_operations(service: str):
    import importlib

    from shared.settings import Settings

    spec = importlib.import_module(f"services.{service}.app").create_app(Settings()).openapi()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "post":
                yield path, op


@pytest.mark.parametrize(("service", "method", "path"), [
    ("ingest", "POST", "/v1/track"), ("ingest", "GET", "/v1/profiles"), ("segment", "GET", "/v1/segments"),
    ("campaign", "GET", "/v1/campaigns"), ("delivery", "POST", "/v1/messages"), ("ingest", "GET", "/v1/events"),
])
@pytest.mark.parametrize("credentials", [None, "Bearer sk_unknown", "Basic !!!"])
async def test_a_401_carries_a_www_authenticate_challenge(apps, service, method, path, credentials) -> None:
    """RFC 9110 (15.5.2): a 401 must say how to authenticate; ours said it only in words."""
    r = await apps[service].request(method, path, json={}, headers={"Authorization": credentials} if credentials
                                    else {})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_one_kind_of_problem_has_one_title(apps, workspace) -> None:
    """RFC 9457: a problem type has one title. An unknown path said "Not Found" where an unknown id says "Not found"
    under the same type; a 405 read "Method Not Allowed"."""
    h = _bearer(workspace.secret_key)
    unknown_id = await apps["campaign"].get("/v1/campaigns/00000000-0000-4000-8000-000000000000", headers=h)
    unknown_path = await apps["campaign"].get("/v1/nothing-here", headers=h)
    assert unknown_id.status_code == unknown_path.status_code == 404
    assert {(r.json()["type"], r.json()["title"]) for r in (unknown_id, unknown_path)} == {
        ("https://tenure.dev/problems/not-found", "Not found")}
    not_allowed = await apps["campaign"].delete("/v1/campaigns", headers=h)
    assert not_allowed.json()["title"] == "Method not allowed" and not_allowed.json()["detail"]


async def test_a_cursor_of_another_workspace_is_refused(apps, workspace, sessionmaker) -> None:
    """Same list, other tenant: the cursor was taken as a position among this workspace's rows (nothing leaked,
    but a page started somewhere); a client juggling two workspaces' loops now hears of its mix-up."""
    import uuid

    from shared.core import create_workspace

    async with sessionmaker() as session, session.begin():
        other = await create_workspace(session, f"test-{uuid.uuid4().hex[:8]}")
    for ws in (workspace, other):
        for n in range(2):
            r = await apps["campaign"].post("/v1/templates", headers=_bearer(ws.secret_key),
                                            json={"name": f"t{n}", "subject": "s", "text": "x"})
            assert r.status_code == 201
    mine = (await apps["campaign"].get("/v1/templates", headers=_bearer(workspace.secret_key),
                                       params={"limit": 1})).json()["next_cursor"]
    r = await apps["campaign"].get("/v1/templates", headers=_bearer(other.secret_key), params={"after": mine})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    ok = await apps["campaign"].get("/v1/templates", headers=_bearer(workspace.secret_key), params={"after": mine})
    assert ok.status_code == 200 and len(ok.json()["templates"]) == 1


_MAIL = {"idempotency_key": "typo-1", "to": "ada@example.com", "subject": "Hi", "text": "Hello"}
_EVIDENCE = {"text": "Yes, send me offers by text.", "source": "checkout form"}


@pytest.mark.parametrize(("service", "method", "path", "body", "at"), [
    ("ingest", "POST", "/v1/privacy/erasure", {"user": "ghost-x", "supress": True}, ["supress"]),
    ("delivery", "POST", "/v1/suppressions", {"address": "ada@example.com", "rason": "complaint"}, ["rason"]),
    ("delivery", "POST", "/v1/messages", {**_MAIL, "mesage_type": "transactional"}, ["mesage_type"]),
    ("delivery", "POST", "/v1/messages/batch", {"messages": [_MAIL], "dry_run": True}, ["dry_run"]),
    ("delivery", "POST", "/v1/devices", {"user": "u-1", "platform": "android", "token": "token-0001-abcdefgh",
                                         "plattform": "ios"}, ["plattform"]),
    ("delivery", "POST", "/v1/opt-ins", {"email": "ada@example.com", "topic": ["offers"]}, ["topic"]),
    ("delivery", "POST", "/v1/sms-opt-ins", {"phone": "+14155550100", "evidence": {**_EVIDENCE, "ip_adress": "1"}},
     ["evidence", "ip_adress"]),
    ("campaign", "PUT", "/v1/coupon-pools/welcome", {"codes": ["A-1"], "pool_name": "x"}, ["pool_name"]),
    ("campaign", "POST", "/v1/referral/codes", {"user": "u-1", "channel": "sms"}, ["channel"]),
    ("campaign", "POST", "/v1/referral/invites", {"user": "u-1", "chanel": "sms"}, ["chanel"]),
    ("campaign", "POST", "/v1/loyalty/members/u-1/redeem", {"points": 5, "reson": "voucher"}, ["reson"]),
    ("campaign", "POST", "/v1/loyalty/members/u-1/adjust", {"points": 5, "reason": "x", "expires": "never"},
     ["expires"]),
    ("campaign", "PUT", "/v1/programs/loyalty", {"enabled": True, "configuration": {}}, ["configuration"]),
])
async def test_a_field_a_write_route_does_not_know_is_a_422_naming_it(apps, workspace, service, method, path, body,
                                                                      at) -> None:
    """Half the write routes dropped unknown fields, so a typo changed what happened and still succeeded: an erasure
    with ``supress`` was not suppressed, a suppression with ``rason`` was ``manual``, a message with ``mesage_type``
    went out as marketing. Every management body now refuses them as segment's and campaign's others did."""
    h = {**_bearer(workspace.secret_key), "Idempotency-Key": "typo"}
    r = await apps[service].request(method, path, headers=h, json=body)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(["body", *at], "extra_forbidden")], r.text


async def test_unknown_fields_stay_refused_inside_a_batch_and_accepted_where_senders_add_their_own(apps,
                                                                                                   workspace) -> None:
    """A batch's message with an unknown field is ``invalid`` (naming it) and the others are queued; the tracking
    routes (SDKs add fields of their own) and a browser's PushSubscription keep taking what they do not know."""
    from shared.testing import internal_headers

    h = _bearer(workspace.secret_key)
    r = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        {**_MAIL, "idempotency_key": "b-1", "mesage_type": "transactional"}, {**_MAIL, "idempotency_key": "b-2"}]})
    assert r.status_code == 200, r.text
    bad, good = r.json()["results"]
    assert bad["result"] == "invalid" and "mesage_type" in bad["error"] and good["result"] == "queued"
    r = await apps["segment"].post("/v1/privacy/erasure", headers=internal_headers(workspace.workspace_id),
                                   json={"identities": ["u-1"], "suppress": True})  # internal too
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "suppress"], r.text
    r = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""), json={
        "userId": "u-1", "event": "Viewed", "integrations": {"All": True}, "_metadata": {"bundled": []}, "x": 1})
    assert r.status_code == 200, r.text


_NO_SUCH_WORKSPACE = "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(("service", "method", "path", "body"), [
    ("delivery", "POST", "/v1/messages", _MAIL),
    ("delivery", "POST", "/v1/suppressions", {"address": "ada@example.com"}),
    ("ingest", "POST", "/v1/track", {"userId": "u-1", "event": "Viewed"}),
    ("ingest", "POST", "/v1/privacy/erasure", {"user": "u-1"}),
    ("segment", "POST", "/v1/lists", {"name": "orphans"}),
    ("campaign", "POST", "/v1/templates", {"name": "t", "subject": "s", "text": "x"}),
    ("segment", "POST", "/v1/privacy/erasure", {"identities": ["u-1"]}),
])
async def test_the_internal_token_naming_a_workspace_that_does_not_exist_is_a_404(apps, sessionmaker, service,
                                                                                   method, path, body) -> None:
    """The internal token with any X-Tenure-Workspace was accepted on every route: a message to no workspace was
    queued and sent, and suppressions, events and erasures were stored for it."""
    from sqlalchemy import text

    from shared.testing import internal_headers

    r = await apps[service].request(method, path, headers=internal_headers(_NO_SUCH_WORKSPACE), json=body)
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert _NO_SUCH_WORKSPACE in r.json()["detail"] and "X-Tenure-Workspace" in r.json()["detail"]
    async with sessionmaker() as s:
        for table in ("delivery.messages", "delivery.suppressions", "ingest.events", "segment.lists",
                      "campaign.templates"):
            n = (await s.execute(text(f"select count(*) from {table} where workspace_id = :ws"),
                                 {"ws": _NO_SUCH_WORKSPACE})).scalar_one()
            assert n == 0, table


async def test_a_workspace_is_looked_up_once_then_remembered_and_a_new_one_is_accepted_at_once(apps,
                                                                                               sessionmaker) -> None:
    """The check must cost the hot internal path (campaign's tracking calls to ingest) no query per request: a
    workspace found is remembered; one not found is not, so a workspace created right after is accepted."""
    import uuid

    from sqlalchemy import event

    from shared.core import create_workspace
    from shared.testing import internal_headers

    wid = uuid.uuid4()
    ingest = apps["ingest"]
    track = {"userId": "u-1", "event": "Viewed"}
    assert (await ingest.post("/v1/track", headers=internal_headers(wid), json=track)).status_code == 404
    async with sessionmaker() as session, session.begin():
        await create_workspace(session, "created-late", workspace_id=wid)
    engine = ingest._transport.app.state.sessionmaker.kw["bind"].sync_engine  # type: ignore[attr-defined]
    lookups: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if "core.workspaces" in statement:
            lookups.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for n in range(5):
            r = await ingest.post("/v1/track", headers=internal_headers(wid), json={**track, "messageId": f"m{n}"})
            assert r.status_code == 200, r.text
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(lookups) == 1, lookups
