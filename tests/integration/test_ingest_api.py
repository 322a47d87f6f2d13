"""Ingest's tracking API through HTTP, against real Postgres and Redis."""

import gzip
import uuid

import orjson
import pytest
from sqlalchemy import text

from shared.testing import feed_head, feed_pages, internal_headers

PROBLEM = "application/problem+json"


async def _count_events(sessionmaker, ws) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws"),
                                {"ws": ws})).scalar_one()


async def test_identify_then_track_builds_a_profile(apps, workspace) -> None:
    c = apps["ingest"]
    auth = (workspace.write_key, "")
    r = await c.post("/v1/identify", auth=auth, json={
        "userId": "u-1", "traits": {"email": "ada@example.com", "first_name": "Ada"},
        "context": {"locale": "fr-CA", "timezone": "America/Montreal"}})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = await c.post("/v1/track", auth=auth, json={"userId": "u-1", "event": "Signed Up", "messageId": "m-1"})
    assert r.status_code == 200 and r.json() == {"success": True, "accepted": 1, "duplicates": 0, "suppressed": 0,
                                                 "rejected": []}

    for ref in ("u-1", "ada@example.com"):
        p = await c.get(f"/v1/profiles/{ref}", headers={"Authorization": f"Bearer {workspace.secret_key}"})
        assert p.status_code == 200
        assert p.json()["traits"] == {"email": "ada@example.com", "first_name": "Ada", "locale": "fr-CA",
                                      "timezone": "America/Montreal"}


async def test_a_batchs_contexts_fill_locale_and_timezone_each_from_the_first_message_that_has_it(apps, workspace
                                                                                                   ) -> None:
    """Only the first context with either key counted: a timezone in a later message of the batch was dropped."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    r = await c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "ctx-1", "event": "A", "context": {"locale": "fr-FR"},
         "timestamp": "2026-11-01T10:00:00Z"},
        {"type": "track", "userId": "ctx-1", "event": "B", "context": {"locale": "de-DE", "timezone": "Europe/Paris"},
         "timestamp": "2026-11-01T10:01:00Z"},
        {"type": "track", "userId": "ctx-1", "event": "C", "context": {"timezone": "Asia/Tokyo"},
         "timestamp": "2026-11-01T10:02:00Z"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    p = await c.get("/v1/profiles/ctx-1", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert p.json()["traits"] == {"locale": "fr-FR", "timezone": "Europe/Paris"}


async def test_same_message_id_is_stored_once(apps, workspace, sessionmaker) -> None:
    auth = (workspace.write_key, "")
    body = {"userId": "u-2", "event": "Order Completed", "messageId": "dup-1"}
    first = await apps["ingest"].post("/v1/track", auth=auth, json=body)
    again = await apps["ingest"].post("/v1/track", auth=auth, json=body)
    assert first.json()["accepted"] == 1
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert await _count_events(sessionmaker, workspace.workspace_id) == 1


async def test_batch_keeps_valid_messages_and_names_rejected_ones(apps, workspace, sessionmaker) -> None:
    r = await apps["ingest"].post("/v1/batch", json={
        "writeKey": workspace.write_key,
        "batch": [
            {"type": "track", "anonymousId": "a-1", "event": "Viewed"},
            {"type": "track", "anonymousId": "a-1"},
            {"type": "identify", "traits": {"x": 1}},
            {"type": "page", "anonymousId": "a-1", "name": "Home"},
        ],
    })
    assert r.status_code == 200
    assert r.json()["accepted"] == 2
    assert [x["index"] for x in r.json()["rejected"]] == [1, 2]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 2


async def test_a_blank_event_name_is_rejected_with_its_reason(apps, workspace, sessionmaker) -> None:
    """A track named only with spaces could never be targeted by a campaign or segment: refused, alone."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    single = await c.post("/v1/track", auth=auth, json={"anonymousId": "a-blank", "event": " \t"})
    assert single.status_code == 422, single.text
    assert single.headers["content-type"].startswith("application/problem+json")
    r = await c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "anonymousId": "a-blank", "event": "   "},
        {"type": "track", "anonymousId": "a-blank", "event": " Padded "},
        {"type": "track", "anonymousId": "a-blank", "event": ""}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    rejected = r.json()["rejected"]
    assert [x["index"] for x in rejected] == [0, 2]
    assert [x["errors"][0]["loc"][-1] for x in rejected] == ["event", "event"], rejected
    assert "blank" in rejected[0]["errors"][0]["msg"]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 1


async def test_a_batch_item_that_is_no_object_is_rejected_alone(apps, workspace, sessionmaker) -> None:
    # one malformed item used to fail the whole batch (422 "does not match the schema"): the valid ones were lost
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), json={"batch": [
        {"type": "track", "userId": "u-1", "event": "Kept"}, "oops", None, [1],
        {"type": "track", "userId": "u-1", "event": "Also kept"}]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert [(x["index"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [
        (1, "dict_type"), (2, "dict_type"), (3, "dict_type")]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 2
    only_bad = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), json={"batch": ["a", 1]})
    assert only_bad.status_code == 422 and [x["index"] for x in only_bad.json()["rejected"]] == [0, 1]


async def test_a_numeric_message_id_is_its_decimal_text(apps, workspace, sessionmaker) -> None:
    auth = (workspace.write_key, "")
    first = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "u", "event": "E", "messageId": 12345})
    assert first.status_code == 200 and first.json()["accepted"] == 1, first.text
    again = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "u", "event": "E", "messageId": "12345"})
    assert again.json()["duplicates"] == 1
    async with sessionmaker() as s:
        assert (await s.execute(text("select message_id from ingest.events where workspace_id = :ws"),
                                {"ws": workspace.workspace_id})).scalar_one() == "12345"


