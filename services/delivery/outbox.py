"""The outbox: every message is stored under its idempotency key before any provider call.

- ``enqueue``: insert-or-return on ``(workspace_id, idempotency_key)``; the same key with different
  content is a conflict, never a second message.
- ``claim``: queued messages that are due, and ``sending`` ones whose lease ran out (a worker died
  mid-send), are leased with ``FOR UPDATE SKIP LOCKED`` so replicas never share one.
- ``record``: the outcome of one attempt, with the attempt itself kept in ``delivery.attempts``.

SMTP has no idempotency key, so a message whose worker died after the server accepted it but before
``record`` committed is attempted again with the same Message-ID header (documented trade-off:
at-least-once at the wire in that window, exactly-once everywhere else).
"""

import hashlib
import random
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery import consent
from shared import metrics
from shared.db import fetch_one, fetch_page, row_dict
from shared.errors import Conflict
from shared.jsonutil import dumps, dumps_bytes

LEASE_S = 60
MAX_ATTEMPTS = 8
_COLS = ("id, idempotency_key, channel, to_address, subject, message_type, topic, status, attempts, last_error, "
         "provider_message_id, metadata, created_at, sent_at")


def request_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(dumps_bytes(data, sort_keys=True)).hexdigest()


def out(row: Any) -> dict[str, Any]:
    d = row_dict(row)
    d["to"] = d.pop("to_address")
    return d


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: ~2 s, 4 s, 8 s … capped at 30 minutes."""
    return random.uniform(0.5, 1.0) * min(1800.0, 2.0 ** attempt)


async def enqueue(session: AsyncSession, ws: uuid.UUID, msg: dict[str, Any], sender: str
                  ) -> tuple[dict[str, Any], bool]:
    """Store a message; returns (message, created). A replay returns the stored one. A message consent
    forbids is stored as ``suppressed`` (with the reason) and never sent."""
    (result,) = await enqueue_many(session, ws, [(msg, sender)])
    if isinstance(result, Conflict):
        raise result
    return result


async def enqueue_many(session: AsyncSession, ws: uuid.UUID, msgs: list[tuple[dict[str, Any], str]]
                       ) -> list[tuple[dict[str, Any], bool] | Conflict]:
    """``enqueue`` for many (message, sender) pairs in three statements whatever their number: consent,
    one insert, and one read of the keys that were already there. Per message, in order: (message,
    created), or the :class:`Conflict` of a key already used for different content (the same key twice
    in one call: the first is stored, the second is its replay or conflict)."""
    if not msgs:
        return []
    reasons = await consent.blocked_many(
        session, [(ws, m["channel"], m["to"], m["message_type"], m.get("topic")) for m, _ in msgs])
    rows = [_row(m, sender, reason) for (m, sender), reason in zip(msgs, reasons, strict=True)]
    inserted = {r.id: r for r in await session.execute(
        text(
            f"""
            insert into delivery.messages (id, workspace_id, idempotency_key, request_hash, channel, to_address,
                                           from_address, subject, html, text, message_type, topic, status,
                                           last_error, metadata)
            select r.id, :ws, r.key, r.hash, r.channel, r.to_address, r.sender, r.subject, r.html, r.text,
                   r.message_type, r.topic, r.status, r.reason, r.meta
              from rows from (jsonb_to_recordset(CAST(:rows AS jsonb))
                              as (id uuid, key text, hash text, channel text, to_address text, sender text,
                                  subject text, html text, text text, message_type text, topic text, status text,
                                  reason text, meta jsonb)) with ordinality
                   as r(id, key, hash, channel, to_address, sender, subject, html, text, message_type, topic, status,
                        reason, meta, n)
             order by r.n  -- the same key twice in one call: the first is the one stored
            on conflict (workspace_id, idempotency_key) do nothing
            returning {_COLS}
            """
        ),
        {"ws": ws, "rows": dumps(rows)},
    )}
    replayed = [r["key"] for r in rows if uuid.UUID(r["id"]) not in inserted]
    existing = {r.idempotency_key: r for r in await session.execute(
        text(f"select request_hash, {_COLS} from delivery.messages "
             "where workspace_id = :ws and idempotency_key = any(CAST(:keys AS text[]))"),
        {"ws": ws, "keys": replayed})} if replayed else {}
    out_: list[tuple[dict[str, Any], bool] | Conflict] = []
    for r in rows:
        if (row := inserted.get(uuid.UUID(r["id"]))) is not None:
            metrics.MESSAGES.labels(r["channel"], row.status).inc()
            out_.append((out(row), True))
        elif (old := existing[r["key"]]).request_hash != r["hash"]:
            out_.append(Conflict("This idempotency_key was already used for a different message",
                                 idempotency_key=r["key"], message_id=str(old.id)))
        else:
            d = out(old)
            d.pop("request_hash", None)
            out_.append((d, False))
    return out_


def _row(msg: dict[str, Any], sender: str, reason: str | None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()), "key": msg["idempotency_key"], "hash": request_hash(msg), "channel": msg["channel"],
        "to_address": msg["to"], "sender": sender, "subject": msg["subject"], "html": msg.get("html"),
        # a webhook's body is its JSON data, kept as text
        "text": dumps(msg["data"]) if msg["channel"] == "webhook" else msg.get("text"),
        "message_type": msg["message_type"], "topic": msg.get("topic"),
        "status": "suppressed" if reason else "queued", "reason": reason,
        # a push's data payload rides with the message's metadata
        "meta": {**(msg.get("metadata") or {}),
                 **({"push_data": msg["data"]} if msg["channel"] == "push" and msg.get("data") else {})},
    }


async def get_message(session: AsyncSession, ws: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any]:
    message = await fetch_one(
        session,
        f"select {_COLS} from delivery.messages where workspace_id = :ws and id = :id",
        {"ws": ws, "id": message_id},
        missing=f"No message {message_id}",
    )
    message["to"] = message.pop("to_address")
    return message


CSV_COLUMNS = ("id", "created_at", "channel", "to", "message_type", "topic", "status", "attempts", "last_error",
               "subject", "provider_message_id", "sent_at", "campaign_id", "user")


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else str(value)


async def list_messages(session: AsyncSession, ws: uuid.UUID, filters: dict[str, Any], *, after: str | None,
                        limit: int) -> tuple[list[dict[str, Any]], str | None]:
    items, nxt = await fetch_page(
        session,
        f"""
        select {_COLS}, metadata->>'campaign_id' as campaign_id,
               coalesce(metadata->>'userId', metadata->>'anonymousId') as "user"
          from delivery.messages
         where workspace_id = :ws
           and (CAST(:status AS text) is null or status = :status)
           and (CAST(:to AS text) is null or to_address = :to)
           and (CAST(:channel AS text) is null or channel = :channel)
           and (CAST(:user AS text) is null or metadata->>'userId' = :user or metadata->>'anonymousId' = :user)
           and (CAST(:campaign_id AS text) is null or metadata->>'campaign_id' = :campaign_id)
           and (CAST(:since AS timestamptz) is null or created_at >= :since)
           and (CAST(:until AS timestamptz) is null or created_at < :until)
           and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid))
         order by id limit :lim
        """,
        {"ws": ws, "after": after, **filters}, limit,
    )
    for item in items:
        item["to"] = item.pop("to_address")
    return items, nxt


async def claim(session: AsyncSession, limit: int, lease_s: float = LEASE_S) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            update delivery.messages m
               set status = 'sending', attempts = m.attempts + 1, updated_at = now(),
                   claimed_until = now() + make_interval(secs => :lease)
             where m.id in (select id from delivery.messages
                             where (status = 'queued' and next_attempt_at <= now())
                                or (status = 'sending' and claimed_until < now() and attempts < :max)
                             order by next_attempt_at for update skip locked limit :lim)
            returning m.id, m.workspace_id, m.to_address, m.from_address, m.subject, m.html, m.text, m.attempts,
                      m.message_type, m.metadata, m.channel, m.topic, m.provider, m.created_at
            """
        ),
        {"lim": limit, "max": MAX_ATTEMPTS, "lease": lease_s},
    )
    leased_at = time.monotonic()  # the lease began (the statement's now()) moments before: far inside the margin
    # a message whose worker died mid-send MAX_ATTEMPTS times is given up, not claimed forever
    await session.execute(text(
        "update delivery.messages set status = 'failed', claimed_until = null, updated_at = now(), "
        "last_error = coalesce(last_error, '') || ' (gave up: lease expired ' || attempts || ' times)' "
        "where status = 'sending' and claimed_until < now() and attempts >= :max"), {"max": MAX_ATTEMPTS})
    return [{**r, "leased_at": leased_at} for r in rows.mappings()]


