"""The loyalty points ledger: append-only entries over a balance row per member.

Every write first locks the member's ``loyalty_accounts`` row (``SELECT … FOR UPDATE``), so writes to
one member are serialised: two concurrent redemptions cannot both spend the same points, and the
balance check and the debit see the same balance (a check constraint backs it: ``balance >= 0``).
Each entry carries a ``source`` unique per workspace (the event's messageId, the Idempotency-Key …):
writing the same source again returns the first entry instead of writing a second one.

Positive entries are *lots*: ``remaining`` is what is left of them. Debits consume lots soonest-expiring
first (FIFO); expiry turns what is left of a lot past ``expires_at`` into an ``expire`` entry. So the
sum of ``remaining`` always equals the balance, and the sum of all entries' points too.
"""

import calendar
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import row_dict
from shared.errors import Conflict, NotFound


class InsufficientPoints(Conflict):
    slug, title = "insufficient-points", "Not enough points"


@dataclass
class Written:
    entry: dict[str, Any]
    created: bool  # False: the source had been written before (idempotent replay)


def add_months(at: datetime, months: int) -> datetime:
    """The same day ``months`` later (the month's last day when it is shorter: Jan 31 + 1 → Feb 28/29)."""
    index = at.month - 1 + months
    year, month = at.year + index // 12, index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return at.replace(year=year, month=month, day=min(at.day, last))


def expiry(at: datetime, months: int | None) -> datetime | None:
    return add_months(at, months) if months else None


async def ensure_account(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, who: dict[str, Any] | None = None,
                         at: datetime | None = None) -> None:
    """Create the member's balance row if missing; remember the ids events about them are sent under."""
    who = who or {}
    await session.execute(text(
        "insert into campaign.loyalty_accounts (workspace_id, profile_id, user_id, anonymous_id, created_at) "
        "values (:ws, :p, :u, :a, coalesce(CAST(:at AS timestamptz), now())) on conflict (workspace_id, profile_id) "
        "do update set user_id = coalesce(excluded.user_id, loyalty_accounts.user_id), "
        "anonymous_id = coalesce(excluded.anonymous_id, loyalty_accounts.anonymous_id) "
        "where (excluded.user_id is not null and excluded.user_id is distinct from loyalty_accounts.user_id) "
        "or (excluded.anonymous_id is not null "
        "and excluded.anonymous_id is distinct from loyalty_accounts.anonymous_id)"),
        {"ws": ws, "p": pid, "u": who.get("user_id"), "a": who.get("anonymous_id"), "at": at})


async def lock(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(text(
        "select * from campaign.loyalty_accounts where workspace_id = :ws and profile_id = :p for update"),
        {"ws": ws, "p": pid})).first()
    if row is None:
        raise NotFound("This profile has no loyalty account yet")
    return row_dict(row)


async def account(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID) -> dict[str, Any] | None:
    row = (await session.execute(text(
        "select * from campaign.loyalty_accounts where workspace_id = :ws and profile_id = :p"),
        {"ws": ws, "p": pid})).first()
    return row_dict(row) if row else None


async def _by_source(session: AsyncSession, ws: uuid.UUID, source: str) -> dict[str, Any] | None:
    row = (await session.execute(text("select * from campaign.loyalty_ledger where workspace_id = :ws "
                                      "and source = :s"), {"ws": ws, "s": source})).first()
    return row_dict(row) if row else None


async def _append(session: AsyncSession, acct: dict[str, Any], kind: str, points: int, source: str, at: datetime,
                  *, reason: str | None = None, order_id: str | None = None, spend: Decimal | None = None,
                  expires_at: datetime | None = None) -> dict[str, Any]:
    balance = acct["balance"] + points
    row = (await session.execute(text(
        "insert into campaign.loyalty_ledger (workspace_id, profile_id, kind, points, balance_after, source, reason, "
        "order_id, spend, remaining, expires_at, at) values (:ws, :p, :k, :pts, :bal, :src, :r, :o, :spend, :rem, "
        ":exp, :at) returning *"),
        {"ws": acct["workspace_id"], "p": acct["profile_id"], "k": kind, "pts": points, "bal": balance,
         "src": source, "r": reason, "o": order_id, "spend": spend, "rem": max(points, 0), "exp": expires_at,
         "at": at})).first()
    await session.execute(text("update campaign.loyalty_accounts set balance = :b, updated_at = now() "
                               "where workspace_id = :ws and profile_id = :p"),
                          {"b": balance, "ws": acct["workspace_id"], "p": acct["profile_id"]})
    acct["balance"] = balance
    return row_dict(row)


