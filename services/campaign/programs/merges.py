"""Following ingest's profile merges: when two profiles prove to be one person (a guest who logs in to an
older account), ingest appends a ``merge`` event (``profile_id`` the survivor, ``properties.merged_profile_id``
the merged-away one). The merged-away profile's program records move to the survivor, in the feed page's
transaction: points and their lots join one balance, badges combine, referrals follow either side,
the earliest first touch is kept, and the old referral code keeps working for the survivor.
"""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs import ledger
from shared.jsonutil import obj


def merge_of(item: dict[str, Any]) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(from, into) of a ``merge`` feed item, or None."""
    if item.get("type") != "merge":
        return None
    props = obj(item.get("properties"))
    try:
        old, new = uuid.UUID(str(props.get("merged_profile_id"))), uuid.UUID(str(item["profile_id"]))
    except ValueError:
        return None
    return (old, new) if old != new else None


async def move(session: AsyncSession, ws: uuid.UUID, old: uuid.UUID, new: uuid.UUID) -> bool:
    """Move ``old``'s program records to ``new``; idempotent (a replayed page finds nothing left to move).
    Returns whether anything moved."""
    p = {"ws": ws, "old": old, "new": new}
    moved = await _loyalty(session, p)
    # badges: progress the survivor lacks moves; where both have one, the survivor's stays
    await session.execute(text(
        "delete from campaign.loyalty_badges o where o.workspace_id = :ws and o.profile_id = :old and exists ("
        "select 1 from campaign.loyalty_badges n where n.workspace_id = :ws and n.profile_id = :new "
        "and n.badge = o.badge)"), p)
    moved |= await _update(session, "update campaign.loyalty_badges set profile_id = :new "
                                    "where workspace_id = :ws and profile_id = :old", p)
    # referrals: as referrer always; as the referred only if the survivor was not referred itself
    moved |= await _update(session, "update campaign.referrals set referrer_profile_id = :new "
                                    "where workspace_id = :ws and referrer_profile_id = :old", p)
    moved |= await _update(session, "update campaign.referrals set referred_profile_id = :new where workspace_id = :ws "
                                    "and referred_profile_id = :old and not exists (select 1 from campaign.referrals "
                                    "where workspace_id = :ws and referred_profile_id = :new)", p)
    moved |= await _update(session, "update campaign.referral_rewards set profile_id = :new "
                                    "where workspace_id = :ws and profile_id = :old", p)
    moved |= await _update(session, "update campaign.coupons set assigned_to = :new "
                                    "where workspace_id = :ws and assigned_to = :old", p)
    # the earliest first touch of the two
    await session.execute(text(
        "delete from campaign.referral_touches t where t.workspace_id = :ws and t.profile_id = "
        "(select case when o.touched_at < n.touched_at then :new else :old end from campaign.referral_touches o "
        "join campaign.referral_touches n on n.workspace_id = o.workspace_id and n.profile_id = :new "
        "where o.workspace_id = :ws and o.profile_id = :old)"), p)
    moved |= await _update(session, "update campaign.referral_touches set profile_id = :new "
                                    "where workspace_id = :ws and profile_id = :old", p)
    await session.execute(text(
        "insert into campaign.referral_fingerprints (workspace_id, digest, profile_id, kind) "
        "select workspace_id, digest, :new, kind from campaign.referral_fingerprints "
        "where workspace_id = :ws and profile_id = :old on conflict do nothing"), p)
    moved |= await _update(session, "delete from campaign.referral_fingerprints "
                                    "where workspace_id = :ws and profile_id = :old", p)
    # a code is unique per profile: the survivor's own (if any) stays its code; the old one moves when the
    # survivor has none, and otherwise keeps working on the survivor's behalf (codes.find follows it)
    moved |= await _update(session, "update campaign.referral_codes set profile_id = :new where workspace_id = :ws "
                                    "and profile_id = :old and not exists (select 1 from campaign.referral_codes "
                                    "where workspace_id = :ws and profile_id = :new)", p)
    moved |= await _update(session, "update campaign.referral_codes set merged_into = :new "
                                    "where workspace_id = :ws and profile_id = :old", p)
    return moved


async def _loyalty(session: AsyncSession, p: dict[str, Any]) -> bool:
    """One balance: the old account's points (and the lots behind them) join the survivor's."""
    old = (await session.execute(text(
        "select * from campaign.loyalty_accounts where workspace_id = :ws and profile_id = :old for update"),
        p)).mappings().first()
    if old is None:
        return False
    await ledger.ensure_account(session, p["ws"], p["new"], {"user_id": old["user_id"],
                                                            "anonymous_id": old["anonymous_id"]})
    await session.execute(text(
        "select 1 from campaign.loyalty_accounts where workspace_id = :ws and profile_id = :new for update"), p)
    await session.execute(text("update campaign.loyalty_ledger set profile_id = :new "
                               "where workspace_id = :ws and profile_id = :old"), p)
    await session.execute(text(
        "update campaign.loyalty_accounts set balance = balance + :b, updated_at = now() "
        "where workspace_id = :ws and profile_id = :new"), {**p, "b": old["balance"]})
    await session.execute(text("delete from campaign.loyalty_accounts where workspace_id = :ws and profile_id = :old"),
                          p)
    return True


async def _update(session: AsyncSession, sql: str, params: dict[str, Any]) -> bool:
    return bool((await session.execute(text(sql), params)).rowcount)  # type: ignore[attr-defined]