@pytest.mark.parametrize("encoding", ["plain", "gzip"])
async def test_integers_beyond_64_bits_are_kept_exactly(apps, workspace, sessionmaker, encoding) -> None:
    """An order id or amount past 64 bits (Python, Java and Go SDKs send them as numbers) is stored as sent: orjson
    reads such an integer as a float (123456789012345678901234567890 became 1.2345678901234568e+29)."""
    big, low = 123456789012345678901234567890, -9223372036854775809
    body = b'{"userId": "big", "event": "Order Completed", "messageId": "big-%s", "properties": {"order": %d, ' \
           b'"low": %d, "note": "fine"}}' % (encoding.encode(), big, low)
    headers = {"content-type": "application/json", **({"content-encoding": "gzip"} if encoding == "gzip" else {})}
    r = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""), headers=headers,
                                  content=gzip.compress(body) if encoding == "gzip" else body)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    async with sessionmaker() as s:
        stored = (await s.execute(text("select properties::text from ingest.events where workspace_id = :ws "
                                       "and message_id = :m"), {"ws": workspace.workspace_id,
                                                               "m": f"big-{encoding}"})).scalar_one()
    assert orjson.loads(stored.replace(str(big), "0").replace(str(low), "0")) == {"order": 0, "low": 0, "note": "fine"}
    assert f'"order": {big}' in stored and f'"low": {low}' in stored, stored
    events = await apps["ingest"].get("/v1/profiles/big/events", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert b'"order":%d' % big in events.content.replace(b" ", b""), events.text


async def test_gzip_bodies_are_accepted(apps, workspace) -> None:
    raw = gzip.compress(orjson.dumps({"batch": [{"type": "track", "userId": "g", "event": "Zipped"}]}))
    r = await apps["ingest"].post("/v1/batch", content=raw, auth=(workspace.write_key, ""),
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/v1/track", {"content": b"{not json"}, 400),
        ("/v1/track", {"content": b"[1, 2]"}, 400),
        ("/v1/track", {"json": {"event": "No identity"}}, 422),
        ("/v1/track", {"json": {"userId": "u"}}, 422),
        ("/v1/identify", {"json": {"traits": {}}}, 422),
        ("/v1/batch", {"json": {"batch": []}}, 422),
        ("/v1/batch", {"json": {"nobatch": 1}}, 422),
        ("/v1/track", {"json": {"userId": "u", "event": "big", "properties": {"x": "y" * 40_000}}}, 413),
        ("/v1/batch", {"content": b"{" + b" " * 600_000 + b"}"}, 413),
        ("/v1/track", {"content": b"\x00garbage", "headers": {"Content-Encoding": "gzip"}}, 400),
    ],
)
async def test_bad_input_is_a_problem_and_writes_nothing(apps, workspace, sessionmaker, path, kwargs, status) -> None:
    r = await apps["ingest"].post(path, auth=(workspace.write_key, ""), **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["status"] == status and r.json()["detail"]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 0


async def test_a_message_over_32_kb_once_stored_is_refused_though_its_request_was_smaller(
        apps, workspace, sessionmaker) -> None:
    """The limit holds for the message as it would be stored: ``1e15`` takes 4 bytes as sent and 18
    as stored, so this 32 KB request is a 115 KB message."""
    auth = (workspace.write_key, "")
    grown = b'{"userId": "g", "event": "Grown", "properties": {"v": [' + b",".join([b"1e15"] * 6400) + b"]}}"
    assert len(grown) < 32 * 1024
    r = await apps["ingest"].post("/v1/track", auth=auth, content=grown, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["rejected"][0]["errors"][0]["type"] == "too_large", r.text
    batch = (b'{"batch": [{"type": "track", "userId": "g", "event": "Small", "messageId": "small-' +
             str(workspace.workspace_id).encode() + b'"}, ' + grown[:-1] + b', "type": "track"}, '
             b'{"type": "track", "userId": "g", "event": "Nul", "properties": {"x": "a\\u0000b"}}]}')
    assert len(batch) < 32 * 1024
    r = await apps["ingest"].post("/v1/batch", auth=auth, content=batch, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and [(x["index"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [
        (1, "too_large"), (2, "nul")]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 1


@pytest.mark.parametrize(
    ("auth", "status"),
    [(None, 401), (("wk_not-a-key", ""), 401), ("secret", 403)],
)
async def test_wrong_key_is_refused(apps, workspace, sessionmaker, auth, status) -> None:
    if auth == "secret":
        auth = (workspace.secret_key, "")
    r = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "u", "event": "E"})
    assert r.status_code == status and r.headers["content-type"].startswith(PROBLEM)
    assert await _count_events(sessionmaker, workspace.workspace_id) == 0


async def test_tracking_problems_carry_the_sdks_code_and_message(apps, workspace, settings) -> None:
    """Segment's and RudderStack's Python SDKs read ``code`` and ``message`` from an error body: every problem of a
    tracking route carries them (RFC 9457 extension members), the body limit's 413 before any route too; the
    management routes' problems do not."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    over = settings.max_body_bytes + 1
    answers = [
        (await c.post("/v1/batch", auth=("wk_not-a-key", ""), json={"batch": [{"type": "track"}]}), 401),
        (await c.post("/v1/t", auth=(workspace.secret_key, ""), json={"userId": "u", "event": "E"}), 403),
        (await c.post("/v1/i", auth=auth, content=b"{not json"), 400),
        (await c.post("/v1/track", auth=auth, json={"userId": "u"}), 422),
        (await c.post("/v1/b", auth=auth, content=b"{" + b" " * 600_000 + b"}"), 413),
        (await c.post("/v1/import", auth=auth, content=b"{}", headers={"Content-Length": str(over)}), 413),
    ]
    for r, status in answers:
        problem = r.json()
        assert r.status_code == status and r.headers["content-type"].startswith(PROBLEM), r.text
        assert problem["code"] == problem["type"].rsplit("/", 1)[1] and problem["message"] == problem["detail"], r.text
    assert answers[-1][0].json()["code"] == "payload-too-large"
    management = await c.get("/v1/profiles/x", auth=auth)
    assert management.status_code == 403 and not {"code", "message"} & management.json().keys()


async def test_management_endpoints_refuse_write_keys_and_strangers(apps, workspace) -> None:
    c = apps["ingest"]
    assert (await c.get("/v1/profiles/x", auth=(workspace.write_key, ""))).status_code == 403
    assert (await c.get("/v1/profiles/x")).status_code == 401
    assert (await c.get("/v1/events", headers={"Authorization": f"Bearer {workspace.secret_key}"})).status_code == 403
    missing = await c.get(f"/v1/profiles/{uuid.uuid4()}", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM)


async def test_feed_pages_in_order_and_rejects_bad_cursors(apps, workspace) -> None:
    auth = (workspace.write_key, "")
    cursor = await feed_head(apps["ingest"])
    for i in range(5):
        await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "f", "event": f"E{i}",
                                                                 "messageId": f"feed-{workspace.workspace_id}-{i}"})
    seen: list[str] = []
    async for page in feed_pages(apps["ingest"], after=cursor, limit=2):
        assert len(page["events"]) <= 2
        seen += [e["event"] for e in page["events"] if e["workspace_id"] == str(workspace.workspace_id)]
    assert seen == [f"E{i}" for i in range(5)]
    # past an xid8 (unsigned 64 bits) or a bigint seq no event can follow: a reader given one would wait forever
    for after in ("nope", "99999999999999999999999-1", "1-9223372036854775808", "18446744073709551616-0"):
        bad = await apps["ingest"].get("/v1/events", params={"after": after}, headers=internal_headers())
        assert bad.status_code == 400, (after, bad.text)
        assert bad.headers["content-type"].startswith(PROBLEM)
    assert (await apps["ingest"].get("/v1/events", params={"after": "18446744073709551615-9223372036854775807"},
                                     headers=internal_headers())).json()["events"] == []


async def test_health_and_readiness(apps) -> None:
    for c in apps.values():
        assert (await c.get("/healthz")).json()["status"] == "ok"
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "schema": "ok", "redis": "ok"}


async def test_unknown_route_is_a_problem(apps) -> None:
    r = await apps["ingest"].get("/v1/nothing-here")
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)


def test_openapi_names_every_operation_and_declares_credentials(apps) -> None:
    for name, c in apps.items():
        spec = c._transport.app.openapi()  # type: ignore[attr-defined]
        schemes = spec["components"]["securitySchemes"]
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                assert op.get("operationId") and op.get("summary"), f"{name} {method} {path}"
                for requirement in op.get("security", spec["security"]):
                    assert set(requirement) <= set(schemes), f"{name} {method} {path}: undeclared scheme"
        assert spec["paths"]["/healthz"]["get"]["security"] == []
        assert spec["paths"]["/v1/privacy/erasure"]["post"]["security"] == (
            [{"secretKey": []}] if name == "ingest" else [{"internalToken": []}])
    ingest = apps["ingest"]._transport.app.openapi()  # type: ignore[attr-defined]
    delivery = apps["delivery"]._transport.app.openapi()  # type: ignore[attr-defined]
    assert ingest["paths"]["/v1/track"]["post"]["security"] == [{"writeKey": []}]
    assert ingest["paths"]["/v1/events"]["get"]["security"] == [{"internalToken": []}]
    assert delivery["paths"]["/v1/messages"]["post"]["security"] == [{"secretKey": []}]
    assert delivery["paths"]["/u/{token}"]["post"]["security"] == []  # RFC 8058: mail clients send no key
    problem = "application/problem+json"
    assert problem in delivery["paths"]["/v1/messages"]["post"]["responses"]["422"]["content"]
    assert problem in delivery["paths"]["/v1/messages"]["post"]["responses"]["403"]["content"]




async def test_null_trait_removes_it_and_later_identify_wins(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    await c.post("/v1/identify", auth=auth, json={"userId": "n-1", "traits": {"plan": "pro", "nick": "a"}})
    await c.post("/v1/identify", auth=auth, json={"userId": "n-1", "traits": {"plan": None, "nick": "b"}})
    assert (await c.get("/v1/profiles/n-1", headers=h)).json()["traits"] == {"nick": "b"}


async def test_anonymous_history_joins_the_user_on_identify(apps, workspace) -> None:
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    await c.post("/v1/track", auth=auth, json={"anonymousId": "anon-7", "event": "Viewed Pricing"})
    await c.post("/v1/identify", auth=auth, json={"userId": "u-7", "anonymousId": "anon-7", "traits": {"x": 1}})
    by_anon = (await c.get("/v1/profiles/anon-7", headers=h)).json()
    by_user = (await c.get("/v1/profiles/u-7", headers=h)).json()
    assert by_anon["id"] == by_user["id"] and by_user["anonymous_ids"] == ["anon-7"] and by_user["user_id"] == "u-7"


async def test_over_the_rate_limit_is_429_with_retry_after(settings, workspace, sessionmaker) -> None:
    import httpx

    from services.ingest.app import create_app

    app = create_app(settings.model_copy(update={"ingest_rate_limit_per_s": 3}))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://ingest") as c:
        codes = []
        for i in range(12):
            r = await c.post("/v1/track", auth=(workspace.write_key, ""), json={"userId": "r", "event": f"E{i}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.headers["content-type"].startswith(PROBLEM)
    assert 429 in codes and codes.count(200) >= 3
    assert await _count_events(sessionmaker, workspace.workspace_id) == codes.count(200)


async def test_concurrent_requests_share_commits_but_keep_their_own_answers(apps, workspace, sessionmaker) -> None:
    import asyncio

    auth = (workspace.write_key, "")
    same = {"userId": "c", "event": "Same", "messageId": f"same-{workspace.workspace_id}"}
    requests = [apps["ingest"].post("/v1/track", auth=auth, json=same) for _ in range(5)]
    requests += [apps["ingest"].post("/v1/track", auth=auth, json={"userId": "c", "event": f"U{i}"}) for i in range(20)]
    requests += [apps["ingest"].post("/v1/track", auth=auth, json={"userId": "c", "event": "nul", "properties": {
        "x": "a\u0000b"}})]
    answers = await asyncio.gather(*requests)
    same_answers = [a.json() for a in answers[:5]]
    assert sum(a["accepted"] for a in same_answers) == 1 and sum(a["duplicates"] for a in same_answers) == 4
    assert all(a.status_code == 200 and a.json()["accepted"] == 1 for a in answers[5:25])
    assert answers[25].status_code == 422 and answers[25].json()["rejected"][0]["errors"][0]["type"] == "nul"
    assert await _count_events(sessionmaker, workspace.workspace_id) == 21


async def test_a_message_id_stored_by_a_concurrent_transaction_is_a_duplicate_not_an_error(workspace,
                                                                                         sessionmaker) -> None:
    """Two transactions store the same messageId at once (a retry racing its first attempt in another
    process): the second waits on the unique key, then runs again, skips that id and stores the rest."""
    import asyncio
    from datetime import UTC, datetime

    from services.ingest import tracking
    from services.ingest.committer import Committer
    from services.ingest.schemas import TrackMessage

    ws, now = workspace.workspace_id, datetime.now(UTC)

    def envelopes(*ids: str) -> list:
        return [tracking.normalize(TrackMessage.model_validate({"userId": "race", "event": "E", "messageId": m}),
                                   now) for m in ids]

    async with sessionmaker() as s, s.begin():  # the user exists: neither transaction waits on identity locks
        await tracking.record(s, ws, envelopes("race-w"), now)
    committer = Committer(sessionmaker, writers=1)
    try:
        async with sessionmaker() as first:
            async with first.begin():
                assert (await tracking.record(first, ws, envelopes("race-x", "race-y"), now)).accepted == 2
                racing = asyncio.create_task(committer.submit(ws, envelopes("race-x", "race-z")))
                async with sessionmaker() as probe:  # until the committer waits on the first's uncommitted key
                    for _ in range(500):
                        waiting = (await probe.execute(text(
                            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                            "and query like 'COPY%' and datname = current_database()"))).scalar_one()
                        await probe.rollback()  # (pg_stat_activity is read once per transaction)
                        if waiting or racing.done():
                            break
                        await asyncio.sleep(0.01)
                assert waiting == 1
            result = await racing
    finally:
        await committer.close()
    assert (result.accepted, result.duplicates) == (1, 1)
    assert [e.message_id for e in result.inserted] == ["race-z"]
    assert await _count_events(sessionmaker, ws) == 4


async def test_client_clock_skew_is_corrected_on_the_way_in(apps, workspace) -> None:
    from datetime import UTC, datetime, timedelta

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    skew = timedelta(hours=3)  # the device clock runs 3 h fast
    device_now = datetime.now(UTC) + skew
    happened = device_now - timedelta(minutes=10)  # queued offline for 10 minutes
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), json={
        "sentAt": device_now.isoformat(),
        "batch": [{"type": "track", "userId": "skew", "event": "Offline", "originalTimestamp": happened.isoformat()}],
    })
    assert r.json()["accepted"] == 1
    event = (await apps["ingest"].get("/v1/profiles/skew/events", headers=h)).json()["events"][0]
    stored = datetime.fromisoformat(event["timestamp"])
    assert abs(stored - (happened - skew)) < timedelta(seconds=5)
    received = datetime.fromisoformat(event["received_at"])
    assert abs((received - stored) - timedelta(minutes=10)) < timedelta(seconds=5)


async def test_unix_times_are_read_as_seconds_or_milliseconds(apps, workspace) -> None:
    # some clients send epoch numbers (or their text); the message used to be rejected whole for it
    from datetime import UTC, datetime, timedelta

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), json={"batch": [
        {"type": "track", "userId": "epoch", "event": "Seconds", "timestamp": 1709634030},
        {"type": "track", "userId": "epoch", "event": "Millis", "timestamp": 1709634030123},
        {"type": "track", "userId": "epoch", "event": "Text", "timestamp": "1709634030.5"},
        {"type": "track", "userId": "epoch", "event": "Iso", "timestamp": "2024-03-05T12:20:30+02:00"},
        {"type": "track", "userId": "epoch", "event": "Bool", "timestamp": True},
        # PostgreSQL's own text for a timestamptz (a whole-hour offset), as a server integration sends it
        {"type": "track", "userId": "epoch", "event": "Postgres", "timestamp": "2024-03-05 07:20:30-03"},
        # ISO 8601's basic format, and RFC 1123 / 2822 (HTTP's Date header, JavaScript's toUTCString())
        {"type": "track", "userId": "epoch", "event": "Basic", "timestamp": "20240305T102030Z"},
        {"type": "track", "userId": "epoch", "event": "BasicOffset", "timestamp": "20240305T122030.000+0200"},
        {"type": "track", "userId": "epoch", "event": "Rfc1123", "timestamp": "Tue, 05 Mar 2024 10:20:30 GMT"},
        {"type": "track", "userId": "epoch", "event": "Rfc2822", "timestamp": "Tue, 05 Mar 2024 05:20:30 -0500"},
        {"type": "track", "userId": "epoch", "event": "Nonsense", "timestamp": "Tue, 35 Mar 2024 10:20:30 GMT"},
    ]})
    assert r.status_code == 200 and r.json()["accepted"] == 9, r.text
    assert [x["index"] for x in r.json()["rejected"]] == [4, 10]
    events = (await apps["ingest"].get("/v1/profiles/epoch/events", headers=h)).json()["events"]
    at = {e["event"]: datetime.fromisoformat(e["timestamp"]) for e in events}
    base = datetime(2024, 3, 5, 10, 20, 30, tzinfo=UTC)
    assert at == {"Seconds": base, "Millis": base + timedelta(milliseconds=123), "Text": base + timedelta(seconds=0.5),
                  "Iso": base, "Postgres": base, "Basic": base, "BasicOffset": base, "Rfc1123": base,
                  "Rfc2822": base}
    # a device clock an hour fast, in epoch milliseconds both: the skew is removed as for ISO times
    now = datetime.now(UTC)
    device_ms = int((now + timedelta(hours=1)).timestamp() * 1000)
    r = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""), json={
        "userId": "epoch", "event": "Skewed", "originalTimestamp": device_ms - 60_000, "sentAt": device_ms})
    assert r.json()["accepted"] == 1
    events = (await apps["ingest"].get("/v1/profiles/epoch/events", headers=h, params={"limit": 1})).json()["events"]
    assert abs(datetime.fromisoformat(events[0]["timestamp"]) - (now - timedelta(minutes=1))) < timedelta(seconds=5)


async def test_request_id_is_echoed_or_generated(apps) -> None:
    given = await apps["segment"].get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    generated = await apps["segment"].get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32


async def test_browsers_may_call_the_tracking_api(apps, workspace) -> None:
    pre = await apps["ingest"].options("/v1/track", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    # analytics.js posts JSON as text/plain to avoid the preflight
    r = await apps["ingest"].post("/v1/track", content=b'{"userId": "web", "event": "Clicked"}',
                                  headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
                                  auth=(workspace.write_key, ""))
    # the page's origin echoed (never "*", which browsers refuse for a credentialed call such as a beacon)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"


async def test_a_string_cut_in_the_middle_of_an_emoji_is_stored_not_the_batch_refused(apps, workspace) -> None:
    """JSON.stringify writes a lone surrogate as an escape ("\\ud83d"): valid JSON, which Segment's API reads as
    U+FFFD. Refusing the body as invalid JSON (400) made analytics.js and analytics-node drop the whole batch."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    body = (b'{"batch": [{"type": "track", "userId": "cut", "event": "Viewed", "properties": {"title": "Caf\\u00e9 '
            b'\\ud83d", "pair": "\\ud83d\\ude00"}}, {"type": "track", "userId": "cut", "event": "Other \\udc00x"}]}')
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), content=body,
                                  headers={"content-type": "text/plain"})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    events = (await apps["ingest"].get("/v1/profiles/cut/events", headers=h)).json()["events"]
    assert {e["event"] for e in events} == {"Viewed", "Other \ufffdx"}
    viewed = next(e for e in events if e["event"] == "Viewed")
    assert viewed["properties"] == {"title": "Caf\u00e9 \ufffd", "pair": "\U0001F600"}
    still_bad = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""), headers={
        "content-type": "application/json"}, content=b'{"userId": "cut", "event": "\\ud83d", "n": 1e400}')
    assert still_bad.status_code == 422 and still_bad.headers["content-type"].startswith(PROBLEM)
    assert still_bad.json()["rejected"][0]["errors"][0]["type"] == "unrepresentable_number"


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e400", b"9" * 5000])
async def test_a_number_no_store_can_hold_refuses_its_message_not_the_batch(apps, workspace, number) -> None:
    """Python's json.dumps writes NaN and Infinity (segment-analytics-python sends them as they come), and 1e400 or
    5,000 digits are JSON no store keeps. The whole batch answered 400, which SDKs do not retry: every event in it
    was lost. Now only the message holding the number is refused, with the reason."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    uid = f"num-{uuid.uuid4().hex[:8]}"
    body = (b'{"batch": [{"type": "track", "userId": "' + uid.encode() + b'", "event": "Kept", "messageId": "k-'
            + uid.encode() + b'"}, {"type": "track", "userId": "' + uid.encode() + b'", "event": "Scored", '
            b'"messageId": "s-' + uid.encode() + b'", "properties": {"score": ' + number + b'}}]}')
    r = await c.post("/v1/batch", auth=auth, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and [(x["index"], x["message_id"], x["errors"][0]["type"])
                                          for x in r.json()["rejected"]] == [(1, f"s-{uid}", "unrepresentable_number")]
    events = (await c.get(f"/v1/profiles/{uid}/events", headers=h)).json()["events"]
    assert [e["event"] for e in events] == ["Kept"]
    # deep inside a message (500 levels: past the interpreter's recursion, still a 1 KB body) it is a 400, not a 500
    for depth in (300, 500):
        deep = b'{"batch": [{"type": "track", "userId": "x", "event": "E", "properties": {"a": ' + b"[" * depth + \
            number + b"]" * depth + b"}}]}"
        r = await c.post("/v1/batch", auth=auth, content=deep, headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 422), (depth, r.status_code, r.text[:300])
    # in the batch's own fields it cannot be given to one message: the request is refused, nothing stored
    r = await c.post("/v1/batch", auth=auth, content=b'{"context": {"x": ' + number + b'}, "batch": [{"type": "track", '
                     b'"userId": "' + uid.encode() + b'", "event": "Lost"}]}', headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert [e["event"] for e in (await c.get(f"/v1/profiles/{uid}/events", headers=h)).json()["events"]] == ["Kept"]


async def test_null_properties_traits_context_and_integrations_are_taken_as_absent(apps, workspace) -> None:
    """Segment's API stores a message whose optional objects are ``null``; refusing it (422) lost the event."""
    c, auth = apps["ingest"], (workspace.write_key, "")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    none = {"context": None, "integrations": None}
    r = await c.post("/v1/track", auth=auth, json={"userId": "nulls", "event": "E", "properties": None, **none})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = await c.post("/v1/batch", auth=auth, json={"context": None, "batch": [
        {"type": "identify", "userId": "nulls", "traits": None, **none},
        {"type": "page", "userId": "nulls", "name": "Home", "properties": None},
        {"type": "group", "userId": "nulls", "groupId": "g", "traits": None}]})
    assert r.status_code == 200 and r.json()["accepted"] == 3 and r.json()["rejected"] == [], r.text
    events = (await c.get("/v1/profiles/nulls/events", headers=h)).json()["events"]
    assert sorted(e["type"] for e in events) == ["group", "identify", "page", "track"]
    assert all(e["properties"] is not None and e["context"] == {} for e in events)


