"""Segment evaluation: aggregates from feed events, and a new segment backfilled over known profiles by a
real arq worker (burst mode) on real Redis."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from services.segment import evaluation
from services.segment.worker import BACKGROUND_PASS, evaluate_segments
from shared.db import session_lock
from shared.queue import build_worker, create_redis, wake


def _event(ws, pid, **kw) -> dict:
    return {"workspace_id": str(ws), "profile_id": str(pid), "timestamp": datetime.now(UTC).isoformat(),
            "traits": {}, "event": None, **kw}


async def test_new_segment_is_backfilled_by_the_worker(apps, workspace, sessionmaker, settings) -> None:
    ws = workspace.workspace_id
    buyer, browser = uuid.uuid4(), uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [
            _event(ws, buyer, type="identify", traits={"plan": "pro"}),
            _event(ws, buyer, type="track", event="Order Completed"),
            _event(ws, buyer, type="track", event="Order Completed"),
            _event(ws, browser, type="identify", traits={"plan": "pro"}),
            _event(ws, browser, type="track", event="Order Completed"),
        ])
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    seg = await apps["segment"].post("/v1/segments", headers=h, json={"name": "repeat", "definition": {
        "type": "and", "children": [{"type": "trait", "trait": "plan", "value": "pro"},
                                    {"type": "performed", "event": "Order Completed", "count": 2}]}})
    assert seg.status_code == 201
    # the wake-up the API enqueued is run by a real arq worker (only this job: ingest is not listening here)
    worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    members = (await apps["segment"].get(f"/v1/segments/{seg.json()['id']}/members", headers=h)).json()
    assert [m["profile_id"] for m in members["members"]] == [str(buyer)]

    # evaluating again changes nothing and writes no new transition
    async with sessionmaker() as s, s.begin():
        assert await evaluation.reevaluate(s, ws, [buyer, browser], lifecycle=False) == 0
    # the browser's second order makes them enter; a traits change makes the buyer leave
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [
            _event(ws, browser, type="track", event="Order Completed"),
            _event(ws, buyer, type="identify", traits={"plan": None}),
        ])
        assert await evaluation.reevaluate(s, ws, affected[ws], lifecycle=False) == 2
    members = (await apps["segment"].get(f"/v1/segments/{seg.json()['id']}/members", headers=h)).json()
    assert [m["profile_id"] for m in members["members"]] == [str(browser)]


async def test_a_merge_folds_counts_and_moves_membership(apps, workspace, sessionmaker) -> None:
    ws = workspace.workspace_id
    user, device = uuid.uuid4(), uuid.uuid4()
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    seg = await apps["segment"].post("/v1/segments", headers=h, json={"name": "two orders", "definition": {
        "type": "performed", "event": "Order Completed", "count": 2}})
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [
            _event(ws, user, type="track", event="Order Completed"),
            _event(ws, device, type="track", event="Order Completed"),
            _event(ws, device, type="track", event="Order Completed"),
        ])
        await evaluation.reevaluate(s, ws, affected[ws])
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_event(ws, user, type="merge", traits={"plan": "pro"},
                                                            properties={"merged_profile_id": str(device)})])
        assert await evaluation.reevaluate(s, ws, affected[ws], lifecycle=False) == 2  # device exits, user enters
    members = (await apps["segment"].get(f"/v1/segments/{seg.json()['id']}/members", headers=h)).json()
    assert [m["profile_id"] for m in members["members"]] == [str(user)]
    async with sessionmaker() as s:
        facts = await evaluation._load_facts(s, ws, [user, device], evaluation.Needs(counts={"Order Completed"}))
    assert sum(facts[user].counts["Order Completed"].values()) == 3 and facts[user].traits == {"plan": "pro"}
    assert facts[device].counts == {} and facts[device].traits == {}


async def test_quiet_users_leave_windowed_segments_as_time_passes(apps, workspace, sessionmaker) -> None:
    from datetime import timedelta

    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    active = await apps["segment"].post("/v1/segments", headers=h, json={"name": "active 7d", "definition": {
        "type": "performed", "event": "App Opened", "within_days": 7}})
    lapsed = await apps["segment"].post("/v1/segments", headers=h, json={"name": "lapsed", "definition": {
        "type": "and", "children": [{"type": "performed", "event": "App Opened"},
                                    {"type": "not", "child": {"type": "performed", "event": "App Opened",
                                                              "within_days": 7}}]}})
    user = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_event(ws, user, type="track", event="App Opened")])
        await evaluation.reevaluate(s, ws, affected[ws])
    today = datetime.now(UTC).date()

    async def members(seg) -> list[str]:
        page = (await apps["segment"].get(f"/v1/segments/{seg.json()['id']}/members", headers=h)).json()
        return [m["profile_id"] for m in page["members"]]

    assert await members(active) == [str(user)] and await members(lapsed) == []
    await evaluation.recheck_windows(sessionmaker, today + timedelta(days=6))  # still inside the window
    assert await members(active) == [str(user)]
    assert await evaluation.recheck_windows(sessionmaker, today + timedelta(days=7)) >= 2  # no new event
    assert await evaluation.recheck_windows(sessionmaker, today + timedelta(days=7)) == 0  # once per day
    assert await members(active) == [] and await members(lapsed) == [str(user)]


async def test_computed_attributes_feed_segments_and_survive_merges(apps, workspace, sessionmaker) -> None:
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    big = await apps["segment"].post("/v1/segments", headers=h, json={"name": "big spenders", "definition": {
        "type": "and", "children": [{"type": "attribute", "attribute": "order_count", "op": "gte", "value": 3},
                                    {"type": "attribute", "attribute": "total_revenue", "op": "gt", "value": 50}]}})
    assert big.status_code == 201, big.text
    user, device = uuid.uuid4(), uuid.uuid4()
    orders = [_event(ws, user, type="track", event="Order Completed", properties={"revenue": r}) for r in (10, "20.5")]
    orders.append(_event(ws, device, type="track", event="Order Completed", properties={"revenue": 30}))
    orders.append(_event(ws, user, type="track", event="Viewed Product", properties={}))
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, orders)
        await evaluation.reevaluate(s, ws, affected[ws])
    attrs = (await apps["segment"].get(f"/v1/profiles/{user}/attributes", headers=h)).json()
    assert attrs["order_count"] == 2 and attrs["total_revenue"] == 30.5 and attrs["average_order_value"] == 15.25
    assert attrs["days_since_last_activity"] == 0
    members = (await apps["segment"].get(f"/v1/segments/{big.json()['id']}/members", headers=h)).json()
    assert members["members"] == []
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_event(ws, user, type="merge", traits={},
                                                            properties={"merged_profile_id": str(device)})])
        await evaluation.reevaluate(s, ws, affected[ws])
    attrs = (await apps["segment"].get(f"/v1/profiles/{user}/attributes", headers=h)).json()
    assert attrs["order_count"] == 3 and attrs["total_revenue"] == 60.5
    members = (await apps["segment"].get(f"/v1/segments/{big.json()['id']}/members", headers=h)).json()
    assert [m["profile_id"] for m in members["members"]] == [str(user)]
    bad = await apps["segment"].post("/v1/segments", headers=h, json={"name": "x", "definition": {
        "type": "attribute", "attribute": "shoe_size"}})
    assert bad.status_code == 422


async def test_lifecycle_stages_move_with_events_and_with_time(apps, workspace, sessionmaker) -> None:
    from datetime import timedelta

    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    user = uuid.uuid4()
    today = datetime.now(UTC).date()

    async def stage() -> str | None:
        return (await apps["segment"].get(f"/v1/lifecycle/{user}", headers=h)).json()["stage"]

    async def feed(*events) -> None:
        async with sessionmaker() as s, s.begin():
            affected = await evaluation.apply_events(s, list(events))
            await evaluation.reevaluate(s, ws, affected[ws])

    assert (await apps["segment"].get(f"/v1/lifecycle/{user}", headers=h)).status_code == 404  # not seen yet
    await feed(_event(ws, user, type="track", event="Signed Up"))
    assert await stage() == "onboarding"
    await feed(_event(ws, user, type="track", event="Order Completed", properties={"revenue": 5}))
    assert await stage() == "engaged"
    await feed(*[_event(ws, user, type="track", event="Order Completed", properties={"revenue": 5})
                 for _ in range(2)])
    assert await stage() == "loyal"
    await evaluation.recheck_lifecycle(sessionmaker, today + timedelta(days=31))  # time passes with no event
    assert await stage() == "at_risk"
    await evaluation.recheck_lifecycle(sessionmaker, today + timedelta(days=91))
    assert await stage() == "churned"
    await feed(_event(ws, user, type="track", event="App Opened"))  # they come back
    assert await stage() == "reactivated"
    overview = (await apps["segment"].get("/v1/lifecycle", headers=h)).json()["stages"]
    assert {s["stage"]: s["profiles"] for s in overview}["reactivated"] == 1
    # each stage change is a transition of the stage's segment, for campaign triggers
    churned_id = next(s["segment_id"] for s in overview if s["stage"] == "churned")
    async with sessionmaker() as s:
        kinds = (await s.execute(text(
            "select kind from segment.transitions where workspace_id = :ws and segment_id = :sid order by seq"),
            {"ws": ws, "sid": uuid.UUID(churned_id)})).scalars().all()
    assert kinds == ["entered", "exited"]


async def test_preview_then_edit_emits_only_real_changes(apps, workspace, sessionmaker, settings) -> None:
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    people = [uuid.uuid4() for _ in range(4)]
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [_event(ws, p, type="track", event="Order Completed")
                                          for i, p in enumerate(people) for _ in range(i)])  # 0,1,2,3 orders
    one = {"type": "performed", "event": "Order Completed", "count": 1}
    two = {"type": "performed", "event": "Order Completed", "count": 2}
    preview = (await apps["segment"].post("/v1/segments/preview", headers=h, json={"definition": two})).json()
    assert preview["count"] == 2 and preview["profiles_evaluated"] == 3 and len(preview["sample"]) == 2
    bad = await apps["segment"].post("/v1/segments/preview", headers=h, json={"definition": {"type": "nope"}})
    assert bad.status_code == 422
    seg = (await apps["segment"].post("/v1/segments", headers=h, json={"name": "buyers", "definition": one})).json()
    worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
    await worker.main()
    edited = await apps["segment"].put(f"/v1/segments/{seg['id']}", headers=h, json={"definition": two})
    assert edited.status_code == 200 and edited.json()["version"] == 2
    worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
    await worker.main()
    await worker.close()
    async with sessionmaker() as s:
        rows = (await s.execute(text("select segment_version, profile_id, kind from segment.transitions "
                                     "where segment_id = :sid order by seq"), {"sid": uuid.UUID(seg["id"])})).all()
    # version 1: three entered; version 2: only the one-order buyer exits — nobody re-enters
    assert [(v, k) for v, _, k in rows] == [(1, "entered")] * 3 + [(2, "exited")]
    assert rows[-1][1] == people[1]
    missing = await apps["segment"].put(f"/v1/segments/{uuid.uuid4()}", headers=h, json={"definition": one})
    assert missing.status_code == 404


async def test_one_background_pass_at_a_time(apps, workspace, sessionmaker, settings) -> None:
    """A backfill woken while another pass over the profiles is running (this replica's previous poll,
    another replica) leaves the work to that pass instead of walking the profiles a second time; the next
    poll after it does whatever is still pending."""
    ws = workspace.workspace_id
    buyer = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [_event(ws, buyer, type="track", event="Order Completed")])
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    seg = (await apps["segment"].post("/v1/segments", headers=h, json={
        "name": "buyers", "definition": {"type": "performed", "event": "Order Completed"}})).json()

    async def run_worker() -> None:
        worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()

    async def members() -> list[str]:
        page = (await apps["segment"].get(f"/v1/segments/{seg['id']}/members", headers=h)).json()
        return [m["profile_id"] for m in page["members"]]

    async with session_lock(sessionmaker.kw["bind"], BACKGROUND_PASS) as held:  # a pass already running
        assert held
        await run_worker()  # the wake-up the API enqueued
        assert await members() == []
    redis = await create_redis(settings)
    try:
        await wake(redis, settings, "segment", "evaluate_segments")  # the next poll
    finally:
        await redis.aclose()
    await run_worker()
    assert await members() == [str(buyer)]


async def _buyers(ws: uuid.UUID, sessionmaker, apps, h: dict, n: int) -> tuple[str, list[uuid.UUID]]:
    """``n`` profiles that each completed an order, and a saved (not yet evaluated) segment of buyers."""
    people = sorted(uuid.uuid4() for _ in range(n))
    async with sessionmaker() as s, s.begin():
        await evaluation.apply_events(s, [_event(ws, p, type="track", event="Order Completed") for p in people])
    seg = (await apps["segment"].post("/v1/segments", headers=h, json={
        "name": "buyers", "definition": {"type": "performed", "event": "Order Completed"}})).json()
    return seg["id"], people


async def _member_ids(apps, h: dict, sid: str) -> list[str]:
    page = (await apps["segment"].get(f"/v1/segments/{sid}/members", headers=h, params={"limit": 1000})).json()
    return sorted(m["profile_id"] for m in page["members"])


async def test_an_interrupted_pass_resumes_after_its_last_committed_page(apps, workspace, sessionmaker) -> None:
    """A backfill stopped by a deploy starts again after the last page it committed, not at the first
    profile: the profiles before that point are not evaluated a second time."""
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    sid, people = await _buyers(ws, sessionmaker, apps, h, 6)
    async with sessionmaker() as s, s.begin():  # an earlier run of the same pass got as far as people[2]
        key = await evaluation.pass_key(s, ws, {uuid.UUID(sid)}, None, None)
        await s.execute(text("insert into segment.pass_progress (key, workspace_id, after) values (:k, :ws, :a)"),
                        {"k": key, "ws": ws, "a": people[2]})
    assert await evaluation.evaluate_fully(sessionmaker, ws, {uuid.UUID(sid)}) == 3
    assert await _member_ids(apps, h, sid) == [str(p) for p in people[3:]]
    async with sessionmaker() as s:  # finished: nothing left to resume
        assert (await s.execute(text("select count(*) from segment.pass_progress where workspace_id = :ws"),
                                {"ws": ws})).scalar() == 0
    # the same segment at a new version is a new pass: every profile again (a definition written otherwise:
    # the same one again keeps the version)
    v2 = await apps["segment"].put(f"/v1/segments/{sid}", headers=h, json={
        "definition": {"type": "or", "children": [{"type": "performed", "event": "Order Completed"}]}})
    assert v2.status_code == 200 and v2.json()["version"] == 2
    async with sessionmaker() as s, s.begin():
        assert await evaluation.pass_key(s, ws, {uuid.UUID(sid)}, None, None) != key
    await evaluation.evaluate_fully(sessionmaker, ws, {uuid.UUID(sid)})
    assert await _member_ids(apps, h, sid) == [str(p) for p in people]


async def test_a_pass_records_its_progress_page_by_page(apps, workspace, sessionmaker, monkeypatch) -> None:
    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    sid, people = await _buyers(ws, sessionmaker, apps, h, 7)
    monkeypatch.setattr(evaluation, "SET_CHUNK", 1)  # pages of two profiles (two lanes; the segment runs in SQL)
    task = asyncio.create_task(evaluation.evaluate_fully(sessionmaker, ws, {uuid.UUID(sid)}))
    saved: list[uuid.UUID] = []
    while not task.done():  # watch the progress row from outside, as a restarted worker would read it
        async with sessionmaker() as s:
            after = (await s.execute(text("select after from segment.pass_progress where workspace_id = :ws"),
                                     {"ws": ws})).scalar()
        if after is not None and after not in saved:
            saved.append(after)
        await asyncio.sleep(0.001)
    assert await task == 7
    assert saved and set(saved) <= {people[1], people[3], people[5]}  # the last profile of a full page
    assert saved == sorted(saved)
    assert await _member_ids(apps, h, sid) == [str(p) for p in people]


async def test_a_workspace_whose_segments_fail_does_not_stop_the_others(apps, workspace, sessionmaker, settings
                                                                        ) -> None:
    """A definition this release cannot evaluate (saved by an older one, say) in one workspace: that workspace's
    live re-evaluation, backfill and daily re-check are set aside (logged, counted, retried at the next run)
    while every other workspace's go on."""
    from prometheus_client import REGISTRY

    from services.segment import partitioning
    from shared.core import create_workspace

    async with sessionmaker() as s, s.begin():
        broken = await create_workspace(s, f"test-broken-{uuid.uuid4().hex[:6]}")
    buyers = {"type": "performed", "event": "Order Completed", "within_days": 30}
    people, segments = {}, {}
    for w in (broken, workspace):
        h = {"Authorization": f"Bearer {w.secret_key}"}
        seg = await apps["segment"].post("/v1/segments", headers=h, json={"name": "buyers", "definition": buyers})
        assert seg.status_code == 201, seg.text
        segments[w.workspace_id] = uuid.UUID(seg.json()["id"])
        people[w.workspace_id] = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update segment.segments set definition = CAST(:d AS jsonb) where id = :id"),
                        {"d": '{"type": "from a later release"}', "id": segments[broken.workspace_id]})

    def failures(task: str) -> float:
        return REGISTRY.get_sample_value("tenure_workspace_task_failures_total",
                                         {"service": "segment", "task": task}) or 0.0

    async def members(ws: uuid.UUID) -> list[uuid.UUID]:
        async with sessionmaker() as s:
            return list((await s.execute(text("select profile_id from segment.memberships where segment_id = :id"),
                                         {"id": segments[ws]})).scalars())

    # the backfill: the good workspace's segment is evaluated, the broken one's stays pending
    before = failures("evaluate_segments")
    worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert failures("evaluate_segments") > before
    async with sessionmaker() as s:
        pending = dict((await s.execute(text(
            "select id, evaluated_version < version from segment.segments where id = any(:ids)"),
            {"ids": list(segments.values())})).all())
    assert pending == {segments[broken.workspace_id]: True, segments[workspace.workspace_id]: False}

    # live events in both workspaces: the good one's buyer enters, the broken one's profile stays dirty
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_event(ws, pid, type="track", event="Order Completed")
                                                     for ws, pid in people.items()])
        await partitioning.mark_dirty(s, affected)
    before = failures("reevaluate")
    for _ in range(settings.segment_partitions * 2):  # (a failed batch ends its partition's turn for the run)
        await partitioning.process_dirty(sessionmaker, settings.segment_partitions, 1000, evaluation.reevaluate)
        if await members(workspace.workspace_id):
            break
    assert await members(workspace.workspace_id) == [people[workspace.workspace_id]]
    assert failures("reevaluate") > before
    async with sessionmaker() as s:
        dirty = (await s.execute(text("select workspace_id from segment.dirty_profiles where profile_id = any(:p)"),
                                 {"p": list(people.values())})).scalars().all()
    assert dirty == [broken.workspace_id]

    # the daily re-check: the good workspace's windowed segment is checked, the broken one's stays due
    later = datetime.now(UTC).date() + timedelta(days=40)
    before = failures("recheck_windows")
    await evaluation.recheck_windows(sessionmaker, later)
    assert failures("recheck_windows") > before
    assert await members(workspace.workspace_id) == []  # the order is 40 days old: left the window
    async with sessionmaker() as s:
        checked = dict((await s.execute(text(
            "select id, windows_checked_on from segment.segments where id = any(:ids)"),
            {"ids": list(segments.values())})).all())
    assert checked[segments[workspace.workspace_id]] == later and checked[segments[broken.workspace_id]] != later
    async with sessionmaker() as s, s.begin():  # leave nothing broken for the tests after this one
        await s.execute(text("delete from segment.segments where workspace_id = :ws"), {"ws": broken.workspace_id})
        await s.execute(text("delete from segment.dirty_profiles where workspace_id = :ws"),
                        {"ws": broken.workspace_id})


