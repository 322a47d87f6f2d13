"""What a Kubernetes operator relies on, with real processes: SIGTERM drains an API and a worker without
losing or doubling anything, two replicas of every worker split the work without duplicates, and each
process's /metrics shows request, job, queue, feed-lag and message figures."""

import asyncio
import contextlib
import signal
import time
import uuid
from collections import Counter

import asyncpg
import httpx
import orjson
import pytest

from shared.testing import _asyncpg_dsn
from tests.e2e.stack import Stack, log_tail, sample, scrape, stack_env, start_sink, wait_for, wait_ready

pytestmark = pytest.mark.e2e


async def _db(settings) -> asyncpg.Connection:
    dsn, kw = _asyncpg_dsn(settings.database_url)
    return await asyncpg.connect(dsn, **kw)


async def test_sigterm_drains_the_ingest_api_under_load(settings, workspace) -> None:
    """Batches keep arriving from 6 clients when SIGTERM lands: requests in flight finish with 200 (and
    their events are committed), new connections are refused, the process exits 0 within the grace
    period, and an SDK-style retry of everything unacknowledged after a restart stores each event once."""
    s = Stack(stack_env(settings, 1, "sigterm-api", TENURE_LOG_LEVEL="INFO"))
    s.start_apis(["ingest"])
    url = s.url("ingest") + "/v1/batch"
    wk = (workspace.write_key, "")
    acknowledged: list[str] = []
    unacknowledged: list[list[dict]] = []
    completed_after_term = 0
    term_at: float | None = None
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal completed_after_term
        # a fresh connection per request, as after a load balancer: only requests in flight are at stake
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            i = 0
            while not stop.is_set():
                batch = [{"type": "track", "userId": f"u{n}-{i}-{j}", "event": "Drained",
                          "messageId": f"drain-{n}-{i}-{j}", "properties": {"note": "body-marker"}}
                         for j in range(50)]
                i += 1
                try:
                    r = await c.post(url, auth=wk, json={"batch": batch})
                except httpx.TransportError:
                    unacknowledged.append(batch)
                    if term_at is not None:
                        await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text  # never a 5xx while draining
                acknowledged.extend(m["messageId"] for m in batch)
                if term_at is not None and time.monotonic() > term_at:
                    completed_after_term += 1

    clients = [asyncio.create_task(client(n)) for n in range(6)]
    try:
        await wait_for(lambda: len(acknowledged) >= 1500, 30, "load to build up")
        term_at = time.monotonic()
        s.apis["ingest"].send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(s.apis["ingest"].wait, 25)
        exited_in = time.monotonic() - term_at
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully, hence -15
    assert rc in (0, -signal.SIGTERM)
    assert "service.stopped" in log_tail(s.apis["ingest"]), log_tail(s.apis["ingest"])  # lifespan ran to its end
    assert exited_in < 25
    assert completed_after_term >= 1, "no request was in flight at SIGTERM: the test proved nothing"
    print(f"SIGTERM under load: {len(acknowledged)} events acknowledged, {completed_after_term} requests completed "
          f"after the signal, {len(unacknowledged)} batches refused, exited in {exited_in:.1f} s")

    conn = await _db(settings)
    try:
        stored = set(await conn.fetchval(
            "select array_agg(message_id) from ingest.events where workspace_id = $1", workspace.workspace_id))
        assert set(acknowledged) <= stored  # nothing acknowledged was lost
        # restart and retry what got no answer (as an SDK does): messageId dedup makes it exactly once
        s.apis["ingest"] = s.spawn("serve", "ingest")
        wait_ready(s.url("ingest"), s.apis["ingest"])
        async with httpx.AsyncClient(timeout=30) as c:
            for batch in unacknowledged:
                assert (await c.post(url, auth=wk, json={"batch": batch})).status_code == 200
        expected = set(acknowledged) | {m["messageId"] for b in unacknowledged for m in b}
        rows = await conn.fetch("select message_id, count(*) n from ingest.events where workspace_id = $1 "
                                "group by message_id", workspace.workspace_id)
        assert {r["message_id"] for r in rows} == expected
        assert max(r["n"] for r in rows) == 1
    finally:
        await conn.close()
        s.stop()
    # the log: one JSON object per line, requests carry their request and workspace ids, and neither
    # the write key nor anything from the events' bodies is written
    text = log_tail(s.apis["ingest"], 10**9)
    assert workspace.write_key not in text and "body-marker" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [x for x in lines if x.get("event") == "http.request" and x.get("path") == "/v1/batch"]
    assert requests and all(x["request_id"] and x["workspace_id"] == str(workspace.workspace_id) for x in requests)


