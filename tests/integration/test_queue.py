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


async def test_a_waker_closes_whenever_it_is_closed(settings) -> None:
    """Closing a Waker while its loop was inside a Redis command hung for good about one time in eight: redis-py
    swallowed the cancellation and the loop went back to waiting for requests (an app's shutdown, CI for 90
    minutes). Every close returns, and what was requested before it is sent."""
    import asyncio
    import random

    from shared.queue import Waker

    s = settings.model_copy(update={"queue_prefix": f"waker-test-{uuid.uuid4().hex[:8]}"})
    redis = await create_redis(s)
    rng = random.Random(8)
    try:
        for i in range(100):
            waker = Waker(redis, s)
            waker.request("segment", f"job_{i}")  # (a job of its own each time: a whole enqueue, not a coalesced one)
            await asyncio.sleep(rng.random() * 0.004)  # the loop somewhere in its Redis command, or not yet
            await asyncio.wait_for(waker.close(), 15)
        assert await redis.zcard(s.queue_name("segment")) == 100
    finally:
        keys = await redis.keys(f"*{s.queue_prefix}*")
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_a_journey_entered_while_sends_are_handed_over_is_run_before_the_job_ends(settings) -> None:
    """advance_journeys checked for wake-ups, then waited for its hand-overs to delivery: a journey entered in that
    wait (its wake-up only marked the running job dirty) sat until the next poll, ~5 s, and an exit event beat its
    first email. The hand-overs finish first; a wake-up that came meanwhile makes the job run once more."""
    import asyncio

    from services.campaign.worker import _woken_while_handing_over

    s = settings.model_copy(update={"queue_prefix": f"wake-test-{uuid.uuid4().hex[:8]}"})
    redis = await create_redis(s)
    ctx = {"settings": s, "service": "campaign", "redis": redis}
    try:
        assert not await _woken_while_handing_over(ctx, set())  # nothing in flight: nothing to wait for
        for woken in (True, False):
            async def handing_over(woken: bool = woken) -> None:
                await asyncio.sleep(0.2)
                if woken:  # a trigger page entered a journey meanwhile
                    await wake(redis, s, "campaign", "advance_journeys")

            await redis.enqueue_job("advance_journeys", _job_id=f"{s.queue_name('campaign')}:wake:advance_journeys",
                                    _queue_name=s.queue_name("campaign"))  # (this job, queued: wakes coalesce)
            task = asyncio.create_task(handing_over())
            assert await _woken_while_handing_over(ctx, {task}) is woken
            assert task.done()
    finally:
        keys = await redis.keys(f"*{s.queue_prefix}*")
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
