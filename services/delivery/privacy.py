"""Erasure and export of what delivery holds about profiles: their messages, every attempt and provider
report kept for them, and the devices (push tokens, Web Push subscriptions) registered under the user's ids.

Suppressions and the consent log are kept: they are what proves and honours an opt-out (GDPR art. 17(3)),
and they hold an address, not a profile."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_MINE = "workspace_id = :ws and (metadata->>'profile_id') = any(CAST(:p AS text[]))"


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, int]:
    params = {"ws": ws, "p": [str(p) for p in pids]}
    # messages first: a worker recording an attempt meanwhile then sees the message gone (and writes none),
    # or committed before, and its attempt goes with the ids deleted here
    rows = (await session.execute(text(f"delete from delivery.messages where {_MINE} "
                                       "returning id, provider_message_id"), params)).all()
    ids = [r.id for r in rows]
    attempts = await session.execute(text("delete from delivery.attempts where message_id = any(CAST(:ids AS uuid[]))"),
                                     {"ids": ids})
    # provider reports kept for them (provider_events): by our id (SendGrid) or the provider's (Twilio)
    await session.execute(text("delete from delivery.early_events where workspace_id = :ws "
                               "and ref = any(CAST(:refs AS text[]))"),
                          {"ws": ws, "refs": [str(r.id) for r in rows] + [r.provider_message_id for r in rows
                                                                           if r.provider_message_id]})
    return {"messages": len(ids), "attempts": attempts.rowcount}  # type: ignore[attr-defined]


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, Any]:
    rows = await session.execute(
        text(f"select id, channel, to_address, subject, html, text, status, attempts, last_error, created_at, "
             f"sent_at from delivery.messages where {_MINE} order by created_at"),
        {"ws": ws, "p": [str(p) for p in pids]},
    )
    return {"messages": [dict(r) for r in rows.mappings()]}


async def erase_devices(session: AsyncSession, ws: uuid.UUID, identities: list[str]) -> dict[str, int]:
    res = await session.execute(
        text("delete from delivery.devices where workspace_id = :ws and user_ref = any(CAST(:ids AS text[]))"),
        {"ws": ws, "ids": identities})
    return {"devices": res.rowcount}  # type: ignore[attr-defined]


async def export_devices(session: AsyncSession, ws: uuid.UUID, identities: list[str]) -> dict[str, Any]:
    rows = await session.execute(
        text("select user_ref as user, platform, token, created_at, last_used_at from delivery.devices "
             "where workspace_id = :ws and user_ref = any(CAST(:ids AS text[])) order by created_at"),
        {"ws": ws, "ids": identities})
    return {"devices": [dict(r) for r in rows.mappings()]}
