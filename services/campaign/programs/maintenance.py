"""The programs' clockwork: points expiring and tiers falling due for a downgrade.

Run by the campaign worker's cron (hourly) and callable with any ``now`` (tests move the clock). Members
are visited in key order, in batches, each batch one transaction; a member whose row is locked (a
redemption in flight) is skipped and caught on the next run.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.campaign.programs import ledger, tiers
from services.campaign.programs.config import Programs
from shared.db import row_dict


@dataclass
class MaintenanceResult:
    members: int = 0
    expired_points: int = 0
    tier_changes: int = 0


async def run(sessionmaker: async_sessionmaker[AsyncSession], now: datetime | None = None, batch: int = 500
              ) -> MaintenanceResult:
    now = now or datetime.now(UTC)
    result = MaintenanceResult()
    after = (uuid.UUID(int=0), uuid.UUID(int=0))
    while True:
        async with sessionmaker() as session, session.begin():
            rows = (await session.execute(text(
                "select a.* from campaign.loyalty_accounts a join campaign.programs p "
                "on p.workspace_id = a.workspace_id and p.kind = 'loyalty' and p.enabled "
                "where (a.workspace_id, a.profile_id) > (:ws, :p) and (a.tier is not null or exists ("
                "select 1 from campaign.loyalty_ledger l where l.workspace_id = a.workspace_id "
                "and l.profile_id = a.profile_id and l.remaining > 0 and l.expires_at <= :now)) "
                "order by a.workspace_id, a.profile_id limit :lim for update of a skip locked"),
                {"ws": after[0], "p": after[1], "now": now, "lim": batch})).all()
            if not rows:
                return result
            programs = await Programs.load(session, {r.workspace_id for r in rows})
            for r in rows:
                acct = row_dict(r)
                result.members += 1
                result.expired_points += await ledger.expire_account(session, acct, now)
                config = programs.loyalty.get(r.workspace_id)
                if config is not None and await tiers.evaluate(session, acct, config, now):
                    result.tier_changes += 1
            after = (rows[-1].workspace_id, rows[-1].profile_id)
        if len(rows) < batch:
            return result
