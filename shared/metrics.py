"""Prometheus metrics: one registry per process, served at an API's ``/metrics`` and on a worker's HTTP port
(``shared.worker_health``).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Labels stay bounded:
routes are the route *templates* (``/v1/profiles/{profile_id}``), never raw paths, and ids never
become labels. One process per pod (uvicorn ``--workers 1``): each process has its own registry.
"""

import asyncio
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from shared.db import unreachable

log = structlog.get_logger()

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
                    ["service", "queue"])
FEED_LAG = Gauge("tenure_feed_lag_events", "Entries of a feed committed after the consumer's cursor, as of its "
                 "last read (exact up to 1000, then estimated from the feed's sequence)", ["feed", "consumer"])
FEED_LAST_READ = Gauge("tenure_feed_last_read_timestamp_seconds", "When the consumer last read its feed (Unix "
                       "time): a stale value means the consumer is stuck", ["feed", "consumer"])
MESSAGES = Counter("tenure_messages_total", "Messages that reached a status, by channel and status",
                   ["channel", "status"])
WORKSPACE_FAILURES = Counter("tenure_workspace_task_failures_total", "Background work of one workspace that failed "
                             "and was set aside so other workspaces' went on (retried at the next run), by task",
                             ["service", "task"])
PRIVACY_ERASURE_CALLS = Counter("tenure_privacy_erasure_calls_total", "Calls ingest's worker made to another service "
                                "to erase a user, by service and outcome (ok, error)", ["service", "outcome"])
PRIVACY_ERASURES_PENDING = Gauge("tenure_privacy_erasures_pending", "Erasure requests not yet completed by every "
                                 "service, in every workspace (read at scrape time)")
PRIVACY_OLDEST_PENDING = Gauge("tenure_privacy_oldest_pending_erasure_age_seconds", "Age of the oldest erasure "
                               "request not yet completed (0 when none is; read at scrape time)")


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
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


Refresh = Callable[[FastAPI], Awaitable[None]]


def metrics_router(service: str, *refresh: Refresh) -> APIRouter:
    """``GET /metrics``; each ``refresh(app)`` updates gauges read at scrape time (queue depth) first."""
    router = APIRouter(tags=["health"])

    @router.get("/metrics", operation_id=f"{service}_metrics", include_in_schema=True,
                summary="Prometheus metrics of this process (text exposition format)",
                openapi_extra={"security": []}, response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics"}})
    async def metrics(request: Request) -> Response:
        for update in refresh:
            try:
                await update(request.app)
            except Exception as exc:  # noqa: BLE001 - a broken dependency must not hide the other metrics
                log.warning("metrics.refresh_failed", refresh=getattr(update, "__name__", "?"), error=str(exc))
        return exposition()

    return router


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
