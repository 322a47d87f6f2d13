"""`tenure migrate` against a table another session holds: it gives up within its lock timeout, applies nothing of
that schema, and says so in one line; it does not queue an ALTER that stops every query on the table behind it."""

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
from alembic import command

from shared.migrate import alembic_config
from shared.testing import _asyncpg_dsn
from tests.e2e.stack import one_line, process_env

TENURE = str(Path(sys.executable).parent / "tenure")


async def test_a_migration_blocked_by_a_long_transaction_gives_up_and_says_so(settings) -> None:
    cfg = alembic_config("segment", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "segment_0007")  # (its next migration alters event_counts)
    dsn, kw = _asyncpg_dsn(settings.database_url)
    holder = await asyncpg.connect(dsn, **kw)
    try:
        await holder.execute("begin; lock table segment.event_counts in access share mode")  # a long read
        r = await asyncio.to_thread(subprocess.run, [TENURE, "migrate"], env=process_env(settings),
                                    capture_output=True, timeout=120)
        assert r.returncode == 1, r.stderr.decode()
        line = one_line(r.stderr)
        assert line.startswith("schema segment: a table it changes is held by another session"), line
        assert await holder.fetchval("select count(*) from pg_locks where locktype = 'relation' "
                                     "and mode = 'AccessExclusiveLock' and not granted") == 0  # none left waiting
        version = await holder.fetchval("select version_num from segment.alembic_version")
        assert version == "segment_0007"  # nothing of the schema's migration applied
        await holder.execute("rollback")
    finally:
        await holder.close()
        await asyncio.to_thread(command.upgrade, cfg, "head")
    r = await asyncio.to_thread(subprocess.run, [TENURE, "migrate"], env=process_env(settings), capture_output=True,
                                timeout=120)
    assert r.returncode == 0, r.stderr.decode()
