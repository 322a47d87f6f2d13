"""A feed consumer's job while another job holds the consumer (reading a page from a slow or unreachable
upstream): it gives up after a short wait instead of queueing behind it, and leaves the holder a note to read once
more. Before, every poll (every few seconds) parked a job and a PostgreSQL connection on the consumer's row lock:
about 30 connections while ingest was down."""

import asyncio
import time

import pytest
from sqlalchemy import text

from services.campaign import worker as campaign_worker
from services.segment import worker as segment_worker
from shared.feed import ConsumerBusy, lock_consumer
from shared.queue import create_redis, take_dirty

CASES = {"campaign": (campaign_worker.on_events, "events"), "segment": (segment_worker.on_events, "ingest-events")}


@pytest.mark.parametrize("service", sorted(CASES))
async def test_a_second_job_gives_way_to_the_one_holding_the_consumer(apps, settings, sessionmaker, internal_client,
                                                                      service) -> None:
    on_events, consumer = CASES[service]
    redis = await create_redis(settings)
    ctx = {"settings": settings, "service": service, "sessionmaker": sessionmaker, "internal": internal_client,
           "redis": redis}
    try:
        await on_events(ctx)  # the consumer's row exists (committed), as it does after a service's first poll
        await take_dirty(ctx, "on_events")  # no note left by an earlier test
        async with sessionmaker() as holder:
            async with holder.begin():
                await lock_consumer(holder, service, consumer)
                # the bounded wait is for this lock only: the rest of the holder's transaction waits as configured
                default = (await holder.execute(text("select reset_val from pg_settings where name = 'lock_timeout'"))
                           ).scalar_one()
                assert (await holder.execute(text("select current_setting('lock_timeout')"))).scalar_one() in (
                    default, "0")
                started = time.monotonic()
                assert await asyncio.wait_for(on_events(ctx), 20) == 0
                waited = time.monotonic() - started
                assert waited < 10, f"the second job waited {waited:.1f} s for the consumer"
                assert await take_dirty(ctx, "on_events"), "the holder was not told to read once more"
                await holder.rollback()
        # once the holder is gone, a job reads the feed as usual
        assert await asyncio.wait_for(on_events(ctx), 20) >= 0
        assert not await take_dirty(ctx, "on_events")
    finally:
        await redis.aclose()


async def test_the_first_lock_of_a_new_consumer_is_bounded_too(sessionmaker) -> None:
    """The holder that created the consumer's row (its first transaction) holds the insert, not only the row."""
    name = f"fresh-{time.monotonic_ns()}"
    async with sessionmaker() as holder, sessionmaker() as second:
        async with holder.begin():
            await lock_consumer(holder, "campaign", name)
            async with second.begin():
                with pytest.raises(ConsumerBusy):
                    await asyncio.wait_for(lock_consumer(second, "campaign", name), 20)
            await holder.rollback()


async def test_an_event_stored_at_minus_infinity_stops_no_reader(apps, workspace, settings, sessionmaker,
                                                                 internal_client) -> None:
    """An event an earlier release stored at -infinity (it took 0001-01-01T00:00Z, which asyncpg sends as such)
    comes out of the feed as a time without an offset, in year 1: read as local time it fell in year 0, segment's
    reader failed on it at every poll and took in nothing more, for every workspace."""
    auth, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["ingest"].post("/v1/batch", auth=auth, json={"batch": [
        {"type": "track", "userId": "ancient", "event": "Old", "messageId": f"old-{workspace.workspace_id}"},
        {"type": "track", "userId": "ancient", "event": "Order Completed", "properties": {"revenue": 12}}]})
    assert r.json()["accepted"] == 2
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update ingest.events set timestamp = '-infinity' where workspace_id = :ws "
                             "and message_id = :m"), {"ws": workspace.workspace_id, "m": f"old-{workspace.workspace_id}"})
    pid = (await apps["ingest"].get("/v1/profiles/ancient", headers=h)).json()["id"]
    redis = await create_redis(settings)
    deadline = time.monotonic() + 60
    try:
        while True:  # (another test's job may hold a consumer for a while: it gives way, and is asked again)
            for service, (on_events, _) in sorted(CASES.items()):
                ctx = {"settings": settings, "service": service, "sessionmaker": sessionmaker,
                       "internal": internal_client, "redis": redis}
                await asyncio.wait_for(on_events(ctx), 60)  # (raised "year 0 is out of range" in segment)
            attributes = await apps["segment"].get(f"/v1/profiles/{pid}/attributes", headers=h)
            if attributes.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
    assert attributes.status_code == 200 and attributes.json()["order_count"] == 1, attributes.text
