"""Erasure and export of what campaign holds about profiles: their journeys (with the trigger's data, the events
they waited for) and each journey's path, the hours they engage at, the sends decided for them, their referral and
loyalty records (codes, first touches, fingerprints, referrals on either side, rewards, ledger, badges), and the
idempotency keys of API triggers that entered them. The export lists every kind the erasure deletes; fingerprints
as they are kept, SHA-256 digests of an email, phone or device id (the values themselves are not held)."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import profile_merges

# table -> the column(s) naming the profile (a referral names two)
_PROGRAM_TABLES = {
    "referral_rewards": ("profile_id",),
    "referrals": ("referred_profile_id", "referrer_profile_id"),
    "referral_codes": ("profile_id",),
    "referral_touches": ("profile_id",),
    "referral_fingerprints": ("profile_id",),
    "loyalty_ledger": ("profile_id",),
    "loyalty_badges": ("profile_id",),
    "loyalty_accounts": ("profile_id",),
    "trigger_keys": ("profile_id",),  # an API trigger's key names whom it entered
}


def _where(columns: tuple[str, ...]) -> str:
    return " or ".join(f"{c} = any(CAST(:p AS uuid[]))" for c in columns)


# journeys first: a run of one holds its row until it commits, with the sends it decided, so once the journey is
# deleted (after waiting for that run) the sends below are all there to delete
_PROFILE_TABLES = ("journeys", "journey_log", "engagement_hours", "sends")


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in _PROFILE_TABLES:
        res = await session.execute(
            text(f"delete from campaign.{table} where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
            {"ws": ws, "p": pids},
        )
        out[table] = res.rowcount  # type: ignore[attr-defined]
    # the code itself was handed out: it stays revoked, never goes back to the pool for someone else
    await session.execute(text("update campaign.coupons set assigned_to = null, revoked = true "
                               "where workspace_id = :ws and assigned_to = any(CAST(:p AS uuid[]))"),
                          {"ws": ws, "p": pids})
    for table, columns in _PROGRAM_TABLES.items():
        where = _where(columns)
        if table == "referral_rewards":  # both sides' rewards of a referral that goes
            where += (" or referral_id in (select id from campaign.referrals where workspace_id = :ws and ("
                      f"{_where(_PROGRAM_TABLES['referrals'])}))")
        res = await session.execute(text(f"delete from campaign.{table} where workspace_id = :ws and ({where})"),
                                    {"ws": ws, "p": pids})
        out[table] = res.rowcount  # type: ignore[attr-defined]
    out["merged_profiles"] = await profile_merges.forget(session, "campaign", ws, pids)
    return out


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, Any]:
    rows = await session.execute(
        text("select id, campaign_id, campaign_version, occurrence, status, reason, delivery_message_id, "
             "trigger_data, created_at from campaign.sends "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by created_at"),
        {"ws": ws, "p": pids},
    )
    out: dict[str, Any] = {"sends": [dict(r) for r in rows.mappings()]}
    journeys = await session.execute(
        text("select id, campaign_id, version, status, step, variant, trigger_data, entered_at, ended_at, "
             "converted_at, converted_value from campaign.journeys "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by entered_at, id"),
        {"ws": ws, "p": pids},
    )
    out["journeys"] = [dict(r) for r in journeys.mappings()]
    log = await session.execute(
        text("select journey_id, campaign_id, step, kind, detail, at from campaign.journey_log "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by seq"),
        {"ws": ws, "p": pids},
    )
    out["journey_log"] = [dict(r) for r in log.mappings()]
    hours = await session.execute(
        text("select hour, n from campaign.engagement_hours "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by hour"),
        {"ws": ws, "p": pids},
    )
    out["engagement_hours"] = [dict(r) for r in hours.mappings()]
    for table in _PROGRAM_TABLES:  # each kind the erasure deletes (docs/programs.md says the export has them)
        found = await session.execute(text(f"select * from campaign.{table} where workspace_id = :ws "
                                           f"and ({_where(_PROGRAM_TABLES[table])})"), {"ws": ws, "p": pids})
        out[table] = [dict(r) for r in found.mappings()]
    return out


async def erase_by_identity(session: AsyncSession, ws: uuid.UUID, identities: list[str]) -> dict[str, int]:
    """Program events about the person still in (or already through) the outbox to ingest: they name the
    user's ids, and a pending one would otherwise recreate the erased profile."""
    res = await session.execute(text(
        "delete from campaign.program_outbox where workspace_id = :ws and (payload->>'userId' = any(CAST(:ids AS "
        "text[])) or payload->>'anonymousId' = any(CAST(:ids AS text[])))"), {"ws": ws, "ids": identities})
    return {"program_outbox": res.rowcount}  # type: ignore[attr-defined]


async def export_by_identity(session: AsyncSession, ws: uuid.UUID, identities: list[str]) -> dict[str, Any]:
    return {}  # the outbox holds copies of what the export above already lists