async def test_sigterm_lets_a_delivery_worker_finish_its_batch(settings, workspace) -> None:
    """SIGTERM while the worker is sending to a slow SMTP server: it finishes the batch it holds and exits 0
    in time, nothing is left half-sent, and a new worker sends the rest: every message exactly once."""
    box, controller, smtp_port = start_sink(delay_s=0.05)
    s = Stack(stack_env(settings, smtp_port, "sigterm-worker"))
    total = 1000
    try:
        s.start_apis(["delivery"])
        run = uuid.uuid4().hex[:6]

        def mine() -> Counter:  # (the worker also sends what earlier tests left queued in this database)
            return Counter(m["to"][0] for m in box.messages if m["to"][0].startswith(f"term-{run}-"))

        await s.queue_emails(workspace.secret_key, [f"term-{run}-{i}@e2e.example" for i in range(total)], "Drain")
        s.start_workers(["delivery"])
        await wait_for(lambda: len(mine()) >= 60, 60, "sending to start")
        worker = s.workers["delivery"][0]
        term_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(worker.wait, 30)
        exited_in = time.monotonic() - term_at
        assert rc == 0, log_tail(worker)
        assert exited_in < 25
        sent_before_restart = len(mine())
        assert sent_before_restart < total, "the worker sent everything before SIGTERM: the test proved nothing"
        print(f"SIGTERM mid-send: {sent_before_restart}/{total} sent before the worker exited in {exited_in:.1f} s")

        conn = await _db(settings)
        try:
            half_sent = await conn.fetchval(
                "select count(*) from delivery.messages where workspace_id = $1 and status = 'sending'",
                workspace.workspace_id)
        finally:
            await conn.close()
        assert half_sent == 0  # the batch it held was finished and recorded, not abandoned under a lease

        s.start_workers(["delivery"])
        await wait_for(lambda: len(mine()) >= total, 90, "the rest to be sent")
        await asyncio.sleep(2)
        recipients = mine()
        assert len(recipients) == total and max(recipients.values()) == 1
    finally:
        s.stop()
        controller.stop()


async def test_two_replicas_of_every_worker_split_the_work_without_duplicates(settings, workspace) -> None:
    """Two processes of each worker on one database and one Redis: segment's partitions, campaign's timers
    and delivery's outbox are shared out, and every user gets exactly one transition and one email."""
    box, controller, smtp_port = start_sink(delay_s=0.03)
    s = Stack(stack_env(settings, smtp_port, "replicas", TENURE_CONSUMER_BATCH_SIZE="50"))
    users = 200
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    try:
        s.start_apis()
        s.start_workers(replicas=2)
        async with httpx.AsyncClient(timeout=30) as c:
            seg = (await c.post(s.url("segment") + "/v1/segments", headers=mgmt, json={
                "name": "joined", "definition": {"type": "performed", "event": "Joined"}})).json()
            tpl = (await c.post(s.url("campaign") + "/v1/templates", headers=mgmt, json={
                "name": "joined", "subject": "Welcome {{ profile.first_name }}", "text": "Hi"})).json()
            camp = await c.post(s.url("campaign") + "/v1/campaigns", headers=mgmt, json={
                "name": "joined", "trigger": {"type": "segment_entered", "segment_id": seg["id"]},
                "steps": [{"id": "wait", "type": "delay", "seconds": 2, "next": "mail"},
                          {"id": "mail", "type": "send", "template_id": tpl["id"]}]})
            assert camp.status_code == 201, camp.text
            run = uuid.uuid4().hex[:6]
            for start in range(0, users, 100):
                batch = []
                for i in range(start, start + 100):
                    uid = f"rep-{run}-{i}"
                    batch += [{"type": "identify", "userId": uid, "traits": {"email": f"{uid}@e2e.example",
                                                                           "first_name": f"U{i}"}},
                              {"type": "track", "userId": uid, "event": "Joined"}]
                assert (await c.post(s.url("ingest") + "/v1/batch", auth=wk, json={"batch": batch})).status_code == 200
        def mine() -> Counter:  # (the workers also send what earlier tests left queued in this database)
            return Counter(m["to"][0] for m in box.messages if m["to"][0].startswith(f"rep-{run}-"))

        await wait_for(lambda: len(mine()) >= users, 180, "every user's email")
        await asyncio.sleep(3)  # anything doubled would arrive by now
        recipients = mine()
        assert len(recipients) == users and max(recipients.values()) == 1

        conn = await _db(settings)
        try:
            entered = await conn.fetch(
                "select profile_id, count(*) n from segment.transitions where segment_id = $1 and kind = 'entered' "
                "group by profile_id", uuid.UUID(seg["id"]))
            journeys = await conn.fetchval("select count(*) from campaign.journeys where campaign_id = $1",
                                           uuid.UUID(camp.json()["id"]))
        finally:
            await conn.close()
        assert len(entered) == users and max(r["n"] for r in entered) == 1
        assert journeys == users

        # who did what: each replica's own /metrics counts the items its jobs processed
        work = {svc: [sample(scrape(p), "tenure_job_items_total", service=svc) for p in ports]
                for svc, ports in s.worker_metrics.items()}
        print("items processed per replica:", work)
        sent = [sample(scrape(p), "tenure_messages_total", channel="email", status="sent")
                for p in s.worker_metrics["delivery"]]
        assert sum(sent) >= users, sent
        for svc in ("segment", "campaign", "delivery"):
            assert sum(work[svc]) > 0
        # which replica picks up a wake-up or a poll is arq's choice, so one service may, by chance, have had
        # one replica do everything; but the work is shared: in some service both replicas did part of it
        assert any(min(work[svc]) > 0 for svc in ("segment", "campaign", "delivery")), work
    finally:
        s.stop()
        controller.stop()