async def test_an_oauth_bearer_token_beside_the_write_key_in_the_body_is_accepted(
        apps, workspace, sessionmaker) -> None:
    """Segment's third auth form: segment-analytics-python with OAuth sends `Authorization: Bearer <access
    token>` (from Segment's authorization server, unknown here) and the write key in the body; that was a 401."""
    c = apps["ingest"]
    oauth = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}
    batch = [{"type": "track", "userId": "oauth", "event": "E"}]
    r = await c.post("/v1/batch", headers=oauth, json={"writeKey": workspace.write_key, "batch": batch})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    for body in ({"batch": batch}, {"writeKey": "wk_not-a-key", "batch": batch}):
        refused = await c.post("/v1/batch", headers=oauth, json=body)
        assert refused.status_code == 401 and refused.headers["content-type"].startswith(PROBLEM)
    assert await _count_events(sessionmaker, workspace.workspace_id) == 1


async def test_a_malformed_basic_header_beside_the_write_key_in_the_body_is_accepted(
        apps, workspace, sessionmaker) -> None:
    c, batch = apps["ingest"], [{"type": "track", "userId": "mangled", "event": "E"}]
    mangled = {"Authorization": "Basic not-base64!!"}
    r = await c.post("/v1/batch", headers=mangled, json={"writeKey": workspace.write_key, "batch": batch})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    refused = await c.post("/v1/batch", headers=mangled, json={"batch": batch})
    assert refused.status_code == 401 and "Malformed Basic" in refused.json()["detail"]
    assert await _count_events(sessionmaker, workspace.workspace_id) == 1


