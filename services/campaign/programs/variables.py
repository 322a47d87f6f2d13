"""What templates see of the programs: ``referral`` (code, share links, counts) and ``loyalty`` (points,
tier, benefits, next tier, points expiring next). A profile without a code gets one when a message is
rendered for it while the referral program is on, so ``{{ referral.links.email }}`` always works."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs import codes, ledger, service, tiers
from services.campaign.programs.config import LoyaltyConfig, Programs, ReferralConfig

NAMES = ("referral", "loyalty")


def used_by(*sources: str | None) -> set[str]:
    """Which program variables template sources mention (only those are computed: rendering a template
    that never shows a referral link creates no code)."""
    return {name for name in NAMES if any(name in (src or "") for src in sources)}


async def for_profiles(session: AsyncSession, ws: uuid.UUID, profiles: dict[str, dict[str, Any]],
                       now: datetime | None = None, wanted: dict[str, set[str]] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """Profile id -> {"referral": ..., "loyalty": ...} for the workspace's enabled programs (``wanted``:
    per profile id, which of them; default: both)."""
    now = now or datetime.now(UTC)
    programs = await Programs.load(session, {ws})
    ref_cfg, loyalty = programs.referral.get(ws), programs.loyalty.get(ws)
    out: dict[str, dict[str, Any]] = {}
    for pid, profile in profiles.items():
        values: dict[str, Any] = {}
        need = set(NAMES) if wanted is None else wanted.get(pid, set())
        if ref_cfg is not None and "referral" in need:
            values["referral"] = await _referral(session, ws, uuid.UUID(pid), profile, ref_cfg)
        if loyalty is not None and "loyalty" in need:
            values["loyalty"] = await _loyalty(session, ws, uuid.UUID(pid), loyalty, now)
        out[pid] = values
    return out


async def _referral(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, profile: dict[str, Any],
                    cfg: ReferralConfig) -> dict[str, Any]:
    code = await codes.get_or_create(session, ws, pid, profile)
    counts = (await session.execute(text(
        "select count(*) filter (where status <> 'rejected') as referred, "
        "count(*) filter (where status = 'rewarded') as rewarded from campaign.referrals "
        "where workspace_id = :ws and referrer_profile_id = :p"), {"ws": ws, "p": pid})).one()
    links = codes.links(cfg, code["code"])
    return {"code": code["code"], "links": links, "link": links["email"], "referred": counts.referred,
            "rewarded": counts.rewarded}


async def _loyalty(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, cfg: LoyaltyConfig, now: datetime
                   ) -> dict[str, Any]:
    acct = await ledger.account(session, ws, pid)
    if acct is None:
        return {"points": 0, "tier": None, "benefits": [], **tiers.progress(0, None, cfg), "expiring": None}
    value = await tiers.qualifying_value(session, ws, pid, cfg, now)
    current = await service.balance(session, ws, pid, now)  # as the API says it (lots past their date excluded)
    soon = current["expiring"][:1]
    return {"points": current["balance"], "tier": acct["tier"], **tiers.progress(value, acct["tier"], cfg),
            "expiring": ({"points": soon[0]["points"], "at": soon[0]["expires_at"].date().isoformat()}
                         if soon else None)}
