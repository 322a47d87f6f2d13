"""Wake-ups on real Redis: coalesced per queue, never across queues."""

import uuid

from shared.queue import create_redis, wake


async def test_wakeups_coalesce_per_queue_but_not_across_queues(settings) -> None:
    s = settings.model_copy(update={"queue_prefix": f"wake-test-{uuid.uuid4().hex[:8]}"})
    redis = await create_redis(s)
    try:
        for _ in range(3):
            await wake(redis, s, "segment", "on_events")
            await wake(redis, s, "campaign", "on_events")
        assert await redis.zcard(s.queue_name("segment")) == 1
        assert await redis.zcard(s.queue_name("campaign")) == 1
        # a refused (coalesced) wake-up leaves a flag the running job reads before it exits
        assert await redis.get(f"{s.queue_name('segment')}:dirty:on_events") == b"1"
    finally:
        keys = await redis.keys(f"*{s.queue_prefix}*")
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
