"""A PostgreSQL outage under real processes: docs/operations.md ("Failure behaviour") promises that no queued
message is lost or sent twice, that the APIs answer 503 with Retry-After meanwhile (ingest answers 2xx only after
its commit), and that workers ride it out. The outage is a TCP relay in front of the test PostgreSQL that is closed
(connections cut, new ones refused) and opened again; the shared PostgreSQL never stops."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from services.devinbox.inbox import Mailbox
from shared.testing import _asyncpg_dsn
from tests.e2e.stack import Relay, Stack, stack_env, start_sink, wait_for

pytestmark = pytest.mark.e2e

OUTAGE_S = 6  # longer than the delivery recorder's retries of a failed write once were (4.2 s)


@pytest.fixture
def pg_relay(settings) -> Iterator[Relay]:
    url = make_url(settings.database_url)
    r = Relay((url.host or "127.0.0.1", url.port or 5432))
    yield r
    r.close()


def through(settings, relay: Relay) -> str:
    """This run's database URL, by way of the relay."""
    return make_url(settings.database_url).set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)


@pytest.fixture
def outage_stack(settings, pg_relay) -> Iterator[tuple[Stack, Mailbox, Relay]]:
    box, controller, smtp_port = start_sink(delay_s=0.05)  # 10 senders: ~200 messages a second
    s = Stack(stack_env(settings, smtp_port, f"pgout-{uuid.uuid4().hex[:6]}", TENURE_DATABASE_URL=through(settings, pg_relay),
                        TENURE_LOG_JSON="true", TENURE_LOG_LEVEL="INFO"))
    try:
        yield s, box, pg_relay
    finally:
        pg_relay.up() if pg_relay.server is None else None
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
    mgmt = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    recipients = [f"o{i}-{tag}@e2e.example" for i in range(300)]
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(f"{s.url('delivery')}/v1/messages/batch", headers=mgmt, json={"messages": [
            {"idempotency_key": f"pgout-{to}", "to": to, "subject": "Outage test", "text": "x",
             "message_type": "transactional"} for to in recipients]})
        assert [x["result"] for x in r.json()["results"]] == ["queued"] * 300, r.text
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
    assert events.count("worker.database_unavailable") == 1, events
    assert events.count("worker.database_back") == 1, events
    errors = [x for x in lines if x.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
