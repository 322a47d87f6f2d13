"""A PostgreSQL outage under real processes: docs/operations.md ("Failure behaviour") promises that no queued
message is lost or sent twice, that the APIs answer 503 with Retry-After meanwhile (ingest answers 2xx only after
its commit), and that workers ride it out. The outage is a TCP relay in front of the test PostgreSQL that is closed
(connections cut, new ones refused) and opened again; the shared PostgreSQL never stops."""

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.devinbox.inbox import Mailbox
from shared.testing import _asyncpg_dsn
from tests.e2e.stack import Relay, Stack, on_tcp_port, postgres_target, stack_env, start_sink, wait_for, wait_serving

pytestmark = pytest.mark.e2e

OUTAGE_S = 6  # longer than the delivery recorder's retries of a failed write once were (4.2 s)


@pytest.fixture
def pg_relay(settings) -> Iterator[Relay]:
    r = Relay(postgres_target(settings.database_url))
    yield r
    r.close()


def through(settings, relay: Relay) -> str:
    """This run's database URL, by way of the relay."""
    return on_tcp_port(settings.database_url, relay.port)


@pytest.fixture
def outage_stack(settings, pg_relay) -> Iterator[tuple[Stack, Mailbox, Relay]]:
    box, controller, smtp_port = start_sink(delay_s=0.05)  # 10 senders: ~200 messages a second
    s = Stack(stack_env(settings, smtp_port, f"pgout-{uuid.uuid4().hex[:6]}", TENURE_DATABASE_URL=through(settings, pg_relay),
                        TENURE_LOG_JSON="true", TENURE_LOG_LEVEL="INFO"))
    try:
        yield s, box, pg_relay
    finally:
        if pg_relay.server is None:  # (a test that failed mid-outage)
            pg_relay.up()
        s.stop()
        controller.stop()


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "(not json)", "raw": line})
    return out


