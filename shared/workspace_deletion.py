"""Deleting a whole workspace (a customer leaving): its keys first, then every row any service holds for it, then
the workspace itself. ``tenure workspace delete`` runs it.

The services share one PostgreSQL, each in its own schema, and every table holding a workspace's data either has a
``workspace_id`` column or hangs off a table that has (``_DEPENDENTS``); the tables are found in the catalog rather
than listed here, so a table a later release adds is deleted too (tests/integration/test_workspace_deletion.py
checks every one is left empty). Rows go in batches, each its own transaction, so the services keep serving other
workspaces meanwhile.

Work already under way for the workspace when its keys were revoked can still write for a while: a service that
checked a key or a workspace id within the last ``auth.CACHE_TTL_S`` takes it on trust, and a send claimed before
may still reach delivery. So after the first sweeps the deletion waits until ``settle_s`` after the revocation, then
sweeps again until a sweep finds nothing. Only then does the workspace row go: if rows keep appearing, it stays
(``StillWritten``) and running the command again finishes the job.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.auth import CACHE_TTL_S
from shared.core import KeyNotFound
from shared.db import sqlstate
from shared.retention import TidRange, tid_ranges

SCHEMAS = ("campaign", "delivery", "segment", "ingest")  # campaign first: no new journeys or sends meanwhile
DELETE_BATCH = 5_000
SETTLE_S = CACHE_TTL_S + 5  # every service has checked the revoked keys again by then
MAX_SWEEPS = 5
# a parent table's rows are locked, then their dependents deleted, then the rows: a dependent written meanwhile (an
# attempt recorded as its message goes) either committed before the lock, and is deleted, or waits for it and then
# finds its parent gone (the outcome write inserts an attempt only for a message it can lock)
_DEPENDENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "delivery.messages": (("delivery.attempts", "message_id"), ("delivery.engagements", "message_id")),
    "campaign.campaigns": (("campaign.split_winners", "campaign_id"),),
}
_RETRIED = {"40P01", "40001"}  # deadlock, serialization failure: the batch is run again


class StillWritten(RuntimeError):
    """Rows of the workspace kept appearing: its row is kept, so that running the deletion again finds it."""


async def _tables(session: AsyncSession) -> list[tuple[str, bool]]:
    """Every table (a partition, not its parent) of the services' schemas with a ``workspace_id`` column, quoted, and
    whether an index leads with that column (the others are read once per sweep, range by range)."""
    rows = await session.execute(text(
        "select n.nspname, c.relname, exists (select 1 from pg_catalog.pg_index i where i.indrelid = c.oid "
        "                                     and i.indkey[0] = a.attnum) as indexed "
        "from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = 'workspace_id' and not a.attisdropped "
        "where c.relkind = 'r' and n.nspname = any(CAST(:schemas AS text[]))"), {"schemas": list(SCHEMAS)})
    found = sorted(rows, key=lambda t: (SCHEMAS.index(t[0]), t[1]))
    return [(f'"{schema}"."{table}"', indexed) for schema, table, indexed in found]


def _name(quoted: str) -> str:
    return quoted.replace('"', "")


async def delete_workspace(sessionmaker: async_sessionmaker[AsyncSession], workspace_id: uuid.UUID, *,
                           batch: int = DELETE_BATCH, settle_s: float = SETTLE_S,
                           progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Delete the workspace and everything held for it; returns the rows deleted per table (those with any).
    Raises ``KeyNotFound`` when there is no such workspace, ``StillWritten`` when rows kept appearing."""
    async with sessionmaker() as session, session.begin():
        exists = (await session.execute(text("select 1 from core.workspaces where id = :ws for update"),
                                        {"ws": workspace_id})).first()
        if exists is None:
            raise KeyNotFound(f"no workspace {workspace_id}")
        # every API refuses the keys from now on (those that checked one lately, within CACHE_TTL_S); no campaign
        # starts or sends anything more, and what waits in delivery's outbox is not sent
        await session.execute(text("update core.api_keys set revoked_at = now() "
                                   "where workspace_id = :ws and revoked_at is null"), {"ws": workspace_id})
        await session.execute(text("update campaign.campaigns set status = 'paused' where workspace_id = :ws"),
                              {"ws": workspace_id})
        await session.execute(text("update delivery.messages set status = 'failed', last_error = 'workspace deleted', "
                                   "updated_at = now() where workspace_id = :ws and status = 'queued'"),
                              {"ws": workspace_id})
        tables = await _tables(session)
    revoked_at = time.monotonic()
    deleted: dict[str, int] = {}

    async def retried(table: str, work: Callable[[AsyncSession, dict[str, int]], Awaitable[None]]) -> int:
        """One transaction's work, run again after a deadlock; its counts are kept once it has committed. Returns
        the table's own rows deleted."""
        for attempt in range(3):
            counts: dict[str, int] = {}
            try:
                async with sessionmaker() as session, session.begin():
                    await work(session, counts)
                for name, n in counts.items():
                    deleted[name] = deleted.get(name, 0) + n
                return counts.get(_name(table), 0)
            except Exception as exc:
                if sqlstate(exc) not in _RETRIED or attempt == 2:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def clear(table: str, indexed: bool) -> int:
        total = 0
        if indexed or _name(table) in _DEPENDENTS:
            while n := await retried(table, lambda s, c: _one_batch(s, table, workspace_id, batch, c)):
                total += n  # (until a batch deletes nothing: a row updated between pick and delete is picked again)
        else:  # no index to find the rows by: the table is read once, a range of pages per transaction
            async with sessionmaker() as session:
                ranges = await tid_ranges(session, table)
            for bounds in ranges:
                total += await retried(table, lambda s, c, bounds=bounds: _one_range(s, table, workspace_id, bounds, c))
        if total and progress is not None:
            progress(_name(table), total)
        return total

    async def sweep() -> int:
        swept = 0
        for table, indexed in tables:
            swept += await clear(table, indexed)
        return swept

    await sweep()
    await asyncio.sleep(max(0.0, revoked_at + settle_s - time.monotonic()))
    for _ in range(MAX_SWEEPS):
        if not await sweep():
            break
    else:
        raise StillWritten(f"rows of workspace {workspace_id} kept appearing for {MAX_SWEEPS} sweeps: its "
                           "workers may still be running for it; run the deletion again")
    async with sessionmaker() as session, session.begin():
        await session.execute(text("delete from core.workspaces where id = :ws"), {"ws": workspace_id})  # and keys
    return deleted


