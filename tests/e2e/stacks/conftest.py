"""Each test here gets a database of its own: these tests run stacks with workers.

A worker processes its whole database: every workspace's feed, due journeys and daily passes. On the run's shared
database a stack's workers took up what earlier tests had left (their segment transitions, their queued mail), so
a test waited behind another's backlog or found another's mail in its sink. These fixtures override ``settings``,
``sessionmaker`` and so ``workspace`` for the tests in this folder. Each database is a copy of one migrated at the
start (``CREATE DATABASE … TEMPLATE``), which takes about a second, not a migration.
"""

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import create_engine, create_sessionmaker
from shared.settings import Settings
from shared.testing import Servers, fresh_database, migrated_database


@pytest.fixture(scope="session")
def migrated_template(servers: Servers) -> Iterator[str]:
    """The name of a database migrated to head that no one connects to, to copy from."""
    with migrated_database(servers, "tenure_e2e_template") as url:
        yield str(make_url(url).database)


@pytest.fixture
def settings(settings: Settings, servers: Servers, migrated_template: str) -> Iterator[Settings]:
    """The run's settings on a fresh copy of the migrated database, dropped after the test."""
    with fresh_database(servers, "tenure_e2e", template=migrated_template) as url:
        yield settings.model_copy(update={"database_url": url})


@pytest_asyncio.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings, pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()
