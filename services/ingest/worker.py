"""Ingest's arq worker: housekeeping of the event log.

``enforce_retention`` deletes events older than a workspace's ``retention_days`` setting
(``core.workspaces.settings``), in small batches so writers are never blocked for long.
"""

from typing import Any

import structlog
from arq.cron import cron
from arq.worker import Worker

from services.ingest import privacy
from shared import retention
from shared.queue import JobCtx, build_worker, stopping, worker_settings_class
from shared.settings import Settings

log = structlog.get_logger()

async def enforce_retention(ctx: JobCtx) -> int:
    deleted = await retention.enforce(ctx["sessionmaker"], "ingest.events", "timestamp",
                                      received_before=retention.FEED_GRACE)
    if deleted:
        log.info("ingest.retention_enforced", deleted=deleted)
    return deleted


async def propagate_privacy(ctx: JobCtx) -> int:
    """Ask the other services to erase for pending privacy requests (woken per request, and polled); each
    service of a request is asked again after a back-off when it failed (``privacy.propagate``)."""
    return await privacy.propagate(ctx["sessionmaker"], ctx["internal"], stop=lambda: stopping(ctx))


_OPTIONS: dict[str, Any] = {
    "functions": [enforce_retention, propagate_privacy],
    "poll": [propagate_privacy],
    "crons": [cron(enforce_retention, name="cron:enforce_retention", minute=17, second=0, unique=True,
                   keep_result=0, timeout=600)],
}


def create_worker(settings: Settings, **kw: Any) -> Worker:
    return build_worker(settings, "ingest", **_OPTIONS, **kw)


WorkerSettings = worker_settings_class("ingest", **_OPTIONS)
