"""Retention metrics marketers ask for, computed from profile statistics, stages and traits.

Definitions (also in docs/metrics.md), for the profiles *first seen* in ``[start, end)`` (the cohort),
optionally restricted to the current members of a segment:

- users: profiles in the cohort; customers: users with ≥ 1 purchase; repeat: ≥ 2 purchases;
  loyal: ≥ the workspace's ``loyal_orders`` purchases;
- activation rate = customers / users × 100; repeat customer rate = repeat / customers × 100;
  loyal rate = repeat customers who are loyal / repeat × 100 (with ``loyal_orders`` 1, all of them: 100, not
  more — counting every loyal customer over the repeat ones made it 150 % when a third bought once);
  churn rate = users now in the ``churned`` stage / users × 100;
- average CLTV = mean revenue per customer;
- NPS = % promoters (9–10) − % detractors (0–6) among users who answered, each user's newest answer:
  the ``score`` of their last NPS survey event (workspace setting ``nps_event``, default
  ``NPS Survey Submitted``; numeric text too, attributes.PurchaseRules.nps_score), else their ``nps`` trait
  (answers outside 0–10 are not answers); rounded to two decimals, as the rates;
  CSAT = % of users who answered ``csat`` 4–5 on a 1–5 scale (values outside 1–5 are not answers).
Rates are ``None`` when their denominator is zero.
"""

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import lifecycle


def _rate(part: int, whole: int) -> float | None:
    return round(part * 100.0 / whole, 2) if whole else None


async def retention_metrics(session: AsyncSession, ws: uuid.UUID, start: datetime, end: datetime,
                            segment_id: uuid.UUID | None, settings: lifecycle.LifecycleSettings) -> dict[str, Any]:
    churned = lifecycle.stage_segment_id(ws, "churned")
    row = (await session.execute(
        text(
            """
            with cohort as (
              select s.profile_id, s.order_count, s.revenue,
                     coalesce(s.last_nps, case when jsonb_typeof(t.traits->'nps') = 'number'
                                                and (t.traits->>'nps')::numeric between 0 and 10
                                               then (t.traits->>'nps')::numeric end) as nps,
                     case when jsonb_typeof(t.traits->'csat') = 'number'
                           and (t.traits->>'csat')::numeric between 1 and 5
                          then (t.traits->>'csat')::numeric end as csat
                from segment.profile_stats s
                left join segment.profile_traits t using (workspace_id, profile_id)
               where s.workspace_id = :ws and s.first_seen >= :start and s.first_seen < :end
                 and (CAST(:seg AS uuid) is null or exists (
                      select 1 from segment.memberships m
                       where m.workspace_id = :ws and m.segment_id = CAST(:seg AS uuid)
                         and m.profile_id = s.profile_id)))
            select count(*) as users,
                   count(*) filter (where order_count >= 1) as customers,
                   count(*) filter (where order_count >= 2) as repeat,
                   count(*) filter (where order_count >= :loyal) as loyal,
                   count(*) filter (where order_count >= greatest(:loyal, 2)) as loyal_repeat,
                   count(*) filter (where exists (select 1 from segment.memberships m where m.workspace_id = :ws
                                     and m.segment_id = :churned and m.profile_id = cohort.profile_id)) as churned,
                   avg(revenue) filter (where order_count >= 1) as avg_cltv,
                   count(nps) as nps_answers,
                   count(*) filter (where nps >= 9) as promoters,
                   count(*) filter (where nps <= 6) as detractors,
                   count(csat) as csat_answers,
                   count(*) filter (where csat >= 4) as satisfied
              from cohort
            """
        ),
        {"ws": ws, "start": start, "end": end, "seg": segment_id, "loyal": settings.loyal_orders,
         "churned": churned},
    )).mappings().one()
    nps_answers = row["nps_answers"]
    return {
        "users": row["users"],
        "customers": row["customers"],
        "repeat_customers": row["repeat"],
        "loyal_customers": row["loyal"],
        "activation_rate": _rate(row["customers"], row["users"]),
        "repeat_customer_rate": _rate(row["repeat"], row["customers"]),
        "loyal_rate": _rate(row["loyal_repeat"], row["repeat"]),
        "churn_rate": _rate(row["churned"], row["users"]),
        "average_cltv": round(float(row["avg_cltv"]), 2) if row["avg_cltv"] is not None else None,
        "nps": round((row["promoters"] - row["detractors"]) * 100.0 / nps_answers, 2) if nps_answers else None,
        "nps_responses": nps_answers,
        "csat": _rate(row["satisfied"], row["csat_answers"]),
        "csat_responses": row["csat_answers"],
    }


async def stage_series(session: AsyncSession, ws: uuid.UUID, start: date, end: date) -> list[dict[str, Any]]:
    """Profiles in each stage at the end of each day in ``[start, end]``, rebuilt from the transition log; days
    after today (UTC) are left out (each repeated today's counts, though profiles would pass a stage's threshold
    on them: a chart drew a flat line into the future)."""
    end = min(end, datetime.now(UTC).date())
    if end < start:
        return []
    ids = {lifecycle.stage_segment_id(ws, st): st for st in lifecycle.STAGES}
    rows = (await session.execute(
        text(
            """
            select segment_id, (at at time zone 'UTC')::date as day,
                   sum(case when kind = 'entered' then 1 else -1 end) as delta
              from segment.transitions
             where workspace_id = :ws and segment_id = any(CAST(:ids AS uuid[]))
               and (CAST(:until AS timestamptz) is null or at < :until)
             group by 1, 2 order by 2
            """
        ),
        # the end of the last day (none after 9999-12-31: that day has no next one to begin)
        {"ws": ws, "ids": list(ids),
         "until": datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC) if end < date.max else None},
    )).all()
    level = {st: 0 for st in lifecycle.STAGES}
    deltas: dict[date, list[tuple[str, int]]] = {}
    for sid, day, delta in rows:
        if day < start:
            level[ids[sid]] += int(delta)
        else:
            deltas.setdefault(day, []).append((ids[sid], int(delta)))
    series = []
    for n in range((end - start).days + 1):
        day = start + timedelta(days=n)
        for st, d in deltas.get(day, []):
            level[st] += d
        series.append({"day": day, **level})
    return series
