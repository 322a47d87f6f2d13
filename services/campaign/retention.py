"""What campaign copied of a trigger follows the workspace's ``retention_days``, as ingest's events do: a journey
that ended (and whose goal window closed) longer ago than the retention, and a send handed over that long ago,
lose the trigger's ``properties`` (an event's, or the data an API trigger was given: order lines, a reset link…).
The rest stays — the trigger's name and time, a send's variant, journey and step — so stats, A/B results, paths
and entry rules read as before.

Neither table has an index by age, and giving one to these hot tables would cost every email an index write: a
pass reads each table once, a range of pages per transaction, for every workspace with a retention at once. It
runs daily (``worker.redact_expired``); what it clears is at most a day later than the retention.
"""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import retention

_DONE = {
    "campaign.journeys": "j.status not in ('active', 'waiting') "
                         "and coalesce(j.ended_at, j.entered_at) < now() - make_interval(days => p.days) "
                         "and (j.goal_deadline is null or j.goal_deadline < now())",
    "campaign.sends": "j.status <> 'pending' and j.created_at < now() - make_interval(days => p.days)",
}


async def redact_expired(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Clear the trigger properties of every workspace's journeys and sends past its retention; returns how many
    rows were cleared."""
    async with sessionmaker() as session, session.begin():
        policies = await retention.workspace_policies(session)
    if not policies:
        return 0
    params = {"ws": [ws for ws, _ in policies], "days": [days for _, days in policies]}
    cleared = 0
    for table, done in _DONE.items():
        async with sessionmaker() as session:
            pages = await retention.table_pages(session, table)
        for first in range(0, pages + 1, retention.RANGE_PAGES):
            async with sessionmaker() as session, session.begin():
                cleared += (await session.execute(text(
                    f"update {table} j set trigger_data = j.trigger_data - 'properties' "
                    "from unnest(CAST(:ws AS uuid[]), CAST(:days AS int[])) as p(ws, days) "
                    "where j.ctid >= CAST(:lo AS tid) and j.ctid < CAST(:hi AS tid) and j.workspace_id = p.ws "
                    f"and j.trigger_data ? 'properties' and {done}"),
                    {**params, "lo": (first, 0), "hi": (first + retention.RANGE_PAGES, 0)},
                )).rowcount  # type: ignore[attr-defined]
    return cleared
