"""Forwarding engagement and consent events to ingest: rows of ``delivery.feedback`` written in the
transaction that recorded the open, click or consent change, sent in batches through ingest's tracking
API (internal token). Each row's id is its event's messageId, so a batch resent after a crash is
deduplicated by ingest: nothing is lost, nothing is counted twice."""

from collections import defaultdict

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.auth import WORKSPACE_HEADER
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient

log = structlog.get_logger()


async def forward(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, limit: int = 500) -> int:
    """Forward one batch of pending events; returns how many were forwarded."""
    async with sessionmaker() as session, session.begin():
        rows = (await session.execute(text(
            "select id, workspace_id, payload, created_at from delivery.feedback where forwarded_at is null "
            "order by created_at limit :lim for update skip locked"), {"lim": limit})).all()
        by_ws = defaultdict(list)
        for r in rows:
            by_ws[r.workspace_id].append({**r.payload, "timestamp": r.created_at.isoformat()})
        for ws, batch in by_ws.items():
            resp = await internal.request("POST", "ingest", "/v1/batch", retry=True,
                                          headers={WORKSPACE_HEADER: str(ws)}, json={"batch": batch})
            if resp.status_code not in (200, 207):
                raise UpstreamUnavailable(f"ingest answered {resp.status_code} to delivery's events")
        if rows:
            await session.execute(text("update delivery.feedback set forwarded_at = now() "
                                       "where id = any(CAST(:ids AS uuid[]))"), {"ids": [r.id for r in rows]})
    if rows:
        log.info("delivery.feedback_forwarded", events=len(rows))
    return len(rows)
