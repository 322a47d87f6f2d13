"""Delivery throughput: emails per second from the outbox into a local SMTP sink, and queue-to-sent latency.

    .venv/bin/python bench/delivery.py [--messages 5000] [--batch 1] [--concurrency 16] [--workers 1] [--drain]

Starts ``tenure serve delivery`` and ``--workers`` × ``tenure worker delivery`` on a scratch database,
with an SMTP sink (aiosmtpd) in this process; queues ``--messages`` transactional emails through
``POST /v1/messages`` (``--concurrency`` clients) and measures, per message, the time from the API's
202 until the sink received it. Prints emails/s end to end, p50/p95/max latency, and as the baseline
the sink's raw rate over one aiosmtplib connection in the same run. With ``--drain`` the workers start
only once every message is queued: the figure is then the outbox's send rate alone, from the first
email reaching the sink to the last (the API's work is not in it).
Uses TENURE_DATABASE_URL / TENURE_REDIS_URL (a scratch database beside it, dropped after) or the
embedded servers.
"""

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
from stack import bench_services, print_cpu, smtp_baseline


async def run(args: argparse.Namespace) -> None:
    queued: dict[str, float] = {}
    workers = [("worker", "delivery")] * args.workers
    commands = [("serve", "delivery")] + ([] if args.drain else workers)
    async with bench_services(commands) as bench, httpx.AsyncClient(timeout=60) as c:
        base, box = bench.urls["delivery"], bench.box
        mgmt = {"Authorization": f"Bearer {bench.workspace.secret_key}"}
        run_id = uuid.uuid4().hex[:6]
        todo = [f"m{i}-{run_id}@bench.example" for i in range(args.messages)]

        def message(to: str) -> dict[str, Any]:
            return {"idempotency_key": to, "to": to, "subject": "Your receipt", "text": "Thanks!",
                    "html": "<p>Thanks!</p>", "message_type": "transactional"}

        async def client() -> None:
            while todo:
                chunk = [todo.pop() for _ in range(min(args.batch, len(todo)))]
                if args.batch == 1:
                    r = await c.post(base + "/v1/messages", headers=mgmt, json=message(chunk[0]))
                else:
                    r = await c.post(base + "/v1/messages/batch", headers=mgmt,
                                     json={"messages": [message(to) for to in chunk]})
                r.raise_for_status()
                for to in chunk:
                    queued[to] = time.perf_counter()

        cpu0 = bench.cpu()
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        enqueued = time.perf_counter() - start
        deadline = time.perf_counter() + args.timeout
        if args.drain:
            bench.start(workers)
            while not box.arrived and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            cpu0 = bench.cpu()  # (from the first email on: the workers' start-up is not counted)
        while len(box.arrived) < args.messages and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        cpu = bench.cpu_since({**{name: 0.0 for name, _ in bench.processes}, **cpu0})
        raw = await smtp_baseline(bench.smtp_port, min(2000, args.messages))
    lat = sorted(box.arrived[to] - t for to, t in queued.items() if to in box.arrived)
    print(f"messages={args.messages} batch={args.batch} concurrency={args.concurrency} workers={args.workers}"
          f"{' drain' if args.drain else ''}")
    print(f"baseline  raw SMTP into the sink, one connection     {raw:>10,.0f} emails/s")
    print(f"delivery  API accepted all messages in                {enqueued:>10.2f} s")
    if lat:
        last = max(box.arrived.values()) - start
        print(f"delivery  {len(lat)}/{args.messages} sent: {len(lat) / last:,.0f} emails/s end to end; queue → sent "
              f"p50 {lat[len(lat) // 2] * 1000:,.0f} ms  p95 {lat[int(len(lat) * 0.95)] * 1000:,.0f} ms  "
              f"max {lat[-1] * 1000:,.0f} ms")
        if args.drain:
            times = sorted(box.arrived[to] for to in queued if to in box.arrived)
            print(f"delivery  outbox → sink, first email to last: {(len(times) - 1) / (times[-1] - times[0]):,.0f} "
                  "emails/s")
        print_cpu(cpu, len(lat))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1, help="messages per request (>1: POST /v1/messages/batch)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--drain", action="store_true", help="start the workers once every message is queued")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
