"""Cursor feeds over an append-only table that never skip or reorder a committed row.

A ``bigserial`` alone is not a safe cursor: a transaction that took seq 10 may commit after one that
took seq 11, and a reader that already moved past 11 would never see 10. Each row therefore stores
``pg_current_xact_id()`` (xid8) beside its seq, the cursor is the pair ``(xid, seq)``, and a reader only
returns rows whose xid is below ``pg_snapshot_xmin(pg_current_snapshot())``: every transaction below
that horizon has finished, and later ones get larger xids, so nothing can appear behind the cursor.

Cursors are opaque strings to clients: ``"<xid>-<seq>"``; the empty cursor starts at the beginning.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import sqlstate
from shared.errors import BadRequest

CONSUMER_LOCK_WAIT = "2s"


class ConsumerBusy(Exception):
    """Another job holds the consumer (it reads the feed until drained, so nothing is missed: the caller marks its
    function dirty, which makes the holder read once more before it stops — ``shared.queue.read_feed_page``)."""


@dataclass(frozen=True, order=True)
class Cursor:
    xid: int = 0
    seq: int = 0

    def encode(self) -> str:
        return f"{self.xid}-{self.seq}"

    @classmethod
    def decode(cls, raw: str | None) -> "Cursor":
        if not raw:
            return cls()
        xid, sep, seq = raw.partition("-")
        # (an xid8 is unsigned 64-bit, a seq a bigint: past those no row can follow, a reader would wait forever)
        if not sep or not xid.isdigit() or not seq.isdigit() or int(xid) >= 2**64 or int(seq) >= 2**63:
            raise BadRequest(f"Invalid cursor {raw!r}: expected the value of a previous next_cursor")
        return cls(int(xid), int(seq))


def feed_query(table: str, columns: str) -> str:
    """The page query of a feed over ``table``: ``columns`` plus the cursor as ``cursor_xid``/``cursor_seq``.

    The cursor columns get their own names: an output column called ``xid`` (as text) would make
    ``ORDER BY xid`` sort as text, and "1000" sorts before "983" — a feed that silently reorders
    once transaction ids gain a digit. Ordering names the table's columns explicitly.
    """
    return (
        f"select t.xid::text as cursor_xid, t.seq as cursor_seq, {columns} from {table} t "
        f"where (t.xid, t.seq) > (CAST(:after_xid AS text)::xid8, CAST(:after_seq AS bigint)) "
        f"and t.xid < pg_snapshot_xmin(pg_current_snapshot()) "
        f"order by t.xid, t.seq limit :limit"
    )


def feed_time(value: str | datetime) -> datetime:
    """A time a feed item carries (ISO 8601 text), in UTC. Text without an offset is UTC: ingest once stored an
    event dated 0001-01-01T00:00Z, which PostgreSQL keeps as ``-infinity`` and hands back without an offset; read
    as local time it fell in year 0, and every reader of the feed failed on it, for every workspace."""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def feed_params(after: Cursor, limit: int) -> dict[str, object]:
    return {"after_xid": str(after.xid), "after_seq": after.seq, "limit": limit}


async def lock_consumer(session: AsyncSession, schema: str, consumer: str) -> str:
    """Lock a consumer's row in ``<schema>.consumers`` (one processor at a time) and return its cursor, or raise
    :class:`ConsumerBusy` after waiting :data:`CONSUMER_LOCK_WAIT` for another job that holds it.

    Waiting without a bound piled up a job and a PostgreSQL connection per poll (every few seconds) behind a
    holder stuck on a slow or unreachable upstream feed: ~30 connections when ingest was down.

    The caller saves the new cursor with :func:`save_consumer` in the same transaction as the state it
    derived from the page, so a crash replays the page and never applies it twice.
    """
    await session.execute(text("select set_config('lock_timeout', :t, true)"), {"t": CONSUMER_LOCK_WAIT})
    try:
        # (the insert waits too when the holder is the job that created the row, in its first transaction)
        await session.execute(
            text(f"insert into {schema}.consumers (name, cursor) values (:n, '') on conflict do nothing"),
            {"n": consumer})
        row = await session.execute(text(f"select cursor from {schema}.consumers where name = :n for update"),
                                    {"n": consumer})
    except DBAPIError as exc:
        if sqlstate(exc) == "55P03":  # lock_not_available
            raise ConsumerBusy(consumer) from None
        raise
    await session.execute(text("reset lock_timeout"))  # the rest of the transaction waits as configured
    return str(row.scalar_one())


async def save_consumer(session: AsyncSession, schema: str, consumer: str, cursor: str) -> None:
    await session.execute(text(f"update {schema}.consumers set cursor = :c, updated_at = now() where name = :n"),
                          {"c": cursor, "n": consumer})


async def backlog(session: AsyncSession, table: str, after: Cursor, exact_up_to: int = 1000) -> int:
    """How many committed rows of ``table`` lie after ``after`` (the consumer lag).

    Exact up to ``exact_up_to`` (a short index range scan); beyond that, estimated from the ``seq``
    sequence, which is O(1) however far behind the consumer is (values burned by rolled-back inserts
    make it a slight over-estimate).
    """
    exact = (await session.execute(
        text(f"select count(*) from (select 1 from {table} t where (t.xid, t.seq) > "
             f"(CAST(:after_xid AS text)::xid8, CAST(:after_seq AS bigint)) limit :cap) x"),
        {**feed_params(after, 0), "cap": exact_up_to + 1},
    )).scalar_one()
    if exact <= exact_up_to:
        return int(exact)
    last = (await session.execute(text("select pg_sequence_last_value(pg_get_serial_sequence(:t, 'seq')::regclass)"),
                                  {"t": table})).scalar_one()
    return max(int(exact), int(last or 0) - after.seq)
