"""Segment's arq worker: fold ingest's event feed, evaluate new segments over known profiles."""

import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from arq.cron import cron
from arq.worker import Worker
from sqlalchemy import text

from services.segment import evaluation, partitioning
from shared import retention
from shared.db import session_lock
from shared.metrics import workspace_failed
from shared.queue import (
    JobCtx,
    build_worker,
    long_job,
    read_feed_page,
    stopping,
    take_dirty,
    wake,
    worker_settings_class,
)
from shared.settings import Settings

log = structlog.get_logger()

# Backfills and the daily re-checks walk every known profile. They are polled (every feed poll interval)
# and cron'd on every replica, and arq starts each poll as a new job whether or not the last one has
# ended: without this lock a backfill longer than the poll interval was soon running ten times over
# (max_jobs), every copy from the first profile, each holding evaluation stripes that live events then
# queued behind. One background pass at a time, cluster-wide; a refused run returns at once (the
# running one loops until nothing is pending, and the next poll catches anything it missed).
BACKGROUND_PASS = "segment-background-pass"


async def on_events(ctx: JobCtx) -> int:
    """Woken by ingest after a commit (and polled): fold the event feed until it is drained, re-evaluating
    the touched profiles after each page, in the partitions no other replica is processing."""
    settings = ctx["settings"]
    total = transitions = 0
    while True:
        page = await read_feed_page(ctx, "on_events", lambda session: evaluation.consume_page(
            session, ctx["internal"], settings.consumer_batch_size))
        if page is None:  # another job reads the feed: it reads once more for whatever woke this one
            break
        total += page.events
        _, changed = await partitioning.process_dirty(ctx["sessionmaker"], settings.segment_partitions,
                                                      settings.consumer_batch_size, evaluation.reevaluate)
        transitions += changed
        if changed:
            await wake(ctx["redis"], settings, "campaign", "on_transitions")
        if stopping(ctx) or (page.events < settings.consumer_batch_size and not await take_dirty(ctx, "on_events")):
            break
    if total or transitions:
        log.info("segment.consumed", events=total, transitions=transitions)
    return total


async def _evaluate_workspace(sessionmaker: Any, ws: uuid.UUID, versions: dict[uuid.UUID, int]) -> int:
    changes = await evaluation.evaluate_fully(sessionmaker, ws, set(versions))
    async with sessionmaker() as session, session.begin():
        for sid, version in versions.items():
            await session.execute(text("update segment.segments set evaluated_version = :v "
                                       "where id = :id and evaluated_version < :v"), {"id": sid, "v": version})
    log.info("segment.evaluated", workspace_id=str(ws), segments=len(versions), changes=changes)
    return changes


# A pass over every profile: ≈ 200 s for 1 M profiles on two cores (bench/RESULTS.md). Under the default
# two-minute timeout a large workspace's backfill was cut off and started over from its first profile at
# every poll, and never finished.
PASS_TIMEOUT_S = 6 * 3600


@long_job(PASS_TIMEOUT_S)
async def recheck_windows(ctx: JobCtx) -> int:
    """Hourly (and at start-up): windowed segments re-checked once per day as time passes."""
    async with session_lock(ctx["engine"], BACKGROUND_PASS) as mine:
        if not mine:
            return 0
        changes = await evaluation.recheck_windows(ctx["sessionmaker"])
    if changes:
        await wake(ctx["redis"], ctx["settings"], "campaign", "on_transitions")
    return changes


@long_job(PASS_TIMEOUT_S)
async def evaluate_segments(ctx: JobCtx) -> int:
    """Evaluate every segment whose current version has not been evaluated over known profiles yet, and the
    lifecycle stages of the workspaces whose lifecycle settings changed since (the stage segments' definition:
    ``tenure workspace configure`` writes them straight into core.workspaces).

    Woken when a segment is saved, and polled, so a lost wake-up only delays the backfill. Each chunk
    of profiles commits on its own; after a crash the pass resumes after its last committed page (and a
    page run twice writes no duplicate transitions: only real membership changes are written). One run at
    a time (BACKGROUND_PASS).
    """
    changes = 0
    failed: set[uuid.UUID] = set()  # set aside until the next run, so the others' segments are backfilled
    async with session_lock(ctx["engine"], BACKGROUND_PASS) as mine:
        while mine:
            async with ctx["sessionmaker"]() as session, session.begin():
                pending = (await session.execute(text(
                    "select id, workspace_id, version from segment.segments where evaluated_version < version "
                    "and workspace_id <> all(CAST(:failed AS uuid[])) order by updated_at limit 20"),
                    {"failed": sorted(failed)})).all()
            if not pending or stopping(ctx):
                break
            by_ws: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
            for sid, ws, version in pending:
                by_ws.setdefault(ws, {})[sid] = version
            for ws, versions in by_ws.items():
                try:
                    changes += await _evaluate_workspace(ctx["sessionmaker"], ws, versions)
                except Exception:  # noqa: BLE001 - logged and counted; retried at the next poll
                    workspace_failed("segment", "evaluate_segments", ws)
                    failed.add(ws)
        if mine and not stopping(ctx):
            changes += await evaluation.recheck_lifecycle(ctx["sessionmaker"], datetime.now(UTC).date(),
                                                          changed_only=True)
    if changes:
        await wake(ctx["redis"], ctx["settings"], "campaign", "on_transitions")
    return changes


async def enforce_retention(ctx: JobCtx) -> int:
    """Stored event occurrences follow the workspace's retention like ingest's event log (counts,
    which hold no event content, are kept)."""
    deleted = await retention.enforce(ctx["sessionmaker"], "segment.profile_events", "at")
    if deleted:
        log.info("segment.retention_enforced", deleted=deleted)
    return deleted


_OPTIONS: dict[str, Any] = {
    "functions": [on_events, evaluate_segments, recheck_windows, enforce_retention],
    "poll": [on_events, evaluate_segments],
    "crons": [cron(recheck_windows, name="cron:recheck_windows", minute=5, second=0, run_at_startup=True,
                   unique=True, keep_result=0, timeout=PASS_TIMEOUT_S),
              cron(enforce_retention, name="cron:enforce_retention", minute=23, second=0, unique=True,
                   keep_result=0, timeout=600)],
}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "segment", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("segment", **_OPTIONS)
