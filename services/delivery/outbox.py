"""The outbox: every message is stored under its idempotency key before any provider call.

- ``enqueue``: insert-or-return on ``(workspace_id, idempotency_key)``; the same key with different
  content is a conflict, never a second message.
- ``claim``: queued messages that are due, and ``sending`` ones whose lease ran out (a worker died
  mid-send), are leased with ``FOR UPDATE SKIP LOCKED`` so replicas never share one.
- A transient failure is retried with exponential backoff (capped at ``BACKOFF_CAP_S``) for as long as the
  message's retry time allows (``TENURE_DELIVERY_RETRY_FOR_S``, email ``TENURE_EMAIL_RETRY_FOR_S``, counted from
  its first transient failure: a greylisting server asks for minutes, an outage of the receiver can take hours);
  a message whose holders died mid-send ``MAX_LOST_LEASES`` times is given up, whatever its time.
- ``confirm``: just before sending, which claimed messages are still this holder's (renewing old leases).
- ``record_many``: the outcomes of attempts, each kept in ``delivery.attempts`` too.

SMTP has no idempotency key, so a message whose worker died after the server accepted it but before
``record_many`` committed is attempted again with the same Message-ID header (documented trade-off:
at-least-once at the wire in that window, exactly-once everywhere else).
"""

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery import consent
from shared import metrics
from shared.db import Stamp, dicts, fetch_newest_first, fetch_one, row_dict
from shared.errors import AppError, Conflict, ValidationFailed, body_error
from shared.jsonutil import dumps, dumps_bytes
from shared.settings import Settings

LEASE_S = 60
MAX_LOST_LEASES = 8  # holders that died mid-send (a message that kills its worker must not be taken for ever)
BACKOFF_CAP_S = 1800.0  # the longest wait between two attempts (RFC 5321 §4.5.4.1: at least 30 minutes for mail)
# how long transient failures are retried when the sender did not say (``retry_for_s``): the setting's default
RETRY_FOR_S: float = Settings.model_fields["delivery_retry_for_s"].default
_COLS = ("id, idempotency_key, channel, to_address, subject, message_type, topic, locale, status, attempts, "
         "last_error, provider_message_id, metadata, created_at, sent_at")
# what the recipient did with a message, as the log shows it: the first open and the clicks, neither a scanner's nor
# a prefetch's (``bot``); two probes of ix_engagements_message per message listed
_ENGAGED = ("(select min(e.at) from delivery.engagements e where e.message_id = m.id and e.kind = 'opened' "
            "and not e.bot) as opened_at, "
            "(select count(*) from delivery.engagements e where e.message_id = m.id and e.kind = 'clicked' "
            "and not e.bot) as clicks")


# fields added to messages after their first release: left out of the hash when not given, so a retry of a message
# queued before the upgrade still hashes as it did (and is its replay, not a conflict)
_ADDED_LATER = ("locale", "from")  # ("from": hashed since 2026-11-29 when given; a new sender is a new message)


def request_hash(data: dict[str, Any]) -> str:
    data = {k: v for k, v in data.items() if v is not None or k not in _ADDED_LATER}
    return hashlib.sha256(dumps_bytes(data, sort_keys=True)).hexdigest()


