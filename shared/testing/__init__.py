"""pytest plugin: real PostgreSQL and Redis for every test that needs them.

Servers come from ``TENURE_TEST_DATABASE_URL`` / ``TENURE_TEST_REDIS_URL`` when set, otherwise from the
embedded ones (``shared.embedded``). Each run creates its own database (migrated with the real Alembic
histories) and its own arq queue prefix, and drops the database at the end. Tests isolate themselves by
working in a fresh workspace each.
"""

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import embedded
from shared.core import CreatedWorkspace, create_workspace
from shared.db import create_engine, create_sessionmaker
from shared.embedded import EmbeddedServers, free_port
from shared.settings import Settings

INTERNAL_TOKEN = "test-internal-token"


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, … when pytest-xdist runs the suite
    if worker.removeprefix("gw").isdigit():
        n = int(worker.removeprefix("gw")) % 8
        embedded.PORT_BLOCK = range(20_000 + n * 1_500, 20_000 + (n + 1) * 1_500)


@dataclass
class Servers:
    admin_database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    db = os.environ.get("TENURE_TEST_DATABASE_URL")
    redis = os.environ.get("TENURE_TEST_REDIS_URL")
    if db and redis:
        yield Servers(db, redis)
        return
    state = Path(tempfile.mkdtemp(prefix="tenure-test-"))
    try:
        with EmbeddedServers(state, postgres=not db, redis=not redis) as emb:
            yield Servers(db or emb.database_url or "", redis or emb.redis_url or "")
    finally:
        shutil.rmtree(state, ignore_errors=True)  # a fresh cluster each run: ~40 MB that nothing reads again


def _asyncpg_dsn(url: str) -> tuple[str, dict[str, str]]:
    u = make_url(url)
    kwargs: dict[str, str] = {}
    host = u.query.get("host")
    if host:
        kwargs["host"] = host if isinstance(host, str) else host[0]
        u = u.set(query={})
    return u.set(drivername="postgresql").render_as_string(hide_password=False), kwargs


@contextlib.contextmanager
def fresh_database(servers: Servers, prefix: str, template: str | None = None) -> Iterator[str]:
    """A database of its own on the test server (its URL), dropped afterwards; a copy of database ``template`` if
    given (which nobody may be connected to). Created and dropped on an event loop of its own, so it can be used
    at session start and inside a test alike."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin, kw = _asyncpg_dsn(servers.admin_database_url)

    def admin_exec(sql: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(admin, **kw)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(run())
        finally:
            loop.close()

    admin_exec(f'create database "{name}"' + (f' template "{template}"' if template else ""))
    try:
        yield make_url(servers.admin_database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin_exec(f'drop database if exists "{name}" with (force)')


@contextlib.contextmanager
def migrated_database(servers: Servers, prefix: str) -> Iterator[str]:
    """:func:`fresh_database`, migrated to head. The migration runs on a thread of its own: it calls
    ``asyncio.run``, which leaves its thread with no event loop, and on this one that would be the loop the session's
    async tests share (the next async test failed with "There is no current event loop")."""
    from shared.migrate import upgrade_all

    with fresh_database(servers, prefix) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade_all, Settings(database_url=url, redis_url=servers.redis_url)).result()
        yield url


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> Iterator[str]:
    """A fresh database for this run, migrated to head; dropped afterwards."""
    with migrated_database(servers, "tenure_test") as url:
        yield url


@pytest.fixture(scope="session")
def smtp_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def settings(database_url: str, servers: Servers, smtp_port: int) -> Iterator[Settings]:
    """The run's settings; its Redis keys (every queue, job and counter under its prefix) are removed after it, so
    runs on one Redis leave nothing for the next."""
    settings = Settings(
        env="test",
        database_url=database_url,
        redis_url=servers.redis_url,
        queue_prefix=f"tenure-test-{uuid.uuid4().hex[:8]}",
        internal_token=INTERNAL_TOKEN,
        smtp_port=smtp_port,
        log_json=True,
        log_level="WARNING",
        http_retries=1,
        webhook_allow_private=True,  # the receivers in tests listen on loopback
        sms_marketing_hours="",  # (the clock of the run would decide; the window's own test sets one)
    )
    yield settings
    from redis import Redis

    with Redis.from_url(servers.redis_url) as redis:
        for key in redis.scan_iter(match=f"*{settings.queue_prefix}*", count=1000):
            redis.delete(key)


@pytest_asyncio.fixture(scope="session")
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings, pool_size=5)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest_asyncio.fixture
async def workspace(sessionmaker: async_sessionmaker[AsyncSession]) -> CreatedWorkspace:
    async with sessionmaker() as session, session.begin():
        return await create_workspace(session, f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def mailbox(smtp_port: int) -> Iterator[object]:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""
    from services.devinbox.inbox import Mailbox, start_smtp

    box = Mailbox()
    controller = start_smtp(box, "127.0.0.1", smtp_port)
    yield box
    controller.stop()


@pytest_asyncio.fixture(scope="session")
async def apps(settings: Settings) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """In-process clients for the four service apps (lifespans run), keyed by service name."""
    import importlib
    from contextlib import AsyncExitStack

    from shared.http import InternalClient

    clients: dict[str, httpx.AsyncClient] = {}
    services = ("ingest", "segment", "campaign", "delivery")
    async with AsyncExitStack() as stack:
        created = {}
        for name in services:
            app = importlib.import_module(f"services.{name}.app").create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            created[name] = app
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=f"http://{name}")
            )
        # calls between services reach the other in-process apps at their configured URLs
        mesh = await stack.enter_async_context(httpx.AsyncClient(
            mounts={settings.url_of(n): httpx.ASGITransport(created[n]) for n in services}, timeout=30))
        _MESH["internal"] = InternalClient(settings, mesh)
        _MESH["http"] = mesh
        for app in created.values():
            app.state.internal = _MESH["internal"]
        yield clients


_MESH: dict[str, Any] = {}


@pytest.fixture
def internal_client(apps: dict[str, httpx.AsyncClient]) -> Any:
    """The InternalClient the in-process apps use to call each other (for driving workers' functions)."""
    return _MESH["internal"]


def internal_headers(workspace_id: uuid.UUID | str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}
    if workspace_id:
        h["X-Tenure-Workspace"] = str(workspace_id)
    return h


FEED_SETTLE_S = 15.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(exposition: str) -> Samples:
    """The samples of a Prometheus text exposition, parsed with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(exposition) for s in fam.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


async def feed_pages(client: httpx.AsyncClient, path: str = "/v1/events", *, after: str = "", limit: int = 5000
                     ) -> AsyncIterator[dict[str, Any]]:
    """The pages of a feed after ``after`` until it is drained, as its consumers read them; an empty page while
    committed entries wait behind another session's open transaction (``behind`` > 0: the PostgreSQL server may be
    shared with other test runs) is waited out, up to ``FEED_SETTLE_S``, not taken for the end."""
    deadline = asyncio.get_running_loop().time() + FEED_SETTLE_S
    while True:
        page = (await client.get(path, params={"after": after, "limit": limit}, headers=internal_headers())).json()
        if page["next_cursor"] != after:
            yield page
            after = page["next_cursor"]
        if len(page[path.rsplit("/", 1)[-1]]) < limit:  # /v1/events → "events", /v1/transitions → "transitions"
            if not page.get("behind") or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.05)


async def feed_head(ingest: httpx.AsyncClient) -> str:
    """The cursor after everything ingest's event feed holds now (earlier tests in the run wrote into it)."""
    cursor = ""
    async for page in feed_pages(ingest):
        cursor = page["next_cursor"]
    return cursor


