"""Property: folding events in incrementally, page by page (any page size), gives the same memberships and
lifecycle stages as computing them once from all the raw events (within a week, so no stage depends on
having churned before)."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.segment import evaluation, lifecycle, segments
from shared.db import create_engine, create_sessionmaker

TODAY = datetime.now(UTC).date()
DEFINITIONS = [
    {"type": "performed", "event": "Buy", "count": 2},
    {"type": "performed", "event": "Buy", "within_days": 3},
    {"type": "and", "children": [{"type": "trait", "trait": "plan", "value": "pro"},
                                 {"type": "not", "child": {"type": "performed", "event": "Churn"}}]},
    {"type": "or", "children": [{"type": "performed", "event": "Churn", "op": "exactly", "count": 1},
                                {"type": "trait", "trait": "plan", "op": "exists"}]},
    {"type": "performed", "event": "Buy", "count": 2, "where": [{"property": "amount", "op": "gte", "value": 5}]},
    {"type": "aggregate", "event": "Buy", "property": "amount", "function": "sum", "within_days": 4, "op": "gte",
     "value": 10},
    {"type": "last_event_property", "event": "Buy", "property": "cart", "value": "c1"},
    {"type": "keyed", "key": "cart", "event": "Buy", "without": "Churn"},
    {"type": "performed_time", "event": "Buy", "which": "first", "op": "over_days_ago", "value": 3},
    {"type": "and", "children": [{"type": "segment", "segment_id": "SEGMENT-0"}, {"type": "stage", "stage": "engaged"}]},
]
LIFECYCLE = {"lifecycle": {"activation_events": ["Buy"]}}

event = st.one_of(
    st.tuples(st.integers(0, 3), st.just("track"), st.sampled_from(["Buy", "Churn"]), st.integers(0, 6),
              st.integers(0, 9), st.sampled_from(["c1", "c2"])),
    st.tuples(st.integers(0, 3), st.just("identify"), st.sampled_from([None, "pro", "free"]), st.integers(0, 6),
              st.just(0), st.just("")),
)


def _envelope(ws, users, e, n) -> dict:
    who, kind, what, days_ago, amount, cart = e
    ts = (datetime.now(UTC) - timedelta(days=days_ago, seconds=n)).isoformat()  # distinct times: a stable order
    base = {"workspace_id": str(ws), "profile_id": str(users[who]), "timestamp": ts, "traits": {}, "event": None,
            "type": kind, "message_id": f"m-{n}", "properties": {}}
    if kind == "track":
        base["event"] = what
        base["properties"] = {"amount": amount, "cart": cart}
    else:
        base["traits"] = {"plan": what}
    return base


async def _memberships(sessionmaker, ws) -> set[tuple[str, str]]:
    async with sessionmaker() as s:
        rows = await s.execute(text("select segment_id, profile_id from segment.memberships where workspace_id = :ws"),
                               {"ws": ws})
        return {(str(a), str(b)) for a, b in rows}


async def _run(sessionmaker, events, chunk: int) -> tuple[set, set]:
    results = []
    for mode in ("incremental", "once"):
        ws, users = uuid.uuid4(), [uuid.uuid4() for _ in range(4)]
        async with sessionmaker() as s, s.begin():
            await s.execute(text("insert into core.workspaces (id, name, settings) "
                                 "values (:ws, :name, CAST(:s AS jsonb))"),
                            {"ws": ws, "name": f"prop-{ws}", "s": json.dumps(LIFECYCLE)})
            seg_ids: list[str] = []
            for i, d in enumerate(DEFINITIONS):
                d = json.loads(json.dumps(d).replace("SEGMENT-0", seg_ids[0] if seg_ids else ""))
                seg_ids.append(str((await segments.create_segment(s, ws, f"s{i}", d))["id"]))
        envs = [_envelope(ws, users, e, n) for n, e in enumerate(events)]
        pages = [envs[i:i + chunk] for i in range(0, len(envs), chunk)] if mode == "incremental" else [envs]
        for page in pages:
            async with sessionmaker() as s, s.begin():
                affected = await evaluation.apply_events(s, page)
                for w, pids in affected.items():
                    await evaluation.reevaluate(s, w, pids, today=TODAY)
        names: dict[str, object] = dict(zip(seg_ids, range(len(seg_ids)), strict=True))
        names.update({str(lifecycle.stage_segment_id(ws, st)): st for st in lifecycle.STAGES})  # stages too
        index = {str(u): i for i, u in enumerate(users)}
        results.append({(names[a], index[b]) for a, b in await _memberships(sessionmaker, ws)})
    return results[0], results[1]


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, max_size=25), chunk=st.integers(1, 6))
def test_incremental_equals_full_recomputation(settings, events, chunk) -> None:
    loop = asyncio.new_event_loop()  # not asyncio.run: that would unset the main thread's loop for later tests
    try:
        incremental, once = loop.run_until_complete(_with_engine(settings, events, chunk))
    finally:
        loop.close()
    assert incremental == once


async def _with_engine(app_settings, events, chunk):
    # hypothesis drives a sync test: it gets its own loop, so its own engine
    engine = create_engine(app_settings, pool_size=1)
    try:
        return await _run(create_sessionmaker(engine), events, chunk)
    finally:
        await engine.dispose()
