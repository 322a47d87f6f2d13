"""Campaign's arq worker: feeds into journeys and programs, journeys' due timers, sends handed to delivery,
program events handed to ingest, and the programs' hourly maintenance (expiry, tier downgrades)."""

import asyncio
from typing import Any

import structlog
from arq.cron import cron
from arq.worker import Worker

from services.campaign import campaigns, dispatch, journeys, retention, schedules, triggering
from services.campaign.programs import maintenance
from services.campaign.programs import outbox as program_outbox
from shared.queue import (
    JobCtx,
    build_worker,
    note_raised_at,
    read_feed_page,
    stopping,
    take_dirty,
    wake,
    worker_settings_class,
)
from shared.settings import Settings

log = structlog.get_logger()


async def _consume(ctx: JobCtx, feed: str, function: str) -> int:
    settings = ctx["settings"]
    read = moved = 0
    while True:
        page = await read_feed_page(ctx, function, lambda session: triggering.consume_page(
            session, ctx["internal"], feed, settings.consumer_batch_size))
        if page is None:  # another job reads this feed: it reads once more for whatever woke this one
            break
        read, moved = read + page.read, moved + page.entered + page.woken + page.ended
        if page.entered or page.woken:  # a separate job: reading, advancing and dispatching overlap
            await wake(ctx["redis"], settings, "campaign", "advance_journeys")
        if page.programs:  # referrals, rewards, points: their events go to ingest
            await wake(ctx["redis"], settings, "campaign", "forward_program_events")
        if stopping(ctx) or (page.read < settings.consumer_batch_size and not await take_dirty(ctx, function)):
            break
    if moved:
        log.info("campaign.feed_consumed", feed=feed, read=read, journeys=moved)
    return moved


async def on_events(ctx: JobCtx) -> int:
    """Woken by ingest: event triggers, and journeys waiting for events, goals and exit events."""
    return await _consume(ctx, "events", "on_events")


async def on_transitions(ctx: JobCtx) -> int:
    """Woken by segment: segment and lifecycle-stage triggers."""
    return await _consume(ctx, "transitions", "on_transitions")


async def advance_journeys(ctx: JobCtx) -> int:
    """Run every journey whose timer is due (woken on entry; polled, so delays fire on time), and hand the sends
    each batch decides straight to delivery, overlapping the next batch's run (``dispatch.dispatch_claimed``)."""
    total = 0
    handing: set[asyncio.Task[None]] = set()
    try:
        while True:
            done = await journeys.advance_due(ctx["sessionmaker"], ctx["internal"], ctx["http"], claim_sends=True)
            total += done.journeys
            if done.claimed:
                task = asyncio.create_task(_hand_over(ctx, done))
                handing.add(task)
                task.add_done_callback(handing.discard)
                if len(handing) >= MAX_HANDING_OVER:
                    await asyncio.wait(handing, return_when=asyncio.FIRST_COMPLETED)
            if stopping(ctx) or (done.journeys == 0 and not await take_dirty(ctx, "advance_journeys")
                                 and not await _woken_while_handing_over(ctx, handing)):
                break
    except Exception as exc:
        note_raised_at(exc)  # let out after the hand-overs in flight, which may wait out an outage first
        raise
    finally:
        await asyncio.gather(*handing, return_exceptions=True)
    return total


MAX_HANDING_OVER = 2  # batches of sends on their way to delivery while the next batch runs


async def _woken_while_handing_over(ctx: JobCtx, handing: set[asyncio.Task[None]]) -> bool:
    """Before the job ends: the hand-overs still in flight finish, and a wake-up that came meanwhile (a journey
    entered: this job was running, so it was only marked dirty) is taken now. Left for the next poll, a new
    journey's first email waited ~5 s, long enough for an exit event to beat it."""
    if not handing:
        return False
    await asyncio.gather(*handing, return_exceptions=True)
    return await take_dirty(ctx, "advance_journeys")


async def _hand_over(ctx: JobCtx, done: journeys.Advanced) -> None:
    try:
        await dispatch.dispatch_claimed(ctx["sessionmaker"], ctx["internal"], done.claimed, done.profiles)
    except Exception as exc:  # noqa: BLE001 - their lease runs out and the dispatcher's poll takes them
        log.warning("campaign.hand_over_failed", sends=len(done.claimed), error=f"{type(exc).__name__}: {exc}",
                    retry_after_s=dispatch.LEASE_S)


async def run_schedules(ctx: JobCtx) -> int:
    """Every minute: fire due broadcasts (one run per slot), enter their audience, run the journeys."""
    entered = await schedules.run_pending(ctx["sessionmaker"], ctx["internal"])
    if entered:
        await wake(ctx["redis"], ctx["settings"], "campaign", "advance_journeys")
    return entered


async def dispatch_sends(ctx: JobCtx) -> int:
    total = 0
    while True:
        n = await dispatch.dispatch_due(ctx["sessionmaker"], ctx["internal"])
        total += n
        if stopping(ctx) or (n == 0 and not await take_dirty(ctx, "dispatch_sends")):
            break
    return total


async def forward_program_events(ctx: JobCtx) -> int:
    """Referral and loyalty events (converted, reward granted, tier changed ...) to ingest."""
    total = 0
    while not stopping(ctx) and (n := await program_outbox.forward(ctx["sessionmaker"], ctx["internal"])):
        total += n
    return total


async def maintain_programs(ctx: JobCtx) -> int:
    """Hourly: expire points past their date, downgrade tiers no longer earned."""
    result = await maintenance.run(ctx["sessionmaker"])
    if result.expired_points or result.tier_changes:
        log.info("campaign.programs_maintained", members=result.members, expired_points=result.expired_points,
                 tier_changes=result.tier_changes)
        await wake(ctx["redis"], ctx["settings"], "campaign", "forward_program_events")
    return result.members


async def prune_trigger_keys(ctx: JobCtx) -> int:
    """Hourly: trigger idempotency keys past their 30 days."""
    deleted = await campaigns.prune_trigger_keys(ctx["sessionmaker"])
    if deleted:
        log.info("campaign.trigger_keys_pruned", deleted=deleted)
    return deleted


async def redact_expired(ctx: JobCtx) -> int:
    """Daily: trigger properties of journeys and sends past their workspace's retention (``retention``)."""
    cleared = await retention.redact_expired(ctx["sessionmaker"])
    if cleared:
        log.info("campaign.retention_enforced", cleared=cleared)
    return cleared


_OPTIONS: dict[str, Any] = {
    "functions": [on_events, on_transitions, advance_journeys, dispatch_sends, run_schedules, forward_program_events,
                  maintain_programs, prune_trigger_keys, redact_expired],
    "poll": [on_events, on_transitions, advance_journeys, dispatch_sends, forward_program_events],
    "crons": [cron(run_schedules, name="cron:run_schedules", second=0, run_at_startup=True, unique=True,
                   keep_result=0, timeout=600),
              cron(maintain_programs, name="cron:maintain_programs", minute=7, second=30, run_at_startup=True,
                   unique=True, keep_result=0, timeout=600),
              cron(prune_trigger_keys, name="cron:prune_trigger_keys", minute=17, second=45, unique=True,
                   keep_result=0, timeout=600),
              cron(redact_expired, name="cron:redact_expired", hour=3, minute=41, second=0, unique=True,
                   keep_result=0, timeout=3600)],
}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "campaign", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("campaign", **_OPTIONS)