def out(row: Any) -> dict[str, Any]:
    d = row_dict(row)
    d["to"] = d.pop("to_address")
    return d


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter: 1-2 s, 2-4 s, 4-8 s … then 15-30 minutes between attempts."""
    return random.uniform(0.5, 1.0) * min(BACKOFF_CAP_S, 2.0 ** min(attempt, 32))


async def enqueue(session: AsyncSession, ws: uuid.UUID, msg: dict[str, Any], sender: str
                  ) -> tuple[dict[str, Any], bool]:
    """Store a message; returns (message, created). A replay returns the stored one. A message consent
    forbids is stored as ``suppressed`` (with the reason) and never sent; one on a topic the workspace does not
    have is refused (:class:`ValidationFailed` naming ``topic``)."""
    (result,) = await enqueue_many(session, ws, [(msg, sender)])
    if isinstance(result, AppError):
        raise result
    return result


async def enqueue_many(session: AsyncSession, ws: uuid.UUID, msgs: list[tuple[dict[str, Any], str]]
                       ) -> list[tuple[dict[str, Any], bool] | Conflict | ValidationFailed]:
    """``enqueue`` for many (message, sender) pairs in three statements whatever their number (and a read of the
    workspace's topics when one is named): consent, one insert, and one read of the keys that were already
    there. Per message, in order: (message, created), the :class:`Conflict` of a key already used for different
    content (the same key twice in one call: the first is stored, the second is its replay or conflict), or the
    :class:`ValidationFailed` of a topic that is none of the workspace's (not stored: no one could opt out of it)."""
    problems = await consent.topic_problems(session, ws, [m.get("topic") for m, _ in msgs])
    stored = iter(await _enqueue_many(session, ws, [pair for pair, p in zip(msgs, problems, strict=True) if not p]))
    return [ValidationFailed(f"Unknown topic: {p}", errors=[body_error("topic", p)]) if p else next(stored)
            for p in problems]


async def _enqueue_many(session: AsyncSession, ws: uuid.UUID, msgs: list[tuple[dict[str, Any], str]]
                        ) -> list[tuple[dict[str, Any], bool] | Conflict]:
    if not msgs:
        return []
    reasons = await consent.blocked_many(
        session, [(ws, m["channel"], m["to"], m["message_type"], m.get("topic")) for m, _ in msgs])
    rows = [_row(m, sender, reason) for (m, sender), reason in zip(msgs, reasons, strict=True)]
    inserted = {r.id: r for r in await session.execute(
        text(
            f"""
            insert into delivery.messages (id, workspace_id, idempotency_key, request_hash, channel, to_address,
                                           from_address, subject, html, text, message_type, topic, locale,
                                           status, last_error, metadata)
            select r.id, :ws, r.key, r.hash, r.channel, r.to_address, r.sender, r.subject, r.html, r.text,
                   r.message_type, r.topic, r.locale, r.status, r.reason, r.meta
              from rows from (jsonb_to_recordset(CAST(:rows AS jsonb))
                              as (id uuid, key text, hash text, channel text, to_address text, sender text,
                                  subject text, html text, text text, message_type text, topic text, locale text,
                                  status text, reason text, meta jsonb)) with ordinality
                   as r(id, key, hash, channel, to_address, sender, subject, html, text, message_type, topic, locale,
                        status, reason, meta, n)
             order by r.n  -- the same key twice in one call: the first is the one stored
            on conflict (workspace_id, idempotency_key) do nothing
            returning {_COLS}
            """
        ),
        {"ws": ws, "rows": dumps(rows)},
    )}
    replayed = [r["key"] for r in rows if uuid.UUID(r["id"]) not in inserted]
    existing = {r.idempotency_key: r for r in await session.execute(
        text(f"select m.* from unnest(CAST(:keys AS text[])) as k(key) cross join lateral (select request_hash, "
             f"{_COLS} from delivery.messages where workspace_id = :ws and idempotency_key = k.key limit 1) m"),
        # (by key: decisions.md)
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
        "message_type": msg["message_type"], "topic": msg.get("topic"), "locale": msg.get("locale"),
        "status": "suppressed" if reason else "queued", "reason": reason,
        # a push's data payload rides with the message's metadata
        "meta": {**(msg.get("metadata") or {}),
                 **({"push_data": msg["data"]} if msg["channel"] == "push" and msg.get("data") else {})},
    }


async def get_message(session: AsyncSession, ws: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any]:
    message = await fetch_one(
        session,
        f"select {_COLS}, {_ENGAGED} from delivery.messages m where workspace_id = :ws and id = :id",
        {"ws": ws, "id": message_id},
        missing=f"No message {message_id}",
    )
    message["to"] = message.pop("to_address")
    return message


CSV_COLUMNS = ("id", "created_at", "channel", "to", "message_type", "topic", "status", "attempts", "last_error",
               "subject", "provider_message_id", "sent_at", "opened_at", "clicks", "campaign_id", "user")


async def known_sms_ids(session: AsyncSession, ids: list[str]) -> set[str]:
    """Which of these Twilio SIDs a text of any workspace already holds (one account may serve several)."""
    rows = await session.execute(text(
        "select provider_message_id from delivery.messages where channel = 'sms' "
        "and provider_message_id is not null and provider_message_id = any(:ids)"), {"ids": ids})
    return {r[0] for r in rows}


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else str(value)


LOG_PAGE = f"""
    select {_COLS}, {_ENGAGED}, metadata->>'campaign_id' as campaign_id,
           coalesce(metadata->>'userId', metadata->>'anonymousId') as "user"
      from delivery.messages m
     where workspace_id = :ws
       and (CAST(:status AS text) is null or status = :status)
       and (CAST(:to AS text) is null or to_address = :to)
       and (CAST(:channel AS text) is null or channel = :channel)
       and (CAST(:user AS text) is null or metadata->>'userId' = :user or metadata->>'anonymousId' = :user)
       and (CAST(:campaign_id AS text) is null or metadata->>'campaign_id' = :campaign_id)
       and (CAST(:since AS timestamptz) is null or created_at >= :since)
       and (CAST(:until AS timestamptz) is null or created_at < :until)
       and (CAST(:after_at AS timestamptz) is null or (created_at, id) < (:after_at, CAST(:after_id AS uuid)))
     order by created_at desc, id desc limit :lim
    """


async def list_messages(session: AsyncSession, ws: uuid.UUID, filters: dict[str, Any], *, after: Stamp | None,
                        limit: int) -> tuple[list[dict[str, Any]], Stamp | None]:
    """The deliveries log, newest first (``created_at``, then id: a batch's messages share their time), after the
    stamp of the previous page's last message (ix_messages_log reads just the page)."""
    items, nxt = await fetch_newest_first(session, LOG_PAGE, {"ws": ws, **filters}, limit, after)
    for item in items:
        item["to"] = item.pop("to_address")
    return items, nxt


# the messages a worker should take now (the front of ix_messages_due): for the scrape-time gauge of due work
DUE_ROWS = ("select next_attempt_at as due_at from delivery.messages "
            "where status in ('queued', 'sending') and next_attempt_at <= now() order by next_attempt_at")

CLAIM = """
    update delivery.messages m
       set status = 'sending', attempts = m.attempts + 1, updated_at = now(),
           lost_leases = m.lost_leases + case when m.status = 'sending' then 1 else 0 end,  -- its holder died
           claimed_until = now() + make_interval(secs => :lease),
           -- a text whose holder died during its attempt may be at Twilio: pinned, it is looked up before it is sent
           -- again (m.status here is the row before this update)
           provider = case when m.channel = 'sms' and m.status = 'sending' then coalesce(m.provider, 'twilio')
                           else m.provider end,
           next_attempt_at = now() + make_interval(secs => :lease)
     where m.id in (select id from delivery.messages
                     where status in ('queued', 'sending') and next_attempt_at <= now()
                       and (status = 'queued' or (claimed_until < now() and lost_leases + 1 < :max))
                     order by next_attempt_at for update skip locked limit :lim)
    returning m.id, m.workspace_id, m.to_address, m.from_address, m.subject, m.html, m.text, m.attempts,
              m.message_type, m.metadata, m.channel, m.topic, m.locale, m.provider, m.created_at, m.retrying_since
    """


async def claim(session: AsyncSession, limit: int, lease_s: float = LEASE_S) -> list[dict[str, Any]]:
    """Lease up to ``limit`` due messages: queued ones whose time has come and those whose holder's lease ran out.

    A claimed message's ``next_attempt_at`` is its lease's end, so the front of ``ix_messages_due`` (ordered by it)
    holds exactly the messages needing attention, and a claim reads those alone instead of walking past every
    message in flight (10k of them, per claim, while a big campaign goes out)."""
    rows = await session.execute(
        text(CLAIM),
        {"lim": limit, "max": MAX_LOST_LEASES, "lease": lease_s},
    )
    leased_at = time.monotonic()  # the lease began (the statement's now()) moments before: far inside the margin
    # a message whose worker died mid-send MAX_LOST_LEASES times is given up, not claimed forever
    await session.execute(text(
        "update delivery.messages set status = 'failed', claimed_until = null, updated_at = now(), "
        "last_error = coalesce(last_error, '') || ' (gave up: lease expired ' || (lost_leases + 1) || ' times)' "
        "where status = 'sending' and next_attempt_at <= now() and claimed_until < now() and lost_leases + 1 >= :max"),
        {"max": MAX_LOST_LEASES})
    return [{**r, "leased_at": leased_at} for r in dicts(rows)]


def _lease_fresh(message: dict[str, Any], lease_s: float = LEASE_S) -> bool:
    """This holder's lease began less than ``min(lease / 10, 5 s)`` ago (see ``confirm``)."""
    return time.monotonic() - message.get("leased_at", float("-inf")) < min(lease_s / 10, 5.0)


def _held(lock: str) -> str:
    """The ids of messages ``:ids`` still held by the claim that counted ``:ns`` attempts, each probed by its key (a
    join could read every message in flight through ix_messages_due before the first ANALYZE, as ``RECORD``)."""
    return ("select o.id from unnest(CAST(:ids AS uuid[]), CAST(:ns AS int[])) as p(id, n) cross join lateral "
            "(select m.id from delivery.messages m where m.id = p.id and m.attempts = p.n and m.status = 'sending' "
            f"limit 1 {lock}) o")


async def confirm(session: AsyncSession, messages: list[dict[str, Any]], lease_s: float = LEASE_S) -> set[Any]:
    """Just before their provider calls: the ids of those messages still this holder's, each with nearly a
    whole lease to run; the others were taken over or erased meanwhile and must not be sent.

    A batch is claimed at once but sent over seconds, so a lease counted from the claim can run out while
    the tail of a slow batch still waits in memory; another worker would then take those messages too.
    ``attempts`` (raised by every claim) fences out a holder whose lease was taken over. A message sent
    within ``min(lease / 10, 5 s)`` of its claim still has ≥ 90 % of its lease and needs no new one: a read
    says whether it is still ours, without a write and the WAL flush of its commit. One statement of each
    kind for the whole group, whatever its size.
    """
    fresh = [m for m in messages if _lease_fresh(m, lease_s)]
    stale = [m for m in messages if not _lease_fresh(m, lease_s)]
    owned: set[Any] = set()
    for group, sql in ((fresh, _held("")),
                       (stale, "update delivery.messages m set claimed_until = now() + make_interval(secs => :lease), "
                               f"next_attempt_at = now() + make_interval(secs => :lease) from ({_held('for update')}) "
                               "h where m.id = h.id returning m.id")):
        if not group:
            continue
        rows = await session.execute(
            text(sql), {"ids": [m["id"] for m in group], "ns": [m["attempts"] for m in group], "lease": lease_s})
        owned.update(r.id for r in rows)
    renewed_at = time.monotonic()
    for m in stale:
        if m["id"] in owned:
            m["leased_at"] = renewed_at
    return owned


async def release(session: AsyncSession, messages: list[dict[str, Any]], delay_s: float = 0.0) -> None:
    """Give claimed messages back untouched — over a rate limit, or never attempted because their batch
    stopped: not an attempt, due again after ``delay_s``; unless another holder has taken one over."""
    await session.execute(text(
        "update delivery.messages m set status = 'queued', attempts = greatest(0, m.attempts - 1), "
        "claimed_until = null, next_attempt_at = now() + make_interval(secs => :d), updated_at = now() "
        f"from ({_held('for update')}) h where m.id = h.id"),
        {"ids": [m["id"] for m in messages], "ns": [m["attempts"] for m in messages], "d": delay_s})


@dataclass
class Outcome:
    """What one attempt came to: "sent", "transient_error", "permanent_error", "bounced" (the server refused the
    address itself: a hard bounce), "suppressed", or "deferred" (not tried: due again after ``retry_after_s``,
    whatever the attempts so far — a marketing text outside its recipient's hours).

    A transient error is retried while the message's first transient failure (``retrying_since``, this attempt's
    start for the first) is less than its ``retry_for_s`` (the sender puts it in the message; ``RETRY_FOR_S``
    otherwise) before this attempt began; after that it fails (``gave_up``)."""

    message: dict[str, Any]
    started_at: datetime
    outcome: str
    error: str | None = None
    provider_message_id: str | None = None
    provider: str | None = None  # the provider that may now hold the message (it stays pinned there)
    retry_after_s: float | None = None  # the provider asked to wait at least this long (≤ 1 h is honoured)

    def status(self) -> str:
        if self.outcome in ("sent", "suppressed", "bounced"):
            return self.outcome
        if self.outcome == "deferred":
            return "queued"
        if self.outcome == "transient_error" and not self.gave_up():
            return "queued"
        return "failed"

    def retrying_for_s(self) -> float:
        """How long this message has been failing transiently, up to this attempt (0 at the first failure)."""
        since = self.message.get("retrying_since") or self.started_at
        return max(0.0, (self.started_at - since).total_seconds())

    def gave_up(self) -> bool:
        """A transient error after the message's retry time: it fails."""
        return self.outcome == "transient_error" and self.retrying_for_s() >= float(
            self.message.get("retry_for_s", RETRY_FOR_S))

    def error_text(self) -> str | None:
        if not self.gave_up():
            return self.error
        return (f"{self.error or 'transient error'} (gave up: failing for {_duration(self.retrying_for_s())} since "
                f"its first failure, {self.message['attempts']} attempts)")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def _storable(value: str | None) -> str | None:
    """Provider text as PostgreSQL takes it: valid UTF-8 (a provider's JSON may carry a lone surrogate),
    no NUL, bounded."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode().replace("\x00", "")[:1000]


RECORD = """
    with r as (
        select * from jsonb_to_recordset(CAST(:rows AS jsonb))
            as r(id uuid, n int, status text, outcome text, error text, pmid text, provider text,
                 started timestamptz, delay float8)),
    owned as (  -- each message probed by its key: joined as a set, before the table's first ANALYZE the
                -- planner read every message in flight through ix_messages_due, per group of outcomes
        select r.*, o.id as mid from r cross join lateral (
            select m.id from delivery.messages m
             where m.id = r.id and m.status = 'sending' and m.attempts = r.n  -- not if another holder took it
             limit 1 for update) o),
    updated as (
        update delivery.messages m
           set status = r.status, last_error = r.error, updated_at = now(), claimed_until = null,
               provider_message_id = coalesce(r.pmid, m.provider_message_id),
               provider = coalesce(m.provider, r.provider),
               sent_at = case when r.status = 'sent' then now() else m.sent_at end,
               -- the first of the transient failures it is retried for (its retry time counts from there)
               retrying_since = case when r.outcome = 'transient_error' then coalesce(m.retrying_since, r.started)
                                     else m.retrying_since end,
               next_attempt_at = now() + make_interval(secs => r.delay),
               -- not tried (a text outside its recipient's hours): the claim's attempt is given back, as a release does
               attempts = case when r.outcome = 'deferred' then greatest(0, m.attempts - 1) else m.attempts end
          from owned r
         where m.id = r.mid
        returning m.id),
    attempts as (
        insert into delivery.attempts (message_id, attempt, outcome, error, started_at)
        select r.id, r.n, r.outcome, r.error, r.started from r
         -- a row not updated here (taken over, or erased) is locked to look: an erasure committing
         -- meanwhile is then seen, which the statement's snapshot alone would miss
         where r.id in (select id from updated)
            or exists (select 1 from delivery.messages m where m.id = r.id for key share))
    select id from updated
    """


async def _bounced(session: AsyncSession, o: Outcome) -> None:
    """A hard bounce seen in the SMTP session: the address is suppressed (transactional mail too) and "Email
    Bounced" goes to ingest, in the transaction recording the outcome."""
    m, who = o.message, consent.identity_of(o.message)
    await consent.suppress(session, m["workspace_id"], m.get("channel") or "email", m["to_address"], "hard_bounce",
                           o.provider or "smtp", who)
    await consent.queue_event(session, m["workspace_id"], who, "Email Bounced", {
        "message_id": str(m["id"]), "provider": o.provider or "smtp", "reason": (o.error or "")[:300],
        **consent.journey_of(m)})


async def record_many(session: AsyncSession, outcomes: list[Outcome]) -> set[Any]:
    """Store the outcomes of many attempts in one statement: each message's new status (a transient error
    waits its backoff, or the provider's ``Retry-After`` if longer) and its attempt row. Returns the ids
    updated: a holder whose message was taken over meanwhile changes nothing but adds its attempt to the
    history, and a message erased meanwhile leaves no trace."""
    if not outcomes:
        return set()
    rows = [{"id": str(o.message["id"]), "n": o.message["attempts"], "status": o.status(), "outcome": o.outcome,
             "error": _storable(o.error_text()), "pmid": _storable(o.provider_message_id), "provider": o.provider,
             "started": o.started_at,
             "delay": o.retry_after_s or 0.0 if o.outcome == "deferred" else
             max(backoff_s(o.message["attempts"]), min(o.retry_after_s or 0.0, 3600.0))}
            for o in outcomes]
    updated = {r.id for r in await session.execute(text(RECORD), {"rows": dumps(rows)})}
    for o in outcomes:  # refused by the recipient's server at send time: as a provider's bounce report would
        if o.outcome == "bounced" and o.message["id"] in updated:
            await _bounced(session, o)
    for o in outcomes:
        if o.message["id"] in updated:
            metrics.MESSAGES.labels(o.message.get("channel", "unknown"), o.status()).inc()
    return updated
