"""A sent message's content follows its workspace's ``retention_days``: past it, the subject, HTML and text (a
webhook's payload) and a push's data are cleared — the rendered copy of a person's data, and most of the table's
size. The row stays: the links in the email (one-click unsubscribe, preferences, clicks) find the recipient
through it, and the deliveries log, the funnel and the attempts keep counting it.

Each workspace's pass walks the deliveries-log index (``workspace_id, created_at, id``) forward from a mark
(``delivery.redaction_marks``) to the retention's cutoff: a run reads what aged out since the last one, not every
message cleared before. A message still queued or sending is passed over and cleared by a later pass, once sent or
failed: the mark stops at the first such message (the next pass reads again from there), and moves after every
batch, so a pass cut short resumes where it stopped.
"""

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import retention

log = structlog.get_logger()

REDACT_BATCH = 1_000
_FIRST_KEY = (datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # before any message
_OPEN = "('queued', 'sending')"

# the batch's keys in index order; the content of those done with and still holding some, cleared
_REDACT = text(f"""
    with k as (select id, created_at, status from delivery.messages
                where workspace_id = :ws and (created_at, id) > (:t, :id) and created_at < :upto
                order by created_at, id limit :n),
         u as (update delivery.messages m
                  set subject = '', html = null, text = null, metadata = m.metadata - 'push_data', updated_at = now()
                 from k where m.id = k.id and m.status not in {_OPEN}
                  and (m.html is not null or m.text is not null or m.subject <> '' or m.metadata ? 'push_data')
               returning 1)
    select (select count(*) from u) as cleared, (select count(*) from k) as read,
           (select min(created_at) from k where status in {_OPEN}) as first_open,
           (select created_at from k order by created_at desc, id desc limit 1) as last_t,
           (select id from k order by created_at desc, id desc limit 1) as last_id
""")


async def redact_expired(sessionmaker: async_sessionmaker[AsyncSession], batch: int = REDACT_BATCH) -> int:
    """Clear the content of every workspace's messages older than its retention; returns how many were cleared.
    A workspace whose pass fails (a deadlock with an erasure, say) is logged and left for the next run; the others
    go on."""
    async with sessionmaker() as session, session.begin():
        policies = await retention.workspace_policies(session)
    cleared = 0
    for ws, days in policies:
        try:
            cleared += await _redact_workspace(sessionmaker, ws, days, batch)
        except Exception as exc:  # noqa: BLE001 - its mark keeps what was done; the next run resumes there
            log.warning("delivery.retention_failed", workspace_id=str(ws), error=f"{type(exc).__name__}: {exc}")
    return cleared


async def _redact_workspace(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID, days: int,
                            batch: int) -> int:
    async with sessionmaker() as session, session.begin():
        row = (await session.execute(text(
            "select now() - make_interval(days => :d) as cutoff, "
            "(select redacted_before from delivery.redaction_marks where workspace_id = :ws) as mark"),
            {"ws": ws, "d": days})).one()
    key = (row.mark, uuid.UUID(int=0)) if row.mark is not None else _FIRST_KEY
    held: datetime | None = None  # the first message still queued or sending: the mark stays there
    cleared = 0
    while True:
        async with sessionmaker() as session, session.begin():
            done = (await session.execute(_REDACT, {"ws": ws, "t": key[0], "id": key[1], "upto": row.cutoff,
                                                    "n": batch})).one()
            cleared += done.cleared
            if done.read:
                key = (done.last_t, done.last_id)
            if held is None:
                held = done.first_open
            # every message created before the mark is done with and cleared (one at the batch's last time but after
            # it in id order is read again next time, and found cleared or cleared then)
            mark = held if held is not None else key[0] if done.read == batch else row.cutoff
            await session.execute(text(
                "insert into delivery.redaction_marks (workspace_id, redacted_before) "
                "select :ws, :m where exists (select 1 from core.workspaces where id = :ws) "  # (not one deleted)
                "on conflict (workspace_id) do update set redacted_before = greatest("
                "delivery.redaction_marks.redacted_before, excluded.redacted_before)"), {"ws": ws, "m": mark})
        if done.read < batch:
            return cleared
