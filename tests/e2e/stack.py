"""Real `tenure serve` / `tenure worker` processes for end-to-end tests, and a local SMTP server to catch mail."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy.engine import make_url

from services.devinbox.inbox import Mailbox, parse_message
from shared.embedded import free_port
from shared.settings import SERVICES, Settings
from shared.testing import Samples, metric_samples, sample  # noqa: F401 - (sample: for the tests that import it here)

TENURE = str(Path(sys.executable).parent / "tenure")
# where stacks keep their processes' logs: the run's pytest temporary folder (tests/conftest.py), which pytest
# removes after a few more runs (a log folder per stack in /tmp otherwise, never removed)
LOG_ROOT: Path | None = None


def stack_env(settings: Settings, smtp_port: int, suffix: str, **extra: str) -> dict[str, str]:
    """The environment of a stack of processes on this run's database, with its own queues and ports."""
    return {
        **os.environ,
        "TENURE_ENV": "test",
        "TENURE_DATABASE_URL": settings.database_url or "",
        "TENURE_REDIS_URL": settings.redis_url or "",
        "TENURE_QUEUE_PREFIX": f"{settings.queue_prefix}-{suffix}",
        "TENURE_INTERNAL_TOKEN": settings.internal_token,
        "TENURE_SMTP_PORT": str(smtp_port),
        "TENURE_FEED_POLL_INTERVAL_S": "1",
        "TENURE_SMS_MARKETING_HOURS": "",  # (the clock of the run would decide when marketing texts go)
        "TENURE_LOG_LEVEL": "WARNING",
        **{f"TENURE_{s.upper()}_PORT": str(free_port()) for s in SERVICES},
        **extra,
    }


class Stack:
    """APIs (one process each) and workers (any number of replicas each, each with its own metrics port)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.logs = Path(tempfile.mkdtemp(prefix="tenure-stack-", dir=LOG_ROOT))
        self.apis: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.worker_metrics: dict[str, list[int]] = {}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.env[f'TENURE_{service.upper()}_PORT']}"

    async def queue_emails(self, secret_key: str, recipients: list[str], subject: str) -> None:
        """A transactional email to each recipient through delivery's batch API (keyed by its address, 500 a
        request); every one must be queued."""
        async with httpx.AsyncClient(timeout=30) as c:
            for start in range(0, len(recipients), 500):
                chunk = recipients[start:start + 500]
                r = await c.post(f"{self.url('delivery')}/v1/messages/batch",
                                 headers={"Authorization": f"Bearer {secret_key}"}, json={"messages": [
                                     {"idempotency_key": to, "to": to, "subject": subject, "text": "x",
                                      "message_type": "transactional"} for to in chunk]})
                assert [x["result"] for x in r.json()["results"]] == ["queued"] * len(chunk), r.text

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``tenure ARGS``; its log goes to a file (a pipe nobody reads would block a chatty process)."""
        log = self.logs / f"{'-'.join(args)}-{len(list(self.logs.iterdir()))}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen([TENURE, *args], env={**self.env, **env}, stdout=subprocess.DEVNULL, stderr=f)
        proc.log_path = log  # type: ignore[attr-defined]
        return proc

    def start_apis(self, services: Iterable[str] = SERVICES) -> None:
        services = list(services)
        self.apis.update({s: self.spawn("serve", s) for s in services})
        for s in services:
            wait_ready(self.url(s), self.apis[s])

    def start_workers(self, services: Iterable[str] = SERVICES, replicas: int = 1) -> None:
        for s in services:
            ports = [free_port() for _ in range(replicas)]
            self.worker_metrics[s] = ports
            self.workers[s] = [self.spawn("worker", s, TENURE_WORKER_METRICS_PORT=str(p)) for p in ports]

    def stop_workers(self) -> None:
        terminate([p for procs in self.workers.values() for p in procs], timeout=30)
        self.workers = {}

    def stop(self) -> None:
        self.stop_workers()
        terminate(self.apis.values(), timeout=20)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready: {log_tail(proc)}")
        time.sleep(0.1)


