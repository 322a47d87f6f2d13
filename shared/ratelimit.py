"""Rate limits shared by every replica, in Redis: per-workspace request limits (a fixed one-second
window, one round trip) and token buckets for sending (per provider, per workspace).

If Redis does not answer, work is allowed: the limits protect the database and the providers, and Redis
being down must not stop ingestion or delivery.
"""

import time

import structlog
from arq.connections import ArqRedis

from shared.errors import RateLimited

log = structlog.get_logger()


# one command per request (a pipeline of INCR + EXPIRE cost the ingest API ≈ 7 % of its CPU)
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 2) end
return n
"""


async def check_rate(redis: ArqRedis, key: str, limit_per_s: int) -> None:
    """Raise :class:`RateLimited` (429 with ``Retry-After``) when ``key`` is over ``limit_per_s`` this second."""
    if limit_per_s <= 0:
        return
    now = time.time()
    window = int(now)
    try:
        count = await redis.eval(_COUNT, 1, f"rate:{key}:{window}")
    except Exception as exc:  # noqa: BLE001 - fail open
        log.warning("ratelimit.unavailable", error=type(exc).__name__)
        return
    if int(count) > limit_per_s:
        retry_after = max(1, round(window + 1 - now + 0.5))
        raise RateLimited(
            f"Over {limit_per_s} requests per second for this workspace; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after), "X-RateLimit-Reset": str(retry_after)},
            limit_per_second=limit_per_s,
        )


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
