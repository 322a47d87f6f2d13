"""Database access: the engine factory, the one session dependency, naming conventions.

The engine and sessionmaker are created in a lifespan (``app.state``) or worker start-up (arq ``ctx``);
never at import time. Routes get a session only through :data:`SessionDep`; the route owns the
transaction (``async with session.begin():``).
"""

import asyncio
import contextlib
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple, TypeVar

import asyncpg
import structlog
from fastapi import Depends, Request
from sqlalchemy import Column, DateTime, MetaData, event, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import UserDefinedType

from shared.jsonutil import loads
from shared.settings import Settings

log = structlog.get_logger()
T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def metadata_for(schema: str) -> MetaData:
    """A MetaData bound to one service's Postgres schema, with stable constraint names."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def utc_now() -> datetime:
    return datetime.now(UTC)


# SQLAlchemy names savepoints sa_savepoint_1, _2, … within a transaction, and asyncpg prepares each as a
# statement of its own: a batch of 200 journeys, each in a savepoint, is 400 distinct statements, which
# evicted everything else from the default cache of 100 and made every query of the batch prepare again.
PREPARED_STATEMENT_CACHE = 1000


def async_url(url: str) -> str:
    """``postgresql://…`` (what operators write) → the asyncpg dialect URL SQLAlchemy needs."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    if u.drivername == "postgresql+asyncpg" and "prepared_statement_cache_size" not in u.query:
        u = u.update_query_dict({"prepared_statement_cache_size": str(PREPARED_STATEMENT_CACHE)})
    return u.render_as_string(hide_password=False)


# A pooled connection is pinged before use only once it has sat idle this long. SQLAlchemy's pre-ping
# costs three round trips (BEGIN, ";", ROLLBACK) on every checkout, more than a small transaction's own
# work; a connection handed back moments ago is as alive as a ping would show (the server can go away
# right after a ping too: that is caught as a disconnect on first use, and the connection replaced).
PING_AFTER_IDLE_S = 1.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    sync = engine.sync_engine

    @event.listens_for(sync, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(sync, "checkout")
    def _checking_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        at = record.info.get("checked_in_at")  # (none yet on a new connection: it was just opened)
        if at is None or time.monotonic() - at < PING_AFTER_IDLE_S:
            return
        try:
            sync.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool drops this connection and checks out a fresh one
            raise DisconnectionError("connection failed its ping") from exc


# asyncpg's own words for "the server went away or is not taking connections" (a restart, a failover)
# (TooManyConnectionsError: every connection slot of the server is taken, 53300 — no connection for now, as when
# it is restarting)
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.exceptions.CannotConnectNowError,
                      asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.TooManyConnectionsError)
# SQLSTATEs of a database that cannot be used for now: connection exceptions, operator intervention (shutting
# down, restarting), no connection slot left
UNAVAILABLE_SQLSTATES = ("08", "57P", "53300")
# SQLSTATEs of a database this release has not migrated yet (undefined_table, invalid_schema_name): a pod that
# started before `tenure migrate` ran (its /readyz says so), to be retried once it has, not a fault of the request
UNMIGRATED_SQLSTATES = frozenset({"42P01", "3F000"})
UNMIGRATED_ERRORS = (asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.InvalidSchemaNameError)


