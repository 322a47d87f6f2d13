"""Erasure and export of what campaign holds about profiles: the sends decided for them."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, int]:
    res = await session.execute(
        text("delete from campaign.sends where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
        {"ws": ws, "p": pids},
    )
    return {"sends": res.rowcount}  # type: ignore[attr-defined]


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, Any]:
    rows = await session.execute(
        text("select id, campaign_id, campaign_version, occurrence, status, reason, delivery_message_id, "
             "trigger_data, created_at from campaign.sends "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by created_at"),
        {"ws": ws, "p": pids},
    )
    return {"sends": [dict(r) for r in rows.mappings()]}
