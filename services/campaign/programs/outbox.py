"""Program events for ingest (``Referral Converted``, ``Loyalty Tier Changed``, ``Badge Earned`` ...):
rows of ``campaign.program_outbox`` written in the transaction that decided them, forwarded in batches
through ingest's tracking API. Each row's id is derived from what decided it and is the event's
messageId, so a decision replayed or a batch resent after a crash is one event in ingest."""

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import event_outbox
from shared.http import InternalClient
from shared.jsonutil import dumps

log = structlog.get_logger()

_NS = uuid.UUID("5b3f3f0e-7d1c-4c1e-9a55-3c0b9d1e7a21")


async def emit(session: AsyncSession, ws: uuid.UUID, who: dict[str, Any], event: str, properties: dict[str, Any],
               at: datetime, key: str) -> bool:
    """Queue ``event`` for the person ``who`` ({user_id, anonymous_id}); ``key`` names the decision (one
    event per key). False when the person has no id ingest could file the event under."""
    return await emit_keyed(session, ws, who, event, properties, at, key) is not None


async def emit_keyed(session: AsyncSession, ws: uuid.UUID, who: dict[str, Any], event: str,
                     properties: dict[str, Any], at: datetime, key: str) -> tuple[dict[str, Any], bool] | None:
    """As :func:`emit`, telling a repeat of ``key`` apart: (the properties queued under ``key``, whether this call
    queued them; else they are those of the first call), or None when the person has no id to file it under."""
    user_id, anonymous_id = who.get("user_id"), who.get("anonymous_id")
    if not user_id and not anonymous_id:
        log.warning("programs.event_without_identity", workspace_id=str(ws), event_name=event)
        return None
    payload = {"type": "track", "event": event, "properties": properties, "timestamp": at.isoformat(),
               **({"userId": user_id} if user_id else {"anonymousId": anonymous_id}),
               "context": {"library": {"name": "tenure-programs"}}}  # (segment: not the person's activity)
    mid = uuid.uuid5(_NS, f"{ws}:{key}")
    payload["messageId"] = f"program-{mid}"
    queued = (await session.execute(text(
        "insert into campaign.program_outbox (id, workspace_id, payload, created_at) "
        "values (:id, :ws, CAST(:p AS jsonb), :at) on conflict (id) do nothing returning id"),
        {"id": mid, "ws": ws, "p": dumps(payload), "at": at})).first()
    if queued is not None:
        return properties, True
    first = (await session.execute(text("select payload from campaign.program_outbox where id = :id"),
                                   {"id": mid})).scalar_one()
    return dict(first.get("properties") or {}), False


async def forward(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, limit: int = 500) -> int:
    """Forward one batch of pending events to ingest; returns how many were forwarded."""
    return await event_outbox.forward(sessionmaker, internal, "campaign.program_outbox", limit)