def _lease_fresh(message: dict[str, Any], lease_s: float = LEASE_S) -> bool:
    """This holder's lease began less than ``min(lease / 10, 5 s)`` ago (see ``renew``)."""
    return time.monotonic() - message.get("leased_at", float("-inf")) < min(lease_s / 10, 5.0)


async def renew(session: AsyncSession, message: dict[str, Any], lease_s: float = LEASE_S) -> bool:
    """Just before the provider call: make sure the message is still this holder's, with nearly a whole
    lease to run; False when it is not ours any more (taken over, or erased meanwhile).

    A batch is claimed at once but sent one message after another, so a lease counted from the claim can
    run out while the tail of a slow batch still waits in memory; another sender would then take those
    messages too. ``attempts`` (raised by every claim) fences out a holder whose lease was taken over.
    A message sent within ``min(lease / 10, 5 s)`` of its claim still has ≥ 90 % of its lease and needs
    no new one: a read says whether it is still ours, without the write and the WAL flush of its commit.
    """
    if _lease_fresh(message, lease_s):
        row = await session.execute(text(
            "select 1 from delivery.messages where id = :id and status = 'sending' and attempts = :n"),
            {"id": message["id"], "n": message["attempts"]})
        return row.first() is not None
    row = await session.execute(text(
        "update delivery.messages set claimed_until = now() + make_interval(secs => :lease) "
        "where id = :id and status = 'sending' and attempts = :n returning 1"),
        {"id": message["id"], "n": message["attempts"], "lease": lease_s})
    if row.first() is None:
        return False
    message["leased_at"] = time.monotonic()
    return True


