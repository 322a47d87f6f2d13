"""A sent message's content follows its workspace's ``retention_days``: past it, the subject, HTML and text are
cleared (the rendered copy of a person's data, and most of the table's size). The row stays: the links in the
email (one-click unsubscribe, preferences, clicks) find the recipient through it, and the deliveries log, the
funnel and the attempts keep counting it.

Each workspace's pass walks the deliveries-log index (``workspace_id, created_at, id``) forward from a mark
(``delivery.redaction_marks``): a run reads only what aged out since the last one, not every message ever
cleared. The mark never passes a message still queued or sending (it is cleared once it is sent or has
failed), and it moves after every batch, so a pass cut short resumes where it stopped.
"""

import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import retention

REDACT_BATCH = 1_000
_FIRST_KEY = (datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # before any message

# the batch's keys in index order, then the content of those still holding some cleared
_REDACT = text("""
    with k as (select id, created_at from delivery.messages
                where workspace_id = :ws and (created_at, id) > (:t, :id) and created_at < :upto
                order by created_at, id limit :n),
         u as (update delivery.messages m set subject = '', html = null, text = null, updated_at = now()
                 from k where m.id = k.id and (m.html is not null or m.text is not null or m.subject <> '')
               returning 1)
    select (select count(*) from u) as cleared, (select count(*) from k) as read,
           (select created_at from k order by created_at desc, id desc limit 1) as last_t,
           (select id from k order by created_at desc, id desc limit 1) as last_id
""")


async def redact_expired(sessionmaker: async_sessionmaker[AsyncSession], batch: int = REDACT_BATCH) -> int:
    """Clear the content of every workspace's messages older than its retention; returns how many were cleared."""
    async with sessionmaker() as session, session.begin():
        policies = await retention.workspace_policies(session)
    cleared = 0
    for ws, days in policies:
        cleared += await _redact_workspace(sessionmaker, ws, days, batch)
    return cleared


async def _redact_workspace(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID, days: int,
                            batch: int) -> int:
    async with sessionmaker() as session, session.begin():
        row = (await session.execute(text(
            "select now() - make_interval(days => :d) as cutoff, "
            "(select min(created_at) from delivery.messages where workspace_id = :ws "
            " and status in ('queued', 'sending')) as open_from, "
            "(select redacted_before from delivery.redaction_marks where workspace_id = :ws) as mark"),
            {"ws": ws, "d": days})).one()
    upto = min(row.cutoff, row.open_from) if row.open_from is not None else row.cutoff
    key = (row.mark, uuid.UUID(int=0)) if row.mark is not None else _FIRST_KEY
    cleared = 0
    while True:
        async with sessionmaker() as session, session.begin():
            done = (await session.execute(_REDACT, {"ws": ws, "t": key[0], "id": key[1], "upto": upto,
                                                    "n": batch})).one()
            cleared += done.cleared
            if done.read:
                key = (done.last_t, done.last_id)
            # the mark: a timestamp every message before which is cleared (a message at the batch's last time but
            # after it in id order is read again next time, and found cleared or cleared then)
            mark = key[0] if done.read == batch else upto
            await session.execute(text(
                "insert into delivery.redaction_marks (workspace_id, redacted_before) values (:ws, :m) "
                "on conflict (workspace_id) do update set redacted_before = greatest("
                "delivery.redaction_marks.redacted_before, excluded.redacted_before)"), {"ws": ws, "m": mark})
        if done.read < batch:
            return cleared
