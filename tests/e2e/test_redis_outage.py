"""A Redis outage while a worker runs: the worker waits it out and takes jobs again once Redis is back, as
docs/operations.md promises ("a short Redis outage restarts nothing"). The outage is a TCP relay in front of the
test Redis that is closed (connections cut, new ones refused) and opened again; the shared Redis never stops."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from arq import create_pool

from shared.embedded import free_port
from shared.queue import redis_settings
from tests.e2e.stack import Relay, run_on_own_loop

TENURE = str(Path(sys.executable).parent / "tenure")


@pytest.fixture
def relay(settings) -> Iterator[Relay]:
    rs = redis_settings(settings.redis_url)
    r = Relay((rs.host, rs.port))
    yield r
    r.close()


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def _job_runs(settings, queue: str, timeout_s: float) -> bool:
    """Enqueue a wake-up on the real Redis and wait until a worker has taken and finished it."""
    redis = await create_pool(redis_settings(settings.redis_url))
    try:
        job = await redis.enqueue_job("propagate_privacy", _queue_name=queue)
        assert job is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await redis.exists(f"arq:job:{job.job_id}") and not await redis.zscore(queue, job.job_id):
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await redis.aclose()


def _healthz(port: int) -> int:
    """What the kubelet's liveness probe sees (k8s/base/patches/worker-defaults.yaml)."""
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code


def test_a_worker_waits_out_a_redis_outage(settings, relay) -> None:
    queue_prefix = f"{settings.queue_prefix}-outage"
    http_port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TENURE_")},
           "TENURE_DATABASE_URL": settings.database_url, "TENURE_REDIS_URL": f"redis://127.0.0.1:{relay.port}/{redis_settings(settings.redis_url).database}",
           "TENURE_INTERNAL_TOKEN": settings.internal_token, "TENURE_QUEUE_PREFIX": queue_prefix,
           "TENURE_LOG_JSON": "true", "TENURE_LOG_LEVEL": "INFO",
           "TENURE_WORKER_METRICS_PORT": str(http_port)}
    proc = subprocess.Popen([TENURE, "worker", "ingest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    queue = f"{queue_prefix}:ingest"
    try:
        assert run_on_own_loop(_job_runs(settings, queue, 30)), "the worker did not take a job before the outage"
        assert _healthz(http_port) == 200
        relay.down()
        assert _refused(relay.port)
        time.sleep(4)
        assert proc.poll() is None, "the worker exited when Redis went away:\n" + proc.communicate()[1].decode()
        assert _healthz(http_port) == 200, "the liveness probe would restart a worker that waits for Redis"
        relay.up()
        assert run_on_own_loop(_job_runs(settings, queue, 30)), "the worker took no job after Redis came back"
        assert proc.poll() is None
        assert _healthz(http_port) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert '"worker.redis_unavailable"' in log and '"worker.redis_back"' in log, log
