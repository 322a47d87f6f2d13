"""Two-sided referral rewards: granted once when the referred user's qualifying event happens, reversed
when that order is refunded.

Exactly once: the referral row moves ``converted → rewarded`` under a row lock, each side's reward is a
row unique per (referral, side), points are a ledger entry whose source is the reward, and all of it
commits with the feed cursor. A replayed page finds the referral rewarded and does nothing.
"""

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.journey_def import compare
from services.campaign.programs import ledger, outbox, tiers
from services.campaign.programs.config import CouponReward, EventReward, LoyaltyConfig, PointsReward, ReferralConfig
from shared.jsonutil import obj

GRANTED = "Referral Reward Granted"
REVERSED = "Referral Reward Reversed"


async def who_is(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID) -> dict[str, Any]:
    """The ids ingest knows a referrer by (kept with their code, or their loyalty account)."""
    row = (await session.execute(text(
        "select user_id, anonymous_id from campaign.referral_codes where workspace_id = :ws and profile_id = :p "
        "union all select user_id, anonymous_id from campaign.loyalty_accounts where workspace_id = :ws "
        "and profile_id = :p limit 1"), {"ws": ws, "p": pid})).mappings().first()
    return dict(row) if row else {}


def qualifies(cfg: ReferralConfig, item: dict[str, Any]) -> bool:
    q = cfg.qualifying
    props = item.get("properties") or {}
    return item.get("event") == q.event and all(compare(f.op, props.get(f.property), f.value) for f in q.where)


async def claim_coupon(session: AsyncSession, ws: uuid.UUID, pool: str, pid: uuid.UUID, at: datetime) -> str | None:
    """The pool's oldest unused code, now assigned to ``pid`` (None when the pool is empty)."""
    return (await session.execute(text(
        "update campaign.coupons set assigned_to = :p, assigned_at = :at where (workspace_id, pool, code) = ("
        "select workspace_id, pool, code from campaign.coupons where workspace_id = :ws and pool = :pool "
        "and assigned_to is null and not revoked order by seq limit 1 for update skip locked) returning code"),
        {"p": pid, "at": at, "ws": ws, "pool": pool})).scalar()


async def on_qualifying(session: AsyncSession, cfg: ReferralConfig, loyalty: LoyaltyConfig | None,
                        item: dict[str, Any], at: datetime, now: datetime) -> int:
    """Grant both sides' rewards if this is the referred user's qualifying event; returns rewards granted."""
    ws, pid = uuid.UUID(item["workspace_id"]), uuid.UUID(item["profile_id"])
    ref = (await session.execute(text(
        "select * from campaign.referrals where workspace_id = :ws and referred_profile_id = :p "
        "and status = 'converted' for update"), {"ws": ws, "p": pid})).mappings().first()
    if ref is None or at < ref["converted_at"]:
        return 0
    if cfg.qualifying.within_days and at > ref["converted_at"] + timedelta(days=cfg.qualifying.within_days):
        return 0
    props = obj(item.get("properties"))
    order_id = str(props["order_id"]) if props.get("order_id") not in (None, "") else None
    status, reason = "rewarded", None
    # what the two accounts told since the signup (an email added at checkout, the app opened on the
    # referrer's phone) is checked again before anything is paid
    shared = (await session.execute(text(
        "select min(a.kind) from campaign.referral_fingerprints a join campaign.referral_fingerprints b "
        "on b.workspace_id = a.workspace_id and b.digest = a.digest and b.kind = a.kind "
        "where a.workspace_id = :ws and a.profile_id = :rd and b.profile_id = :rr"),
        {"ws": ws, "rd": pid, "rr": ref["referrer_profile_id"]})).scalar()
    if shared is not None:
        status, reason = "rejected", f"duplicate_{shared}"
    elif cfg.max_rewarded_per_referrer is not None:
        done = (await session.execute(text(
            "select count(*) from campaign.referrals where workspace_id = :ws and referrer_profile_id = :r "
            "and status in ('rewarded', 'reversed')"), {"ws": ws, "r": ref["referrer_profile_id"]})).scalar_one()
        if done >= cfg.max_rewarded_per_referrer:
            status, reason = "capped", f"the referrer reached {cfg.max_rewarded_per_referrer} rewarded referrals"
    await session.execute(text(
        "update campaign.referrals set status = :st, reason = :r, order_id = :o, rewarded_at = :at where id = :id"),
        {"st": status, "r": reason, "o": order_id, "at": at, "id": ref["id"]})
    if status != "rewarded":
        return 0
    granted = 0
    who_referred = {"user_id": item.get("user_id"), "anonymous_id": item.get("anonymous_id")}
    sides = (("referrer", ref["referrer_profile_id"], cfg.referrer_reward,
              await who_is(session, ws, ref["referrer_profile_id"])),
             ("referred", pid, cfg.referred_reward, who_referred))
    for side, profile_id, reward, who in sides:
        if reward is not None:
            granted += await _grant(session, ws, ref, side, profile_id, reward, who or {}, loyalty, at, order_id)
            if isinstance(reward, PointsReward) and loyalty is not None:  # the points may lift the tier
                await tiers.evaluate(session, await ledger.lock(session, ws, profile_id), loyalty, now)
    return granted


