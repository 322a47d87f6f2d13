"""Alembic, one history per schema (``core`` plus one per service), driven from one ``alembic.ini``.

``tenure migrate`` upgrades every schema in order; it is idempotent and safe to run from several pods at
once (a transaction-scoped advisory lock serialises them). A schema at a revision this release does not know was
migrated by a newer release (a rollback, or an old pod's init container during a rollout): it is left as it is,
as :func:`schema_problem` lets the old pods work with it. Each ``env.py`` calls :func:`run_env`.
"""

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
import structlog
from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlmodel.sql.sqltypes import AutoString

from shared.db import async_url, sqlstate
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ("core", "ingest", "segment", "campaign", "delivery")
_LOCK_KEY = 72_616_001  # arbitrary, constant: "tenure migrations"

log = structlog.get_logger()


def script_location(schema: str) -> Path:
    return ROOT / ("shared" if schema == "core" else f"services/{schema}") / "migrations"


def alembic_config(schema: str, database_url: str) -> Config:
    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini) if ini.exists() else None, ini_section=schema)
    cfg.set_main_option("script_location", str(script_location(schema)))
    cfg.set_main_option("file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s")
    cfg.attributes["database_url"] = database_url
    cfg.attributes["schema"] = schema
    return cfg


# the longest a migration waits for a table's lock (an ALTER queued behind a long segment pass, a report, an old
# pod's long transaction, stops every query on that table queued behind it meanwhile): past it the migration gives
# up, nothing of it applied, and the init container or Job tries again later
LOCK_TIMEOUT_S = 10.0


class MigrationBlocked(Exception):
    """A migration could not take a table's lock within :data:`LOCK_TIMEOUT_S`; nothing of it was applied."""


def upgrade_all(settings: Settings, revision: str = "head") -> None:
    url = settings.require_database_url()
    for schema in SCHEMAS:
        try:
            command.upgrade(alembic_config(schema, url), revision)
        except DBAPIError as exc:
            if sqlstate(exc) != "55P03":  # lock_not_available
                raise
            raise MigrationBlocked(
                f"schema {schema}: a table it changes is held by another session (a long query or transaction) for "
                f"over {LOCK_TIMEOUT_S:g} s; nothing of this schema's migration was applied: run `tenure migrate` "
                "again") from None


def run_env(target_metadata: sa.MetaData | None) -> None:
    """Body of every ``env.py``: online migrations over asyncpg, scoped to one schema."""
    cfg = context.config
    schema: str = cfg.attributes.get("schema") or cfg.config_ini_section
    url: str = cfg.attributes.get("database_url") or Settings().require_database_url()

    def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
        if type_ == "schema":
            return name == schema
        return True

    def compare_type(ctx: object, inspected: sa.Column, metadata_col: sa.Column,  # type: ignore[type-arg]
                     inspected_type: sa.types.TypeEngine, metadata_type: sa.types.TypeEngine) -> bool | None:
        # SQLModel declares str columns as AutoString; the migrations create them as TEXT on purpose.
        if isinstance(inspected_type, sa.Text) and isinstance(metadata_type, sa.String | AutoString):
            return False
        return None

    def do_run(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            compare_type=compare_type,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            connection.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            connection.execute(sa.text("select set_config('lock_timeout', :t, true)"),
                               {"t": f"{int(LOCK_TIMEOUT_S * 1000)}ms"})
            connection.execute(sa.text(f'create schema if not exists "{schema}"'))
            # read under the lock: a newer release's migrate may have run while this one waited for it
            current = set(context.get_context().get_current_heads())
            if unknown := current - {r.revision for r in context.script.walk_revisions()}:
                log.warning("migrate.schema_newer", schema=schema, revision=", ".join(sorted(unknown)),
                            detail="a newer release migrated this schema; this release leaves it as it is")
                return
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(async_url(url), poolclass=sa.pool.NullPool)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(do_run)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(run())


@functools.cache
def _revisions(schema: str) -> tuple[frozenset[str], frozenset[str]]:
    """This release's head revision(s) of ``schema`` and every revision it knows."""
    script = ScriptDirectory.from_config(alembic_config(schema, ""))
    return frozenset(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


async def schema_problem(conn: AsyncConnection, schemas: Sequence[str]) -> str | None:
    """Why this release cannot use the database's ``schemas`` yet (None when it can): a schema never migrated, or at
    a revision older than this release's head. A revision this release does not know is newer (the next release
    migrated during a rolling update, expand first): the old pods keep working with it."""
    for schema in schemas:
        heads, known = _revisions(schema)
        if (await conn.execute(sa.text("select to_regclass(:t)"), {"t": f'"{schema}".alembic_version'})).scalar() \
                is None:
            return f"schema {schema} is not migrated: run `tenure migrate`"
        current = set((await conn.execute(sa.text(f'select version_num from "{schema}".alembic_version'))).scalars())
        if current <= known and current != heads:
            return (f"schema {schema} is at revision {', '.join(sorted(current)) or 'none'}, this release needs "
                    f"{', '.join(sorted(heads))}: run `tenure migrate`")
    return None