def _broken(exc: BaseException | None) -> bool:
    return isinstance(exc, CONNECTION_ERRORS) or (
        # a statement (a rollback, say) on a connection that broke under an earlier one
        isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(exc))


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says PostgreSQL could not be reached, or the connection broke (refused, reset, timed out,
    the server restarting or shutting down, no connection slot left): an outage to wait out, not a fault of the
    statement or its data. The same work, tried again once the database answers, is right (a commit cut off
    mid-flight may or may not have landed, so what is tried again must be idempotent — every worker's work is). A
    bare ``OSError`` or ``TimeoutError`` counts only when the database driver raised it (not an SMTP connection,
    not a ``wait_for``)."""
    if isinstance(exc, DBAPIError):
        state = sqlstate(exc) or ""
        return bool(exc.connection_invalidated or state.startswith(UNAVAILABLE_SQLSTATES) or _broken(exc.orig)
                    or _broken(getattr(exc.orig, "__cause__", None)))
    if isinstance(exc, asyncpg.exceptions.InterfaceError | asyncpg.exceptions.PostgresError):
        return _broken(exc)
    return _broken(exc) and _raised_by_the_driver(exc)


def _raised_by_the_driver(exc: BaseException) -> bool:
    return any(str(frame.f_globals.get("__name__", "")).startswith(("asyncpg", "sqlalchemy"))
               for frame, _ in traceback.walk_tb(exc.__traceback__))


class Outage:
    """A wait for an unreachable PostgreSQL, logged once rather than per try: ``down`` (a warning) at its first
    failure, ``back`` (with how long it lasted, under ``lasted``) at the first success after it; either may be None
    (not logged). ``down_since`` says whether one is under way, for callers that wait longer meanwhile. An error
    stamped ``tenure_raised_at`` (``shared.queue.note_raised_at``) before the last success belongs to the outage that
    success ended: it starts no new one."""

    def __init__(self, down: str | None = None, back: str | None = None, *, lasted: str = "down_s") -> None:
        self.down, self.back, self.lasted = down, back, lasted
        self.down_since: float | None = None
        self.back_at = float("-inf")

    def failed(self, exc: BaseException, **fields: Any) -> None:
        raised_at = getattr(exc, "tenure_raised_at", time.monotonic())
        if self.down_since is None and raised_at > self.back_at:
            self.down_since = raised_at
            if self.down:
                log.warning(self.down, **fields, error=type(exc).__name__)

    def succeeded(self, *, started_at: float | None = None, **fields: Any) -> None:
        """Work that began at ``started_at`` (if given) succeeded: the outage is over only if the work began after
        it was noticed (work begun before may have done all it needed of the database before the cut)."""
        if self.down_since is not None and (started_at is None or started_at >= self.down_since):
            if self.back:
                log.info(self.back, **fields, **{self.lasted: round(time.monotonic() - self.down_since, 1)})
            self.down_since = None
            self.back_at = time.monotonic()


UNREACHABLE_PAUSE_S = 1.0  # between tries while PostgreSQL is unreachable


async def retry_while_unreachable(work: Callable[[], Awaitable[T]], *, give_up_after_s: float | None,
                                  outage: Outage, pause_s: float = UNREACHABLE_PAUSE_S, **fields: Any) -> T:
    """``work()``, tried again every ``pause_s`` while it fails because PostgreSQL is unreachable (a restart, a
    failover): a blip of a few seconds then costs a few seconds, not a lease or a lost outcome. ``work`` must be
    safe to run again (see :func:`unreachable`). Any other error is raised at once; so is an unreachable one once
    ``give_up_after_s`` has passed since the first try (None: never — the caller bounds the wait, by a deadline of
    its own or by cancelling). ``outage`` logs the wait once (``fields`` go on its lines) and tells others it is
    under way; one ``Outage`` kept across calls (a recorder's) makes an outage one wait, however many calls it
    spans."""
    deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    while True:
        try:
            result = await work()
        except Exception as exc:
            if not unreachable(exc) or (deadline is not None and time.monotonic() > deadline):
                raise
            outage.failed(exc, **fields)
            await asyncio.sleep(pause_s)
            continue
        outage.succeeded(**fields)
        return result


COMMAND_MARGIN_S = 5.0  # past the server's statement timeout: the server has not answered at all
DISPOSE_TIMEOUT_S = 5.0


def create_engine(settings: Settings, *, application_name: str = "tenure", **kw: Any) -> AsyncEngine:
    """The one way to a PostgreSQL engine. Every statement is bounded twice: by the server's ``statement_timeout``,
    and, a little later, on the client (asyncpg's ``command_timeout``): a server behind a silent network (a
    partition, a failover in progress) answers nothing, not even its timeout, and requests hung for minutes
    instead of answering 503."""
    timeout_ms = settings.db_statement_timeout_ms
    engine = create_async_engine(
        async_url(settings.require_database_url()),
        pool_size=kw.pop("pool_size", settings.db_pool_size),
        max_overflow=kw.pop("max_overflow", settings.db_pool_size),
        pool_timeout=10,
        json_deserializer=loads,  # jsonb columns read with orjson
        connect_args={
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "idle_in_transaction_session_timeout": "60000",
            },
            "timeout": 10,
            "command_timeout": timeout_ms / 1000 + COMMAND_MARGIN_S if timeout_ms else None,
        },
        **kw,
    )
    _ping_when_idle(engine)
    return engine


async def dispose_within(engine: AsyncEngine, timeout_s: float = DISPOSE_TIMEOUT_S) -> None:
    """Close an engine's connections on shutdown, giving up after ``timeout_s``: closing waits for the server's
    goodbye, which a silent network never brings, and a process told to stop stayed up until it was killed."""
    try:
        await asyncio.wait_for(engine.dispose(), timeout_s)
    except (TimeoutError, OSError) as exc:
        log.warning("db.dispose_abandoned", error=type(exc).__name__, after_s=timeout_s)


async def in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work(session)`` in one transaction on an engine of its own, disposed after: for a command or a start-up
    step that runs once (a workspace created, its keys changed), not for a service's requests."""
    engine = create_engine(settings, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@contextlib.asynccontextmanager
async def pinned(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A sessionmaker whose sessions all use one connection, checked out once: for a loop of many short
    transactions (a sender's messages), each of which would otherwise pay a checkout's ping and the
    pool's reset on return — two extra round trips per transaction."""
    engine = sessionmaker.kw["bind"]
    async with engine.connect() as conn:
        yield async_sessionmaker(conn, expire_on_commit=False, autoflush=False)


@contextlib.asynccontextmanager
async def session_lock(engine: AsyncEngine, key: str) -> AsyncIterator[bool]:
    """Try a session-level advisory lock named ``key`` on a connection of its own, held until the block ends
    (between transactions: it holds back neither vacuum nor the feeds' xid horizon, and is not cut by the
    idle-in-transaction timeout); yields whether it was taken. A process that dies releases it with its
    connection, and a connection whose unlock failed is closed rather than returned to the pool."""
    async with engine.connect() as conn:
        taken = bool((await conn.execute(text("select pg_try_advisory_lock(hashtextextended(:k, 0))"),
                                         {"k": key})).scalar())
        await conn.commit()
        try:
            yield taken
        finally:
            if taken:
                try:
                    await conn.execute(text("select pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": key})
                    await conn.commit()
                except BaseException:
                    await conn.invalidate()
                    raise


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The one way a route gets a session. The route opens its own transaction."""
    async with request.app.state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


class Xid8(UserDefinedType):  # type: ignore[type-arg]
    """PostgreSQL ``xid8``: the 64-bit transaction id that makes feed cursors safe (see shared.feed)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


async def driver_connection(session: AsyncSession) -> Any:
    """The session's asyncpg connection, inside the session's transaction: for bulk reads where
    SQLAlchemy's per-row result processing would cost more than the query (segment evaluation)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def uuid_array(ids: Iterable[Any]) -> str:
    """A PostgreSQL array literal (UUIDs, numbers, plain words), sent as one text value
    (``CAST(CAST(:x AS text) AS uuid[])``): parsed by the server in one go instead of encoded element by
    element by the driver. For large write batches only: in a WHERE clause the planner cannot see the
    array's size through the cast and may pick a sequential scan."""
    return "{" + ",".join(str(i) for i in ids) + "}"


def xid_column() -> Column:  # type: ignore[type-arg]
    return Column("xid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()"))


def jsonb_column(name: str, *, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, JSONB, nullable=nullable, server_default=None if nullable else text("'{}'::jsonb"))


def tz_column(name: str, *, nullable: bool = False, default_now: bool = True) -> Column:  # type: ignore[type-arg]
    return Column(
        name, DateTime(timezone=True), nullable=nullable, server_default=func.now() if default_now else None
    )


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error: wrapped by SQLAlchemy, or the driver's own (a statement run on the
    driver's connection, as ingest's COPY of the events)."""
    driver_error = getattr(exc, "orig", None) or exc
    return getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)


def is_unique_violation(exc: Exception) -> bool:
    """True for a unique-constraint violation (SQLSTATE 23505) wrapped by SQLAlchemy."""
    return sqlstate(exc) == "23505"


def dicts(result: Any) -> list[dict[str, Any]]:
    """A result's rows as plain dicts, for the workers' hot paths: zipped with the column names they cost 1.4 µs a
    row of 12 columns, where ``dict(row_mapping)`` costs 3.7 µs (and reading a ``RowMapping`` by key is slower
    than a dict's too)."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a dict, UUIDs as strings (the shape our JSON answers use)."""
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row._mapping.items()}


async def fetch_page(session: AsyncSession, sql: str, params: dict[str, Any], limit: int, *, key: str = "id"
                     ) -> tuple[list[dict[str, Any]], str | None]:
    """Keyset pagination: ``sql`` orders by ``key`` and ends with ``limit :lim``; returns (items, next_cursor)."""
    rows = (await session.execute(text(sql), {**params, "lim": limit + 1})).all()
    items = [row_dict(r) for r in rows[:limit]]
    return items, (str(items[-1][key]) if len(rows) > limit else None)


class Stamp(NamedTuple):
    """A row's place in a history listed newest first: its ``created_at``, then its id (rows created in one
    transaction share the time). Ids are random (UUIDv4), so id order alone is no order a reader can follow.

    A page after a stamp asks ``(created_at, id) < (:at, :id) order by created_at desc, id desc``: rows created
    after the first page was read sort before it, so they never shift the later pages (nothing skipped or repeated).
    Written as ``<ISO 8601 time> <id>`` inside a cursor."""

    at: datetime
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.at.isoformat()} {self.id}"

    @classmethod
    def parse(cls, position: str) -> "Stamp":
        """The stamp a cursor's position holds (ValueError if it holds none)."""
        at, _, id_ = position.partition(" ")
        stamp = cls(datetime.fromisoformat(at), uuid.UUID(id_))
        if stamp.at.tzinfo is None:
            raise ValueError("a stamp's time has an offset")
        return stamp


async def fetch_newest_first(session: AsyncSession, sql: str, params: dict[str, Any], limit: int,
                             after: Stamp | None, *, at: str = "created_at"
                             ) -> tuple[list[dict[str, Any]], Stamp | None]:
    """:func:`fetch_page` of a history, newest first: ``sql`` selects ``id`` and the time ``at`` (``created_at``),
    filters with ``(CAST(:after_at AS timestamptz) is null or (created_at, id) < (:after_at,
    CAST(:after_id AS uuid)))``, orders by ``created_at desc, id desc`` and ends with ``limit :lim`` (an index on
    ``(…, created_at, id)`` reads just the page); returns (items, the last item's stamp if more follow)."""
    rows = (await session.execute(text(sql), {**params, "after_at": after.at if after else None,
                                              "after_id": after.id if after else None, "lim": limit + 1})).all()
    items = [row_dict(r) for r in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return items, (Stamp(last[at], uuid.UUID(last["id"])) if last else None)


async def insert_one_or_conflict(session: AsyncSession, sql: str, params: dict[str, Any], conflict: str, *,
                                 missing: str | None = None) -> Any:
    """Run an ``insert``/``update … returning``: a unique violation becomes a 409 ``Conflict(conflict)``;
    no row (an update that matched nothing) a 404 ``NotFound(missing)``."""
    from shared.errors import Conflict, NotFound

    try:
        async with session.begin_nested():
            row = (await session.execute(text(sql), params)).first()
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        raise Conflict(conflict) from None
    if row is None:
        raise NotFound(missing or "Not found")
    return row


async def fetch_one(session: AsyncSession, sql: str, params: dict[str, Any], *, missing: str) -> dict[str, Any]:
    """The single row ``sql`` selects (as :func:`row_dict`), or a 404 ``NotFound(missing)``."""
    from shared.errors import NotFound

    row = (await session.execute(text(sql), params)).first()
    if row is None:
        raise NotFound(missing)
    return row_dict(row)

