"""Delivery's arq worker: drain the outbox (woken after each accepted message, and polled)."""

import time
from typing import Any

import structlog
from arq.cron import cron
from arq.worker import Worker

from services.delivery import apns, feedback, retention, sending
from services.delivery.smtp_session import SmtpPool
from shared.queue import JobCtx, build_worker, stopping, take_dirty, worker_settings_class
from shared.settings import Settings

log = structlog.get_logger()

# A draining job returns after this long (its timeout is 120 s) and the next poll goes on, rather than
# being cancelled mid-batch.
DRAIN_BUDGET_S = 90.0


async def send_messages(ctx: JobCtx) -> int:
    total = 0
    smtp = ctx.setdefault("smtp", SmtpPool(ctx["settings"]))  # sessions outlive a batch, and a job
    started = time.monotonic()
    while True:
        n = await sending.send_due(ctx["sessionmaker"], ctx["settings"], http=ctx["http"], redis=ctx["redis"],
                                   smtp=smtp)
        total += n
        if stopping(ctx) or time.monotonic() - started > DRAIN_BUDGET_S:
            break
        if n == 0 and not await take_dirty(ctx, "send_messages"):
            break
    return total


async def forward_feedback(ctx: JobCtx) -> int:
    """Opens, clicks and consent changes to ingest (polled; woken when recorded)."""
    total = 0
    while not stopping(ctx) and (n := await feedback.forward(ctx["sessionmaker"], ctx["internal"])):
        total += n
    return total


async def redact_expired(ctx: JobCtx) -> int:
    """Messages older than their workspace's retention lose their content (hourly; ``retention``)."""
    cleared = await retention.redact_expired(ctx["sessionmaker"])
    if cleared:
        log.info("delivery.retention_enforced", cleared=cleared)
    return cleared


async def close_connections(ctx: JobCtx) -> None:
    await apns.close_clients()
    if "smtp" in ctx:
        await ctx["smtp"].close()


_OPTIONS: dict[str, Any] = {"functions": [send_messages, forward_feedback, redact_expired],
                            "poll": [send_messages, forward_feedback],
                            "crons": [cron(redact_expired, name="cron:redact_expired", minute=29, second=0, unique=True,
                                           keep_result=0, timeout=600)],
                            "on_shutdown": [close_connections]}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "delivery", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("delivery", **_OPTIONS)
