"""Forwarding engagement and consent events to ingest: rows of ``delivery.feedback`` written in the
transaction that recorded the open, click or consent change, sent in batches through ingest's tracking
API (internal token). Each row's id is its event's messageId, so a batch resent after a crash is
deduplicated by ingest: nothing is lost, nothing is counted twice."""

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import event_outbox
from shared.http import InternalClient


async def forward(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, limit: int = 500) -> int:
    """Forward one batch of pending events; returns how many were forwarded."""
    return await event_outbox.forward(sessionmaker, internal, "delivery.feedback", limit)
