"""Per-workspace request rate limits shared by every replica (a fixed one-second window in Redis).

A window counter is one round trip (INCR + EXPIRE in a pipeline). If Redis does not answer, requests
are allowed: the limit protects the database, and Redis being down must not stop ingestion.
"""

import time

import structlog
from arq.connections import ArqRedis

from shared.errors import RateLimited

log = structlog.get_logger()


async def check_rate(redis: ArqRedis, key: str, limit_per_s: int) -> None:
    """Raise :class:`RateLimited` (429 with ``Retry-After``) when ``key`` is over ``limit_per_s`` this second."""
    if limit_per_s <= 0:
        return
    now = time.time()
    window = int(now)
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.incr(f"rate:{key}:{window}")
        pipe.expire(f"rate:{key}:{window}", 2)
        count, _ = await pipe.execute()
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