async def test_metrics_show_requests_jobs_queue_depth_messages_and_the_lag_of_each_feed(settings, workspace) -> None:
    box, controller, smtp_port = start_sink()
    s = Stack(stack_env(settings, smtp_port, "metrics"))
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    try:
        s.start_apis()
        s.start_workers()
        async with httpx.AsyncClient(timeout=30) as c:
            seg = (await c.post(s.url("segment") + "/v1/segments", headers=mgmt, json={
                "name": "metered", "definition": {"type": "performed", "event": "Metered"}})).json()
            tpl = (await c.post(s.url("campaign") + "/v1/templates", headers=mgmt, json={
                "name": "m", "subject": "Metered", "text": "Hi"})).json()
            await c.post(s.url("campaign") + "/v1/campaigns", headers=mgmt, json={
                "name": "m", "trigger": {"type": "segment_entered", "segment_id": seg["id"]},
                "template_id": tpl["id"]})
            await c.post(s.url("ingest") + "/v1/identify", auth=(workspace.write_key, ""), json={
                "userId": "metered-1", "traits": {"email": "metered@e2e.example"}})
            await c.post(s.url("ingest") + "/v1/track", auth=(workspace.write_key, ""), json={
                "userId": "metered-1", "event": "Metered"})
            await c.get(s.url("ingest") + f"/v1/profiles/{uuid.uuid4()}", headers=mgmt)  # a 404, by template
        await wait_for(lambda: len(box.messages) >= 1, 60, "the email")

        ingest = scrape(s.url("ingest") + "/metrics")
        assert sample(ingest, "tenure_http_requests_total", route="/v1/track", status="200") >= 1
        assert sample(ingest, "tenure_http_requests_total", route="/v1/profiles/{ref}", status="404") >= 1
        assert sample(ingest, "tenure_http_request_duration_seconds_count", route="/v1/identify") >= 1
        assert ("tenure_queue_depth", frozenset({("service", "ingest"), ("queue", s.env["TENURE_QUEUE_PREFIX"]
                                                                          + ":ingest")})) in ingest
        delivery_worker = s.worker_metrics["delivery"][0]
        await wait_for(lambda: sample(scrape(delivery_worker), "tenure_messages_total", channel="email",
                                      status="sent") >= 1, 10, "the sent message in the worker's metrics")
        assert sample(scrape(delivery_worker), "tenure_job_duration_seconds_count", function="send_messages",
                      outcome="ok") >= 1

        # every feed's consumer reports how far behind it is; caught up, that is 0 (waited for: the database holds
        # earlier tests' events and transitions, which this stack's consumers read first)
        feeds = {("ingest.events", "segment"): s.worker_metrics["segment"][0],
                 ("ingest.events", "campaign"): s.worker_metrics["campaign"][0],
                 ("segment.transitions", "campaign"): s.worker_metrics["campaign"][0]}
        for (feed, consumer), port in feeds.items():
            key = ("tenure_feed_lag_events", frozenset({("feed", feed), ("consumer", consumer)}))
            await wait_for(lambda port=port, key=key: scrape(port).get(key) == 0, 60, f"{consumer}'s lag on {feed}")
            got = scrape(port)
            assert got.get(key) == 0, (feed, consumer, {k: v for k, v in got.items() if "feed" in k[0]})
            assert sample(got, "tenure_feed_last_read_timestamp_seconds", feed=feed, consumer=consumer) > 0
    finally:
        with contextlib.suppress(Exception):
            s.stop()
        controller.stop()


def test_an_api_served_by_several_processes_counts_every_request_in_every_scrape(settings) -> None:
    """`tenure serve --workers 2`: a scrape reaches one of the processes, and each counted only the requests it
    served, a different share per scrape. Their figures are now shared (prometheus-client's multiprocess mode)."""
    import subprocess

    from shared.embedded import free_port
    from tests.e2e.stack import TENURE, process_env, wait_serving

    port = free_port()
    proc = subprocess.Popen([TENURE, "serve", "segment", "--workers", "2", "--port", str(port)],
                            env=process_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(base, proc)
        for _ in range(40):  # a connection each: the processes take turns accepting them
            assert httpx.get(f"{base}/v1/segments", timeout=10).status_code == 401
        for _ in range(4):
            samples = scrape(f"{base}/metrics")
            assert sample(samples, "tenure_http_requests_total", route="/v1/segments", status="401") == 40
            assert ("tenure_queue_depth", frozenset({("service", "segment"), ("queue", settings.queue_name("segment"))})) \
                in samples
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]
