"""Segment evaluation: (a) a full evaluation of representative segments over a generated population,
next to the raw cost of reading that population from PostgreSQL; (b) event-to-transition latency for a
live stream of events through the running system.

    .venv/bin/python bench/segment.py [--users 200000] [--events-per-user 20] [--segments 20]
                                      [--rate 50] [--seconds 20] [--skip-full] [--backfill]

(a) Generates (deterministic seed) users with traits, per-day event counts and purchase statistics —
the aggregates the segment service folds ~events-per-user raw events into — with binary COPY, then
times ``evaluate_fully`` of all the segments (one pass) and prints profiles×segments per second, next
to the time of a plain ``select`` of the same facts (the floor any evaluation pays).
Then times the same pass the next day (what the daily re-check of windowed segments does; few changes).
(b) Starts ``tenure serve ingest`` and ``tenure worker segment`` as processes on the same database
(population and segments in place), sends ``--rate`` track calls per second for ``--seconds`` seconds,
each from a new user, and measures, per event, the time from ingest's 200 (the event is committed)
until the segment entry it causes is committed and visible (polled every 5 ms): p50 / p95 / max.
The population's segments are marked evaluated first (what the service does after its own full
evaluation), so the worker has nothing to backfill; with ``--backfill`` they are left as just saved, and
the worker's backfill of all of them runs during the live stream (with ``--skip-full``: a user saving
the 20 segments while events flow).
Uses TENURE_DATABASE_URL / TENURE_REDIS_URL (a scratch database is created beside it and dropped) or
the embedded servers.
"""

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import orjson
from scratch import asyncpg_dsn, scratch_database  # bench/ is the script directory, so on sys.path
from stack import _postgres_cpu, env_for, spawn, urls, wait_ready
from stack import stop as stop_processes

from services.segment import evaluation, segments
from shared.core import create_workspace
from shared.db import create_engine, create_sessionmaker
from shared.embedded import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ["App Opened", "Product Viewed", "Product Added", "Order Completed", "Review Submitted"]
PLANS = ["free", "pro", "team"]



def definitions(n: int) -> list[dict]:
    base = [
        {"type": "trait", "trait": "plan", "value": "pro"},
        {"type": "performed", "event": "Order Completed", "count": 2},
        {"type": "performed", "event": "App Opened", "within_days": 7},
        {"type": "performed", "event": "App Opened", "within_days": 30, "op": "at_most", "count": 0},
        {"type": "attribute", "attribute": "total_revenue", "op": "gt", "value": 100},
        {"type": "attribute", "attribute": "days_since_last_activity", "op": "gte", "value": 30},
        {"type": "and", "children": [{"type": "trait", "trait": "plan", "value": "team"},
                                     {"type": "performed", "event": "Product Added", "within_days": 14}]},
        {"type": "or", "children": [{"type": "performed", "event": "Review Submitted"},
                                    {"type": "attribute", "attribute": "order_count", "op": "gte", "value": 3}]},
        {"type": "not", "child": {"type": "performed", "event": "Order Completed"}},
        {"type": "random_bucket", "percent": 10, "seed": "holdout"},
    ]
    return [base[i % len(base)] for i in range(n)]