def wait_serving(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the process answers ``/healthz`` (alive, ready or not)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=5)
            return
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{url} did not start"
            time.sleep(0.2)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``tenure`` process on the test servers: no ``TENURE_*`` of the caller's, warnings only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    return {**base, "TENURE_DATABASE_URL": settings.database_url or "", "TENURE_REDIS_URL": settings.redis_url or "",
            "TENURE_INTERNAL_TOKEN": settings.internal_token, "TENURE_QUEUE_PREFIX": settings.queue_prefix,
            "TENURE_LOG_LEVEL": "WARNING", "TENURE_SMS_MARKETING_HOURS": "", **extra}


def one_line(stderr: bytes) -> str:
    """The one line a process wrote on stderr (failing if it wrote more)."""
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, "expected one line on stderr, got:\n" + stderr.decode()
    return lines[0]


def run_on_own_loop(coro: Any) -> Any:
    """Run ``coro`` on a loop of its own: ``asyncio.run`` would leave the main thread without the event loop that
    the session's async tests share."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def log_tail(proc: subprocess.Popen[bytes], chars: int = 3000) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""


def terminate(procs: Iterable[subprocess.Popen[bytes]], *, timeout: float) -> None:
    """SIGTERM all, then wait for each (graceful shutdown), killing any that overstay."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _SlowHandler:
    """Keeps every message, taking ``delay_s`` per message (a provider that is not instantaneous)."""

    def __init__(self, mailbox: Mailbox, delay_s: float):
        self.mailbox, self.delay_s = mailbox, delay_s

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        raw = envelope.original_content or (envelope.content if isinstance(envelope.content, bytes) else b"")
        self.mailbox.add(parse_message(raw, str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def start_sink(delay_s: float = 0.0) -> tuple[Mailbox, Controller, int]:
    box, port = Mailbox(), free_port()
    controller = Controller(_SlowHandler(box, delay_s), hostname="127.0.0.1", port=port)
    controller.start()
    return box, controller, port


async def wait_for(predicate: Callable[[], bool], timeout: float = 45.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def scrape(port_or_url: int | str) -> Samples:
    """Samples of a Prometheus endpoint, parsed with prometheus-client's own parser."""
    url = f"http://127.0.0.1:{port_or_url}/metrics" if isinstance(port_or_url, int) else port_or_url
    return metric_samples(httpx.get(url, timeout=5).text)


def postgres_target(database_url: str) -> tuple[str, int] | str:
    """Where a database URL's server listens: host and port, or the unix socket an embedded server uses
    (``?host=/dir``, on a machine without PostgreSQL)."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        return f"{socket_dir}/.s.PGSQL.{url.port or 5432}"
    return (url.host or "127.0.0.1", url.port or 5432)


def on_tcp_port(database_url: str, port: int) -> str:
    """The database URL, reached on 127.0.0.1:``port`` instead (a relay, or a port nothing listens on)."""
    return (make_url(database_url).set(host="127.0.0.1", port=port).difference_update_query(["host"])
            .render_as_string(hide_password=False))


class Relay:
    """127.0.0.1:port → target, in its own thread; ``down()`` cuts every connection and refuses new ones.

    An outage of a shared server (Redis, PostgreSQL) for one test's processes, while the server itself never stops."""

    def __init__(self, target: tuple[str, int] | str):
        self.target, self.port = target, free_port()
        self.muted = False  # ``silence()``: connections stay open and new ones are taken, but nothing goes through
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._call(self._up())

    def _call(self, coro) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.muted:  # (a network partition: no answer, no reset)
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.target, str):  # a unix socket (the embedded PostgreSQL's)
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def silence(self) -> None:
        """The network goes silent, as in a partition or a failover: what is sent is lost, nothing is refused."""
        self.muted = True

    async def _settle(self) -> None:
        """Let the cut connections' pipes end (a loop stopped under them warns of tasks destroyed pending)."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if self.server is not None:
            self.down()
        self._call(self._settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
