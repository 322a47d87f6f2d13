"""Campaign's arq worker: read the event and transition feeds into sends, then dispatch them."""

from typing import Any

import structlog
from arq.worker import Worker

from services.campaign import dispatch, triggering
from shared.queue import JobCtx, build_worker, take_dirty, wake, worker_settings_class
from shared.settings import Settings

log = structlog.get_logger()


async def _consume(ctx: JobCtx, feed: str, function: str) -> int:
    settings = ctx["settings"]
    read = created = 0
    while True:
        async with ctx["sessionmaker"]() as session, session.begin():
            n, c = await triggering.consume_page(session, ctx["internal"], feed, settings.consumer_batch_size)
        read, created = read + n, created + c
        if n < settings.consumer_batch_size and not await take_dirty(ctx, function):
            break
    if created:
        log.info("campaign.sends_decided", feed=feed, read=read, sends=created)
        await wake(ctx["redis"], settings, "campaign", "dispatch_sends")
    return created


async def on_events(ctx: JobCtx) -> int:
    """Woken by ingest: event-triggered campaigns."""
    return await _consume(ctx, "events", "on_events")


async def on_transitions(ctx: JobCtx) -> int:
    """Woken by segment: segment-entry campaigns."""
    return await _consume(ctx, "transitions", "on_transitions")


async def dispatch_sends(ctx: JobCtx) -> int:
    total = 0
    while True:
        n = await dispatch.dispatch_due(ctx["sessionmaker"], ctx["internal"])
        total += n
        if n == 0:
            break
    return total


_OPTIONS: dict[str, Any] = {
    "functions": [on_events, on_transitions, dispatch_sends],
    "poll": [on_events, on_transitions, dispatch_sends],
}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "campaign", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("campaign", **_OPTIONS)
