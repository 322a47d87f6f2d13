"""Gauges read at scrape time (queue depth, due work, pending erasures) when what they read fails or hangs."""

import asyncio
import math
import uuid

import httpx
from fastapi import FastAPI
from prometheus_client import Gauge

from shared import metrics
from shared.testing import metric_samples


def _app(*refresh: metrics.Refresh) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(metrics.metrics_router("test", *refresh))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


async def test_a_failed_refresh_leaves_no_stale_value_behind() -> None:
    """Queue depth read 0, or its last value, while Redis was down: an autoscaler read "nothing to do". A refresh that
    fails sets its gauges to NaN, "no value"."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    depth = Gauge(f"{name}_depth", "a labelled gauge", ["queue"])
    pending = Gauge(f"{name}_pending", "an unlabelled gauge")
    broken = False

    @metrics.sets(depth, pending)
    async def read(app: FastAPI) -> None:
        if broken:
            raise ConnectionError("Redis is down")
        depth.labels("q").set(7)
        pending.set(3)

    async with _app(read) as client:
        samples = metric_samples((await client.get("/metrics")).text)
        assert samples[(f"{name}_depth", frozenset({("queue", "q")}))] == 7 and samples[(f"{name}_pending", frozenset())] == 3
        broken = True
        samples = metric_samples((await client.get("/metrics")).text)
    assert math.isnan(samples[(f"{name}_depth", frozenset({("queue", "q")}))])
    assert math.isnan(samples[(f"{name}_pending", frozenset())])
    assert samples[("process_cpu_seconds_total", frozenset())] >= 0  # the rest of the scrape is there


async def test_a_hung_dependency_costs_a_scrape_one_budget_not_its_socket_timeout(monkeypatch) -> None:
    """A PostgreSQL or Redis that accepts and never answers made every scrape wait out socket timeouts (5-10 s, past
    Prometheus' default scrape timeout of 10 s with two of them): each refresh gets the same short budget, at once."""
    monkeypatch.setattr(metrics, "REFRESH_BUDGET_S", 0.2)
    name = f"t_{uuid.uuid4().hex[:8]}"
    hung_gauges = [Gauge(f"{name}_{i}", "reads a dependency that hangs") for i in range(3)]
    served = Gauge(f"{name}_ok", "reads one that answers")

    def hanging(gauge: Gauge) -> metrics.Refresh:
        @metrics.sets(gauge)
        async def hang(app: FastAPI) -> None:
            await asyncio.sleep(3600)

        return hang

    @metrics.sets(served)
    async def answers(app: FastAPI) -> None:
        served.set(1)

    async with _app(*(hanging(g) for g in hung_gauges), answers) as client:
        body = (await asyncio.wait_for(client.get("/metrics"), 30)).text  # (not an hour: the budget ended each wait)
    samples = metric_samples(body)
    assert samples[(f"{name}_ok", frozenset())] == 1
    assert all(math.isnan(samples[(f"{name}_{i}", frozenset())]) for i in range(3))
