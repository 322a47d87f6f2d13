"""Hot statements keep their index before the first ANALYZE (a new install, a table just created).

Without statistics PostgreSQL guesses every ``column = value`` matches 0.5 % of the rows, so a probe
naming ``workspace_id`` beside a list of keys can be planned on another index that starts with
``workspace_id`` and filter every row of the workspace: a cost growing with the table, per batch.
"""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.ingest import tracking
from shared.migrate import upgrade_all
from shared.settings import Settings
from shared.testing import Servers, _asyncpg_dsn, fresh_database


def _indexes(plan: Any) -> set[str]:
    """Every index a JSON plan reads, and its scans' kinds."""
    found: set[str] = set()
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        if node["Node Type"] == "Seq Scan":
            found.add(f"seq scan of {node['Relation Name']}")
        nodes.extend(node.get("Plans", []))
    return found


def test_the_message_id_probe_reads_the_unique_index_on_a_table_never_analyzed(servers: Servers) -> None:
    with fresh_database(servers, "tenure_plans") as url:
        upgrade_all(Settings(database_url=url, redis_url=servers.redis_url))

        async def probe_plan() -> set[str]:
            dsn, kw = _asyncpg_dsn(url)
            conn = await asyncpg.connect(dsn, **kw)
            try:
                await conn.execute("alter table ingest.events set (autovacuum_enabled = false)")
                ws, now = uuid.uuid4(), datetime.now(UTC)
                await conn.copy_records_to_table(
                    "events", schema_name="ingest",
                    columns=("workspace_id", "message_id", "type", "profile_id", "timestamp", "received_at"),
                    records=[(ws, f"m-{i}", "track", ws, now, now) for i in range(60_000)])
                assert await conn.fetchval("select reltuples from pg_class where oid = 'ingest.events'::regclass") < 0
                ids = [f"m-{i}" for i in range(0, 60_000, 100)]  # a group commit's worth: 600 ids
                return _indexes(orjson.loads(await conn.fetchval(f"explain (format json) {tracking._STORED}", ws, ids)))
            finally:
                await conn.close()

        used = asyncio.run(probe_plan())
    assert used == {"uq_events_workspace_id_message_id"}, used