async def _one_batch(session: AsyncSession, table: str, ws: uuid.UUID, batch: int, deleted: dict[str, int]) -> None:
    """Up to ``batch`` of the table's rows for the workspace, with their dependents (rows deleted counted per table in
    ``deleted``).
    Rows are picked by ``ctid`` and deleted only if still the workspace's (a ``ctid`` is unique only within one
    table, and a row updated meanwhile has moved: it is picked again by the next batch)."""
    dependents = _DEPENDENTS.get(_name(table), ())
    if not dependents:
        n = (await session.execute(text(
            f"delete from {table} where workspace_id = :ws and ctid = any(array("
            f"select ctid from {table} where workspace_id = :ws limit :n))"),
            {"ws": ws, "n": batch})).rowcount  # type: ignore[attr-defined]
        _count(deleted, _name(table), n)
        return
    ids = [r for r, in await session.execute(text(
        f"select id from {table} where workspace_id = :ws limit :n for update"), {"ws": ws, "n": batch})]
    if not ids:
        return
    for child, column in dependents:
        n = (await session.execute(text(f"delete from {child} where {column} = any(:ids)"),
                                   {"ids": ids})).rowcount  # type: ignore[attr-defined]
        _count(deleted, child, n)
    n = (await session.execute(text(f"delete from {table} where id = any(:ids)"),
                               {"ids": ids})).rowcount  # type: ignore[attr-defined]
    _count(deleted, _name(table), n)


async def _one_range(session: AsyncSession, table: str, ws: uuid.UUID, bounds: TidRange,
                     deleted: dict[str, int]) -> None:
    """The workspace's rows in one range of the table's pages (``retention.tid_ranges``); a row that moves meanwhile
    is found by the next sweep."""
    n = (await session.execute(text(
        f"delete from {table} where workspace_id = :ws and ctid >= CAST(:lo AS tid) and ctid < CAST(:hi AS tid)"),
        {"ws": ws, "lo": bounds[0], "hi": bounds[1]})).rowcount  # type: ignore[attr-defined]
    _count(deleted, _name(table), n)


def _count(deleted: dict[str, int], table: str, n: int) -> None:
    if n:
        deleted[table] = deleted.get(table, 0) + n