async def test_every_event_keeps_its_own_requests_received_at(apps, workspace, sessionmaker) -> None:
    """Concurrent requests share a commit (services/ingest/committer.py) but not a receipt time: each event is
    stored with its own request's ``received_at``, so an event is never dated after ingest received it (a message
    without a client time is dated at its receipt: the two are equal)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from services.ingest import tracking
    from services.ingest.committer import Committer
    from services.ingest.schemas import TrackMessage

    auth, tag = (workspace.write_key, ""), uuid.uuid4().hex[:8]
    answers = await asyncio.gather(*(
        apps["ingest"].post("/v1/batch", auth=auth, json={"batch": [
            {"type": "track", "userId": f"ra-{i % 3}", "event": "E", "messageId": f"{tag}-{i}-{j}"} for j in range(3)]})
        for i in range(30)))
    assert all(a.status_code == 200 and a.json()["accepted"] == 3 for a in answers)

    # through the committer: two requests received an hour apart, written in one group
    ws, now = workspace.workspace_id, datetime.now(UTC)
    earlier = now - timedelta(hours=1)
    committer = Committer(sessionmaker, writers=1)
    try:
        await asyncio.gather(*(committer.submit(ws, [tracking.normalize(TrackMessage.model_validate(
            {"userId": "ra-c", "event": "E", "messageId": f"{tag}-{name}"}), received)])
            for name, received in (("earlier", earlier), ("now", now))))
    finally:
        await committer.close()
    async with sessionmaker() as s:
        rows = {m: (t, r) for m, t, r in await s.execute(text(
            "select message_id, timestamp, received_at from ingest.events where workspace_id = :ws "
            "and message_id like :p"), {"ws": ws, "p": f"{tag}-%"})}
    assert len(rows) == 92
    assert [m for m, (t, r) in rows.items() if t != r] == []
    assert rows[f"{tag}-earlier"] == (earlier, earlier) and rows[f"{tag}-now"] == (now, now)


async def test_an_empty_or_blank_id_is_no_id(apps, workspace, sessionmaker) -> None:
    """``"userId": ""`` (an app's "not signed in") was kept as a userId: the first such message gave its profile the
    userId "", the next one's a unique-key error, a 500 that lost every other message of its batch."""
    c, auth, ws = apps["ingest"], (workspace.write_key, ""), workspace.workspace_id
    for anon in ("an-empty-1", "an-empty-2"):
        r = await c.post("/v1/track", auth=auth, json={"userId": "", "anonymousId": anon, "event": "E"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = await c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "", "anonymousId": "an-empty-3", "event": "E"},
        {"type": "identify", "userId": " \t", "anonymousId": "an-empty-4", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "", "anonymousId": " ", "event": "No id"},
        {"type": "alias", "previousId": "", "userId": "u-empty"},
        {"type": "alias", "previousId": "an-empty-1", "userId": ""},
        {"type": "group", "userId": "u-empty", "groupId": " "},
        {"type": "track", "userId": "u-empty", "anonymousId": "", "messageId": "", "event": "E"}]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3 and [x["index"] for x in r.json()["rejected"]] == [2, 3, 4, 5]
    only_empty = await c.post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "", "anonymousId": "", "event": "E"}]})
    assert only_empty.status_code == 422 and [x["index"] for x in only_empty.json()["rejected"]] == [0]
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    for anon in ("an-empty-1", "an-empty-2", "an-empty-3", "an-empty-4"):
        p = (await c.get(f"/v1/profiles/{anon}", headers=h)).json()
        assert p["user_id"] is None and p["anonymous_ids"] == [anon], p
    assert (await c.get("/v1/profiles/an-empty-4", headers=h)).json()["traits"] == {"plan": "pro"}
    async with sessionmaker() as s:
        rows = (await s.execute(text(
            "select user_id, anonymous_id, message_id from ingest.events where workspace_id = :ws order by seq"),
            {"ws": ws})).all()
        blank = (await s.execute(text(
            "select count(*) from ingest.profiles where workspace_id = :ws and trim(user_id) = '' "
            "union all select count(*) from ingest.identities where workspace_id = :ws and trim(value) = ''"),
            {"ws": ws})).scalars().all()
    assert [(u, a) for u, a, _ in rows] == [(None, "an-empty-1"), (None, "an-empty-2"), (None, "an-empty-3"),
                                            (None, "an-empty-4"), ("u-empty", None)]
    assert uuid.UUID(rows[-1][2]) and blank == [0, 0]  # an empty messageId: one generated


