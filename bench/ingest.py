"""Ingest throughput over HTTP next to raw PostgreSQL COPY of the same rows, measured in the same run.

    .venv/bin/python bench/ingest.py [--events 100000] [--batch 100] [--concurrency 32] [--workers N]

Prints, on one scratch database:
  1. baseline: binary COPY of the same event rows into a table shaped like the event log (rows/s);
  2. ingest's write path in-process (`tracking.record`, one transaction per batch) (events/s);
  3. the HTTP API end to end: `tenure serve ingest` in its own process(es), `/v1/batch` requests of
     `--batch` events from `--concurrency` concurrent clients, each answered only after commit
     (events/s, ratio to COPY, p50/p99 request latency).
Uses TENURE_DATABASE_URL / TENURE_REDIS_URL when set (a scratch database is created beside it and
dropped), otherwise the embedded servers.
"""

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
from scratch import asyncpg_dsn, scratch_database  # bench/ is the script directory, so on sys.path
from stack import _postgres_cpu, cpu_seconds

from services.ingest import tracking
from shared.core import create_workspace
from shared.db import create_engine, create_sessionmaker
from shared.embedded import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent



def _message(i: int, run: str) -> dict:
    return {"type": "track", "userId": f"user-{i % 1000}", "event": "Song Played",
            "messageId": f"{run}-{i}", "properties": {"n": i, "genre": "jazz"},
            "context": {"library": {"name": "bench"}}, "timestamp": datetime.now(UTC).isoformat()}


async def baseline_copy(url: str, n: int) -> float:
    dsn, kw = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn, **kw)
    try:
        # a logged table with the event log's columns, defaults and indexes: the honest ceiling
        await conn.execute("create table public.copy_events (like ingest.events including all)")
        ws, now = uuid.uuid4(), datetime.now(UTC)
        cols = ["workspace_id", "message_id", "type", "event", "profile_id", "user_id", "properties", "context",
                "timestamp", "received_at"]
        rows = [(ws, f"m-{i}", "track", "Song Played", uuid.uuid4(), f"user-{i % 1000}",
                 orjson.dumps({"n": i, "genre": "jazz"}).decode(), '{"library": {"name": "bench"}}', now, now)
                for i in range(n)]
        t = time.perf_counter()
        await conn.copy_records_to_table("copy_events", records=rows, columns=cols, schema_name="public")
        return n / (time.perf_counter() - t)
    finally:
        await conn.execute("drop table if exists public.copy_events")
        await conn.close()


async def in_process(settings: Settings, ws: uuid.UUID, n: int, batch: int) -> float:
    engine = create_engine(settings, pool_size=2)
    sm = create_sessionmaker(engine)
    run = uuid.uuid4().hex[:8]
    from services.ingest.schemas import TrackMessage

    msgs = [TrackMessage.model_validate(_message(i, run)) for i in range(n)]
    t = time.perf_counter()
    for start in range(0, n, batch):
        now = datetime.now(UTC)
        envs = [tracking.normalize(m, now) for m in msgs[start:start + batch]]
        async with sm() as s, s.begin():
            await tracking.record(s, ws, envs, now)
    rate = n / (time.perf_counter() - t)
    await engine.dispose()
    return rate


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn's worker processes)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if int(d.name) == pid or ppid == pid:
                    total += cpu_seconds(int(d.name))
    return total


async def over_http(settings: Settings, write_key: str, n: int, batch: int, concurrency: int, workers: int
                    ) -> tuple[float, list[float], dict[str, float]]:
    port = free_port()
    env = {**os.environ, "TENURE_DATABASE_URL": settings.database_url or "",
           "TENURE_REDIS_URL": settings.redis_url or "", "TENURE_INGEST_PORT": str(port),
           "TENURE_LOG_LEVEL": "WARNING", "TENURE_QUEUE_PREFIX": "bench"}
    command = [str(Path(sys.executable).parent / "tenure"), "serve", "ingest", "--workers", str(workers)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, auth=(write_key, ""), timeout=60) as c:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            run = uuid.uuid4().hex[:8]
            bodies = [orjson.dumps({"batch": [_message(i, run) for i in range(s, min(n, s + batch))]})
                      for s in range(0, n, batch)]
            auth = base64.b64encode(f"{write_key}:".encode()).decode()
            queue = [f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
                     for b in bodies]
            statuses: list[int] = []
            latencies: list[float] = []

            async def client() -> None:
                # requests written ready-made on a kept-alive connection: an SDK runs on another machine, and
                # httpx here cost as much CPU per request as the server answering it, on the same two cores
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    while queue:
                        request = queue.pop()
                        started = time.perf_counter()
                        writer.write(request)
                        statuses.append(int((await reader.readline()).split()[1]))
                        length = 0
                        while (line := await reader.readline()) not in (b"\r\n", b""):
                            if line.lower().startswith(b"content-length:"):
                                length = int(line.split(b":", 1)[1])
                        await reader.readexactly(length)
                        latencies.append(time.perf_counter() - started)
                finally:
                    writer.close()

            before = (_tree_cpu(proc.pid), _postgres_cpu(), time.process_time())
            t = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            rate = n / (time.perf_counter() - t)
            cpu = {"ingest server": _tree_cpu(proc.pid) - before[0],
                   "postgres (all processes)": _postgres_cpu() - before[1],
                   "benchmark client": time.process_time() - before[2]}
            errors = sum(status != 200 for status in statuses)
            if errors:
                print(f"  ({errors} requests failed)")
            return rate, latencies, cpu
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="uvicorn worker processes for ingest (default: one per core, as an operator would run it)")
    ap.add_argument("--skip-in-process", action="store_true", help="measure COPY and HTTP only")
    args = ap.parse_args()

    async with scratch_database(need_redis=True) as settings:
        url = settings.database_url or ""
        engine = create_engine(settings, pool_size=1)
        async with create_sessionmaker(engine)() as s, s.begin():
            ws = await create_workspace(s, "bench")
        await engine.dispose()

        copy_rate = await baseline_copy(url, args.events)
        record_rate = 0.0 if args.skip_in_process else await in_process(settings, ws.workspace_id, args.events,
                                                                        args.batch)
        http_rate, latencies, cpu = await over_http(settings, ws.write_key, args.events, args.batch, args.concurrency,
                                               args.workers)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(f"events={args.events} batch={args.batch} concurrency={args.concurrency} workers={args.workers}")
    print(f"baseline  COPY (binary, one connection)        {copy_rate:>10,.0f} rows/s")
    if record_rate:
        print(f"ingest    tracking.record (in-process)          {record_rate:>10,.0f} events/s "
              f"({record_rate / copy_rate:.0%} of COPY)")
    print(f"ingest    POST /v1/batch (HTTP)                 {http_rate:>10,.0f} events/s "
          f"({http_rate / copy_rate:.0%} of COPY)  p50 {p50:.1f} ms  p99 {p99:.1f} ms per request")
    for name, used in cpu.items():
        print(f"cpu       {name:<30} {used:8.2f} s = {used / args.events * 1e6:6.1f} µs per event")


if __name__ == "__main__":
    asyncio.run(main())
