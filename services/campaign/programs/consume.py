"""Programs fed by ingest's events: called by the campaign's event consumer for each feed page, inside
the page's transaction, so what the page earns, grants and reverses commits with the cursor (a crash
replays the page; nothing is granted twice)."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog
from sqlalchemy import exc as sa_exc

from services.campaign import ingest_client
from services.campaign.programs import attribution, earning, ledger, merges, rewards, tiers
from services.campaign.programs.config import Programs
from shared.db import unreachable
from shared.errors import UpstreamUnavailable
from shared.feed import feed_time
from shared.http import InternalClient

log = structlog.get_logger()


@dataclass
class ProgramResult:
    referrals: int = 0
    rewards: int = 0
    ledger: int = 0

    def __bool__(self) -> bool:
        return bool(self.referrals or self.rewards or self.ledger)

    def __iadd__(self, other: "ProgramResult") -> "ProgramResult":
        self.referrals += other.referrals
        self.rewards += other.rewards
        self.ledger += other.ledger
        return self


# a dependency that is down: the page must be retried, not its events skipped
_TRANSIENT = (UpstreamUnavailable, httpx.HTTPError, OSError, sa_exc.OperationalError, sa_exc.InterfaceError)


def _at(item: dict[str, Any], now: datetime) -> datetime:
    """When it happened (the event's time), never later than ``now``."""
    ts = item.get("timestamp")
    if isinstance(ts, str):
        try:
            ts = feed_time(ts)
        except ValueError:
            ts = now
    return min(ts, now) if isinstance(ts, datetime) else now


async def process(session: Any, internal: InternalClient, items: list[dict[str, Any]], now: datetime
                  ) -> ProgramResult:
    """The page's events, in a savepoint. An event the programs cannot digest (a malformed property, a
    bug) must not stop the feed for every workspace: on such an error the page is retried event by
    event, and the events that still fail are skipped and logged. Transient errors propagate (the whole
    page is retried later)."""
    try:
        async with session.begin_nested():
            return await _process(session, internal, items, now)
    except _TRANSIENT:
        raise
    except Exception as exc:
        if unreachable(exc):  # PostgreSQL away (a restart): the whole page is retried once it answers
            raise
        if len(items) == 1:
            log.exception("programs.event_skipped", workspace_id=items[0].get("workspace_id"),
                          message_id=items[0].get("message_id"), event_name=items[0].get("event"))
            return ProgramResult()
    total = ProgramResult()
    for item in items:
        total += await process(session, internal, [item], now)
    return total


async def _process(session: Any, internal: InternalClient, items: list[dict[str, Any]], now: datetime
                   ) -> ProgramResult:
    result = ProgramResult()
    programs = await Programs.load(session, {uuid.UUID(i["workspace_id"]) for i in items})
    if not programs:
        return result

    def at_of(item: dict[str, Any]) -> datetime:
        return _at(item, now)

    for item in items:  # merges first: the page's events then find one person's records in one place
        if (pair := merges.merge_of(item)) is not None:
            ws = uuid.UUID(item["workspace_id"])
            if await merges.move(session, ws, *pair) and (loyalty := programs.loyalty.get(ws)) is not None:
                account = await ledger.account(session, ws, pair[1])
                if account is not None:
                    await tiers.evaluate(session, await ledger.lock(session, ws, pair[1]), loyalty, now)
                result.ledger += 1

    ref_items = [i for i in items if uuid.UUID(i["workspace_id"]) in programs.referral]
    if ref_items:
        await attribution.record(session, ref_items, at_of)
        signups = await attribution.pending_signups(session, programs.referral, ref_items, at_of)
        profiles = await _profiles(internal, signups)
        for s in signups:
            cfg = programs.referral[uuid.UUID(s.item["workspace_id"])]
            reason = await attribution.fraud_reason(session, s, cfg, profiles)
            result.referrals += await attribution.convert(session, s, reason, profiles)
    for item in items:
        if item.get("type") != "track" or not item.get("event"):
            continue
        ws = uuid.UUID(item["workspace_id"])
        at = at_of(item)
        ref_cfg, loyalty = programs.referral.get(ws), programs.loyalty.get(ws)
        if ref_cfg is not None:
            if rewards.qualifies(ref_cfg, item):
                result.rewards += await rewards.on_qualifying(session, ref_cfg, loyalty, item, at, now)
            if item["event"] == ref_cfg.refund_event:
                result.rewards += await rewards.on_refund(session, item, at)
        if loyalty is not None:
            result.ledger += await earning.apply(session, loyalty, item, at, now)
    return result


async def _profiles(internal: InternalClient, signups: list[attribution.Signup]) -> dict[str, Any]:
    """Live profiles (traits, merges followed) of the signups' referred users and referrers."""
    by_ws: dict[str, set[str]] = {}
    for s in signups:
        by_ws.setdefault(s.item["workspace_id"], set()).update({s.item["profile_id"], s.referrer["profile_id"]})
    found: dict[str, Any] = {}
    for ws, ids in by_ws.items():
        found.update(await ingest_client.lookup_profiles(internal, ws, list(ids)))
    return found
