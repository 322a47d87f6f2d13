"""What campaign copied of a trigger follows the workspace's ``retention_days``, as ingest's events do: a journey
that ended longer ago than the retention, and a send handed over that long ago, lose the trigger's ``properties``
(an event's, or the data an API trigger was given: order lines, a reset link…), and the journey the property
values it matched on (what it waited for, the keys of events it saw). The rest stays — the trigger's name and
time, a send's variant, journey and step, the events seen — so stats, A/B results, paths, goals and entry rules
read as before.

Neither table has an index by age, and giving one to these hot tables would cost every email an index write: a
pass reads each table once, a range of pages at a time, for every workspace with a retention at once, in
statements of at most ``BATCH`` rows. It runs daily (``worker.redact_expired``); a range that fails (a deadlock, a
lock held too long) is logged and left for the next day's pass, the others go on.
"""

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import retention

log = structlog.get_logger()

BATCH = 2_000

# per table: which rows are done with their trigger (and still hold some of it), and what clearing sets
_TABLES = {
    "campaign.journeys": (
        "j.status not in ('active', 'waiting') "
        "and coalesce(j.ended_at, j.entered_at) < now() - make_interval(days => p.days) "
        "and (j.trigger_data ? 'properties' or j.wait is not null or j.seen::text like '%|%')",
        "trigger_data = j.trigger_data - 'properties', wait = null, seen = (select coalesce(jsonb_agg(x), '[]') "
        "from jsonb_array_elements_text(j.seen) as x where x not like '%|%')"),
    "campaign.sends": (
        "j.status <> 'pending' and j.created_at < now() - make_interval(days => p.days) "
        "and j.trigger_data ? 'properties'",
        "trigger_data = j.trigger_data - 'properties'"),
}


async def redact_expired(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Clear the trigger properties of every workspace's journeys and sends past its retention; returns how many
    rows were cleared."""
    async with sessionmaker() as session, session.begin():
        policies = await retention.workspace_policies(session)
    if not policies:
        return 0
    params = {"ws": [ws for ws, _ in policies], "days": [days for _, days in policies], "n": BATCH}
    cleared = 0
    for table, (done, clear) in _TABLES.items():
        statement = text(
            f"update {table} j set {clear} "
            f"where j.ctid = any(array(select j.ctid from {table} j "
            "  join unnest(CAST(:ws AS uuid[]), CAST(:days AS int[])) as p(ws, days) on p.ws = j.workspace_id "
            f"  where j.ctid >= CAST(:lo AS tid) and j.ctid < CAST(:hi AS tid) and {done} limit :n)) "
            # the row again, as it is now: one moved or changed since the pick is left for the next pass
            f"and exists (select 1 from unnest(CAST(:ws AS uuid[]), CAST(:days AS int[])) as p(ws, days) "
            f"            where p.ws = j.workspace_id and {done})")
        async with sessionmaker() as session:
            ranges = await retention.tid_ranges(session, table)
        for lo, hi in ranges:
            try:
                while True:
                    async with sessionmaker() as session, session.begin():
                        await session.execute(text("set local lock_timeout = '2s'"))
                        n = (await session.execute(statement, {**params, "lo": lo, "hi": hi})
                             ).rowcount  # type: ignore[attr-defined]
                    cleared += n
                    if n < BATCH:
                        break
            except Exception as exc:  # noqa: BLE001 - a deadlock, a lock timeout: tomorrow's pass takes the range
                log.warning("campaign.retention_range_failed", table=table, first_page=lo[0],
                            error=f"{type(exc).__name__}: {exc}")
    return cleared
