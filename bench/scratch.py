"""A throwaway, migrated database for a benchmark run (beside TENURE_DATABASE_URL, or on embedded servers).

Set ``TENURE_BENCH_KEEP_DB=1`` to keep it after the run (its name is printed) and look at the rows and plans.
"""

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from shared.embedded import EmbeddedServers
from shared.migrate import upgrade_all
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def asyncpg_dsn(url: str) -> tuple[str, dict[str, str]]:
    """A plain ``postgresql://`` DSN plus connect kwargs (the unix socket of an embedded server)."""
    u = make_url(url)
    kw = {"host": str(u.query["host"])} if u.query.get("host") else {}
    return u.set(query={}, drivername="postgresql").render_as_string(hide_password=False), kw


@contextlib.asynccontextmanager
async def scratch_database(*, need_redis: bool) -> AsyncIterator[Settings]:
    """Settings pointing at a fresh, migrated database that is dropped afterwards."""
    base = Settings()
    with contextlib.ExitStack() as stack:
        if not base.database_url or (need_redis and not base.redis_url):
            emb = stack.enter_context(EmbeddedServers(ROOT / ".tenure" / "bench", postgres=not base.database_url,
                                                      redis=need_redis and not base.redis_url))
            base = base.model_copy(update={"database_url": base.database_url or emb.database_url,
                                           "redis_url": base.redis_url or emb.redis_url})
        dsn, kw = asyncpg_dsn(base.database_url or "")
        name = f"tenure_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(dsn, **kw)
        await admin.execute(f'create database "{name}"')
        url = make_url(base.database_url or "").set(database=name).render_as_string(hide_password=False)
        try:
            settings = base.model_copy(update={"database_url": url})
            await asyncio.to_thread(upgrade_all, settings)
            yield settings
        finally:
            if os.environ.get("TENURE_BENCH_KEEP_DB") == "1":
                print(f"kept the scratch database {name!r}: drop it with  drop database \"{name}\"")
            else:
                await admin.execute(f'drop database if exists "{name}" with (force)')
            await admin.close()
