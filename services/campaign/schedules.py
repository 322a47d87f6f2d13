"""Scheduled campaigns: broadcasts to a segment's members, once or on a cron.

Each firing is a ``schedule_runs`` row keyed by (campaign, slot), so a slot fires once however many
workers look. Members are entered page by page (each page its own transaction, entry idempotent per
slot) and the run remembers the last member entered, so a crash resumes where it stopped. Only the
latest due slot fires: a worker that was down for a week sends one weekly newsletter, not seven. A
one-off slot more than ``MISSED_ONE_OFF`` past when it could first fire (the campaign was paused over it,
or no worker ran) is recorded as done and logged, not sent late.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from croniter import CroniterError, croniter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.campaign import journey_def as jd
from services.campaign import journeys
from shared.auth import WORKSPACE_HEADER
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient
from shared.jsonutil import loads

log = structlog.get_logger()

PAGE = 500
MISSED_ONE_OFF = timedelta(hours=1)


def due_slot(trigger: jd.ScheduleTrigger, created_at: datetime, now: datetime) -> datetime | None:
    """The latest slot at or before ``now`` (and after the campaign was created), if any."""
    if trigger.at is not None:
        return trigger.at if trigger.at <= now else None
    tz = ZoneInfo(trigger.timezone)
    it = croniter(trigger.cron, now.astimezone(tz))
    prev, before = it.get_prev(datetime), it.get_prev(datetime)
    if prev.replace(tzinfo=None) == before.replace(tzinfo=None):
        prev = before  # the same wall-clock slot twice (clocks went back): it already had its run
    slot = prev.astimezone(UTC)
    return slot if slot >= created_at else None


async def start_due(session: AsyncSession, now: datetime) -> int:
    """Record the runs that are due (idempotent per slot)."""
    rows = (await session.execute(text(
        "select id, workspace_id, definition, created_at from campaign.campaigns "
        "where status = 'active' and trigger->>'type' = 'schedule'"))).mappings().all()
    started = 0
    for c in rows:
        trigger = journeys.parse(c["definition"]).trigger
        assert isinstance(trigger, jd.ScheduleTrigger)
        try:
            slot = due_slot(trigger, c["created_at"], now)
        except CroniterError as exc:  # (saved before such expressions were refused): it alone never fires
            log.warning("campaign.schedule_invalid", campaign_id=str(c["id"]), cron=trigger.cron, error=str(exc))
            continue
        if slot is None:
            continue
        missed = trigger.at is not None and now - slot > MISSED_ONE_OFF
        res = await session.execute(text(
            "insert into campaign.schedule_runs (campaign_id, slot, workspace_id, done) values (:c, :s, :ws, :done) "
            "on conflict do nothing"), {"c": c["id"], "s": slot, "ws": c["workspace_id"], "done": missed})
        if missed and res.rowcount:  # type: ignore[attr-defined]
            log.warning("campaign.schedule_skipped", campaign_id=str(c["id"]), slot=slot.isoformat(),
                        reason=f"one-off slot missed by more than {MISSED_ONE_OFF} (paused over it, or no worker ran)")
        elif not missed:
            started += res.rowcount  # type: ignore[attr-defined]
    return started


async def run_pending(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                      now: datetime | None = None) -> int:
    """Start due runs, then enter the audience of every unfinished run, a page per transaction."""
    now = now or datetime.now(UTC)
    async with sessionmaker() as session:
        async with session.begin():
            await start_due(session, now)
        entered = 0
        while True:
            async with session.begin():
                run = (await session.execute(text(
                    "select r.*, c.version, c.definition, c.status from campaign.schedule_runs r "
                    "join campaign.campaigns c on c.id = r.campaign_id where not r.done "
                    "order by r.started_at limit 1 for update of r skip locked"))).mappings().first()
                if run is None:
                    return entered
                entered += await _enter_page(session, internal, dict(run), now)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _enter_page(session: AsyncSession, internal: InternalClient, run: dict[str, Any], now: datetime) -> int:
    journey = journeys.parse(run["definition"])
    trigger = journey.trigger
    assert isinstance(trigger, jd.ScheduleTrigger)
    params: dict[str, Any] = {"limit": PAGE}
    if run["cursor"] and not _is_uuid(run["cursor"]):  # a run begun when cursors were profile ids starts over:
        params["after"] = run["cursor"]                # entering is idempotent per slot, nobody enters twice
    members = f"/v1/segments/{trigger.segment_id}/members"
    resp = await internal.request("GET", "segment", members, params=params,
                                  headers={WORKSPACE_HEADER: str(run["workspace_id"])})
    if resp.status_code == 400 and "after" in params:  # a cursor segment no longer takes (given before an upgrade
        # changed cursors, or before the signing secret was rotated): the run starts over, as above
        log.warning("campaign.schedule_cursor_refused", campaign_id=str(run["campaign_id"]))
        del params["after"]
        resp = await internal.request("GET", "segment", members, params=params,
                                      headers={WORKSPACE_HEADER: str(run["workspace_id"])})
    if resp.status_code == 404 or run["status"] != "active":
        await session.execute(text("update campaign.schedule_runs set done = true where campaign_id = :c "
                                   "and slot = :s"), {"c": run["campaign_id"], "s": run["slot"]})
        log.warning("campaign.schedule_skipped", campaign_id=str(run["campaign_id"]),
                    reason="audience segment not found" if resp.status_code == 404 else "campaign not active")
        return 0
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"segment answered {resp.status_code} listing the audience")
    page = loads(resp.content)
    campaign = {"id": run["campaign_id"], "workspace_id": run["workspace_id"], "version": run["version"]}
    slot = run["slot"].isoformat()
    entered = 0
    for member in page["members"]:
        if await journeys.enter(session, campaign, journey, uuid.UUID(member["profile_id"]), f"schedule:{slot}",
                                {"name": "schedule", "properties": {"slot": slot}, "timestamp": slot}, now):
            entered += 1
    last = page.get("next_cursor") or run["cursor"]
    await session.execute(text(
        "update campaign.schedule_runs set cursor = :cur, entered = entered + :n, done = :done "
        "where campaign_id = :c and slot = :s"),
        {"cur": last, "n": entered, "done": not page.get("next_cursor"), "c": run["campaign_id"], "s": run["slot"]})
    if entered:
        log.info("campaign.schedule_entered", campaign_id=str(run["campaign_id"]), slot=slot, entered=entered)
    return entered