def readyz(s: Stack, service: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{s.url(service)}/readyz", timeout=10)
    return r.status_code, r.json()


async def db_rows(settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Straight to the test PostgreSQL, not through the relay."""
    dsn, kw = _asyncpg_dsn(settings.database_url)
    conn = await asyncpg.connect(dsn, **kw)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_delivery_rides_out_a_postgres_outage_mid_send(outage_stack, workspace, settings) -> None:
    """300 emails; PostgreSQL goes away for 5 s while they are sent: each arrives exactly once. The worker stays
    up, its sender never dies, so there is no 'unknown outcome' here (the SMTP server stays reachable): the one
    documented at-least-once window — a worker that dies between the server's 250 and its commit — is not open,
    and no message may arrive twice."""
    s, box, relay = outage_stack
    s.env["TENURE_DELIVERY_LEASE_S"] = "10"  # an outcome left unrecorded comes back (as a re-send) within the test
    s.start_apis(["delivery"])
    tag = uuid.uuid4().hex[:6]
    recipients = [f"o{i}-{tag}@e2e.example" for i in range(300)]
    await s.queue_emails(workspace.secret_key, recipients, "Outage test")
    mine = set(recipients)

    def arrived() -> int:
        return len({m["to"][0] for m in box.messages if m["to"][0] in mine})

    s.start_workers(["delivery"])
    await wait_for(lambda: arrived() >= 40, timeout=30, what="sending to start")
    relay.down()
    at_cut = arrived()
    await asyncio.sleep(OUTAGE_S)
    worker = s.workers["delivery"][0]
    assert worker.poll() is None, "the delivery worker exited during the outage"
    assert arrived() < len(mine), "everything was sent before the cut: nothing was tested"
    code, body = readyz(s, "delivery")
    assert code == 503 and body["status"] == "unavailable", body
    relay.up()
    await wait_for(lambda: arrived() == len(mine), timeout=40, what="every message after the outage")
    await asyncio.sleep(12)  # past the lease: a message whose outcome was lost would be sent again by now
    by_recipient: dict[str, list[str]] = {}
    for m in box.messages:
        if m["to"][0] in mine:
            by_recipient.setdefault(m["to"][0], []).append(m["headers"]["Message-ID"])
    assert set(by_recipient) == mine  # none lost
    twice = {to: ids for to, ids in by_recipient.items() if len(ids) > 1}
    assert not twice, f"{len(twice)} sent twice (cut after {at_cut}): {list(twice.items())[:3]}"
    rows = await db_rows(settings, "select status, attempts, count(*) as n from delivery.messages "
                                   "where workspace_id = $1 group by 1, 2", workspace.workspace_id)
    assert {(r["status"], r["attempts"]): r["n"] for r in rows} == {("sent", 1): 300}
    assert worker.poll() is None, "the delivery worker exited after the outage"
    assert_outage_logged_once(worker.log_path)  # type: ignore[attr-defined]


def assert_outage_logged_once(path: Path) -> None:
    """The worker said once that PostgreSQL went away and once that it came back — no traceback per job, poll or
    message."""
    lines = log_lines(path)
    tracebacks = [x for x in lines if "exception" in x or "Traceback" in x.get("raw", "")]
    assert not tracebacks, f"{len(tracebacks)} tracebacks, the first: {tracebacks[0]}"
    events = [x["event"] for x in lines]
    assert events.count("worker.database_unavailable") == 1, " ".join(events)
    assert events.count("worker.database_back") == 1, " ".join(events)
    errors = [x for x in lines if x.get("level") in ("error", "critical")]
    assert not errors, errors[:3]


async def test_ingest_answers_503_while_postgres_is_away_and_stores_each_retried_event_once(
        outage_stack, workspace, settings) -> None:
    """An SDK sends batches before, during and after the outage and retries whatever was not answered 2xx (as
    analytics SDKs do). Every answer is 2xx or a 503 problem with Retry-After; every event answered 2xx is stored;
    after the retries each event is stored exactly once; /readyz says unavailable meanwhile; the API never exits."""
    s, _, relay = outage_stack
    s.start_apis(["ingest"])
    api = s.apis["ingest"]
    wk = (workspace.write_key, "")
    tag = uuid.uuid4().hex[:6]
    answers: list[tuple[int, str, str | None]] = []  # (status, content type, Retry-After) of every failed send
    acknowledged: set[str] = set()  # messageIds a 2xx answered for
    unsent: list[list[dict[str, Any]]] = []  # batches to send again

    def batch(n: int) -> list[dict[str, Any]]:
        return [{"type": "track", "userId": f"sdk-{tag}-{i % 7}", "event": "Outage Tested",
                 "messageId": f"{tag}-{n}-{i}", "properties": {"n": n, "i": i}} for i in range(20)]

    async def send(c: httpx.AsyncClient, events: list[dict[str, Any]]) -> bool:
        try:
            r = await c.post(f"{s.url('ingest')}/v1/batch", auth=wk, json={"batch": events})
        except httpx.TransportError as exc:  # never expected: the API stays up
            raise AssertionError(f"the ingest API did not answer: {exc!r}") from exc
        if 200 <= r.status_code < 300:
            assert r.json()["accepted"] + r.json()["duplicates"] == len(events), r.text
            acknowledged.update(e["messageId"] for e in events)
            return True
        answers.append((r.status_code, r.headers.get("content-type", ""), r.headers.get("retry-after")))
        if r.status_code != 503:
            raise AssertionError(f"{r.status_code} {r.text}")
        return False

    sent = 0
    async with httpx.AsyncClient(timeout=30) as c:
        async def sdk(stop: asyncio.Event) -> None:
            nonlocal sent
            while not stop.is_set():
                events = batch(sent)
                sent += 1
                if not await send(c, events):
                    unsent.append(events)
                await asyncio.sleep(0.05)

        assert await send(c, batch(-1))  # the write key is known (and cached) before the outage
        stop = asyncio.Event()
        task = asyncio.create_task(sdk(stop))
        try:
            await asyncio.sleep(1)
            relay.down()
            await asyncio.sleep(OUTAGE_S / 2)
            code, body = await asyncio.to_thread(readyz, s, "ingest")
            assert code == 503 and body["status"] == "unavailable", body
            await asyncio.sleep(OUTAGE_S / 2)
            assert api.poll() is None, "the ingest API exited during the outage"
            relay.up()
            deadline = time.monotonic() + 20
            while (await asyncio.to_thread(readyz, s, "ingest"))[0] != 200:
                assert time.monotonic() < deadline, "ingest did not become ready again"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await task
        assert answers, "no batch was refused during the outage: nothing was tested"
        assert {a[0] for a in answers} == {503}
        assert all(a[1].startswith("application/problem+json") and a[2] for a in answers), answers[:5]
        retries, unsent[:] = list(unsent), []
        for events in retries:  # the SDK's retry, after the outage
            assert await send(c, events)
        again = await c.post(f"{s.url('ingest')}/v1/batch", auth=wk, json={"batch": batch(0)})
        assert again.json()["duplicates"] == 20  # (a resend of one already stored is a duplicate)
    rows = await db_rows(settings, "select message_id, count(*) as n from ingest.events where workspace_id = $1 "
                                   "and message_id like $2 group by 1", workspace.workspace_id, f"{tag}-%")
    stored = {r["message_id"]: r["n"] for r in rows}
    expected = {f"{tag}-{n}-{i}" for n in range(-1, sent) for i in range(20)}
    assert acknowledged == expected
    assert set(stored) == expected and set(stored.values()) == {1}
    assert api.poll() is None, "the ingest API exited"


@pytest.mark.parametrize("cut", ["events_committed", "sends_decided"])
async def test_a_journey_whose_event_came_before_the_outage_sends_once_after_it(outage_stack, workspace, settings,
                                                                              cut: str) -> None:
    """Every worker running; 30 users sign up (an event-triggered email each) and PostgreSQL goes away as soon as
    ingest has committed their events (the feeds and journeys still to run), or as soon as the journeys have
    decided the first sends (handing them to delivery under way). After it each user gets the email exactly once,
    within seconds; the management APIs answered 503 problems meanwhile; no process exited, and each worker logged
    the outage once."""
    s, box, relay = outage_stack
    s.env["TENURE_DELIVERY_LEASE_S"] = "10"
    s.start_apis()
    s.start_workers()
    for service, ports in s.worker_metrics.items():  # started (a worker does not start without PostgreSQL)
        wait_serving(f"http://127.0.0.1:{ports[0]}", s.workers[service][0])
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    wk = (workspace.write_key, "")
    tag = uuid.uuid4().hex[:6]
    users = [f"j{i}-{tag}" for i in range(30)]
    mine = {f"{u}@e2e.example" for u in users}
    async with httpx.AsyncClient(timeout=30) as c:
        tpl = await c.post(f"{s.url('campaign')}/v1/templates", headers=mgmt, json={
            "name": "hello", "subject": "Hello {{ profile.first_name }}", "text": "Hi"})
        assert tpl.status_code == 201, tpl.text
        camp = await c.post(f"{s.url('campaign')}/v1/campaigns", headers=mgmt, json={
            "name": "hello", "trigger": {"type": "event", "event": "Signed Up"}, "template_id": tpl.json()["id"]})
        assert camp.status_code == 201, camp.text
        r = await c.post(f"{s.url('ingest')}/v1/batch", auth=wk, json={"batch": [
            *({"type": "identify", "userId": u, "traits": {"email": f"{u}@e2e.example", "first_name": u},
               "messageId": f"id-{u}"} for u in users),
            *({"type": "track", "userId": u, "event": "Signed Up", "messageId": f"su-{u}"} for u in users)]})
        assert r.status_code == 200 and r.json()["accepted"] == 60, r.text
        if cut == "sends_decided":
            dsn, kw = _asyncpg_dsn(settings.database_url)
            conn = await asyncpg.connect(dsn, **kw)
            try:
                deadline = time.monotonic() + 20
                while not await conn.fetchval("select count(*) from campaign.sends where workspace_id = $1",
                                              workspace.workspace_id):
                    assert time.monotonic() < deadline, "no send was decided"
                    await asyncio.sleep(0.005)
            finally:
                await conn.close()
        relay.down()
        await asyncio.sleep(1)
        for service, path in (("campaign", "/v1/campaigns"), ("segment", "/v1/segments"),
                              ("delivery", "/v1/messages"), ("ingest", f"/v1/profiles/{users[0]}")):
            got = await c.get(f"{s.url(service)}{path}", headers=mgmt)
            assert got.status_code == 503 and got.headers["retry-after"], (service, got.status_code, got.text)
            assert got.headers["content-type"].startswith("application/problem+json"), got.headers
        await asyncio.sleep(OUTAGE_S - 1)
        sent_during = len([m for m in box.messages if m["to"][0] in mine])
        exited = [p.log_path for p in [*s.apis.values(), *(w for ws in s.workers.values() for w in ws)]  # type: ignore[attr-defined]
                  if p.poll() is not None]
        assert not exited, f"exited during the outage: {exited}"
        for ports in s.worker_metrics.values():  # the liveness probe restarts no worker that waits
            assert (await c.get(f"http://127.0.0.1:{ports[0]}/healthz")).status_code == 200
        relay.up()

        def arrived() -> list[str]:
            return [m["to"][0] for m in box.messages if m["to"][0] in mine]

        await wait_for(lambda: set(arrived()) == mine, timeout=40, what=f"every email (had {sent_during} at the cut)")
        await asyncio.sleep(12)  # past delivery's lease: a second copy would be here by now
        assert sorted(arrived()) == sorted(mine), "an email went out twice"
        sends = (await c.get(f"{s.url('campaign')}/v1/campaigns/{camp.json()['id']}/sends", headers=mgmt,
                             params={"limit": 100})).json()["sends"]
        assert len(sends) == 30 and {x["status"] for x in sends} == {"dispatched"}, sends
    for proc in [*s.apis.values(), *(w for ws in s.workers.values() for w in ws)]:
        assert proc.poll() is None, log_lines(proc.log_path)[-5:]  # type: ignore[attr-defined]
    for procs in s.workers.values():
        for proc in procs:
            assert_outage_logged_once(proc.log_path)  # type: ignore[attr-defined]
