"""Segment's arq worker: fold ingest's event feed, evaluate new segments over known profiles."""

import uuid
from typing import Any

import structlog
from arq.worker import Worker
from sqlalchemy import text

from services.segment import evaluation
from shared.queue import JobCtx, build_worker, take_dirty, wake, worker_settings_class
from shared.settings import Settings

log = structlog.get_logger()

_EVAL_CHUNK = 1000


async def on_events(ctx: JobCtx) -> int:
    """Woken by ingest after a commit (and polled): consume the event feed until it is drained."""
    settings = ctx["settings"]
    total = transitions = 0
    while True:
        async with ctx["sessionmaker"]() as session, session.begin():
            page = await evaluation.consume_page(session, ctx["internal"], settings.consumer_batch_size)
        total += page.events
        transitions += page.transitions
        if page.transitions:
            await wake(ctx["redis"], settings, "campaign", "on_transitions")
        if page.events < settings.consumer_batch_size and not await take_dirty(ctx, "on_events"):
            break
    if total:
        log.info("segment.consumed", events=total, transitions=transitions)
    return total


async def evaluate_segment(ctx: JobCtx, segment_id: str) -> int:
    """Evaluate one (new or edited) segment over every profile this service knows, in chunks."""
    sid = uuid.UUID(segment_id)
    changes = 0
    after: uuid.UUID | None = None
    async with ctx["sessionmaker"]() as session:
        async with session.begin():
            ws = (await session.execute(text("select workspace_id from segment.segments where id = :id"),
                                        {"id": sid})).scalar()
        if ws is None:
            return 0
        while True:
            async with session.begin():
                pids = await evaluation.known_profiles(session, ws, after, _EVAL_CHUNK)
                changes += await evaluation.reevaluate(session, ws, pids, segment_ids={sid})
            if len(pids) < _EVAL_CHUNK:
                break
            after = pids[-1]
    if changes:
        await wake(ctx["redis"], ctx["settings"], "campaign", "on_transitions")
    log.info("segment.evaluated", segment_id=segment_id, changes=changes)
    return changes


_OPTIONS: dict[str, Any] = {"functions": [on_events, evaluate_segment], "poll": [on_events]}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "segment", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("segment", **_OPTIONS)
