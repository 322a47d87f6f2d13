"""Erasure and export of what delivery holds about profiles: their messages and every attempt."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_MINE = "workspace_id = :ws and (metadata->>'profile_id') = any(CAST(:p AS text[]))"


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, int]:
    params = {"ws": ws, "p": [str(p) for p in pids]}
    attempts = await session.execute(
        text(f"delete from delivery.attempts where message_id in (select id from delivery.messages where {_MINE})"),
        params,
    )
    messages = await session.execute(text(f"delete from delivery.messages where {_MINE}"), params)
    return {"messages": messages.rowcount, "attempts": attempts.rowcount}  # type: ignore[attr-defined]


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, Any]:
    rows = await session.execute(
        text(f"select id, channel, to_address, subject, html, text, status, attempts, last_error, created_at, "
             f"sent_at from delivery.messages where {_MINE} order by created_at"),
        {"ws": ws, "p": [str(p) for p in pids]},
    )
    return {"messages": [dict(r) for r in rows.mappings()]}
