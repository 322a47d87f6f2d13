"""Forwarding a service's outbox of events to ingest (delivery's engagement and consent events, campaign's
program events).

The rows are written in the transaction that decided them; this sends pending ones in batches through
ingest's tracking API (internal token) and marks them forwarded in the same transaction that locked them
(``SKIP LOCKED``, so worker replicas share the work). Each payload carries a messageId derived from what
decided it, so a batch resent after a crash is deduplicated by ingest: nothing lost, nothing counted twice.
"""

from collections import defaultdict
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.auth import WORKSPACE_HEADER
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient

log = structlog.get_logger()


async def forward(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, table: str,
                  limit: int = 500) -> int:
    """Forward one batch of ``table``'s pending events (columns id, workspace_id, payload, created_at,
    forwarded_at); a payload without a timestamp gets its row's ``created_at``. Returns how many."""
    async with sessionmaker() as session, session.begin():
        rows = (await session.execute(text(
            f"select id, workspace_id, payload, created_at from {table} where forwarded_at is null "
            f"order by created_at, id limit :lim for update skip locked"), {"lim": limit})).all()
        by_ws: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_ws[r.workspace_id].append({"timestamp": r.created_at.isoformat(), **r.payload})
        for ws, batch in by_ws.items():
            resp = await internal.request("POST", "ingest", "/v1/batch", retry=True,
                                          headers={WORKSPACE_HEADER: str(ws)}, json={"batch": batch})
            if resp.status_code not in (200, 207):
                raise UpstreamUnavailable(f"ingest answered {resp.status_code} to the events of {table}")
        if rows:
            await session.execute(text(f"update {table} set forwarded_at = now() where id = any(CAST(:ids AS uuid[]))"),
                                  {"ids": [r.id for r in rows]})
    if rows:
        log.info("events.forwarded", table=table, events=len(rows))
    return len(rows)