async def test_a_message_the_database_refuses_is_rejected_alone(apps, workspace, sessionmaker) -> None:
    """A message that passes every check but that the database refuses for its data (here: CHECKs this test adds
    for its workspace, on an event name and on an id, standing for a bug of ours) failed its whole batch with a
    500. The batch is written again in halves down to the refused messages; the others are stored."""
    ws, c, auth = workspace.workspace_id, apps["ingest"], (workspace.write_key, "")
    tag = uuid.uuid4().hex[:8]
    checks = {f"test_refuse_event_{tag}": ("events", "event is distinct from 'Refused'"),
              f"test_refuse_id_{tag}": ("identities", "value <> 'refused-id'")}
    async with sessionmaker() as s, s.begin():
        for name, (table, check) in checks.items():
            await s.execute(text(f"alter table ingest.{table} add constraint {name} "
                                 f"check (workspace_id <> '{ws}' or {check}) not valid"))
    try:
        batch = [{"type": "track", "userId": f"rf-{i}", "event": "E", "messageId": f"rf-{i}"} for i in range(9)]
        batch[2]["event"] = "Refused"  # refused in the COPY of the events (the driver's error)
        batch[6]["anonymousId"] = "refused-id"  # refused in the identities' insert (SQLAlchemy's)
        r = await c.post("/v1/batch", auth=auth, json={"batch": batch})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 7
        assert [(x["index"], x["message_id"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [
            (2, "rf-2", "refused_by_database"), (6, "rf-6", "refused_by_database")]
        assert "23514" in r.json()["rejected"][0]["errors"][0]["msg"]
        assert await _count_events(sessionmaker, ws) == 7
        again = await c.post("/v1/batch", auth=auth, json={"batch": batch})  # a retry: the same answer
        assert again.status_code == 200 and again.json()["duplicates"] == 7 and len(again.json()["rejected"]) == 2
        # nothing of the request could be stored: more likely our fault than the messages', an error as before
        alone = await c.post("/v1/track", auth=auth, json={"userId": "rf-x", "anonymousId": "refused-id",
                                                           "event": "E"})
        assert alone.status_code == 500
        assert (await c.post("/v1/batch", auth=auth, json={"batch": [batch[2], batch[6]]})).status_code == 500
        assert await _count_events(sessionmaker, ws) == 7
        # more refused messages than the search can single out: a 500 with nothing of the batch stored, so a retry
        # of messages without a messageId (each attempt gives them new ones) stores nothing twice
        spread = [{"type": "track", "userId": f"rs-{i}", "event": "Refused" if i % 4 == 0 else "E"} for i in range(200)]
        for _ in range(2):
            assert (await c.post("/v1/batch", auth=auth, json={"batch": spread})).status_code == 500
        assert await _count_events(sessionmaker, ws) == 7
    finally:
        async with sessionmaker() as s, s.begin():
            for name, (table, _) in checks.items():
                await s.execute(text(f"alter table ingest.{table} drop constraint {name}"))


async def test_the_calendars_first_and_last_instants_are_refused_and_the_instant_after_is_kept(
        apps, workspace, sessionmaker) -> None:
    """asyncpg sends 0001-01-01T00:00Z and 9999-12-31T23:59:59.999999Z as -infinity / infinity: such an event was
    stored with a time no reader could parse, and segment's feed reader failed on it for every workspace."""
    auth, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    for ts in ("0001-01-01T00:00:00Z", "0001-01-01T03:00:00+03:00", "9999-12-31T23:59:59.999999Z"):
        r = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "edge", "event": "E", "timestamp": ts})
        assert r.status_code == 422 and r.json()["rejected"][0]["errors"][0]["loc"][-1] == "timestamp", r.text
    r = await apps["ingest"].post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "edge", "event": "Kept", "timestamp": "0001-01-01T00:00:01Z"},
        {"type": "track", "userId": "edge", "event": "Sent at the end", "sentAt": "9999-12-31T23:59:59.999999Z"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert [x["errors"][0]["loc"][-1] for x in r.json()["rejected"]] == ["sentAt"]
    [event] = (await apps["ingest"].get("/v1/profiles/edge/events", headers=h)).json()["events"]
    assert event["event"] == "Kept" and event["timestamp"] == "0001-01-01T00:00:01Z", event
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws and "
                                     "(not isfinite(timestamp) or not isfinite(coalesce(sent_at, now())))"),
                                {"ws": workspace.workspace_id})).scalar_one() == 0