async def release(session: AsyncSession, ids: list[uuid.UUID], delay_s: float) -> None:
    """Give claimed messages back untouched (over a rate limit): not an attempt, due again after ``delay_s``."""
    await session.execute(text(
        "update delivery.messages set status = 'queued', attempts = greatest(0, attempts - 1), claimed_until = null, "
        "next_attempt_at = now() + make_interval(secs => :d), updated_at = now() "
        "where id = any(CAST(:ids AS uuid[])) and status = 'sending'"), {"ids": ids, "d": delay_s})


async def record(session: AsyncSession, message: dict[str, Any], *, started_at: datetime, outcome: str,
                 error: str | None = None, provider_message_id: str | None = None, provider: str | None = None,
                 retry_after_s: float | None = None) -> str:
    """Store an attempt's outcome ("sent", "transient_error", "permanent_error", "suppressed"); returns the
    new status. A transient error waits its backoff, or the provider's ``Retry-After`` if longer (≤ 1 h)."""
    attempts = message["attempts"]
    if outcome in ("sent", "suppressed"):
        status = outcome
    elif outcome == "transient_error" and attempts < MAX_ATTEMPTS:
        status = "queued"
    else:
        status = "failed"
    updated = (await session.execute(
        text(
            """
            with updated as (
                update delivery.messages
                   set status = :status, last_error = :error, updated_at = now(), claimed_until = null,
                       provider_message_id = coalesce(:pmid, provider_message_id),
                       provider = coalesce(provider, :provider),
                       sent_at = case when :status = 'sent' then now() else sent_at end,
                       next_attempt_at = now() + make_interval(secs => :delay)
                 where id = :id and status = 'sending' and attempts = :n  -- not if another holder took it over
                returning 1)
            insert into delivery.attempts (message_id, attempt, outcome, error, started_at)
            values (:id, :n, :outcome, :error, :started)
            returning (select count(*) from updated)
            """
        ),
        {"status": status, "error": error, "pmid": provider_message_id,
         "delay": max(backoff_s(attempts), min(retry_after_s or 0.0, 3600.0)),
         "id": message["id"], "provider": provider, "n": attempts, "outcome": outcome, "started": started_at},
    )).scalar()
    if updated:  # (a holder whose message was taken over changes nothing)
        metrics.MESSAGES.labels(message.get("channel", "unknown"), status).inc()
    return status
