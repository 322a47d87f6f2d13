"""Prometheus metrics: one registry per process, served at an API's ``/metrics`` and on a worker's HTTP port
(``shared.worker_health``).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Labels stay bounded:
routes are the route *templates* (``/v1/profiles/{profile_id}``), never raw paths, and ids never
become labels. One process per pod (uvicorn ``--workers 1``): each process has its own registry, except under
``tenure serve --workers N``, whose processes share their values (:func:`exposition`).
"""

import asyncio
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from shared.budget import within
from shared.db import unreachable

log = structlog.get_logger()

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's: where processes of one server share their values
# gauges read at scrape time: in multiprocess mode, the value the latest scrape read, whichever process ran it
_SCRAPED = "mostrecent"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("tenure_http_requests_total", "HTTP requests answered, by route template and status",
                        ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram("tenure_http_request_duration_seconds", "HTTP request latency by route template",
                         ["service", "method", "route"], buckets=_LATENCY_BUCKETS)
JOB_DURATION = Histogram("tenure_job_duration_seconds", "arq job run time, by function and outcome "
                         "(ok, error, cancelled)", ["service", "function", "outcome"],
                         buckets=(*_LATENCY_BUCKETS, 60, 120, 300, 600))
JOB_ITEMS = Counter("tenure_job_items_total", "Items (events, journeys, messages...) that jobs processed, by "
                    "function: how work is shared between replicas", ["service", "function"])
QUEUE_DEPTH = Gauge("tenure_queue_depth", "Jobs waiting in the service's arq queue (read at scrape time)",
                    ["service", "queue"], multiprocess_mode=_SCRAPED)
FEED_LAG = Gauge("tenure_feed_lag_events", "Entries of a feed committed after the consumer's cursor, as of its "
                 "last read (exact up to 1000, then estimated from the feed's sequence)", ["feed", "consumer"])
FEED_LAST_READ = Gauge("tenure_feed_last_read_timestamp_seconds", "When the consumer last read its feed (Unix "
                       "time): a stale value means the consumer is stuck", ["feed", "consumer"])
MESSAGES = Counter("tenure_messages_total", "Messages that reached a status, by channel and status",
                   ["channel", "status"])
WORKSPACE_FAILURES = Counter("tenure_workspace_task_failures_total", "Background work of one workspace that failed "
                             "and was set aside so other workspaces' went on (retried at the next run), by task",
                             ["service", "task"])
INGEST_REJECTED = Counter("tenure_ingest_rejected_messages_total", "Tracking messages refused one by one (the rest of "
                          "their request stored or not), by reason: the type of the message's first error", ["reason"])
PRIVACY_ERASURE_CALLS = Counter("tenure_privacy_erasure_calls_total", "Calls ingest's worker made to another service "
                                "to erase a user, by service and outcome (ok, error)", ["service", "outcome"])
PRIVACY_ERASURES_PENDING = Gauge("tenure_privacy_erasures_pending", "Erasure requests not yet completed by every "
                                 "service, in every workspace (read at scrape time)", multiprocess_mode=_SCRAPED)
PRIVACY_OLDEST_PENDING = Gauge("tenure_privacy_oldest_pending_erasure_age_seconds", "Age of the oldest erasure "
                               "request not yet completed (0 when none is; read at scrape time)",
                               multiprocess_mode=_SCRAPED)

DUE_WORK = Gauge("tenure_due_work_items", "Work waiting for a worker now, read from PostgreSQL at scrape time (counted "
                 "up to 100,000): campaign `journeys` whose timer is due, delivery `messages` due to be sent or "
                 "retried. What to autoscale the workers on", ["service", "work"],
                 multiprocess_mode=_SCRAPED)
DUE_WORK_OLDEST = Gauge("tenure_due_work_oldest_age_seconds", "How long the oldest of that work has been due (0 when "
                        "none is): how far behind the workers are", ["service", "work"],
                        multiprocess_mode=_SCRAPED)

DUE_CAP = 100_000


def workspace_failed(service: str, task: str, workspace_id: object) -> None:
    """Call in an ``except`` block: log the error with its traceback and count it (one workspace's bad data must
    not stop background work for every workspace). PostgreSQL unreachable is no workspace's failure: that error is
    raised again, ending the job (the worker logs the outage once, and its next poll retries everything) rather
    than a traceback per workspace."""
    exc = sys.exc_info()[1]
    if exc is not None and unreachable(exc):
        raise exc
    WORKSPACE_FAILURES.labels(service, task).inc()
    log.exception("workspace_task_failed", service=service, task=task, workspace_id=str(workspace_id))


def record_request(service: str, method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(service, method, route, str(status)).inc()
    HTTP_LATENCY.labels(service, method, route).observe(seconds)


def record_feed_read(feed: str, consumer: str, behind: int | None) -> None:
    if behind is not None:
        FEED_LAG.labels(feed, consumer).set(behind)
    FEED_LAST_READ.labels(feed, consumer).set_to_current_time()


def exposition() -> Response:
    """The process's metrics; under ``tenure serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set), every worker
    process's, summed, whichever of them answers the scrape."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


Refresh = Callable[[FastAPI], Awaitable[None]]

REFRESH_BUDGET_S = 2.0  # the longest a scrape waits for a gauge read from PostgreSQL or Redis


def sets(*gauges: Gauge) -> Callable[[Refresh], Refresh]:
    """Declare the gauges a scrape-time refresh sets. When the refresh fails or runs out of time they read NaN, "no
    value", rather than a stale value or 0: a queue depth of 0 while Redis was down read as "nothing to do" to an
    autoscaler."""

    def mark(refresh: Refresh) -> Refresh:
        refresh.gauges = gauges  # type: ignore[attr-defined]
        return refresh

    return mark


def _unknown(gauge: Gauge) -> None:
    """Every series of ``gauge`` to NaN, "no value" (not removed: under ``serve --workers`` another process's last
    value would then show instead)."""
    for metric in gauge.collect():
        for sample in metric.samples:
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(float("nan"))


async def _refresh(update: Refresh, app: FastAPI) -> None:
    name = getattr(update, "__name__", "?")
    try:
        await within(update(app), REFRESH_BUDGET_S, name)
    except Exception as exc:  # noqa: BLE001 - a broken dependency must not hide the other metrics
        for gauge in getattr(update, "gauges", ()):
            _unknown(gauge)
        log.warning("metrics.refresh_failed", refresh=name, error=str(exc) or type(exc).__name__)


def metrics_router(service: str, *refresh: Refresh) -> APIRouter:
    """``GET /metrics``; each ``refresh(app)`` updates gauges read at scrape time (queue depth) first, all at once and
    each within :data:`REFRESH_BUDGET_S`: a hung PostgreSQL or Redis made every scrape take 5-10 s, past Prometheus'
    default scrape timeout, so the process's other metrics were lost with them."""
    router = APIRouter(tags=["health"])

    @router.get("/metrics", operation_id=f"{service}_metrics", include_in_schema=True,
                summary="Prometheus metrics of this process (text exposition format)",
                openapi_extra={"security": []}, response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics"}})
    async def metrics(request: Request) -> Response:
        await asyncio.gather(*(_refresh(update, request.app) for update in refresh))
        return exposition()

    return router


def due_work_refresh(service: str, work: str, due_rows: str) -> Refresh:
    """A scrape-time refresh of :data:`DUE_WORK` and :data:`DUE_WORK_OLDEST` for ``service``'s ``work``.

    ``due_rows``: a select of the rows due now, as ``due_at``, ordered by it: the front of the index the workers
    claim from, so the count reads at most :data:`DUE_CAP` index entries however large the backlog."""
    query = text(f"select count(*) as n, coalesce(extract(epoch from now() - min(due_at)), 0) as oldest_s "
                 f"from ({due_rows} limit {DUE_CAP}) due")

    @sets(DUE_WORK, DUE_WORK_OLDEST)
    async def due_work(app: FastAPI) -> None:
        async with app.state.sessionmaker() as session, session.begin():
            row = (await session.execute(query)).one()
        DUE_WORK.labels(service, work).set(row.n)
        DUE_WORK_OLDEST.labels(service, work).set(max(0.0, float(row.oldest_s)))

    due_work.__name__ = f"due_{work}"
    return due_work


def instrument_job(service: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` timed into ``tenure_job_duration_seconds`` (outcome ok / error / cancelled)."""

    @functools.wraps(fn)
    async def timed(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await fn(ctx, *args, **kwargs)
            outcome = "ok"
            if isinstance(result, int) and result > 0:
                JOB_ITEMS.labels(service, fn.__name__).inc(result)
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            JOB_DURATION.labels(service, fn.__name__, outcome).observe(time.perf_counter() - started)

    return timed
