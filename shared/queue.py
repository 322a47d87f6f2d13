"""arq helpers: Redis settings, coalesced wake-ups, and the worker scaffolding every service shares.

Redis carries wake-ups only; every durable fact is in Postgres before a job refers to it. A wake-up
uses a fixed ``_job_id`` so a burst of events becomes one job, and the woken function runs with
``keep_result=0`` so the id is free again the moment it finishes. A wake-up refused because the job is
already queued or running sets a "dirty" flag that the running job checks before it exits; a cron
poll backs both up, so a lost wake-up (Redis flushed, worker restarted) only delays work.
"""

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict, TypeVar

import structlog
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func
from httpx import AsyncClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import metrics, worker_health
from shared.db import Outage, create_engine, create_sessionmaker, dispose_within, unreachable
from shared.feed import ConsumerBusy
from shared.gc_tuning import tune_gc
from shared.http import InternalClient, make_http_client
from shared.logging import configure_logging
from shared.settings import ServiceName, Settings

log = structlog.get_logger()
T = TypeVar("T")


class JobCtx(TypedDict, total=False):
    """What a job function receives as ``ctx`` (arq adds ``redis``, ``job_id``, ``job_try``)."""

    redis: ArqRedis
    job_id: str
    job_try: int
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    http: AsyncClient
    internal: InternalClient
    service: ServiceName
    stopping: asyncio.Event


def redis_settings(url: str) -> RedisSettings:
    rs = RedisSettings.from_dsn(url)
    rs.conn_timeout = 5
    rs.conn_retries = 5
    return rs


async def create_redis(settings: Settings) -> ArqRedis:
    return await create_pool(redis_settings(settings.require_redis_url()))


def lazy_redis(settings: Settings) -> ArqRedis:
    """An arq pool that connects on first use, for the APIs: they only wake workers, count rate limits (failing
    open) and read queue depths there, so they start and serve while Redis is down (``create_pool`` pings, and
    gives up after its retries)."""
    return ArqRedis.from_url(settings.require_redis_url(), socket_connect_timeout=5, socket_timeout=5)


def _dirty_key(queue: str, function: str) -> str:
    return f"{queue}:dirty:{function}"


async def wake(redis: ArqRedis, settings: Settings, service: ServiceName, function: str) -> None:
    """Ask ``service``'s workers to run ``function`` soon; never raises (a lost wake-up only delays)."""
    queue = settings.queue_name(service)
    try:
        # arq job ids are global to the Redis database, so the id names the queue: two services (or two
        # deployments sharing a Redis) must never coalesce each other's wake-ups
        job = await redis.enqueue_job(function, _job_id=f"{queue}:wake:{function}", _queue_name=queue)
        if job is None:
            await redis.set(_dirty_key(queue, function), b"1", ex=3600)
    except Exception as exc:  # noqa: BLE001 - Redis is a hint; the cron poll catches up
        log.warning("queue.wake_failed", service=service, function=function, error=str(exc))


async def mark_dirty(ctx: JobCtx, function: str) -> None:
    """Tell the job running ``function`` to run once more before it stops (as a wake-up arriving meanwhile does)."""
    queue = ctx["settings"].queue_name(ctx["service"])
    await ctx["redis"].set(_dirty_key(queue, function), b"1", ex=3600)


async def take_dirty(ctx: JobCtx, function: str) -> bool:
    """True if a wake-up for ``function`` arrived while it was running (and clear the flag)."""
    queue = ctx["settings"].queue_name(ctx["service"])
    return bool(await ctx["redis"].getdel(_dirty_key(queue, function)))


async def read_feed_page(ctx: JobCtx, function: str, read: Callable[[AsyncSession], Awaitable[T]]) -> T | None:
    """``read(session)``: one page of a feed consumer, in a transaction of its own. None when another job holds the
    consumer (:class:`ConsumerBusy`): ``function`` is marked dirty, so the holder, which reads until the feed is
    drained, reads once more for whatever woke this job, and this one can stop."""
    try:
        async with ctx["sessionmaker"]() as session, session.begin():
            return await read(session)
    except ConsumerBusy:
        await mark_dirty(ctx, function)
        return None


JobFn = Callable[..., Awaitable[Any]]


def stopping(ctx: JobCtx) -> bool:
    """True once the worker was asked to stop (SIGTERM): drain loops finish their current batch, commit,
    and return instead of taking more, so the job ends well inside the grace period."""
    event = ctx.get("stopping")
    return bool(event and event.is_set())


