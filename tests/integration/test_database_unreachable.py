"""``shared.db.unreachable``: what a worker waits out (PostgreSQL away, a connection cut) against what it must
report (a statement's or its data's fault), on real connections."""

import pytest
from sqlalchemy import text

from shared.db import create_engine, create_sessionmaker, unreachable
from shared.embedded import free_port
from tests.e2e.stack import Relay, on_tcp_port, postgres_target


async def _error_of(sessionmaker, sql: str) -> BaseException:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the error is what is looked at
        async with sessionmaker() as session, session.begin():
            await session.execute(text(sql))
    return caught.value


async def test_refused_and_cut_connections_are_unreachable_and_bad_statements_are_not(settings, sessionmaker) -> None:
    closed = settings.model_copy(update={"database_url": on_tcp_port(settings.database_url, free_port())})
    engine = create_engine(closed, pool_size=1)
    try:
        assert unreachable(await _error_of(create_sessionmaker(engine), "select 1"))  # refused
    finally:
        await engine.dispose()

    relay = Relay(postgres_target(settings.database_url))
    engine = create_engine(settings.model_copy(update={"database_url": on_tcp_port(settings.database_url, relay.port)}),
                           pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            relay.down()  # cut while the connection is open
            with pytest.raises(Exception) as cut:  # noqa: PT011
                await conn.execute(text("select 1"))
            assert unreachable(cut.value), repr(cut.value)
    finally:
        relay.close()
        await engine.dispose()

    for sql in ("select * from no_such_table", "select 1/0", "select 'x'::int"):
        assert not unreachable(await _error_of(sessionmaker, sql)), sql


async def test_a_timeout_or_socket_error_outside_the_driver_is_not_an_outage() -> None:
    """An SMTP relay refusing a connection or an ``asyncio.wait_for`` running out is the job's own failure to report,
    not PostgreSQL away (which a worker logs once and waits out)."""
    import asyncio

    with pytest.raises(TimeoutError) as timed_out:
        await asyncio.wait_for(asyncio.sleep(1), 0.01)
    assert not unreachable(timed_out.value)
    with pytest.raises(OSError) as refused:
        await asyncio.open_connection("127.0.0.1", free_port())
    assert not unreachable(refused.value)


async def test_no_connection_slot_left_is_an_outage_and_a_503(settings, sessionmaker) -> None:
    """PostgreSQL out of connection slots (``too many clients already``, SQLSTATE 53300 — here a role's own
    CONNECTION LIMIT, which raises the same) is waited out by workers and answered 503 with Retry-After, not 500."""
    import uuid

    import httpx
    from sqlalchemy.engine import make_url

    from services.campaign.app import create_app

    role = f"tenure_no_slots_{uuid.uuid4().hex[:8]}"
    async with sessionmaker() as session, session.begin():
        await session.execute(text(f"create role {role} login connection limit 0"))
    try:
        url = make_url(settings.database_url).set(username=role, password=None)
        limited = settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)})
        engine = create_engine(limited, pool_size=1)
        try:
            error = await _error_of(create_sessionmaker(engine), "select 1")
            assert "TooManyConnections" in repr(error) and unreachable(error), repr(error)
        finally:
            await engine.dispose()
        app = create_app(limited)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://campaign") as client:
            resp = await client.get("/v1/campaigns", headers={"Authorization": "Bearer sk_nothing"})
        assert resp.status_code == 503 and resp.headers["retry-after"], resp.text
        assert resp.headers["content-type"] == "application/problem+json"
    finally:
        async with sessionmaker() as session, session.begin():
            await session.execute(text(f"drop role {role}"))


async def test_a_silent_network_is_an_outage_not_a_hang(settings, workspace) -> None:
    """A PostgreSQL behind a network gone silent (a partition, a failover) answers nothing, not even its own statement
    timeout: a request hung for minutes (one answered 200 after 110 s, long after its client left), /readyz for its
    connect timeout, and a process told to stop stayed up until it was killed. A statement now ends a little after
    the server's timeout (here 1 s), the probe within 2 s, the engine's shutdown within its bound. (The outer waits
    only keep a regression from hanging the suite.)"""
    import asyncio

    import httpx

    from services.segment.app import create_app
    from shared.db import dispose_within

    relay = Relay(postgres_target(settings.database_url))
    quick = settings.model_copy(update={"database_url": on_tcp_port(settings.database_url, relay.port),
                                        "db_statement_timeout_ms": 1000})
    engine = create_engine(quick, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            relay.silence()

            async def statement() -> BaseException:
                with pytest.raises(Exception) as silent:  # noqa: PT011 - the error is what is looked at
                    await conn.execute(text("select 1"))
                return silent.value

            assert unreachable(await asyncio.wait_for(statement(), 60))
        await asyncio.wait_for(dispose_within(engine, 1.0), 60)
    finally:
        relay.close()

    relay = Relay(postgres_target(settings.database_url))
    app = create_app(quick.model_copy(update={"database_url": on_tcp_port(settings.database_url, relay.port)}))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://segment") as c:
            assert (await c.get("/readyz")).status_code == 200
            relay.silence()
            ready = await asyncio.wait_for(c.get("/readyz"), 60)
            assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("error"), ready.text
            r = await asyncio.wait_for(c.get("/v1/segments", headers={
                "Authorization": f"Bearer {workspace.secret_key}"}), 60)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
    finally:
        relay.close()
