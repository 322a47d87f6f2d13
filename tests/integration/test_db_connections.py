"""Pooled connections that the server dropped are replaced, not handed to a request."""

import asyncio

import pytest
from sqlalchemy import text

from shared import db
from shared.settings import Settings


async def _backend_pid(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("select pg_backend_pid()"))).scalar_one()


async def test_an_idle_connection_killed_by_the_server_is_replaced_on_checkout(
        settings: Settings, sessionmaker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.05)
    engine = db.create_engine(settings, pool_size=1, max_overflow=0)
    try:
        pid = await _backend_pid(engine)
        async with sessionmaker() as s, s.begin():  # another connection: the server ends the pooled one
            await s.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
        await asyncio.sleep(0.2)  # idle longer than the ping threshold
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()
