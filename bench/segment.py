"""Full evaluation of representative segments over a generated population, next to the raw cost of
reading that population from PostgreSQL.

    .venv/bin/python bench/segment.py [--users 200000] [--events-per-user 20] [--segments 20]

Generates (deterministic seed) users with traits, per-day event counts and purchase statistics — the
aggregates the segment service folds ~events-per-user raw events into — with binary COPY, then times
``evaluate_fully`` of all the segments (one pass) and prints profiles×segments per second, next to the time
of a plain ``select`` of the same facts (the floor any evaluation pays). Uses TENURE_DATABASE_URL
(a scratch database is created beside it and dropped) or the embedded server.
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
import orjson
from scratch import asyncpg_dsn, scratch_database  # bench/ is the script directory, so on sys.path

from services.segment import evaluation, segments
from shared.core import create_workspace
from shared.db import create_engine, create_sessionmaker

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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    async with scratch_database(need_redis=False) as settings:
        url = settings.database_url or ""
        dsn, kw = asyncpg_dsn(url)
        engine = create_engine(settings, pool_size=2)
        sm = create_sessionmaker(engine)
        async with sm() as s, s.begin():
            ws = (await create_workspace(s, "bench")).workspace_id
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
        t = time.perf_counter()
        async with sm() as s:
            changes = await evaluation.evaluate_fully(s, ws, {uuid.UUID(i) for i in ids})
        eval_s = time.perf_counter() - t
        await engine.dispose()
    pairs = args.users * args.segments
    print(f"users={args.users} events≈{n_events} segments={args.segments} (generated in {gen_s:.1f} s)")
    print(f"baseline  read all facts once (plain select)   {read_s:8.2f} s")
    print(f"segment   full evaluation of {args.segments} segments      {eval_s:8.2f} s  "
          f"({pairs / eval_s:,.0f} profile×segment/s, {changes:,} memberships written)")


if __name__ == "__main__":
    asyncio.run(main())
