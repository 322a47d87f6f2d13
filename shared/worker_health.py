"""A worker's HTTP port: its Prometheus ``/metrics`` and a ``/healthz`` that says whether its event loop runs.

Kubernetes probed workers with ``arq --check`` until this: an exec probe that started a Python process importing
the whole worker every 30–60 s (1.35 s of CPU and a 100 MB peak measured, beside a worker of ≈ 115 MB in a pod
limited to 256 Mi and half a core) and that failed during a Redis outage, which the worker itself rides out.

Now the port is served from a thread of the worker process, so it answers even while the event loop is busy, and
``/healthz`` reads a heartbeat the loop writes every second: 200 while every worker of the process has beaten
within ``stale_after_s``, 503 when one has not (its loop blocked by a synchronous call, or deadlocked) or none has
started yet. A worker waiting for Redis or PostgreSQL keeps beating, so the kubelet restarts only a stuck one.
"""

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
import prometheus_client
import structlog
from prometheus_client.exposition import ThreadingWSGIServer

log = structlog.get_logger()

BEAT_INTERVAL_S = 1.0


class Heartbeats:
    """The heartbeats of a process's workers and the HTTP server that reports them (one per process: ``PROCESS``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}  # worker name -> time.monotonic() of its loop's last beat
        self._stale_after_s = 60.0
        self._served_ports: set[int] = set()

    async def beat_forever(self, name: str) -> None:
        """Record that ``name``'s event loop runs, every second, until cancelled (then forget it: a worker that
        stopped in a process that goes on, as in ``tenure dev``, is not a stuck one)."""
        try:
            while True:
                with self._lock:
                    self._beats[name] = time.monotonic()
                await asyncio.sleep(BEAT_INTERVAL_S)
        finally:
            with self._lock:
                self._beats.pop(name, None)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): what ``/healthz`` answers."""
        now = time.monotonic()
        with self._lock:
            ages = {name: round(now - at, 3) for name, at in self._beats.items()}
            stale_after = self._stale_after_s
        if not ages:
            return False, {"status": "starting", "workers": {}}
        stale = sorted(name for name, age in ages.items() if age > stale_after)
        body: dict[str, Any] = {"status": "stuck" if stale else "ok", "workers": ages, "stale_after_s": stale_after}
        if stale:
            body["stuck"] = stale
        return not stale, body

    def _app(self, metrics: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/healthz":
                return metrics(environ, start_response)
            ok, body = self.health()
            payload = orjson.dumps(body)
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store")])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [payload]

        return app

    def serve(self, host: str, port: int, *, stale_after_s: float) -> bool:
        """Serve ``/metrics`` and ``/healthz`` on ``host:port`` from a daemon thread (0: off). Several workers in one
        process (``tenure dev``, tests) share the port: the first one serves it, and ``/healthz`` covers them all."""
        if port <= 0:
            return False
        with self._lock:
            self._stale_after_s = stale_after_s
            if port in self._served_ports:
                return False
            server = make_server(host, port, self._app(prometheus_client.make_wsgi_app()), ThreadingWSGIServer,
                                 handler_class=_QuietHandler)
            self._served_ports.add(port)
        threading.Thread(target=server.serve_forever, name=f"worker-http-{port}", daemon=True).start()
        log.info("worker.http_serving", host=host, port=port, paths=["/metrics", "/healthz"])
        return True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Probes every few seconds would flood stderr; requests are not worth a line each."""


PROCESS = Heartbeats()
