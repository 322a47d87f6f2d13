"""Entering journeys from ingest's events and segment's transitions, and moving the journeys waiting on them.

Each feed page is one transaction: the journeys it starts, the waiting journeys it wakes, what the
referral and loyalty programs derive from its events (programs/consume.py) and the consumer cursor
commit together. Entry is idempotent per (campaign, profile, occurrence), so replaying
a page, or a trigger arriving twice, never enters anyone twice (and so never sends twice).
"""

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign import journeys
from services.campaign.programs import consume as program_feed
from services.campaign.programs.merges import merge_of
from shared import metrics, profile_merges
from shared.errors import UpstreamUnavailable
from shared.feed import feed_time, lock_consumer, save_consumer
from shared.http import InternalClient
from shared.jsonutil import loads

FEEDS = {
    # consumer name: (service, path, list key, feed name in metrics)
    "events": ("ingest", "/v1/events", "events", "ingest.events"),
    "transitions": ("segment", "/v1/transitions", "transitions", "segment.transitions"),
}


@dataclass
class PageResult:
    read: int = 0
    behind: int = 0  # committed entries after this page, held back by the feed's horizon or the page size
    entered: int = 0
    woken: int = 0
    ended: int = 0  # journeys ended by their user leaving or entering a segment (exit_on_leaving, exit_on_entering)
    merged: int = 0  # journeys moved to the profile their profile was merged into
    programs: program_feed.ProgramResult = field(default_factory=program_feed.ProgramResult)


async def active_campaigns(session: AsyncSession, workspaces: set[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    rows = await session.execute(
        text("select id, workspace_id, version, definition from campaign.campaigns "
             "where status = 'active' and workspace_id = any(CAST(:ws AS uuid[]))"),
        {"ws": list(workspaces)},
    )
    out: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.mappings():
        out[r["workspace_id"]].append({**dict(r), "journey": journeys.parse(r["definition"])})
    return out


def _when(value: Any, now: datetime) -> datetime:
    if isinstance(value, str):
        try:
            return feed_time(value)
        except ValueError:
            return now
    return value if isinstance(value, datetime) else now


async def enter_from(session: AsyncSession, campaigns: dict[uuid.UUID, list[dict[str, Any]]],
                     items: list[dict[str, Any]], feed: str, now: datetime) -> int:
    candidates: list[journeys.Candidate] = []
    for item in items:
        ws = uuid.UUID(item["workspace_id"])
        for c in campaigns.get(ws, []):
            if not journeys.trigger_matches(c["journey"], ws, item, feed):
                continue
            if feed == "events":
                occurrence = f"event:{item['message_id']}"
                data = {"name": item["event"], "properties": item.get("properties") or {},
                        "timestamp": item.get("timestamp")}
                at = _when(item.get("timestamp"), now)
                max_age = getattr(c["journey"].trigger, "max_age_seconds", 0)
                if max_age and (now - at).total_seconds() > max_age:
                    continue  # an old event (an import, a backfill) does not start a journey
            else:
                occurrence = f"segment:{item['segment_id']}:{item['kind']}:{item['cursor']}"
                data = {"segment_id": item["segment_id"], "kind": item["kind"], "at": item.get("at")}
                at = _when(item.get("at"), now)
            candidates.append(journeys.Candidate(c, c["journey"], uuid.UUID(item["profile_id"]), occurrence, data, at))
    return sum(jid is not None for jid in await journeys.enter_many(session, candidates, now))


async def consume_page(session: AsyncSession, internal: InternalClient, feed: str, limit: int,
                       now: datetime | None = None) -> PageResult:
    """Fold one page of a feed into journeys (the caller's transaction)."""
    now = now or datetime.now(UTC)
    service, path, key, feed_name = FEEDS[feed]
    cursor = await lock_consumer(session, "campaign", feed)
    resp = await internal.request("GET", service, path, params={"after": cursor, "limit": limit})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"{service} feed answered {resp.status_code}")
    page = loads(resp.content)
    metrics.record_feed_read(feed_name, "campaign", page.get("behind"))
    items = page[key]
    result = PageResult(read=len(items), behind=int(page.get("behind") or 0))
    if not items:
        return result
    if feed == "events":  # merges first: the page's triggers and events then find one person's journeys
        merges = [(uuid.UUID(i["workspace_id"]), *pair) for i in items if (pair := merge_of(i)) is not None]
        await profile_merges.record(session, "campaign", merges)  # old ids answer as the survivor
        result.merged = await journeys.follow_merges(session, merges, now, journeys.VersionCache())
    campaigns = await active_campaigns(session, {uuid.UUID(i["workspace_id"]) for i in items})
    result.entered = await enter_from(session, campaigns, items, feed, now)
    if feed == "events":
        result.woken = await journeys.on_events(session, items, now, journeys.VersionCache())
        result.programs = await program_feed.process(session, internal, items, now)
    else:
        result.ended = await journeys.on_transitions(session, items, now, journeys.VersionCache())
    await save_consumer(session, "campaign", feed, page["next_cursor"])
    return result
