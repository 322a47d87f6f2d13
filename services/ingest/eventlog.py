"""Reading the event log as a feed (see shared.feed for why the cursor is ``(xid, seq)``)."""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.feed import Cursor, feed_order, feed_where


async def read_feed(session: AsyncSession, after: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
    rows = (
        await session.execute(
            text(
                f"""
                select xid::text as xid, seq, workspace_id, message_id, type, event, profile_id, user_id,
                       anonymous_id, properties, traits, context, timestamp, received_at
                  from ingest.events
                 where {feed_where()}
                 order by {feed_order()}
                 limit :limit
                """
            ),
            {"after_xid": str(after.xid), "after_seq": after.seq, "limit": limit},
        )
    ).mappings().all()
    events: list[dict[str, Any]] = []
    cursor = after
    for r in rows:
        cursor = Cursor(int(r["xid"]), r["seq"])
        events.append(
            {
                "cursor": cursor.encode(),
                "workspace_id": str(r["workspace_id"]),
                "message_id": r["message_id"],
                "type": r["type"],
                "event": r["event"],
                "profile_id": str(r["profile_id"]),
                "user_id": r["user_id"],
                "anonymous_id": r["anonymous_id"],
                "properties": r["properties"],
                "traits": r["traits"],
                "context": r["context"],
                "timestamp": r["timestamp"],
                "received_at": r["received_at"],
            }
        )
    return events, cursor
