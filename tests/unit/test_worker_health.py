"""A worker's /healthz (shared.worker_health): served from its own thread, it tells a running event loop from a
stuck one, which is what the kubelet's liveness probe restarts a worker for."""

import asyncio
import threading
import time

import httpx

from shared import metrics, worker_health
from shared.embedded import free_port


def _get(port: int, path: str = "/healthz", method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)


def _wait_status(port: int, status: int, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = _get(port)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_healthz_answers_503_while_the_loop_is_blocked_and_200_once_it_runs_again() -> None:
    port, beats = free_port(), worker_health.Heartbeats()  # not the process's: other tests' workers beat there
    assert beats.serve("127.0.0.1", port, stale_after_s=1.5)
    assert _get(port).status_code == 503 and _get(port).json()["status"] == "starting"

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    beat = asyncio.run_coroutine_threadsafe(beats.beat_forever("segment-1"), loop)
    try:
        ok = _wait_status(port, 200)
        assert ok.status_code == 200 and ok.json()["status"] == "ok" and "segment-1" in ok.json()["workers"]
        assert ok.headers["content-type"] == "application/json"
        assert _get(port, method="HEAD").status_code == 200 and _get(port, method="HEAD").content == b""

        loop.call_soon_threadsafe(time.sleep, 4)  # a synchronous call holding the worker's loop
        stuck = _wait_status(port, 503)
        assert stuck.status_code == 503, stuck.text
        assert stuck.json()["status"] == "stuck" and stuck.json()["stuck"] == ["segment-1"]

        assert _wait_status(port, 200).status_code == 200  # the loop runs again: healthy without a restart
        assert metrics.JOB_DURATION._name in _get(port, "/metrics").text  # the same port still serves metrics
    finally:
        loop.call_soon_threadsafe(beat.cancel)
        while not beat.done():
            time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)
    assert _wait_status(port, 503).json()["status"] == "starting"  # a stopped worker is forgotten, not "stuck"
