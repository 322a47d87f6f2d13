"""Loyalty from events: earning rules, refunds taking earned points back, badges, and tier moves.

Called for each event of a feed page (in feed order, in the page's transaction): an event's points are
one ledger entry whose source is the event's messageId, so a replayed page earns nothing twice.
"""

import math
import uuid
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.journey_def import compare
from services.campaign.programs import ledger, outbox, tiers
from services.campaign.programs.config import Badge, EarnRule, LoyaltyConfig, slug
from shared.jsonutil import dumps

BADGE_EARNED = "Badge Earned"


def _amount(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


MAX_AMOUNT = Decimal(10) ** 9  # per event; points columns are bigint, so even per_unit 1000 cannot overflow


def _matches(rule: EarnRule, name: str, props: dict[str, Any]) -> bool:
    return rule.event == name and all(compare(f.op, props.get(f.property), f.value) for f in rule.where)


def points_for(rule: EarnRule, props: dict[str, Any]) -> tuple[int, Decimal | None]:
    """(points, amount) a rule gives for an event's properties: fixed points plus per-unit points."""
    amount = _amount(props.get(rule.property)) if rule.per_unit else None
    if amount is not None and amount > MAX_AMOUNT:
        amount = None  # an absurd order value (a typo, a test, an attack) earns nothing rather than billions
    per_unit = math.floor(float(amount) * rule.per_unit) if amount is not None else 0
    return rule.points + per_unit, amount


def _rule_key(rule: EarnRule, index: int) -> str:
    return rule.name or f"{slug(rule.event)}_{index}"


async def apply(session: AsyncSession, config: LoyaltyConfig, item: dict[str, Any], at: datetime, now: datetime
                ) -> int:
    """One event: earn, take back on refund, badges, then the tier. Returns ledger entries written and
    badges earned (something for ingest to hear about)."""
    name, props = item["event"], item.get("properties") or {}
    ws, pid = uuid.UUID(item["workspace_id"]), uuid.UUID(item["profile_id"])
    who = {"user_id": item.get("user_id"), "anonymous_id": item.get("anonymous_id")}
    order_id = str(props["order_id"]) if props.get("order_id") not in (None, "") else None
    regular, firsts, spend = 0, [], None
    reasons = []
    for i, rule in enumerate(config.earn):
        if not _matches(rule, name, props):
            continue
        pts, amount = points_for(rule, props)
        spend = amount if spend is None else spend
        if rule.first_time_only:
            firsts.append((rule, i, pts))
        else:
            regular += pts
            reasons.append(rule.name or name)
    badges = [b for b in config.badges if name in b.events]
    refund = name == config.refund_event and order_id is not None
    if not (reasons or firsts or badges or refund):
        return 0
    await ledger.ensure_account(session, ws, pid, who, at)
    written = 0
    if reasons:
        w = await ledger.credit(session, ws, pid, regular, f"event:{item['message_id']}", at,
                                expiry_months=config.expiry_months, reason=", ".join(reasons), order_id=order_id,
                                spend=spend)
        written += w.created
    for rule, i, pts in firsts:
        w = await ledger.credit(session, ws, pid, pts, f"first:{_rule_key(rule, i)}:{pid}", at,
                                expiry_months=config.expiry_months, reason=rule.name or f"first {name}",
                                order_id=order_id)
        written += w.created
    if refund:
        written += await _take_back(session, ws, pid, order_id or "", item["message_id"], at)
    for badge in badges:
        written += await _badge(session, ws, pid, who, badge, name, at, config)
    acct = await ledger.lock(session, ws, pid)
    await tiers.evaluate(session, acct, config, now)
    return written


async def _take_back(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, order_id: str, message_id: str,
                     at: datetime) -> int:
    """A refunded order's earned points (what is left of the balance) and spend are taken back."""
    earned = (await session.execute(text(
        "select seq, points, spend from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and order_id = :o and kind = 'earn' and points >= 0 order by seq"),
        {"ws": ws, "p": pid, "o": order_id})).all()
    n = 0
    for e in earned:
        if e.points <= 0:
            continue  # nothing was earned (an order without revenue): nothing to take back
        w = await ledger.debit(session, ws, pid, e.points, f"refund:{e.seq}", at, kind="adjust", partial=True,
                               reason=f"order {order_id} refunded", order_id=order_id,
                               spend=-e.spend if e.spend is not None else None)
        n += w.created
    return n


async def _badge(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, who: dict[str, Any], badge: Badge,
                 event: str, at: datetime, config: LoyaltyConfig) -> int:
    row = (await session.execute(text(
        "insert into campaign.loyalty_badges (workspace_id, profile_id, badge, seen) "
        "values (:ws, :p, :b, CAST(:seen AS jsonb)) on conflict (workspace_id, profile_id, badge) do update "
        "set seen = loyalty_badges.seen || jsonb_build_object(CAST(:e AS text), greatest("
        "loyalty_badges.seen->>CAST(:e AS text), CAST(:at AS text))) "
        "returning seen, earned_at"),
        {"ws": ws, "p": pid, "b": badge.name, "seen": dumps({event: at.isoformat()}), "e": event,
         "at": at.isoformat()})).first()
    if row is None or row.earned_at is not None or set(badge.events) - set(row.seen):
        return 0
    times = [datetime.fromisoformat(row.seen[e]) for e in badge.events]
    if max(times) - min(times) > timedelta(days=badge.within_days):
        return 0
    await session.execute(text("update campaign.loyalty_badges set earned_at = :at where workspace_id = :ws "
                               "and profile_id = :p and badge = :b"), {"at": at, "ws": ws, "p": pid, "b": badge.name})
    if badge.points:
        await ledger.credit(session, ws, pid, badge.points, f"badge:{slug(badge.name)}:{pid}", at,
                            expiry_months=config.expiry_months, reason=f"badge {badge.name}")
    await outbox.emit(session, ws, who, BADGE_EARNED, {"badge": badge.name, "points": badge.points}, at,
                      f"badge:{pid}:{badge.name}")
    return 1


async def badges_of(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID) -> list[dict[str, Any]]:
    rows = (await session.execute(text(
        "select badge, seen, earned_at from campaign.loyalty_badges where workspace_id = :ws and profile_id = :p "
        "order by badge"), {"ws": ws, "p": pid})).all()
    return [{"badge": r.badge, "events_done": sorted(r.seen), "earned_at": r.earned_at} for r in rows]
