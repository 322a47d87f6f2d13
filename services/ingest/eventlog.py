"""Reading the event log as a feed (see shared.feed for why the cursor is ``(xid, seq)``)."""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.feed import Cursor, feed_params, feed_query


async def read_feed(session: AsyncSession, after: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
    rows = (
        await session.execute(
            text(feed_query("ingest.events", "workspace_id, message_id, type, event, profile_id, user_id, "
                                              "anonymous_id, properties, traits, context, timestamp, received_at")),
            feed_params(after, limit),
        )
    ).mappings().all()
    events: list[dict[str, Any]] = []
    cursor = after
    for r in rows:
        cursor = Cursor(int(r["cursor_xid"]), r["cursor_seq"])
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
