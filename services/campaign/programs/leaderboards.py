"""Leaderboards per calendar period (UTC): top referrers by converted referrals, top members by points
earned. A period is the week (from Monday), month, quarter or year containing ``at``, or ``all``."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

Period = Literal["week", "month", "quarter", "year", "all"]


def bounds(period: Period, at: datetime) -> tuple[datetime | None, datetime | None]:
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "all":
        return None, None
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    first_month = {"month": day.month, "quarter": (day.month - 1) // 3 * 3 + 1, "year": 1}[period]
    months = {"month": 1, "quarter": 3, "year": 12}[period]
    start = day.replace(month=first_month, day=1)
    index = start.month - 1 + months
    return start, start.replace(year=start.year + index // 12, month=index % 12 + 1)


Bounds = tuple[datetime | None, datetime | None]


async def _ranked(session: AsyncSession, sql: str, ws: uuid.UUID, period: Bounds, limit: int) -> list[dict[str, Any]]:
    """The query's rows (best first) numbered from 1, ids as strings."""
    start, end = period
    rows = (await session.execute(text(sql), {"ws": ws, "s": start, "e": end, "lim": limit})).mappings().all()
    return [{"rank": i + 1, **{k: str(v) if isinstance(v, uuid.UUID) else v for k, v in r.items()}}
            for i, r in enumerate(rows)]


async def referrers(session: AsyncSession, ws: uuid.UUID, period: Bounds, limit: int) -> list[dict[str, Any]]:
    """Top referrers by converted referrals within ``period`` (the ``bounds`` of a calendar period)."""
    return await _ranked(session, (
        "select r.referrer_profile_id as profile_id, c.user_id, count(*) as referrals, "
        "count(*) filter (where r.status in ('rewarded', 'reversed', 'capped')) as qualified "
        "from campaign.referrals r left join campaign.referral_codes c on c.workspace_id = r.workspace_id "
        "and c.profile_id = r.referrer_profile_id where r.workspace_id = :ws and r.status <> 'rejected' "
        "and (CAST(:s AS timestamptz) is null or r.converted_at >= :s) "
        "and (CAST(:e AS timestamptz) is null or r.converted_at < :e) "
        "group by r.referrer_profile_id, c.user_id order by referrals desc, qualified desc, min(r.converted_at) "
        "limit :lim"), ws, period, limit)


async def members(session: AsyncSession, ws: uuid.UUID, period: Bounds, limit: int) -> list[dict[str, Any]]:
    """Top members by points earned within ``period``."""
    return await _ranked(session, (
        "select l.profile_id, a.user_id, a.tier, sum(l.points) as points from campaign.loyalty_ledger l "
        "join campaign.loyalty_accounts a on a.workspace_id = l.workspace_id and a.profile_id = l.profile_id "
        "where l.workspace_id = :ws and l.points > 0 and l.kind in ('earn', 'adjust') "
        "and (CAST(:s AS timestamptz) is null or l.at >= :s) and (CAST(:e AS timestamptz) is null or l.at < :e) "
        "group by l.profile_id, a.user_id, a.tier order by points desc, min(l.seq) limit :lim"), ws, period, limit)
