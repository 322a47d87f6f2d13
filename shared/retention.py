"""Per-workspace retention (``core.workspaces.settings["retention_days"]``), shared by every service
that keeps event-level rows: old rows are deleted in small batches, each its own transaction, so
writers are never blocked for long."""

from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.workspace_config import MAX_RETENTION_DAYS

DELETE_BATCH = 5_000
# how long an event stays in ingest's log after its receipt, whatever its time: the feed's consumers (segment,
# campaign) read it meanwhile. History imported with old timestamps was deleted within the hour otherwise, and what
# segment made of it depended on how far behind its consumer was when the job ran.
FEED_GRACE = timedelta(days=1)


async def workspace_policies(session: AsyncSession) -> list[tuple[Any, int]]:
    """(workspace id, days) of every workspace with a retention. Days as a JSON number (or a string of digits,
    which older releases stored as given); anything else (null, 1e12, "soon": stored before the settings were
    checked, or straight into the table) keeps everything, as no value does, instead of failing the job for
    every workspace."""
    rows = await session.execute(
        text("select id, CAST(n AS int) as days from (select id, case "
             "when jsonb_typeof(settings->'retention_days') = 'number' "
             "or settings->>'retention_days' ~ '^[0-9]{1,9}$' then (settings->>'retention_days')::numeric "
             "end as n from core.workspaces where settings ? 'retention_days') w "
             "where n = trunc(n) and n between 1 and :max"),
        {"max": MAX_RETENTION_DAYS})
    return [(ws, days) for ws, days in rows]


RANGE_PAGES = 2_000  # 16 MB of a table per transaction when one is read whole, a range of pages at a time


TidRange = tuple[tuple[int, int], tuple[int, int]]


async def tid_ranges(session: AsyncSession, table: str) -> list[TidRange]:
    """The (lo, hi) bounds that read ``table`` whole, ``RANGE_PAGES`` pages each, by ``ctid >= CAST(:lo AS tid) and
    ctid < CAST(:hi AS tid)`` (a TID range scan), up to the pages it has now (``pg_relation_size``, not
    ``pg_class.relpages``, which only VACUUM and ANALYZE update)."""
    pages = int((await session.execute(text(
        "select pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::int"), {"t": table})).scalar()
                or 0)
    return [((first, 0), (first + RANGE_PAGES, 0)) for first in range(0, pages + 1, RANGE_PAGES)]


async def enforce(sessionmaker: async_sessionmaker[AsyncSession], table: str, time_column: str,
                  batch: int = DELETE_BATCH, received_before: timedelta | None = None) -> int:
    """Delete rows of ``table`` whose ``time_column`` is older than their workspace's retention (and, with
    ``received_before``, received longer ago than that)."""
    received = (" and received_at < now() - make_interval(secs => :grace)" if received_before is not None else "")
    deleted = 0
    async with sessionmaker() as session:
        async with session.begin():
            policies = await workspace_policies(session)
        for ws, days in policies:
            while True:
                async with session.begin():
                    n = (await session.execute(
                        # (the outer test again: a ctid names a row only within one partition)
                        text(f"delete from {table} where workspace_id = :ws "
                             f"and {time_column} < now() - make_interval(days => :d){received} and ctid = any(array("
                             f"select ctid from {table} where workspace_id = :ws "
                             f"and {time_column} < now() - make_interval(days => :d){received} limit :n))"),
                        {"ws": ws, "d": days, "n": batch,
                         "grace": received_before.total_seconds() if received_before is not None else 0},
                    )).rowcount  # type: ignore[attr-defined]
                deleted += n
                if n < batch:
                    break
    return deleted