async def _grant(session: AsyncSession, ws: uuid.UUID, ref: Any, side: str, pid: uuid.UUID, reward: Any,
                 who: dict[str, Any], loyalty: LoyaltyConfig | None, at: datetime, order_id: str | None) -> int:
    rid = uuid.uuid4()
    created = (await session.execute(text(
        "insert into campaign.referral_rewards (id, workspace_id, referral_id, side, profile_id, kind, status, "
        "granted_at) values (:id, :ws, :ref, :side, :p, :k, 'granted', :at) "
        "on conflict (referral_id, side) do nothing returning id"),
        {"id": rid, "ws": ws, "ref": ref["id"], "side": side, "p": pid, "k": reward.type, "at": at})).first()
    if created is None:
        return 0
    values: dict[str, Any] = {"status": "granted", "detail": None, "points": None, "coupon": None, "event": None}
    if isinstance(reward, PointsReward):
        await ledger.ensure_account(session, ws, pid, who, at)
        await ledger.credit(session, ws, pid, reward.points, f"referral:{rid}", at, reason=f"referral ({side})",
                            expiry_months=loyalty.expiry_months if loyalty else None)
        values["points"] = reward.points
    elif isinstance(reward, CouponReward):
        code = await claim_coupon(session, ws, reward.pool, pid, at)
        values.update(coupon=code, status="granted" if code else "unfulfilled",
                      detail=None if code else f"coupon pool {reward.pool!r} is empty")
    elif isinstance(reward, EventReward):
        values["event"] = reward.event
        await outbox.emit(session, ws, who, reward.event, {**reward.properties, "referral_id": str(ref["id"]),
                                                           "side": side}, at, f"reward-event:{rid}")
    await session.execute(text(
        "update campaign.referral_rewards set status = :status, detail = :detail, points = :points, "
        "coupon_code = :coupon, event = :event where id = :id"), {**values, "id": rid})
    if values["status"] == "granted":
        await outbox.emit(session, ws, who, GRANTED, {
            "referral_id": str(ref["id"]), "side": side, "reward": reward.type, "points": values["points"],
            "coupon_code": values["coupon"], "order_id": _own(side, order_id)}, at, f"granted:{rid}")
    return 1


def _own(side: str, order_id: str | None) -> str | None:
    """The qualifying order's id for the referred user's records only: it is their order (an id such as
    ``noah-1`` may even name them), and in the referrer's history it would outlive the referred user's erasure."""
    return order_id if side == "referred" else None


async def on_refund(session: AsyncSession, item: dict[str, Any], at: datetime) -> int:
    """Reverse the rewards of the referral whose qualifying order this refund names; returns rewards reversed."""
    props = item.get("properties") or {}
    if props.get("order_id") in (None, ""):
        return 0
    ws, pid = uuid.UUID(item["workspace_id"]), uuid.UUID(item["profile_id"])
    ref = (await session.execute(text(
        "select * from campaign.referrals where workspace_id = :ws and referred_profile_id = :p "
        "and status = 'rewarded' and order_id = :o for update"),
        {"ws": ws, "p": pid, "o": str(props["order_id"])})).mappings().first()
    if ref is None:
        return 0
    await session.execute(text("update campaign.referrals set status = 'reversed', reversed_at = :at where id = :id"),
                          {"at": at, "id": ref["id"]})
    rewards = (await session.execute(text(
        "select * from campaign.referral_rewards where referral_id = :id and status = 'granted' order by side "
        "for update"), {"id": ref["id"]})).mappings().all()
    who_referred = {"user_id": item.get("user_id"), "anonymous_id": item.get("anonymous_id")}
    for r in rewards:
        detail = None
        if r["kind"] == "points" and r["points"]:
            order = _own(r["side"], str(props["order_id"]))
            w = await ledger.debit(session, ws, r["profile_id"], r["points"], f"reverse:{r['id']}", at,
                                   kind="adjust", partial=True, reason="referral reward reversed "
                                   + (f"(order {order} refunded)" if order else "(the qualifying order was refunded)"))
            taken = -w.entry["points"]
            if taken < r["points"]:
                detail = f"{r['points'] - taken} points had already been spent"
        elif r["kind"] == "coupon" and r["coupon_code"]:
            await session.execute(text("update campaign.coupons set revoked = true where workspace_id = :ws "
                                       "and code = :c and assigned_to = :p"),
                                  {"ws": ws, "c": r["coupon_code"], "p": r["profile_id"]})
        await session.execute(text("update campaign.referral_rewards set status = 'reversed', reversed_at = :at, "
                                   "detail = coalesce(:d, detail) where id = :id"),
                              {"at": at, "d": detail, "id": r["id"]})
        who = who_referred if r["side"] == "referred" else await who_is(session, ws, r["profile_id"])
        await outbox.emit(session, ws, who, REVERSED, {
            "referral_id": str(ref["id"]), "side": r["side"], "reward": r["kind"], "points": r["points"],
            "coupon_code": r["coupon_code"], "event": r["event"], "order_id": _own(r["side"], str(props["order_id"]))},
            at, f"reversed:{r['id']}")
    return len(rewards)
