"""Deciding sends: campaign triggers matched against ingest's events and segment's transitions.

Each feed page is one transaction: the sends it decides and the consumer cursor commit together.
A send's idempotency key is derived from (campaign, version, step, profile, occurrence), so replaying
a page, or a trigger arriving twice, can never produce a second message.
"""

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import UpstreamUnavailable
from shared.feed import lock_consumer, save_consumer
from shared.http import InternalClient
from shared.jsonutil import dumps

STEP = "send"  # the one step of a thin campaign; journeys add more


@dataclass(frozen=True)
class Decision:
    workspace_id: uuid.UUID
    campaign_id: uuid.UUID
    campaign_version: int
    template_id: uuid.UUID
    profile_id: uuid.UUID
    occurrence: str
    trigger_data: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        raw = f"{self.campaign_id}:{self.campaign_version}:{STEP}:{self.profile_id}:{self.occurrence}"
        return hashlib.sha256(raw.encode()).hexdigest()[:40]


def match_event(campaign: dict[str, Any], event: dict[str, Any]) -> bool:
    trig = campaign["trigger"]
    return trig.get("type") == "event" and event.get("type") == "track" and event.get("event") == trig.get("event")


def match_transition(campaign: dict[str, Any], tr: dict[str, Any]) -> bool:
    trig = campaign["trigger"]
    return (trig.get("type") == "segment_entered" and tr.get("kind") == "entered"
            and str(trig.get("segment_id")) == tr.get("segment_id"))


async def _active_campaigns(session: AsyncSession, workspaces: set[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    rows = await session.execute(
        text("select id, workspace_id, version, trigger, template_id from campaign.campaigns "
             "where status = 'active' and workspace_id = any(CAST(:ws AS uuid[]))"),
        {"ws": list(workspaces)},
    )
    out: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for r in rows.mappings():
        out[r["workspace_id"]].append(dict(r))
    return out


def decide(campaigns: dict[uuid.UUID, list[Any]], items: list[dict[str, Any]], feed: str) -> list[Decision]:
    out = []
    for item in items:
        ws = uuid.UUID(item["workspace_id"])
        for c in campaigns.get(ws, []):
            if feed == "events" and match_event(c, item):
                occurrence = f"event:{item['message_id']}"
                data = {"name": item["event"], "properties": item.get("properties") or {},
                        "timestamp": item.get("timestamp")}
            elif feed == "transitions" and match_transition(c, item):
                occurrence = f"segment:{item['segment_id']}:{item['cursor']}"
                data = {"segment_id": item["segment_id"], "at": item.get("at")}
            else:
                continue
            out.append(Decision(ws, c["id"], c["version"], c["template_id"], uuid.UUID(item["profile_id"]),
                                occurrence, data))
    return out


async def record_decisions(session: AsyncSession, decisions: list[Decision]) -> int:
    if not decisions:
        return 0
    rows = await session.execute(
        text(
            """
            insert into campaign.sends (id, workspace_id, campaign_id, campaign_version, template_id, profile_id,
                                        occurrence, idempotency_key, status, trigger_data)
            select u.id, u.ws, u.cid, u.ver, u.tid, u.pid, u.occ, u.key, 'pending', u.data::jsonb
              from unnest(CAST(:ids AS uuid[]), CAST(:ws AS uuid[]), CAST(:cids AS uuid[]), CAST(:vers AS int[]),
                          CAST(:tids AS uuid[]), CAST(:pids AS uuid[]), CAST(:occs AS text[]),
                          CAST(:keys AS text[]), CAST(:data AS text[]))
                   as u(id, ws, cid, ver, tid, pid, occ, key, data)
            on conflict (workspace_id, idempotency_key) do nothing
            returning id
            """
        ),
        {
            "ids": [uuid.uuid4() for _ in decisions],
            "ws": [d.workspace_id for d in decisions],
            "cids": [d.campaign_id for d in decisions],
            "vers": [d.campaign_version for d in decisions],
            "tids": [d.template_id for d in decisions],
            "pids": [d.profile_id for d in decisions],
            "occs": [d.occurrence for d in decisions],
            "keys": [d.idempotency_key for d in decisions],
            "data": [dumps(d.trigger_data) for d in decisions],
        },
    )
    return len(rows.all())


FEEDS = {
    # consumer name: (service, path, list key)
    "events": ("ingest", "/v1/events", "events"),
    "transitions": ("segment", "/v1/transitions", "transitions"),
}


async def consume_page(session: AsyncSession, internal: InternalClient, feed: str, limit: int) -> tuple[int, int]:
    """Fold one page of a feed into sends; returns (items read, sends created)."""
    service, path, key = FEEDS[feed]
    cursor = await lock_consumer(session, "campaign", feed)
    resp = await internal.request("GET", service, path, params={"after": cursor, "limit": limit})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"{service} feed answered {resp.status_code}")
    page = resp.json()
    items = page[key]
    if not items:
        return 0, 0
    workspaces = {uuid.UUID(i["workspace_id"]) for i in items}
    created = await record_decisions(session, decide(await _active_campaigns(session, workspaces), items, feed))
    await save_consumer(session, "campaign", feed, page["next_cursor"])
    return len(items), created