async def test_an_email_trait_too_long_to_index_refuses_its_message_not_the_batch(apps, workspace) -> None:
    """An 8,000-character ``email`` trait (under 32 KB) broke the profiles' email index: a 500 for the whole batch,
    which the SDK retried and then dropped with every other event in it."""
    auth, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    long = "x" * 8000 + "@example.com"
    r = await apps["ingest"].post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "long-mail", "event": "Before"},
        {"type": "identify", "userId": "long-mail", "traits": {"email": long}},
        {"type": "identify", "userId": "long-mail", "context": {"traits": {"email": {"nested": long}}}},
        {"type": "identify", "userId": "long-mail", "traits": {"email": "ok@example.com"},
         "context": {"traits": {"email": long}}},  # the top-level trait is the one kept
        {"type": "track", "userId": "long-mail", "event": "After"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    assert [(x["index"], x["errors"][0]["msg"]) for x in r.json()["rejected"]] == [
        (1, "Value error, traits.email is over 512 characters (an email address has at most 254)"),
        (2, "Value error, context.traits.email is over 512 characters (an email address has at most 254)")]
    profile = (await apps["ingest"].get("/v1/profiles/long-mail", headers=h)).json()
    assert profile["traits"]["email"] == "ok@example.com"
    alone = await apps["ingest"].post("/v1/identify", auth=auth, json={"userId": "long-mail", "traits": {"email": long}})
    assert alone.status_code == 422 and alone.headers["content-type"].startswith(PROBLEM), alone.text


async def test_an_email_names_a_known_users_profile_before_an_anonymous_one(apps, workspace) -> None:
    """A visitor who typed the address before logging in (another, anonymous profile) was picked for about one
    address in three: the lookup took the profile with the lowest random id."""
    auth, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    batch = []
    for k in range(8):
        batch += [{"type": "identify", "anonymousId": f"visitor-{k}", "traits": {"email": f"Shared{k}@example.com"}},
                  {"type": "identify", "userId": f"member-{k}", "traits": {"email": f"shared{k}@example.com"}},
                  {"type": "identify", "anonymousId": f"later-{k}", "traits": {"email": f"shared{k}@example.com"}}]
    assert (await apps["ingest"].post("/v1/batch", auth=auth, json={"batch": batch})).json()["accepted"] == 24
    for k in range(8):
        r = await apps["ingest"].get(f"/v1/profiles/SHARED{k}@example.com", headers=h)
        assert r.status_code == 200 and r.json()["user_id"] == f"member-{k}", r.text


@pytest.mark.parametrize(("body", "detail"), [
    (gzip.compress(b'{"userId": "z", "event": "Cut"}', mtime=0)[:-4], "ends before"),  # its CRC and length cut off
    (b"\x1f\x8b\x08\x00garbage", "not valid gzip"),
    (b"", "ends before"),
], ids=["cut-short", "garbage", "empty"])
async def test_a_gzip_body_cut_short_or_broken_is_refused(apps, workspace, sessionmaker, body, detail) -> None:
    r = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""), content=body,
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 400 and detail in r.json()["detail"], r.text
    assert await _count_events(sessionmaker, workspace.workspace_id) == 0


async def test_a_gzip_body_of_several_members_is_read_whole(apps, workspace) -> None:
    """RFC 1952 lets a gzip file hold several members (``cat a.gz b.gz``): only the first was read."""
    doc = orjson.dumps({"batch": [{"type": "track", "userId": "g2", "event": f"Part {i}"} for i in range(40)]})
    body = gzip.compress(doc[:300]) + gzip.compress(doc[300:])
    r = await apps["ingest"].post("/v1/batch", auth=(workspace.write_key, ""), content=body,
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == 40, r.text


async def test_an_erasure_of_a_blank_user_is_refused(apps, workspace) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    for user in ("", "   ", "\t"):
        r = await apps["ingest"].post("/v1/privacy/erasure", headers=h, json={"user": user})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "user", r.text
