"""Loyalty tiers: measured over a rolling window (points earned, or spend), upgraded as soon as the
member qualifies, downgraded (by the scheduled maintenance, or the next event) once the tier has been
held ``tier_retain_days`` and the member no longer qualifies. Every change is a ``Loyalty Tier Changed``
event for ingest, so journeys ("you reached Gold") and segments can use it."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs import outbox
from services.campaign.programs.config import LoyaltyConfig, Tier

TIER_CHANGED = "Loyalty Tier Changed"


def tier_for(value: float, tiers: list[Tier]) -> Tier | None:
    """The highest tier whose threshold ``value`` reaches (tiers are sorted by threshold)."""
    best = None
    for t in tiers:
        if value >= t.threshold:
            best = t
    return best


def rank(name: str | None, tiers: list[Tier]) -> int:
    return next((i for i, t in enumerate(tiers) if t.name == name), -1)


def decide(current: str | None, since: datetime | None, value: float, config: LoyaltyConfig, now: datetime
           ) -> Tier | None | str:
    """The tier to move to, or ``"stay"``: up at once, down only after the retention period."""
    target = tier_for(value, config.tiers)
    new, old = rank(target.name if target else None, config.tiers), rank(current, config.tiers)
    if new > old:
        return target
    if new < old and (since is None or since + timedelta(days=config.tier_retain_days) <= now):
        return target
    return "stay"


async def qualifying_value(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, config: LoyaltyConfig,
                           now: datetime) -> float:
    """Points earned (net of refunds), or spend, in the window ending at ``now``."""
    # a refund (or a reversed referral reward) takes back the whole of what was earned, even when those
    # points were already spent and the ledger could only take back what was left (the entry's own points)
    refunded = ("(select coalesce(sum(e.points), 0) from campaign.loyalty_ledger r join campaign.loyalty_ledger e "
                "on e.workspace_id = r.workspace_id and e.profile_id = r.profile_id "
                "and (r.source = 'refund:' || e.seq::text "
                "or (e.source like 'referral:%' and r.source = 'reverse:' || substr(e.source, 10))) "
                "where r.workspace_id = :ws and r.profile_id = :p and r.at > :since and r.at <= :now)")
    measure = ("coalesce(sum(spend), 0)" if config.tier_basis == "spend"
               else f"greatest(coalesce(sum(points) filter (where kind = 'earn'), 0) - {refunded}, 0)")
    value = (await session.execute(text(
        f"select {measure} from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and at > :since and at <= :now"),
        {"ws": ws, "p": pid, "since": now - timedelta(days=config.tier_window_days), "now": now})).scalar_one()
    return float(value)


async def evaluate(session: AsyncSession, acct: dict[str, Any], config: LoyaltyConfig, now: datetime
                   ) -> dict[str, Any] | None:
    """Move a (locked) member to the tier they qualify for; returns the change, if any."""
    if not config.tiers:
        return None
    ws, pid = uuid.UUID(str(acct["workspace_id"])), uuid.UUID(str(acct["profile_id"]))
    value = await qualifying_value(session, ws, pid, config, now)
    target = decide(acct.get("tier"), acct.get("tier_since"), value, config, now)
    if target == "stay" or not isinstance(target, Tier | None):
        return None
    old, new = acct.get("tier"), target.name if target else None
    await session.execute(text(
        "update campaign.loyalty_accounts set tier = :t, tier_since = :now, updated_at = now() "
        "where workspace_id = :ws and profile_id = :p"), {"t": new, "now": now, "ws": ws, "p": pid})
    acct.update(tier=new, tier_since=now)
    direction = "up" if rank(new, config.tiers) > rank(old, config.tiers) else "down"
    change = {"from": old, "to": new, "direction": direction, "points": acct["balance"],
              "qualifying_value": value, "basis": config.tier_basis,
              "benefits": target.benefits if target else []}
    await outbox.emit(session, ws, acct, TIER_CHANGED, {"tier": new, "previous_tier": old, **change},
                      now, f"tier:{pid}:{now.isoformat()}:{old}:{new}")
    return change


def progress(value: float, current: str | None, config: LoyaltyConfig) -> dict[str, Any]:
    """Where a member stands: the tier's benefits and what the next tier needs."""
    tier = next((t for t in config.tiers if t.name == current), None)
    above = [t for t in config.tiers if t.threshold > (tier.threshold if tier else -1) and t.name != current]
    nxt = above[0] if above else None
    needed = max(0.0, nxt.threshold - value) if nxt else None
    return {"benefits": tier.benefits if tier else [], "next_tier": nxt.name if nxt else None,
            "needed_for_next": (int(needed) if needed == int(needed) else round(needed, 2)) if needed is not None
            else None}
