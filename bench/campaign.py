"""Event-to-inbox latency: many users entering a journey at once, until their email reaches an SMTP sink.

    .venv/bin/python bench/campaign.py [--users 10000] [--batch 100] [--concurrency 16]

Starts the four APIs and the ingest, campaign and delivery workers as processes (``tenure serve`` /
``tenure worker``) on a scratch database, with a local SMTP sink (aiosmtpd) in this process. Creates
``--users`` profiles with an email, one campaign "on ``Bench Entered``, send a template", then sends
that event for every user as fast as ``/v1/batch`` takes it and measures, per user, the time from
ingest's 200 for the batch holding the event until the sink received the user's email. Prints p50 /
p95 / max, the time until the last email, and as the baseline the sink's raw SMTP rate (the same
number of emails sent straight to it over one aiosmtplib connection).
Uses TENURE_DATABASE_URL / TENURE_REDIS_URL (a scratch database beside it, dropped after) or the
embedded servers.
"""

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
from stack import SERVICES, bench_services, print_cpu, smtp_baseline

from shared.settings import Settings


async def run(args: argparse.Namespace) -> None:
    commands = [("serve", s) for s in SERVICES] + [("worker", s) for s in ("ingest", "campaign", "delivery")]
    async with bench_services(commands) as bench, httpx.AsyncClient(timeout=120) as c:
        ws, url, box = bench.workspace, bench.urls, bench.box
        mgmt = {"Authorization": f"Bearer {ws.secret_key}"}
        run_id = uuid.uuid4().hex[:6]
        users = [f"u{i}-{run_id}" for i in range(args.users)]
        emails = {u: f"{u}@bench.example" for u in users}
        await _batches(c, url["ingest"], ws.write_key, [
            {"type": "identify", "userId": u, "traits": {"email": emails[u], "first_name": u}} for u in users],
            args, {})
        tpl = (await c.post(url["campaign"] + "/v1/templates", headers=mgmt, json={
            "name": "bench", "subject": "Hi {{ profile.first_name }}", "text": "hello"})).json()
        camp = await c.post(url["campaign"] + "/v1/campaigns", headers=mgmt, json={
            "name": "bench", "trigger": {"type": "event", "event": "Bench Entered"},
            "message_type": "transactional", "template_id": tpl["id"]})
        assert camp.status_code == 201, camp.text
        await asyncio.sleep(2)  # the workers have read the identify events
        sent: dict[str, float] = {}
        cpu0 = bench.cpu()
        start = time.perf_counter()
        watcher = asyncio.create_task(_progress(bench.settings, start, len(users)))
        await _batches(c, url["ingest"], ws.write_key, [
            {"type": "track", "userId": u, "event": "Bench Entered"} for u in users], args, sent)
        accepted = time.perf_counter() - start
        deadline = time.perf_counter() + args.timeout
        while len(box.arrived) < len(users) and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        watcher.cancel()
        cpu = bench.cpu_since(cpu0)
        lat = sorted(box.arrived[emails[u]] - t for u, t in sent.items() if emails[u] in box.arrived)
        last = max(box.arrived.values()) - start if box.arrived else float("nan")
        raw_rate = await smtp_baseline(bench.smtp_port, min(2000, args.users))
    print(f"users={args.users} batch={args.batch} concurrency={args.concurrency}")
    print(f"baseline  raw SMTP into the sink, one connection       {raw_rate:>10,.0f} emails/s")
    print(f"ingest    accepted all {args.users} events in             {accepted:>10.2f} s")
    if lat:
        p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        print(f"campaign  event → inbox, {len(lat)}/{args.users} delivered: p50 {p50 * 1000:,.0f} ms  "
              f"p95 {p95 * 1000:,.0f} ms  max {lat[-1] * 1000:,.0f} ms; last email {last:.1f} s after the first "
              f"event ({len(lat) / last:,.0f} emails/s end to end)")
        print_cpu(cpu, len(lat))
    else:
        print("campaign  no email arrived")


async def _progress(settings: Settings, start: float, total: int) -> None:
    """Where the users are, every second: journeys entered, sends queued/dispatched, emails sent."""
    import asyncpg
    from scratch import asyncpg_dsn

    dsn, kw = asyncpg_dsn(settings.database_url or "")
    conn = await asyncpg.connect(dsn, **kw)
    try:
        while True:
            row = await conn.fetchrow(
                "select (select count(*) from campaign.journeys) as entered, "
                "(select count(*) from campaign.sends) as decided, "
                "(select count(*) from campaign.sends where status = 'dispatched') as dispatched, "
                "(select count(*) from delivery.messages where status = 'sent') as sent")
            print(f"  t={time.perf_counter() - start:5.1f}s  entered {row['entered']:>6}  sends {row['decided']:>6}  "
                  f"handed to delivery {row['dispatched']:>6}  emails sent {row['sent']:>6} / {total}", flush=True)
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def _batches(c: httpx.AsyncClient, ingest: str, write_key: str, messages: list[dict[str, Any]],
                   args: argparse.Namespace, sent: dict[str, float]) -> None:
    chunks = [messages[i:i + args.batch] for i in range(0, len(messages), args.batch)]

    async def worker() -> None:
        while chunks:
            chunk = chunks.pop(0)
            r = await c.post(ingest + "/v1/batch", auth=(write_key, ""), json={"batch": chunk})
            r.raise_for_status()
            now = time.perf_counter()
            for m in chunk:
                sent[m["userId"]] = now

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300, help="give up waiting for emails after this many s")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