async def generate(dsn: str, kw: dict, ws: uuid.UUID, users: int, per_user: int, seed: int) -> int:
    rnd = random.Random(seed)
    today = datetime.now(UTC).date()
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn, **kw)
    rows_counts, rows_traits, rows_stats = [], [], []
    n_events = 0
    try:
        for _ in range(users):
            pid = uuid.UUID(int=rnd.getrandbits(128))
            rows_traits.append((ws, pid, orjson.dumps({"plan": rnd.choice(PLANS)}).decode(), "{}", now))
            per_day: dict[tuple[str, object], int] = {}
            orders = 0
            last = None
            for _ in range(rnd.randint(per_user // 2, per_user * 3 // 2)):
                ev = rnd.choices(EVENTS, weights=[50, 30, 10, 7, 3])[0]
                day = today - timedelta(days=min(364, int(rnd.expovariate(1 / 40))))
                per_day[(ev, day)] = per_day.get((ev, day), 0) + 1
                orders += ev == "Order Completed"
                last = max(last or day, day)
                n_events += 1
            rows_counts += [(ws, pid, ev, day, c) for (ev, day), c in per_day.items()]
            seen = datetime.combine(last or today, datetime.min.time(), UTC)
            rows_stats.append((ws, pid, seen - timedelta(days=60), seen, orders, Decimal(orders * 42),
                               seen if orders else None, seen if orders else None))
        await conn.copy_records_to_table("profile_traits", schema_name="segment", records=rows_traits,
                                         columns=["workspace_id", "profile_id", "traits", "trait_times", "updated_at"])
        await conn.copy_records_to_table("event_counts", schema_name="segment", records=rows_counts,
                                         columns=["workspace_id", "profile_id", "event", "day", "count"])
        await conn.copy_records_to_table("profile_stats", schema_name="segment", records=rows_stats,
                                         columns=["workspace_id", "profile_id", "first_seen", "last_seen",
                                                  "order_count", "revenue", "first_order_at", "last_order_at"])
        await conn.execute("analyze segment.event_counts; analyze segment.profile_traits; "
                           "analyze segment.profile_stats")
    finally:
        await conn.close()
    return n_events


async def latency(settings: Settings, ws: uuid.UUID, write_key: str, rate: float, seconds: float,
                  backfill: bool = False) -> list[float]:
    """Event-to-transition latencies (s) for a live stream of track calls, each from a new user (during the
    worker's backfill of the population's segments if ``backfill``)."""
    dsn, kw = asyncpg_dsn(settings.database_url or "")
    conn = await asyncpg.connect(dsn, **kw)
    engine = create_engine(settings, pool_size=1)
    async with create_sessionmaker(engine)() as s, s.begin():
        seg = (await segments.create_segment(s, ws, "pinged", {"type": "performed", "event": "Ping"}))["id"]
    await engine.dispose()
    # Nothing to re-check today; the population's segments count as evaluated (as after the service's own
    # full evaluation: the benchmark's ran in-process) unless the worker is to backfill them meanwhile.
    await conn.execute("update segment.segments set windows_checked_on = current_date, evaluated_version = "
                       "case when $1 or id = $2 then version else evaluated_version end", not backfill,
                       uuid.UUID(seg))
    await conn.execute("insert into segment.workspace_checks (workspace_id, lifecycle_checked_on) "
                       "values ($1, current_date) on conflict do nothing", ws)
    env = env_for(settings, smtp_port=free_port())  # (no mail is sent here)
    procs = spawn(env, [("serve", "ingest"), ("worker", "segment")])
    base = urls(env)["ingest"]
    sent: dict[str, float] = {}  # userId -> when ingest answered 200
    seen: dict[uuid.UUID, float] = {}  # profile id -> when its entry was first visible
    stop = asyncio.Event()

    async def watch() -> None:
        # Start after what the full evaluation wrote, and read only the new rows, by primary key, with the
        # filter applied here: right after a full evaluation `transitions` holds millions of rows and no
        # statistics yet, and with the filter in SQL PostgreSQL then planned each 5 ms poll as a parallel
        # seq scan of the whole table (the benchmark measured, and loaded the box with, its own watcher).
        # `order by seq limit` makes the index range scan the plan whatever the statistics.
        last = await conn.fetchval("select coalesce(max(seq), 0) from segment.transitions")
        pinged = uuid.UUID(seg)
        while not stop.is_set():
            rows = await conn.fetch("select seq, segment_id, kind, profile_id from segment.transitions "
                                    "where seq > $1 order by seq limit 1000", last)
            now = time.perf_counter()
            for r in rows:
                if r["segment_id"] == pinged and r["kind"] == "entered":
                    seen.setdefault(r["profile_id"], now)
                last = r["seq"]
            if len(rows) < 1000:
                await asyncio.sleep(0.005)

    try:
        async with httpx.AsyncClient(base_url=base, auth=(write_key, ""), timeout=30) as c:
            await wait_ready(c, [base])
            await asyncio.sleep(2)  # let the worker start and drain its start-up jobs
            watcher = asyncio.create_task(watch())

            async def send(uid: str) -> None:
                r = await c.post("/v1/track", json={"userId": uid, "event": "Ping"})
                if r.status_code == 200:
                    sent[uid] = time.perf_counter()

            tasks = []
            start = time.perf_counter()
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(send(f"live-{uuid.uuid4().hex[:12]}")))
            await asyncio.gather(*tasks)
            deadline = time.perf_counter() + 30
            while len(seen) < len(sent) and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a count
                await asyncio.sleep(0.05)
            stop.set()
            await watcher
        ids = {r["value"]: r["profile_id"] for r in await conn.fetch(
            "select value, profile_id from ingest.identities where workspace_id = $1 and kind = 'user_id' "
            "and value = any($2::text[])", ws, list(sent))}
        missing = [u for u in sent if ids.get(u) not in seen]
        if missing:
            print(f"  ({len(missing)} of {len(sent)} events produced no entry within 30 s)")
        return [seen[ids[u]] - t for u, t in sent.items() if ids.get(u) in seen]
    finally:
        stop_processes(procs)
        await conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=50, help="live events per second for the latency run")
    ap.add_argument("--seconds", type=float, default=20, help="duration of the latency run")
    ap.add_argument("--skip-full", action="store_true", help="only the latency run (the population is still made)")
    ap.add_argument("--backfill", action="store_true",
                    help="leave the segments unevaluated: the worker backfills them during the latency run")
    args = ap.parse_args()
    async with scratch_database(need_redis=True) as settings:
        url = settings.database_url or ""
        dsn, kw = asyncpg_dsn(url)
        engine = create_engine(settings, pool_size=evaluation.EVAL_LANES + 1)
        sm = create_sessionmaker(engine)
        async with sm() as s, s.begin():
            created = await create_workspace(s, "bench")
            ws = created.workspace_id
        t = time.perf_counter()
        n_events = await generate(dsn, kw, ws, args.users, args.events_per_user, args.seed)
        gen_s = time.perf_counter() - t
        async with sm() as s, s.begin():
            ids = [(await segments.create_segment(s, ws, f"s{i}", d))["id"]
                   for i, d in enumerate(definitions(args.segments))]
        conn = await asyncpg.connect(dsn, **kw)
        t = time.perf_counter()
        await conn.fetch("select profile_id, event, day, count from segment.event_counts")
        await conn.fetch("select profile_id, traits from segment.profile_traits")
        await conn.fetch("select * from segment.profile_stats")
        read_s = time.perf_counter() - t
        await conn.close()
        eval_s, changes, again_s, again_changes = 0.0, 0, 0.0, 0
        eval_cpu = (0.0, 0.0)
        if not args.skip_full:
            t, cpu0 = time.perf_counter(), (time.process_time(), _postgres_cpu())
            changes = await evaluation.evaluate_fully(sm, ws, {uuid.UUID(i) for i in ids})
            eval_s = time.perf_counter() - t
            eval_cpu = (time.process_time() - cpu0[0], _postgres_cpu() - cpu0[1])
            # the next day's pass over the same segments (what the daily re-check of windows does): few changes
            t = time.perf_counter()
            again_changes = await evaluation.evaluate_fully(sm, ws, {uuid.UUID(i) for i in ids},
                                                            today=datetime.now(UTC).date() + timedelta(days=1))
            again_s = time.perf_counter() - t
        await engine.dispose()
        lat = (await latency(settings, ws, created.write_key, args.rate, args.seconds, args.backfill)
               if args.seconds else [])
    pairs = args.users * args.segments
    print(f"users={args.users} events≈{n_events} segments={args.segments} (generated in {gen_s:.1f} s)")
    print(f"baseline  read all facts once (plain select)   {read_s:8.2f} s")
    if not args.skip_full:
        print(f"segment   full evaluation of {args.segments} segments      {eval_s:8.2f} s  "
              f"({pairs / eval_s:,.0f} profile×segment/s, {changes:,} memberships written)")
        print(f"cpu       evaluator (Python) {eval_cpu[0]:8.2f} s, postgres (all processes) {eval_cpu[1]:8.2f} s")
        print(f"segment   the next day's pass over them          {again_s:8.2f} s  ({again_changes:,} changes)")
    if lat:
        print(f"segment   event → transition, {len(lat)} events at {args.rate:g}/s: p50 {_pct(lat, 0.5):.0f} ms  "
              f"p95 {_pct(lat, 0.95):.0f} ms  max {max(lat) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
