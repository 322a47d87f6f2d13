"""Per-workspace request limits counted in Redis: concurrent requests share a round trip, and exactly
the requests past the limit are refused."""

import asyncio
import time
import uuid

from redis.asyncio import Redis

from shared.errors import RateLimited
from shared.queue import create_redis
from shared.ratelimit import RequestCounter


async def _outcomes(counter: RequestCounter, key: str, n: int, limit: int) -> list[bool]:
    async def one() -> bool:
        try:
            await counter.check(key, limit)
        except RateLimited as exc:
            assert int(exc.headers["Retry-After"]) >= 1
            return False
        return True
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_concurrent_checks_admit_exactly_the_limit(settings) -> None:
    redis = await create_redis(settings)
    try:
        key = f"test:{uuid.uuid4()}"
        counters = [RequestCounter(redis), RequestCounter(redis)]  # two replicas of the API
        await asyncio.sleep(1.02 - time.time() % 1)  # start of a window: all 80 checks fall in it
        results = await asyncio.gather(*(_outcomes(c, key, 40, 25) for c in counters))
        assert sum(sum(r) for r in results) == 25
        assert sum(r.count(False) for r in results) == 55
    finally:
        await redis.aclose()


async def test_no_limit_means_no_round_trip_and_no_refusal(settings) -> None:
    redis = await create_redis(settings)
    try:
        counter = RequestCounter(redis)
        assert all(await _outcomes(counter, f"test:{uuid.uuid4()}", 50, 0))
        assert not counter._busy
    finally:
        await redis.aclose()


async def test_redis_away_lets_requests_through(settings) -> None:
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens on port 1
    try:
        counter = RequestCounter(redis)
        assert all(await _outcomes(counter, f"test:{uuid.uuid4()}", 5, 1))
    finally:
        await redis.aclose()



async def test_a_redis_that_never_answers_is_waited_on_once_then_left_alone() -> None:
    """A hung Redis (it accepts, never answers) cost every tracking call the client's 5 s socket timeout while
    /readyz said "degraded": the count gives up within its budget, and Redis is left alone for a few seconds."""
    connections: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    redis = Redis(host="127.0.0.1", port=server.sockets[0].getsockname()[1], socket_timeout=5)
    try:
        counter = RequestCounter(redis)
        for _ in range(3):  # one after the other, as an SDK's retries come
            assert all(await _outcomes(counter, f"test:{uuid.uuid4()}", 2, 1))
        assert len(connections) == 1  # the first count waited (its budget) and failed; the next ones did not try
    finally:
        for w in connections:
            w.close()
        server.close()
        await redis.aclose()
