"""Rate limits shared by every replica, in Redis: per-workspace request limits (a fixed one-second
window, counted in Redis) and token buckets for sending (per provider, per workspace).

If Redis does not answer, work is allowed: the limits protect the database and the providers, and Redis
being down must not stop ingestion or delivery.
"""

import asyncio
import time

import structlog
from arq.connections import ArqRedis

from shared.budget import within
from shared.errors import RateLimited

log = structlog.get_logger()

COUNT_BUDGET_S = 0.25  # the longest a request waits for its count (Redis answers in a millisecond or two)
PAUSE_AFTER_FAILURE_S = 5.0


# INCRBY with the expiry set by whoever opens the window, in one command
_COUNT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], 2) end
return n
"""


def _over(limit_per_s: int, now: float) -> RateLimited:
    retry_after = max(1, round(int(now) + 1 - now + 0.5))
    return RateLimited(
        f"Over {limit_per_s} requests per second for this workspace; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after), "X-RateLimit-Reset": str(retry_after)},
        limit_per_second=limit_per_s,
    )


class RequestCounter:
    """Per-key request limits in a fixed one-second window, counted in Redis for every replica.

    Concurrent checks of one window share a round trip: while one ``INCRBY`` is in flight, later
    requests queue and the next ``INCRBY`` counts them all; each learns its own position in the
    window, so exactly the requests past the limit are refused, as with one ``INCR`` each. (One
    command per request cost the ingest API ≈ 13 % of its CPU on single-event requests.)

    A Redis that does not answer within :data:`COUNT_BUDGET_S` (hung, not refusing: a full network path, a stuck
    primary) lets the requests waiting on it pass, and the counter is not asked again for
    :data:`PAUSE_AFTER_FAILURE_S`: each tracking call would otherwise wait out the client's 5 s socket timeout while
    ``/readyz`` says "degraded" and the pod stays in the Service.
    """

    def __init__(self, redis: ArqRedis):
        self._redis = redis
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references to tasks)
        self._paused_until = 0.0  # (monotonic) Redis failed: requests pass uncounted until then

    async def check(self, key: str, limit_per_s: int) -> None:
        """Raise :class:`RateLimited` (429 with ``Retry-After``) when ``key`` is over ``limit_per_s`` this second."""
        if limit_per_s <= 0 or time.monotonic() < self._paused_until:
            return
        now = time.time()
        window = f"rate:{key}:{int(now)}"
        position: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(window, []).append(position)
        if window not in self._busy:
            self._busy.add(window)
            task = asyncio.get_running_loop().create_task(self._count(window))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if await position > limit_per_s:
            raise _over(limit_per_s, now)

    async def _count(self, window: str) -> None:
        waiters: list[asyncio.Future[int]] = []
        try:
            while waiters := self._waiting.pop(window, None) or []:
                try:
                    command = self._redis.eval(_COUNT, 1, window, len(waiters))
                    total = int(await within(command, COUNT_BUDGET_S, "Redis"))
                except Exception as exc:  # noqa: BLE001 - fail open, and do not wait on Redis for a while
                    self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
                    log.warning("ratelimit.unavailable", error=type(exc).__name__, paused_s=PAUSE_AFTER_FAILURE_S)
                    total = 0
                first = total - len(waiters) + 1
                for i, waiter in enumerate(waiters):
                    if not waiter.done():
                        waiter.set_result(first + i if total else 0)
        finally:
            self._busy.discard(window)
            for waiter in waiters + self._waiting.pop(window, []):  # (only if cancelled mid-count: let them pass)
                if not waiter.done():
                    waiter.set_result(0)


# A token bucket in one Redis hash, refilled continuously: ``rate`` tokens per second up to ``burst``.
# Atomic (a Lua script), so replicas share it exactly; returns how many of the asked tokens were granted.
_TAKE = """
local rate, burst, want, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return granted
"""


async def take_tokens(redis: ArqRedis | None, key: str, rate_per_s: float, want: int, burst: float | None = None
                      ) -> int:
    """Tokens granted (0..want) from the shared bucket ``key``; everything when unlimited or Redis is away."""
    if redis is None or rate_per_s <= 0 or want <= 0:
        return want
    try:
        granted = await redis.eval(_TAKE, 1, f"bucket:{key}", rate_per_s, burst or rate_per_s, want, time.time())
    except Exception as exc:  # noqa: BLE001 - fail open: a limit must not stop delivery when Redis is down
        log.warning("ratelimit.unavailable", error=type(exc).__name__)
        return want
    return int(granted)
