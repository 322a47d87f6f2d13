"""Deleting a whole workspace (a customer leaving): its keys first, then every row any service holds for it, then
the workspace itself. ``tenure workspace delete`` runs it.

The services share one PostgreSQL, each in its own schema, and every table holding a workspace's data either
has a ``workspace_id`` column or hangs off one that has (``_DEPENDENTS``); the tables are found in the catalog
rather than listed here, so a table a later release adds is deleted too (``tests/e2e/test_cli.py`` checks every
one is left empty). Rows go in batches, each its own transaction, so the services keep serving other workspaces
meanwhile; a run cut short is finished by running it again: the workspace row, deleted last, is what a rerun
finds.

Work already under way for the workspace when its keys were revoked (a feed page being read, a batch being sent)
may write a row after its table was emptied: each table is swept again at the end, until a sweep finds nothing.
"""

import uuid
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.core import KeyNotFound

SCHEMAS = ("campaign", "delivery", "segment", "ingest")  # campaign first: no new journeys or sends meanwhile
DELETE_BATCH = 5_000
MAX_SWEEPS = 5
# (table, its column naming the parent's id, the parent table with a workspace_id)
_DEPENDENTS = (("delivery.attempts", "message_id", "delivery.messages"),
               ("campaign.split_winners", "campaign_id", "campaign.campaigns"))


async def _tables(session: AsyncSession) -> list[str]:
    rows = await session.execute(text(
        "select c.table_schema, c.table_name from information_schema.columns c "
        "join information_schema.tables t using (table_schema, table_name) "
        "where c.column_name = 'workspace_id' and t.table_type = 'BASE TABLE' "
        "and c.table_schema = any(CAST(:schemas AS text[]))"), {"schemas": list(SCHEMAS)})
    found = {f"{schema}.{table}" for schema, table in rows}
    return sorted(found, key=lambda t: (SCHEMAS.index(t.split(".")[0]), t))


async def delete_workspace(sessionmaker: async_sessionmaker[AsyncSession], workspace_id: uuid.UUID, *,
                           batch: int = DELETE_BATCH, progress: Callable[[str, int], None] | None = None
                           ) -> dict[str, int]:
    """Delete the workspace and everything held for it; returns the rows deleted per table (those with any).
    Raises ``KeyNotFound`` when there is no such workspace."""
    async with sessionmaker() as session, session.begin():
        exists = (await session.execute(text("select 1 from core.workspaces where id = :ws for update"),
                                        {"ws": workspace_id})).first()
        if exists is None:
            raise KeyNotFound(f"no workspace {workspace_id}")
        # every API refuses the keys from now on (within the 30 s the services cache a key they have checked)
        await session.execute(text("update core.api_keys set revoked_at = now() "
                                   "where workspace_id = :ws and revoked_at is null"), {"ws": workspace_id})
        await session.execute(text("update campaign.campaigns set status = 'paused' where workspace_id = :ws"),
                              {"ws": workspace_id})
        tables = await _tables(session)
    deleted: dict[str, int] = {}

    async def run(table: str, where: str) -> int:
        total = 0
        while True:
            async with sessionmaker() as session, session.begin():
                n = (await session.execute(text(
                    f"delete from {table} where ctid = any(array(select ctid from {table} where {where} limit :n))"),
                    {"ws": workspace_id, "n": batch})).rowcount  # type: ignore[attr-defined]
            total += n
            if n < batch:
                break
        if total:
            deleted[table] = deleted.get(table, 0) + total
            if progress is not None:
                progress(table, total)
        return total

    for _ in range(MAX_SWEEPS):
        swept = 0
        for child, column, parent in _DEPENDENTS:
            swept += await run(child, f"{column} in (select id from {parent} where workspace_id = :ws)")
        for table in tables:
            swept += await run(table, "workspace_id = :ws")
        if not swept:
            break
    async with sessionmaker() as session, session.begin():
        await session.execute(text("delete from core.workspaces where id = :ws"), {"ws": workspace_id})  # and keys
    return deleted
