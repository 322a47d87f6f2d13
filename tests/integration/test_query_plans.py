"""Hot statements keep their index before the first ANALYZE (a new install, a first big import).

Without statistics PostgreSQL guesses every ``column = value`` matches 0.5 % of the rows, so a lookup naming
``workspace_id`` beside a list of keys can be planned on another index that starts with ``workspace_id`` and
filter every row of the workspace: a cost that grows with the table, paid per batch. Each test reads the
plan of a statement on tables filled by COPY and never analyzed (autovacuum off for them).
"""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.delivery import outbox
from services.ingest import profiles, tracking
from shared.testing import Servers, _asyncpg_dsn, migrated_database

PROFILES = 50_000
WS = uuid.uuid4()
PIDS = [uuid.uuid5(WS, str(i)) for i in range(PROFILES)]
MESSAGES = [uuid.uuid5(WS, f"message {i}") for i in range(40_050)]


def _run(coro: Any) -> Any:
    """Run a coroutine on a loop of its own (``asyncio.run`` would unset the thread's current loop, which the
    asynchronous tests after these ones share)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture(scope="module")
def unanalyzed(servers: Servers) -> Iterator[str]:
    """A migrated database whose events, profiles and identities hold 50k rows each (or two) and no statistics."""
    with migrated_database(servers, "tenure_plans") as url:

        async def fill() -> None:
            dsn, kw = _asyncpg_dsn(url)
            conn = await asyncpg.connect(dsn, **kw)
            try:
                for table in ("ingest.events", "ingest.profiles", "ingest.identities", "delivery.messages"):
                    await conn.execute(f"alter table {table} set (autovacuum_enabled = false)")
                now = datetime.now(UTC)
                await conn.copy_records_to_table(
                    "profiles", schema_name="ingest", columns=("id", "workspace_id", "user_id"),
                    records=[(p, WS, f"u{i}") for i, p in enumerate(PIDS)])
                await conn.copy_records_to_table(
                    "identities", schema_name="ingest", columns=("workspace_id", "kind", "value", "profile_id"),
                    records=[(WS, kind, f"{kind}-{i}", p) for i, p in enumerate(PIDS)
                             for kind in ("user_id", "anonymous_id")])
                await conn.copy_records_to_table(
                    "events", schema_name="ingest",
                    columns=("workspace_id", "message_id", "type", "profile_id", "timestamp", "received_at"),
                    records=[(WS, f"m-{i}", "track", p, now, now) for i, p in enumerate(PIDS)])
                await conn.copy_records_to_table(  # a campaign going out: 20k sent, 20k in flight, 50 due
                    "messages", schema_name="delivery",
                    columns=("id", "workspace_id", "idempotency_key", "request_hash", "channel", "to_address",
                             "from_address", "subject", "message_type", "status", "attempts", "next_attempt_at",
                             "claimed_until"),
                    records=[(m, WS, str(m), "h", "email", "a@example.com", "t@example.com", "s", "marketing",
                              status, 1 if status != "queued" else 0, at, lease)
                             for i, m in enumerate(MESSAGES)
                             for status, at, lease in [
                                 ("sent", now, None) if i < 20_000 else
                                 ("sending", now + timedelta(minutes=1), now + timedelta(minutes=1)) if i < 40_000 else
                                 ("queued", now - timedelta(seconds=1), None)]])
                assert await conn.fetchval(
                    "select max(reltuples) from pg_class where oid = any(array['ingest.events'::regclass, "
                    "'ingest.profiles'::regclass, 'ingest.identities'::regclass, 'delivery.messages'::regclass])") < 0
            finally:
                await conn.close()

        _run(fill())
        yield url


def _plan(url: str, sql: str, params: dict[str, Any]) -> tuple[set[str], int]:
    """The indexes (and sequential scans) the statement's plan reads, and how many rows its scans touched
    (returned or filtered away), by running it under EXPLAIN ANALYZE: row counts, not timings."""

    async def explain() -> Any:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(f"explain (analyze, format json) {sql}"), params)).scalar_one()
        finally:
            await engine.dispose()

    found: set[str] = set()
    touched = 0
    raw = _run(explain())
    nodes = [(orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        if node["Node Type"] == "Seq Scan":
            found.add(f"seq scan of {node['Relation Name']}")
        if "Relation Name" in node or node["Node Type"] == "Bitmap Index Scan":  # (not a scan of a CTE, a function)
            touched += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        nodes.extend(node.get("Plans", []))
    return found, touched


def test_the_message_id_probe_reads_the_unique_index(unanalyzed: str) -> None:
    sql = tracking._STORED.replace("$1", ":ws").replace("$2::text[]", "CAST(:ids AS text[])")
    ids = [f"m-{i}" for i in range(0, PROFILES, 80)]  # a group commit's worth: 625 ids
    indexes, touched = _plan(unanalyzed, sql, {"ws": WS, "ids": ids})
    assert indexes == {"uq_events_workspace_id_message_id"} and touched <= 2 * len(ids), (indexes, touched)


def test_identity_resolution_reads_the_identity_key(unanalyzed: str) -> None:
    keys = [{"kind": "anonymous_id", "value": f"anonymous_id-{i}"} for i in range(0, PROFILES, 250)]
    indexes, touched = _plan(unanalyzed, profiles.LOAD_IDENTITIES, {"ws": WS, "keys": orjson.dumps(keys).decode()})
    assert indexes == {"pk_identities"} and touched <= 2 * len(keys), (indexes, touched)


def test_profiles_by_id_read_the_primary_key_and_their_own_identities(unanalyzed: str) -> None:
    # each profile: itself, the profile it lives on, its two identities (the user id's filtered away), counted
    # again by a bitmap's heap scan: 6 rows (the old plan read the workspace's 50k anonymous ids for each)
    indexes, touched = _plan(unanalyzed, profiles.GET_MANY, {"ws": WS, "ids": PIDS[:200]})
    assert indexes == {"pk_profiles", "ix_identities_profile_id"} and touched <= 200 * 6, (indexes, touched)


def test_the_profile_list_by_user_id_reads_the_identity_key_then_the_primary_key(unanalyzed: str) -> None:
    sql, params = profiles.list_query(WS, user_id="user_id-4321", email=None, traits={}, q=None, after=None)
    indexes, touched = _plan(unanalyzed, sql, {**params, "lim": 101})
    assert indexes == {"pk_identities", "pk_profiles"} and touched <= 2, (indexes, touched)


def test_a_delivery_claim_reads_the_due_messages_not_those_in_flight(unanalyzed: str) -> None:
    indexes, touched = _plan(unanalyzed, outbox.CLAIM, {"lim": 50, "max": outbox.MAX_LOST_LEASES, "lease": 60})
    assert "ix_messages_due" in indexes and touched <= 50 * 4, (indexes, touched)  # (the old claim: 20,050)


def test_outcomes_are_recorded_by_each_message_key(unanalyzed: str) -> None:
    rows = [{"id": str(m), "n": 1, "status": "sent", "outcome": "sent", "error": None, "pmid": None,
             "provider": "smtp", "started": datetime.now(UTC).isoformat(), "delay": 0.0}
            for m in MESSAGES[20_000:20_100]]
    indexes, touched = _plan(unanalyzed, outbox.RECORD, {"rows": orjson.dumps(rows).decode()})
    assert indexes == {"pk_messages"} and touched <= 100 * 3, (indexes, touched)


@pytest.mark.parametrize("lock", ["", "for update"])
def test_messages_still_held_are_probed_by_their_key(unanalyzed: str, lock: str) -> None:
    """``outbox.confirm`` (a read, or a lease renewal) and ``outbox.release`` ask this of a group of messages."""
    held = MESSAGES[20_000:20_100]
    indexes, touched = _plan(unanalyzed, outbox._held(lock), {"ids": held, "ns": [1] * len(held)})
    assert indexes == {"pk_messages"} and touched <= 100 * 2, (indexes, touched)
