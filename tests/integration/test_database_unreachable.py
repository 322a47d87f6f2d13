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
