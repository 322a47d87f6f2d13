"""Provider failover for email: a circuit breaker per provider, shared by all workers through Redis.

``circuit_failures`` failures within a minute — each one certain not to have delivered the message
(connection refused, the provider answered with an error) — open the primary's circuit for
``circuit_open_s``; meanwhile new attempts use the fallback. A message that a provider may hold (it
took it, or the attempt ended in an unknown state) is pinned to that provider and never sent through
the other: failover can delay a message, never double it. Without Redis, no failover (fail closed).
"""

from typing import Any

import structlog

from shared.settings import Settings

log = structlog.get_logger()


async def choose(redis: Any, settings: Settings, pinned: str | None) -> str:
    primary, fallback = settings.email_provider, settings.email_fallback_provider
    if pinned or fallback is None or redis is None:
        return pinned or primary
    try:
        return fallback if await redis.exists(f"circuit:{primary}:open") else primary
    except Exception:  # noqa: BLE001 - Redis away: stay on the primary
        return primary


def _breaker_matters(redis: Any, settings: Settings) -> bool:
    """Counting failures only matters with a fallback to turn to (and Redis to share the count)."""
    return redis is not None and settings.email_fallback_provider is not None


async def failed(redis: Any, settings: Settings, provider: str) -> None:
    if not _breaker_matters(redis, settings):
        return
    try:
        key = f"circuit:{provider}:failures"
        n = await redis.incr(key)
        if n == 1:
            await redis.expire(key, 60)
        if n >= settings.circuit_failures and not await redis.exists(f"circuit:{provider}:open"):
            await redis.set(f"circuit:{provider}:open", b"1", px=int(settings.circuit_open_s * 1000))
            log.warning("delivery.circuit_opened", provider=provider, failures=n)
    except Exception:  # noqa: BLE001
        return


async def succeeded(redis: Any, settings: Settings, provider: str) -> None:
    if not _breaker_matters(redis, settings):
        return
    try:
        await redis.delete(f"circuit:{provider}:failures")
    except Exception:  # noqa: BLE001
        return
