"""Push tokens of users (by userId or anonymousId), registered by apps and removed when FCM says gone."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import row_dict


async def register(session: AsyncSession, ws: uuid.UUID, user: str, platform: str, token: str) -> dict[str, Any]:
    """Idempotent; a token that moves to another user (a shared device) follows its latest owner."""
    row = (await session.execute(text(
        "insert into delivery.devices (workspace_id, token, user_ref, platform) values (:ws, :t, :u, :p) "
        "on conflict (workspace_id, token) do update set user_ref = excluded.user_ref, "
        "platform = excluded.platform returning user_ref as user, platform, token, created_at, last_used_at"),
        {"ws": ws, "t": token, "u": user, "p": platform})).one()
    return row_dict(row)


async def list_devices(session: AsyncSession, ws: uuid.UUID, user: str) -> list[dict[str, Any]]:
    rows = await session.execute(text(
        "select user_ref as user, platform, token, created_at, last_used_at from delivery.devices "
        "where workspace_id = :ws and user_ref = :u order by created_at"), {"ws": ws, "u": user})
    return [row_dict(r) for r in rows]


async def tokens_of(session: AsyncSession, ws: uuid.UUID, user: str) -> list[str]:
    return [d["token"] for d in await list_devices(session, ws, user)]


async def forget(session: AsyncSession, ws: uuid.UUID, tokens: list[str]) -> int:
    if not tokens:
        return 0
    res = await session.execute(text("delete from delivery.devices where workspace_id = :ws "
                                     "and token = any(CAST(:t AS text[]))"), {"ws": ws, "t": tokens})
    return int(res.rowcount)  # type: ignore[attr-defined]


async def used(session: AsyncSession, ws: uuid.UUID, tokens: list[str]) -> None:
    if tokens:
        await session.execute(text("update delivery.devices set last_used_at = now() where workspace_id = :ws "
                                   "and token = any(CAST(:t AS text[]))"), {"ws": ws, "t": tokens})
