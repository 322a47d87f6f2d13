"""Turning Segment messages into stored events: clock-skew correction, identity, dedup, trait merges.

Everything a request writes happens in the caller's one transaction: events (deduplicated on
``(workspace_id, messageId)``), new profiles and identities, and trait merges. Nothing is
acknowledged before it commits.
"""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest import groups, privacy
from services.ingest.profiles import alias_keys, resolve_profiles
from services.ingest.schemas import (
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    PageMessage,
    ScreenMessage,
    TrackMessage,
)
from shared import traits as trait_merge
from shared.db import driver_connection
from shared.jsonutil import dumps, obj
from shared.validation import finite_instant, is_time_zone

Message = TrackMessage | IdentifyMessage | PageMessage | ScreenMessage | GroupMessage | AliasMessage


@dataclass
class Envelope:
    """A validated message, normalised for the event log."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: datetime
    sent_at: datetime | None
    previous_id: str | None = None  # alias
    group_id: str | None = None  # group
    profile_id: uuid.UUID | None = None
    received_at: datetime | None = None  # when ingest received its request (None: ``record``'s received_at)


@dataclass
class RecordResult:
    accepted: int = 0
    duplicates: int = 0
    suppressed: int = 0
    inserted: list[Envelope] = field(default_factory=list)
    suppressed_ids: set[str] = field(default_factory=set)
    # messages the database refused, with the SQLSTATE (services/ingest/committer.py): not stored
    refused: list[tuple[Envelope, str]] = field(default_factory=list)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def corrected_timestamp(
    received_at: datetime,
    *,
    timestamp: datetime | None,
    original_timestamp: datetime | None,
    sent_at: datetime | None,
) -> datetime:
    """Event time with the client's clock skew removed (Segment spec, ``common.md``), never after receipt.

    ``timestamp = receivedAt - (sentAt - originalTimestamp)``; the client's own idea of "when" is
    ``originalTimestamp`` or, from Segment's libraries, ``timestamp``. Without ``sentAt`` the skew is
    unknown and the client's time is kept; without any client time, the event happened on receipt.
    A message with both was given its ``timestamp`` by the caller (RudderStack's SDKs stamp
    ``originalTimestamp`` themselves and pass a backdated ``timestamp`` through): that time is kept as
    sent, as RudderStack's own server does.

    A time after receipt (a clock set ahead, with no ``sentAt`` to correct it) is the receipt: an event dated in
    2030 would otherwise win every trait merge until 2030 (newer timestamp wins) and sit ahead of every feed
    reader's idea of "recent".
    """
    received = _utc(received_at)
    assert received is not None
    return min(_client_time(received, timestamp=timestamp, original_timestamp=original_timestamp,
                            sent_at=sent_at), received)


def _client_time(received: datetime, *, timestamp: datetime | None, original_timestamp: datetime | None,
                 sent_at: datetime | None) -> datetime:
    try:
        explicit = _utc(timestamp) if original_timestamp is not None else None
        if explicit is not None:
            return explicit
        original = _utc(original_timestamp) or _utc(timestamp)
        sent = _utc(sent_at)
    except OverflowError:  # an offset pushes the client's time past year 9999 or before year 1
        return received
    if original is None:
        return received
    if sent is None:
        return original
    try:
        corrected = received - (sent - original)
    except OverflowError:  # absurd client clocks (year 1, year 9999): keep what the client said
        return original
    return corrected if finite_instant(corrected) else original


def normalize(msg: Message, received_at: datetime, *, batch_sent_at: datetime | None = None,
              batch_context: dict[str, Any] | None = None) -> Envelope:
    context = {**(batch_context or {}), **msg.context}
    sent_at = msg.sent_at or batch_sent_at
    props: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    event: str | None = None
    previous_id = group_id = None
    if isinstance(msg, TrackMessage):
        event, props = msg.event, msg.properties
    elif isinstance(msg, IdentifyMessage):
        # RudderStack's SDKs send identify traits in context.traits only (Segment's, at the top level)
        traits = {**obj(context.get("traits")), **msg.traits}
    elif isinstance(msg, GroupMessage):
        traits, group_id, props = msg.traits, msg.group_id, {"groupId": msg.group_id}
    elif isinstance(msg, AliasMessage):
        previous_id, props = msg.previous_id, {"previousId": msg.previous_id}
    else:  # page, screen: a top-level category (RudderStack's and Segment's server SDKs) joins the properties
        event, props = msg.name, msg.properties
        if isinstance(msg.category, str) and msg.category and "category" not in props:
            props = {**props, "category": msg.category}
    return Envelope(
        message_id=msg.message_id or str(uuid.uuid4()),
        type=msg.type,
        event=event,
        user_id=msg.user_id,
        anonymous_id=msg.anonymous_id,
        properties=props,
        traits=traits,
        context=context,
        timestamp=corrected_timestamp(received_at, timestamp=msg.timestamp,
                                      original_timestamp=msg.original_timestamp, sent_at=sent_at),
        sent_at=_utc(sent_at),
        previous_id=previous_id,
        group_id=group_id,
        received_at=received_at,
    )


_EVENT_COLUMNS = ("workspace_id", "message_id", "type", "event", "profile_id", "user_id", "anonymous_id",
                  "properties", "traits", "context", "timestamp", "received_at", "sent_at")
# One probe of the unique index per id, whatever the statistics say: ``message_id = any($2)`` beside
# ``workspace_id = $1`` let the planner, before the table's first ANALYZE (a new install), take the
# (workspace_id, profile_id, seq) index for the workspace alone and filter all its events: 38 instead of
# 2.5 ms for 600 ids at 240k events, growing with the table (tests/integration/test_query_plans.py).
_STORED = ("select k.m from unnest($2::text[]) as k(m) cross join lateral "
           "(select from ingest.events e where e.workspace_id = $1 and e.message_id = k.m limit 1) e")


async def _insert_events(session: AsyncSession, ws: uuid.UUID, received_at: datetime, batch: list[Envelope]
                         ) -> set[str]:
    """Store the batch's events (one per message id), each with its own request's receipt time (``received_at`` for
    an envelope without one); the ids stored by this call.

    Ids already stored are found with one probe of the unique index, and the rest is a binary COPY:
    PostgreSQL spends about half the CPU of an ``insert … on conflict`` fed by ``jsonb_to_recordset`` (6.8
    against 11.9 µs per event, bench/RESULTS.md). A transaction that stored one of the ids meanwhile (a
    client's retry racing its first attempt in another process) makes the COPY fail on the unique key, which
    aborts the caller's transaction: :class:`MessageIdRace`, and the caller runs it again (the probe then sees
    the other transaction's ids, committed).
    """
    db = await driver_connection(session)
    stored = {r[0] for r in await db.fetch(_STORED, ws, [e.message_id for e in batch])}
    fresh = [e for e in batch if e.message_id not in stored]
    if not fresh:
        return set()
    try:
        await db.copy_records_to_table("events", schema_name="ingest", columns=_EVENT_COLUMNS, records=[
            (ws, e.message_id, e.type, e.event, e.profile_id, e.user_id, e.anonymous_id, _jsonb(e.properties),
             _jsonb(e.traits), _jsonb(e.context), e.timestamp, e.received_at or received_at, e.sent_at)
            for e in fresh])
    except asyncpg.UniqueViolationError as exc:
        raise MessageIdRace(str(exc)) from exc
    return {e.message_id for e in fresh}


def _jsonb(value: dict[str, Any]) -> str:
    return dumps(value) if value else "{}"  # (a track's traits, a server library's context: most often empty)


class MessageIdRace(Exception):
    """Another transaction stored one of this transaction's message ids after it looked: run it again."""


def context_traits(env: Envelope) -> dict[str, Any]:
    """Profile defaults taken from the device context (used only where the profile has none)."""
    out: dict[str, Any] = {}
    locale = env.context.get("locale")
    tz = env.context.get("timezone")
    if isinstance(locale, str) and locale:
        out["locale"] = locale
    if isinstance(tz, str) and tz and is_time_zone(tz):  # RudderStack's browser SDK sends "GMT+0100": no zone
        out["timezone"] = tz
    return out


async def record(session: AsyncSession, workspace_id: uuid.UUID, envelopes: list[Envelope],
                 received_at: datetime | None = None) -> RecordResult:
    """Store a batch of messages; the caller owns (and commits) the transaction. The envelopes may come from several
    requests (the committer's group): each is stored with its own ``received_at`` (``normalize`` sets it; the
    argument, else now, dates those built without one)."""
    result = RecordResult()
    unique: dict[str, Envelope] = {}
    for env in envelopes:
        if env.message_id in unique:
            result.duplicates += 1
        else:
            unique[env.message_id] = env
    batch = list(unique.values())
    # before anything is written: users being erased (or erased with suppression) are dropped, and the probe
    # orders this transaction against erasures of the workspace (privacy's module docstring)
    blocked = await privacy.suppressed(session, workspace_id, lambda: {k for e in batch for k in _identity_keys(e)})
    if blocked:
        kept = [e for e in batch if not blocked.intersection(_identity_keys(e))]
        result.suppressed = len(batch) - len(kept)
        result.suppressed_ids = {e.message_id for e in batch} - {e.message_id for e in kept}
        batch = kept
    if not batch:
        return result
    await resolve_profiles(session, workspace_id, batch)
    inserted_ids = await _insert_events(session, workspace_id, received_at or datetime.now(UTC), batch)
    result.inserted = [e for e in batch if e.message_id in inserted_ids]
    result.accepted = len(result.inserted)
    result.duplicates += len(batch) - result.accepted
    await _merge_traits(session, result.inserted)
    await groups.record_groups(session, workspace_id, [e for e in result.inserted if e.group_id],
                               [_ts_key(e.timestamp) for e in result.inserted if e.group_id])
    return result


def _identity_keys(env: Envelope) -> list[tuple[str, str]]:
    """The ids a message names, as erasures hash them. An alias's ``previousId`` counts both as a userId and
    an anonymousId, as ``resolve_profiles`` looks it up (and records it as both when it is new)."""
    keys = [("user_id", env.user_id), ("anonymous_id", env.anonymous_id), ("email", env.traits.get("email")),
            *alias_keys(env)]
    return [(k, v) for k, v in keys if isinstance(v, str) and v]


def _ts_key(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


async def _merge_traits(session: AsyncSession, inserted: list[Envelope]) -> None:
    """Identify traits, newest per trait wins (``null`` removes); context fills locale/timezone when unknown."""
    updates: dict[uuid.UUID, list[trait_merge.Update]] = {}
    defaults: dict[uuid.UUID, dict[str, Any]] = {}
    for env in sorted(inserted, key=lambda e: e.timestamp):
        assert env.profile_id is not None
        if env.type == "identify" and env.traits:
            updates.setdefault(env.profile_id, []).append((_ts_key(env.timestamp), env.traits))
        for key, value in context_traits(env).items():  # per trait, the earliest message that has it
            defaults.setdefault(env.profile_id, {}).setdefault(key, value)
    if not updates and not defaults:
        return
    pids = sorted(set(updates) | set(defaults))
    rows = await session.execute(
        text("select id, traits, trait_times from ingest.profiles where id = any(CAST(:ids AS uuid[])) "
             "and (id = any(CAST(:upd AS uuid[])) or not (traits ?& array['locale', 'timezone'])) "
             "order by id for update"),
        {"ids": pids, "upd": list(updates)},
    )
    changed: dict[uuid.UUID, tuple[dict[str, Any], dict[str, str]]] = {}
    for pid, current, times in rows:
        new, new_times = trait_merge.merge(current, times, updates.get(pid, []))
        fill = trait_merge.fill_defaults(new, new_times, defaults.get(pid, {}))
        new = {**fill, **new}
        if (new, new_times) != (current, times):
            changed[pid] = (new, new_times)
    if changed:
        await session.execute(
            text(
                """
                update ingest.profiles p set traits = u.t::jsonb, trait_times = u.tt::jsonb, updated_at = now()
                  from unnest(CAST(:pids AS uuid[]), CAST(:t AS text[]), CAST(:tt AS text[])) as u(pid, t, tt)
                 where p.id = u.pid
                """
            ),
            {"pids": list(changed), "t": [dumps(v[0]) for v in changed.values()],
             "tt": [dumps(v[1]) for v in changed.values()]},
        )