class TenureWorker(Worker):
    """arq's worker, plus a ``stopping`` flag set on SIGTERM/SIGINT that long-running jobs check.

    arq stops picking jobs and waits ``job_completion_wait`` seconds for running ones before it cancels
    them; with the flag, our drain loops end on their own in a batch's time rather than being cancelled.
    """

    def _flag_stop(self) -> None:
        event = self.ctx.get("stopping")
        if event is not None:
            event.set()
        log.info("worker.stopping", running_jobs=sum(not t.done() for t in self.tasks.values()))

    def handle_sig_wait_for_completion(self, signum: Any) -> None:
        self._flag_stop()
        super().handle_sig_wait_for_completion(signum)

    def handle_sig(self, signum: Any) -> None:
        self._flag_stop()
        super().handle_sig(signum)

    _redis_down_since: float | None = None

    async def _poll_iteration(self) -> None:
        """arq's poll, surviving a Redis outage: arq lets the connection error end ``main`` (the process exits, the
        pod restarts, and restarts back off for minutes after Redis is back). Here the worker logs the outage once,
        waits, and polls again; jobs already running go on (their work is in PostgreSQL)."""
        try:
            await super()._poll_iteration()
        except (RedisConnectionError, RedisTimeoutError, OSError, WatchError) as exc:
            # (WatchError: what redis-py raises when the connection breaks under a WATCH, as in arq's job claim;
            # a real WatchError arq handles itself)
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                log.warning("worker.redis_unavailable", error=type(exc).__name__)
            await asyncio.sleep(1)
            return
        if self._redis_down_since is not None:
            log.info("worker.redis_back", down_s=round(time.monotonic() - self._redis_down_since, 1))
            self._redis_down_since = None

    async def close(self) -> None:
        """arq's close, whose first Redis call (dropping the health-check key) would skip the shutdown hooks (engine
        and clients) when Redis is down."""
        try:
            await super().close()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("worker.redis_unavailable", error=type(exc).__name__, at="shutdown")
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
            with contextlib.suppress(Exception):
                await self.pool.close(close_connection_pool=True)
            self._pool = None


def note_raised_at(exc: BaseException) -> None:
    """Stamp ``exc`` with when it happened, for a job that lets it out only later (after waiting for tasks in flight):
    an outage's error surfacing once the outage is over is not a new outage."""
    exc.__dict__.setdefault("tenure_raised_at", time.monotonic())


# Whether this process's jobs find PostgreSQL unreachable, so an outage is logged once rather than as a traceback
# per job and per poll (two or three a second per worker).
_DATABASE = Outage("worker.database_unavailable", "worker.database_back")


def riding_out_database(fn: JobFn) -> JobFn:
    """``fn`` as a job that ends quietly when PostgreSQL is unreachable: every job is a wake-up whose work is in
    PostgreSQL (nothing in its arguments), and the next poll takes it up again once the database answers."""

    @functools.wraps(fn)
    async def job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        started_at = time.monotonic()
        try:
            result = await fn(ctx, *args, **kwargs)
        except Exception as exc:
            if not unreachable(exc):
                raise
            _DATABASE.failed(exc)
            return None
        _DATABASE.succeeded(started_at=started_at)
        return result

    return job


JOB_TIMEOUT_S = 120
_worker_numbers = itertools.count(1)  # names the heartbeats of several workers in one process (tenure dev)


def long_job(timeout_s: int) -> Callable[[JobFn], JobFn]:
    """Give a job (and its poll) a longer timeout than the default two minutes: a pass over every
    profile of a large workspace takes longer, and a job cut off by its timeout starts over."""
    def mark(fn: JobFn) -> JobFn:
        fn.job_timeout_s = timeout_s  # type: ignore[attr-defined]
        return fn
    return mark


def job_timeout(fn: JobFn) -> int:
    return int(getattr(fn, "job_timeout_s", JOB_TIMEOUT_S))


