"""Helpers the end-to-end benchmarks share: service processes on a scratch database, a timed SMTP sink,
and the raw SMTP baseline."""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
from scratch import scratch_database

from shared.core import CreatedWorkspace, create_workspace
from shared.db import create_engine, create_sessionmaker
from shared.embedded import free_port
from shared.settings import Settings

SERVICES = ("ingest", "segment", "campaign", "delivery")


class Arrivals:
    """When each recipient's mail reached the sink (``bench/smtp_sink.py``, its own process), on this
    process's ``time.perf_counter()`` clock."""

    def __init__(self, path: Path):
        self._path = path
        self._read = 0  # bytes of the file already parsed
        self._times: dict[str, float] = {}
        self._skew = time.perf_counter() - time.monotonic()  # both system-wide on Linux; kept exact anyway

    @property
    def arrived(self) -> dict[str, float]:
        with contextlib.suppress(FileNotFoundError), self._path.open("rb") as f:
            f.seek(self._read)
            chunk = f.read()
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
            self._read += len(chunk)
            for line in chunk.splitlines():
                to, _, at = line.partition(b"\t")
                self._times.setdefault(to.decode(), float(at) + self._skew)
        return self._times


def env_for(settings: Settings, smtp_port: int) -> dict[str, str]:
    return {**os.environ, "TENURE_DATABASE_URL": settings.database_url or "",
            "TENURE_REDIS_URL": settings.redis_url or "", "TENURE_LOG_LEVEL": "WARNING",
            "TENURE_QUEUE_PREFIX": f"bench-{os.getpid()}", "TENURE_SMTP_PORT": str(smtp_port),
            "TENURE_INGEST_RATE_LIMIT_PER_S": "0", "TENURE_FEED_POLL_INTERVAL_S": "1",
            **{f"TENURE_{s.upper()}_PORT": str(free_port()) for s in SERVICES}}


def spawn(env: dict[str, str], commands: Iterable[tuple[str, str]]) -> list[subprocess.Popen[bytes]]:
    tenure = str(Path(sys.executable).parent / "tenure")
    return [subprocess.Popen([tenure, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cmd in commands]


def start_sink(port: int, arrivals: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "smtp_sink.py"), str(port), str(arrivals)])


def _postgres_cpu() -> float:
    total = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # (a process that just ended)
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    total += cpu_seconds(int(d.name))
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux ``/proc``): a figure the shared box's noise
    barely moves, unlike wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def urls(env: dict[str, str]) -> dict[str, str]:
    return {s: f"http://127.0.0.1:{env[f'TENURE_{s.upper()}_PORT']}" for s in SERVICES}


async def wait_ready(c: httpx.AsyncClient, bases: Iterable[str]) -> None:
    for base in bases:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(base + "/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)


async def smtp_baseline(port: int, n: int) -> float:
    """Emails per second straight into the sink over one connection (the floor of any delivery)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
        start = time.perf_counter()
        for i in range(n):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "bench@tenure.dev", f"raw-{i}@baseline.example", "raw"
            msg.set_content("raw")
            await smtp.send_message(msg)
        return n / (time.perf_counter() - start)


@dataclass
class Bench:
    settings: Settings
    workspace: CreatedWorkspace
    urls: dict[str, str]
    box: Arrivals
    smtp_port: int
    processes: list[tuple[str, subprocess.Popen[bytes]]]  # ("serve delivery", process), ...
    env: dict[str, str]

    def start(self, commands: list[tuple[str, str]]) -> None:
        """More processes (e.g. workers started once a queue is full); stopped with the others."""
        self.processes += [(" ".join(cmd), p) for cmd, p in zip(commands, spawn(self.env, commands), strict=True)]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far, summed per command, and by every PostgreSQL process on this machine
        (the server is shared: anything else using it meanwhile counts too)."""
        out: dict[str, float] = {}
        for name, p in self.processes:
            out[name] = out.get(name, 0.0) + cpu_seconds(p.pid)
        out["postgres (all processes)"] = _postgres_cpu()
        return out

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        # (a PostgreSQL backend that ended meanwhile takes its CPU with it: never below zero)
        return {name: max(0.0, used - before[name]) for name, used in self.cpu().items()}


def print_cpu(cpu: dict[str, float], emails: int) -> None:
    """Where the CPU went, per process, per email delivered."""
    for name, used in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"cpu       {name:<30} {used:8.2f} s = {used / max(emails, 1) * 1000:6.2f} ms per email")


@contextlib.asynccontextmanager
async def bench_services(commands: list[tuple[str, str]]) -> AsyncIterator[Bench]:
    """A scratch database with a workspace, a timed SMTP sink, and ``tenure`` processes running on them
    (ready to take requests); everything is stopped and dropped afterwards."""
    smtp_port = free_port()
    arrivals = Path(tempfile.mkdtemp(prefix="tenure-bench-")) / "arrivals.tsv"
    arrivals.touch()
    sink = start_sink(smtp_port, arrivals)
    box = Arrivals(arrivals)
    procs: list[subprocess.Popen[bytes]] = []
    bench: Bench | None = None
    try:
        async with scratch_database(need_redis=True) as settings:
            engine = create_engine(settings, pool_size=1)
            async with create_sessionmaker(engine)() as s, s.begin():
                ws = await create_workspace(s, "bench")
            await engine.dispose()
            env = env_for(settings, smtp_port)
            procs = spawn(env, commands)
            async with httpx.AsyncClient(timeout=10) as c:
                await wait_ready(c, [urls(env)[service] for verb, service in commands if verb == "serve"])
            bench = Bench(settings, ws, urls(env), box, smtp_port,
                          [(" ".join(cmd), p) for cmd, p in zip(commands, procs, strict=True)]
                          + [("smtp sink", sink)], env)
            yield bench
    finally:
        stop([p for _, p in bench.processes] if bench else [*procs, sink])
        shutil.rmtree(arrivals.parent, ignore_errors=True)