async def test_a_misspelt_field_is_a_422_naming_it_not_a_silent_no_op(apps, workspace) -> None:
    """An edit with ``defintion`` answered 200 and kept the old definition (an unknown field was dropped, and an
    omitted one keeps its value), so a marketer believed the segment changed. The bodies that save refuse what
    they do not know, as campaign's do (a preview or search takes a segment's create body as it is)."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    seg = apps["segment"]
    plan = {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}
    created = await seg.post("/v1/segments", headers=h, json={"name": f"pro-{uuid.uuid4().hex[:6]}", "definition": plan})
    sid = created.json()["id"]
    lst = await seg.post("/v1/lists", headers=h, json={"name": f"beta-{uuid.uuid4().hex[:6]}"})
    for method, path, body, field in [
        ("PUT", f"/v1/segments/{sid}", {"defintion": {**plan, "value": "free"}}, "defintion"),
        ("POST", "/v1/segments", {"name": "typo", "definition": plan, "descripton": "pros"}, "descripton"),
        ("POST", "/v1/lists", {"name": "l", "descripton": "x"}, "descripton"),
        ("POST", f"/v1/lists/{lst.json()['id']}/members", {"ids": ["u-1"], "lst": 1}, "lst"),
    ]:
        r = await seg.request(method, path, headers=h, json=body)
        assert r.status_code == 422, (path, r.text)
        assert ["body", field] in [e["loc"] for e in r.json()["errors"]], r.text
    got = await seg.get(f"/v1/segments/{sid}", headers=h)
    assert got.json()["definition"]["value"] == "pro" and got.json()["version"] == 1


async def test_a_change_of_the_lifecycle_thresholds_restages_at_the_workers_next_run(apps, workspace, sessionmaker,
                                                                                    settings) -> None:
    """`tenure workspace configure --set 'lifecycle={"loyal_orders": 2}'` changed /v1/metrics at once (it reads the
    thresholds) but no one's stage until the next daily re-check (once per UTC day per workspace): /v1/lifecycle
    and the metrics contradicted each other for up to a day. The worker's next poll re-stages the workspace."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    ws = workspace.workspace_id
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    user = uuid.uuid4()
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, [_event(ws, user, type="track", event="Order Completed")
                                                     for _ in range(2)])
        await evaluation.reevaluate(s, ws, affected[ws])
    await evaluation.recheck_lifecycle(sessionmaker, datetime.now(UTC).date())  # today's daily pass is done

    async def loyal() -> tuple[str, int]:
        stage = (await apps["segment"].get(f"/v1/lifecycle/{user}", headers=h)).json()["stage"]
        m = await apps["segment"].get("/v1/metrics", headers=h, params={"start": "2000-01-01", "end": "2999-01-01"})
        return stage, m.json()["loyal_customers"]

    async def run_worker() -> None:
        redis = await create_redis(settings)
        try:
            await wake(redis, settings, "segment", "evaluate_segments")  # the next poll
        finally:
            await redis.aclose()
        worker = build_worker(settings, "segment", functions=[evaluate_segments], burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()

    assert await loyal() == ("engaged", 0)  # 2 orders, 3 make a loyal customer by default
    configured = subprocess.run(
        [str(Path(sys.executable).parent / "tenure"), "workspace", "configure", str(ws), "--set",
         'lifecycle={"loyal_orders": 2}'], capture_output=True, text=True, timeout=60,
        env={**os.environ, "TENURE_DATABASE_URL": settings.database_url, "TENURE_REDIS_URL": settings.redis_url})
    assert configured.returncode == 0, configured.stderr
    await run_worker()
    assert await loyal() == ("loyal", 1)
    overview = (await apps["segment"].get("/v1/lifecycle", headers=h)).json()["stages"]
    assert {s["stage"]: s["profiles"] for s in overview}["loyal"] == 1
    # the thresholds back where they were: the stages follow again
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = settings - 'lifecycle' where id = :ws"), {"ws": ws})
    await run_worker()
    assert await loyal() == ("engaged", 0)