async def credit(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, points: int, source: str, at: datetime, *,
                 kind: str = "earn", expiry_months: int | None = None, reason: str | None = None,
                 order_id: str | None = None, spend: Decimal | None = None) -> Written:
    """Add points (a lot expiring ``expiry_months`` after ``at``); once per ``source``."""
    if points < 0:
        raise ValueError("credit takes points >= 0")
    acct = await lock(session, ws, pid)
    if (before := await _by_source(session, ws, source)) is not None:
        return Written(before, False)
    entry = await _append(session, acct, kind, points, source, at, reason=reason, order_id=order_id, spend=spend,
                          expires_at=expiry(at, expiry_months))
    return Written(entry, True)


async def debit(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, points: int, source: str, at: datetime, *,
                kind: str = "redeem", reason: str | None = None, partial: bool = False,
                order_id: str | None = None, spend: Decimal | None = None) -> Written:
    """Take points, soonest-expiring lots first; once per ``source``. More than the balance raises
    :class:`InsufficientPoints`, or with ``partial`` takes what there is (a reversal of spent points)."""
    if points <= 0 and spend is None:
        raise ValueError("debit takes points > 0")
    acct = await lock(session, ws, pid)
    if (before := await _by_source(session, ws, source)) is not None:
        return Written(before, False)
    await expire_account(session, acct, at)  # expired points cannot be spent
    if points > acct["balance"]:
        if not partial:
            raise InsufficientPoints(f"The balance is {acct['balance']} points; {points} asked",
                                     balance=acct["balance"])
        points = acct["balance"]
    await _consume(session, acct, points)
    entry = await _append(session, acct, kind, -points, source, at, reason=reason, order_id=order_id, spend=spend)
    return Written(entry, True)


async def _consume(session: AsyncSession, acct: dict[str, Any], points: int) -> None:
    if points <= 0:
        return
    lots = (await session.execute(text(
        "select seq, remaining from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and remaining > 0 order by expires_at nulls last, seq"),
        {"ws": acct["workspace_id"], "p": acct["profile_id"]})).all()
    seqs, left = [], []
    for lot in lots:
        if points == 0:
            break
        take = min(points, lot.remaining)
        points -= take
        seqs.append(lot.seq)
        left.append(lot.remaining - take)
    if points:
        raise RuntimeError("lots do not cover the balance")  # the invariant is broken: stop, roll back
    await session.execute(text(
        "update campaign.loyalty_ledger l set remaining = v.rest from unnest(CAST(:s AS bigint[]), "
        "CAST(:l AS int[])) as v(seq, rest) where l.seq = v.seq"), {"s": seqs, "l": left})


async def expire_account(session: AsyncSession, acct: dict[str, Any], now: datetime) -> int:
    """Expire what is left of the member's lots due by ``now`` (the account is locked); returns points."""
    lots = (await session.execute(text(
        "select seq, remaining, expires_at from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and remaining > 0 and expires_at <= :now order by expires_at, seq"),
        {"ws": acct["workspace_id"], "p": acct["profile_id"], "now": now})).all()
    total = 0
    for lot in lots:
        await session.execute(text("update campaign.loyalty_ledger set remaining = 0 where seq = :s"), {"s": lot.seq})
        await _append(session, acct, "expire", -lot.remaining, f"expire:{lot.seq}", lot.expires_at,
                      reason=f"points earned in entry {lot.seq} expired")
        total += lot.remaining
    return total


async def history(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, before: int | None, limit: int
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """Entries newest first; the cursor is the last entry's seq."""
    rows = (await session.execute(text(
        "select seq, kind, points, balance_after, source, reason, order_id, remaining, expires_at, at "
        "from campaign.loyalty_ledger where workspace_id = :ws and profile_id = :p "
        "and (CAST(:b AS bigint) is null or seq < :b) order by seq desc limit :lim"),
        {"ws": ws, "p": pid, "b": before, "lim": limit + 1})).all()
    items = [row_dict(r) for r in rows[:limit]]
    return items, (str(items[-1]["seq"]) if len(rows) > limit else None)


async def expiring(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, limit: int = 5) -> list[dict[str, Any]]:
    rows = (await session.execute(text(
        "select expires_at, sum(remaining) as points from campaign.loyalty_ledger where workspace_id = :ws "
        "and profile_id = :p and remaining > 0 and expires_at is not null group by expires_at order by expires_at "
        "limit :lim"), {"ws": ws, "p": pid, "lim": limit})).all()
    return [{"expires_at": r.expires_at, "points": int(r.points)} for r in rows]