@contextlib.contextmanager
def smtp_server(handler: Any, **config: Any) -> Iterator[int]:
    """A real SMTP server (aiosmtpd) on a free loopback port, answering with ``handler``'s hooks (a mail server
    that greylists, refuses, keeps what it gets); yields the port. ``config``: more ``Controller`` settings (TLS,
    authentication)."""
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **config)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@contextlib.contextmanager
def http_server(app: Any, port: int | None = None, **config: Any) -> Iterator[int]:
    """Serve an ASGI app on a loopback port (a free one unless given) in a thread (a provider's or customer's
    server in tests); yields the port. ``config``: more ``uvicorn.Config`` settings (``root_path``)."""
    import threading
    import time

    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test HTTP server did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def drain_feed(sessionmaker: async_sessionmaker[AsyncSession], consume_page: Any, limit: int) -> None:
    """Fold a feed until drained, as a consumer's worker does: ``consume_page(session)`` in a transaction of its own
    per page. Committed rows the feed holds back because another session's transaction is still open (its horizon,
    docs/decisions.md: the PostgreSQL server may be shared with other test runs) are waited for, up to
    ``FEED_SETTLE_S``, rather than taken for "nothing more": else a test read half of what it had just committed."""
    deadline = asyncio.get_running_loop().time() + FEED_SETTLE_S
    while True:
        async with sessionmaker() as session, session.begin():
            page = await consume_page(session)
        if page.read >= limit:
            continue
        if not page.behind or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.05)


async def run_due_journeys(sessionmaker: async_sessionmaker[AsyncSession], internal: Any, now: Any) -> None:
    """What campaign's worker does with due journeys at ``now``, one batch after another: run them, hand the sends
    they decide straight to delivery, then the dispatcher's poll (retries, sends held by a pause)."""
    from services.campaign import dispatch, journeys

    while (done := await journeys.advance_due(sessionmaker, internal, internal._http, now=now,
                                               claim_sends=True)).journeys:
        if done.claimed:
            await dispatch.dispatch_claimed(sessionmaker, internal, done.claimed, done.profiles)
    while await dispatch.dispatch_due(sessionmaker, internal):
        pass