def worker_options(
    settings: Settings,
    service: ServiceName,
    *,
    functions: Sequence[JobFn | Function],
    poll: Sequence[JobFn] = (),
    crons: Sequence[CronJob] = (),
    on_shutdown: Sequence[Callable[[dict[str, Any]], Awaitable[None]]] = (),
) -> dict[str, Any]:
    """Keyword arguments of an arq ``Worker`` for ``service``: engine, sessionmaker, HTTP clients in ``ctx``.

    Each function in ``poll`` also runs as a cron every ``feed_poll_interval_s`` (whole seconds), the
    safety net under wake-ups.
    """
    step = max(1, round(settings.feed_poll_interval_s))
    seconds = set(range(0, 60, step))
    cron_jobs: list[CronJob] = [
        cron(riding_out_database(metrics.instrument_job(service, fn)),
             name=f"{settings.queue_name(service)}:cron:{fn.__name__}", second=seconds, microsecond=0,
             run_at_startup=True, unique=True, keep_result=0, timeout=job_timeout(fn))
        for fn in poll
    ]

    async def startup(ctx: dict[str, Any]) -> None:
        configure_logging(settings)
        ctx["settings"] = settings
        ctx["service"] = service
        ctx["stopping"] = asyncio.Event()
        health = worker_health.PROCESS
        health.serve(settings.host, settings.worker_metrics_port, stale_after_s=settings.worker_stale_after_s)
        ctx["heartbeat"] = asyncio.create_task(health.beat_forever(f"{service}-{next(_worker_numbers)}"))
        # as large as an API's: delivery sends with ten concurrent senders, and a pool smaller than that
        # opened and closed an overflow connection for nearly every message
        ctx["engine"] = create_engine(settings, application_name=f"tenure-{service}-worker")
        ctx["sessionmaker"] = create_sessionmaker(ctx["engine"])
        ctx["http"] = make_http_client(settings)
        ctx["internal"] = InternalClient(settings, ctx["http"])
        tune_gc()
        log.info("worker.started", service=service, queue=settings.queue_name(service))

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "heartbeat" in ctx:
            ctx["heartbeat"].cancel()
        for hook in on_shutdown:  # the service's own long-lived clients (delivery's APNs and SMTP connections)
            await hook(ctx)
        if "http" in ctx:
            await ctx["http"].aclose()
        if "engine" in ctx:
            await dispose_within(ctx["engine"])
        log.info("worker.stopped", service=service)

    async def job_start(ctx: dict[str, Any]) -> None:
        # every log line (and every internal HTTP call's X-Request-ID) of a job carries its id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), request_id=f"job-{ctx.get('job_id')}")

    fns = [dataclasses.replace(f, coroutine=riding_out_database(metrics.instrument_job(service, f.coroutine)))
           if isinstance(f, Function)
           else func(riding_out_database(metrics.instrument_job(service, f)), name=f.__name__, keep_result=0,
                     timeout=job_timeout(f))
           for f in functions]
    return {
        "functions": fns,
        # cron names become arq job ids, global to the Redis database: prefix them with the queue
        "cron_jobs": [*cron_jobs, *(dataclasses.replace(
            c, name=f"{settings.queue_name(service)}:{c.name}",
            coroutine=riding_out_database(metrics.instrument_job(service, c.coroutine))) for c in crons)],
        "redis_settings": redis_settings(settings.redis_url or "redis://127.0.0.1:6379/0"),
        "queue_name": settings.queue_name(service),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": job_start,
        "poll_delay": 0.2,
        "max_jobs": 10,
        "job_completion_wait": 20,
        "health_check_interval": 30,
        # one key per host (a pod's hostname is its name): `arq --check` in a pod's probe reads its own
        # worker's heartbeat, not whichever replica wrote the queue's shared key last
        "health_check_key": f"{settings.queue_name(service)}:health-check:{socket.gethostname()}",
        "keep_result": 0,
    }


def build_worker(settings: Settings, service: ServiceName, *, burst: bool = False,
                 handle_signals: bool = True, **options: Any) -> Worker:
    return TenureWorker(**worker_options(settings, service, **options), burst=burst, handle_signals=handle_signals)


def worker_settings_class(service: ServiceName, **options: Any) -> type:
    """A ``WorkerSettings`` class for the plain ``arq`` CLI, configured from the environment."""
    return type("WorkerSettings", (), worker_options(Settings(), service, **options))


class Waker:
    """Coalesces wake-ups within a process: at most one per target every ``interval_s``, and always one
    after the last request (trailing edge), so a burst of commits costs a handful of Redis calls."""

    CLOSE_WAIT_S = 10.0  # (each Redis call is bounded by the client's 5 s socket timeout)

    def __init__(self, redis: ArqRedis, settings: Settings, interval_s: float = 0.02):
        self._redis = redis
        self._settings = settings
        self._interval = interval_s
        self._pending: set[tuple[ServiceName, str]] = set()
        self._event = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="waker")

    def request(self, service: ServiceName, function: str) -> None:
        self._pending.add((service, function))
        self._event.set()

    async def _run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            targets, self._pending = self._pending, set()
            for service, function in targets:
                await wake(self._redis, self._settings, service, function)
            if self._closing:
                return
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Send what is pending, then stop. The loop is asked to finish rather than cancelled: redis-py can swallow
        a cancellation that lands inside a command (arq's enqueue pipeline; seen in about one in eight tries), and
        the task then waits for the next request forever — with it every shutdown that awaited it (an app's
        lifespan hung CI for 90 minutes). A loop that does not finish in time is cancelled, and not waited for."""
        self._closing = True
        self._event.set()
        done, _ = await asyncio.wait({self._task}, timeout=self.CLOSE_WAIT_S)
        if not done:
            log.warning("queue.waker_stuck_at_close", pending=len(self._pending))
            self._task.cancel()
