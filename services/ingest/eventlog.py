"""Reading the event log as a feed (see shared.feed for why the cursor is ``(xid, seq)``)."""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.feed import Cursor, feed_params, feed_query

# the profile an event belongs to now: an event whose write raced a merge (docs/decisions.md, "Profile merges") is
# stored with the merged-away profile's id, and may come after the merge in the feed; consumers get the survivor's
# (``merged_into is not null``: a probe into the small index of merged profiles, ix_profiles_merged_survivor)
_LIVE_PROFILE = ("coalesce((select p.merged_into from ingest.profiles p where p.id = t.profile_id "
                 "and p.merged_into is not null), t.profile_id)")


async def read_feed(session: AsyncSession, after: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
    rows = (
        await session.execute(
            text(feed_query("ingest.events", f"workspace_id, message_id, type, event, {_LIVE_PROFILE} as profile_id, "
                                              "user_id, anonymous_id, properties, traits, context, timestamp, "
                                              "received_at")),
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
