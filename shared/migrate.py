"""Alembic, one history per schema (``core`` plus one per service), driven from one ``alembic.ini``.

``tenure migrate`` upgrades every schema in order; it is idempotent and safe to run from several pods at
once (a transaction-scoped advisory lock serialises them). Each ``env.py`` calls :func:`run_env`.
"""

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlmodel.sql.sqltypes import AutoString

from shared.db import async_url
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ("core", "ingest", "segment", "campaign", "delivery")
_LOCK_KEY = 72_616_001  # arbitrary, constant: "tenure migrations"


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


def upgrade_all(settings: Settings, revision: str = "head") -> None:
    url = settings.require_database_url()
    for schema in SCHEMAS:
        command.upgrade(alembic_config(schema, url), revision)


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
            connection.execute(sa.text(f'create schema if not exists "{schema}"'))
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
