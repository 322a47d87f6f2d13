"""The programs' operations behind the HTTP API (no HTTP here): configuration, coupon pools, codes and
invites, referral tracking, and a member's balance, redemptions, adjustments and tier."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs import codes, config, ledger, outbox, tiers
from shared.db import Stamp, fetch_newest_first, row_dict
from shared.errors import Conflict, NotFound, ValidationFailed

SENT = "Referral Sent"


async def upload_coupons(session: AsyncSession, ws: uuid.UUID, pool: str, new: list[str]) -> dict[str, Any]:
    clean = sorted({c.strip() for c in new if c.strip()})
    if not clean:
        raise ValidationFailed("Every code is blank: send at least one code")
    added = (await session.execute(text(
        "insert into campaign.coupons (workspace_id, pool, code) "
        "select :ws, :pool, c from unnest(CAST(:c AS text[])) c on conflict do nothing returning code"),
        {"ws": ws, "pool": pool, "c": clean})).all()
    return {**await pool_stats(session, ws, pool), "added": len(added)}


async def pool_stats(session: AsyncSession, ws: uuid.UUID, pool: str) -> dict[str, Any]:
    r = (await session.execute(text(
        "select count(*) as total, count(*) filter (where assigned_to is null and not revoked) as available, "
        "count(*) filter (where assigned_to is not null) as assigned, count(*) filter (where revoked) as revoked "
        "from campaign.coupons where workspace_id = :ws and pool = :pool"), {"ws": ws, "pool": pool})).mappings().one()
    if r["total"] == 0:
        raise NotFound(f"No coupon pool {pool!r}")
    return {"pool": pool, **r}


async def _referral_config(session: AsyncSession, ws: uuid.UUID) -> config.ReferralConfig:
    program = await config.get(session, ws, "referral")
    return config.ReferralConfig.model_validate(program["config"])


async def code_for(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, who: dict[str, Any]) -> dict[str, Any]:
    cfg = await _referral_config(session, ws)
    code = await codes.get_or_create(session, ws, pid, who)
    return {**code, "links": codes.links(cfg, code["code"])}


async def invite(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, who: dict[str, Any], channel: str,
                 key: str | None, now: datetime) -> tuple[dict[str, Any], bool]:
    """A referrer shared their link: ``Referral Sent`` for them, once per idempotency key; returns (answer,
    created). A retry gets the first answer (its link, even if the landing URL changed since); the same key on
    another channel is a conflict, not an answer for a share that was never recorded."""
    code = await code_for(session, ws, pid, who)
    link = code["links"][channel]
    queued = await outbox.emit_keyed(session, ws, who, SENT, {"code": code["code"], "channel": channel, "link": link},
                                     now, f"sent:{pid}:{key or uuid.uuid4()}")
    if queued is None or queued[1]:
        return {"code": code["code"], "link": link, "event": SENT}, True
    first = queued[0]
    if first.get("channel") != channel:
        raise Conflict(f"This idempotency_key was used for an invite on another channel ({first.get('channel')})",
                       idempotency_key=key)
    return {"code": first.get("code", code["code"]), "link": first.get("link", link), "event": SENT}, False


async def list_referrals(session: AsyncSession, ws: uuid.UUID, referrer: uuid.UUID | None, status: str | None,
                         after: Stamp | None, limit: int) -> tuple[list[dict[str, Any]], Stamp | None]:
    """Newest first: by the sign-up's time (``converted_at``), then id, after the previous page's last
    (ix_referrals_log reads just the page; ix_referrals_referrer a referrer's)."""
    return await fetch_newest_first(session, (
        "select * from campaign.referrals where workspace_id = :ws "
        "and (CAST(:r AS uuid) is null or referrer_profile_id = :r) and (CAST(:st AS text) is null or status = :st) "
        "and (CAST(:after_at AS timestamptz) is null or (converted_at, id) < (:after_at, CAST(:after_id AS uuid))) "
        "order by converted_at desc, id desc limit :lim"),
        {"ws": ws, "r": referrer, "st": status}, limit, after, at="converted_at")


async def get_referral(session: AsyncSession, ws: uuid.UUID, rid: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(text("select * from campaign.referrals where workspace_id = :ws and id = :id"),
                                 {"ws": ws, "id": rid})).first()
    if row is None:
        raise NotFound("No such referral")
    rewards = (await session.execute(text("select * from campaign.referral_rewards where referral_id = :id "
                                          "order by side desc"), {"id": rid})).all()
    return {**row_dict(row), "rewards": [row_dict(r) for r in rewards]}


async def _loyalty_config(session: AsyncSession, ws: uuid.UUID) -> config.LoyaltyConfig:
    program = await config.get(session, ws, "loyalty")
    return config.LoyaltyConfig.model_validate(program["config"])


async def balance(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, now: datetime) -> dict[str, Any]:
    acct = await ledger.account(session, ws, pid)
    if acct is None:
        return {"profile_id": str(pid), "balance": 0, "tier": None, "expiring": []}
    due = (await session.execute(text(
        "select coalesce(sum(remaining), 0) from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and remaining > 0 and expires_at <= :now"), {"ws": ws, "p": pid, "now": now})).scalar_one()
    soon = [e for e in await ledger.expiring(session, ws, pid) if e["expires_at"] > now]
    return {"profile_id": str(pid), "balance": acct["balance"] - int(due), "tier": acct["tier"], "expiring": soon}


async def redeem(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, points: int, reason: str | None, key: str,
                 now: datetime) -> tuple[dict[str, Any], bool]:
    """Spend points once per Idempotency-Key; returns (entry, created). The same key with another amount
    is a conflict, not a second redemption."""
    if await ledger.account(session, ws, pid) is None:
        raise ledger.InsufficientPoints("This member has no points", balance=0)
    w = await ledger.debit(session, ws, pid, points, f"redeem:{pid}:{key}", now, reason=reason)
    if not w.created and (w.entry["kind"] != "redeem" or -w.entry["points"] != points):
        raise Conflict("This Idempotency-Key was used for a different redemption")
    return w.entry, w.created


async def adjust(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, points: int, reason: str, key: str,
                 now: datetime, who: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """A manual correction (support goodwill, a fix): credits expire like earned points. ``who`` (the ids ingest
    knows the member by) goes on the account, as when points are earned: a member credited only by hand was
    ``user_id: null`` on the leaderboard."""
    source = f"adjust:{pid}:{key}"
    if points >= 0:
        cfg = await _loyalty_config(session, ws)
        await ledger.ensure_account(session, ws, pid, who)
        w = await ledger.credit(session, ws, pid, points, source, now, kind="adjust", reason=reason,
                                expiry_months=cfg.expiry_months)
    else:
        if await ledger.account(session, ws, pid) is None:
            raise ledger.InsufficientPoints("This member has no points", balance=0)
        w = await ledger.debit(session, ws, pid, -points, source, now, kind="adjust", reason=reason)
    if not w.created and w.entry["points"] != points:
        raise Conflict("This Idempotency-Key was used for a different adjustment")
    return w.entry, w.created


async def tier(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, now: datetime) -> dict[str, Any]:
    cfg = await _loyalty_config(session, ws)
    acct = await ledger.account(session, ws, pid) or {}
    value = await tiers.qualifying_value(session, ws, pid, cfg, now)
    return {"profile_id": str(pid), "tier": acct.get("tier"), "since": acct.get("tier_since"),
            "basis": cfg.tier_basis, "qualifying_value": value, "window_days": cfg.tier_window_days,
            **tiers.progress(value, acct.get("tier"), cfg)}
