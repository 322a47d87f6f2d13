"""Consent: suppressions per channel, subscription topics, and the audit log of every change.

A marketing message to a suppressed address (unsubscribed, bounced, complained, added by hand), or on a
topic the address opted out of, is stored as ``suppressed`` and never sent. Hard bounces and complaints
stop transactional mail too; an email unsubscribe does not (receipts and password resets still arrive). Any
suppression of a phone number stops every text to it: a STOP reply opts the number out of all messages from
the sender, as carriers and Twilio treat it (error 21610 refuses them) until START.
Every change is logged (time, source) and queued as an event for ingest (``feedback``).
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.core import workspace_settings
from shared.db import fetch_page
from shared.errors import InvalidCursor, ValidationFailed, body_error
from shared.jsonutil import dumps
from shared.workspace_config import topics_of, unknown_topic

ALWAYS_BLOCKING = ("hard_bounce", "complaint")


async def topic_problems(session: AsyncSession, ws: uuid.UUID, topics: list[str | None]) -> list[str | None]:
    """Per topic named, why it is none of the workspace's topics (None: it is one, or none is named): the settings
    are read once, and not at all when no topic is named (transactional mail mostly names none)."""
    if all(t is None for t in topics):
        return [None] * len(topics)
    settings = await workspace_settings(session, ws)
    return [None if t is None else unknown_topic(settings, t) for t in topics]


Intent = tuple[uuid.UUID, str, str, str, str | None]  # (workspace, channel, address, message type, topic)


async def blocked(session: AsyncSession, ws: uuid.UUID, channel: str, address: str, message_type: str,
                  topic: str | None) -> str | None:
    """Why this message must not be sent (None: it may)."""
    return (await blocked_many(session, [(ws, channel, address, message_type, topic)]))[0]


async def blocked_many(session: AsyncSession, intents: list[Intent]) -> list[str | None]:
    """``blocked`` for many messages in one query (a claimed batch), in order."""
    if not intents:
        return []
    rows = (await session.execute(text(
        """
        select s.reason as suppression, u.ch = 'email' as is_email,
               case when u.ch = 'email' then coalesce((w.settings->>'double_opt_in')::boolean, false)
                    else coalesce((w.settings->>'sms_opt_in_required')::boolean, true) end as opt_in_required,
               exists (select 1 from delivery.opt_ins o where o.workspace_id = u.ws and o.address = u.addr
                          and o.confirmed_at is not null) as confirmed,
               exists (select 1 from delivery.subscriptions t where t.workspace_id = u.ws and t.address = u.addr
                          and t.topic = u.topic and not t.subscribed) as topic_off
          from unnest(CAST(:ws AS uuid[]), CAST(:ch AS text[]), CAST(:addr AS text[]), CAST(:topic AS text[]))
               with ordinality as u(ws, ch, addr, topic, n)
          left join delivery.suppressions s on s.workspace_id = u.ws and s.channel = u.ch and s.address = u.addr
          left join core.workspaces w on w.id = u.ws
         order by u.n
        """),
        {"ws": [i[0] for i in intents], "ch": [i[1] for i in intents], "addr": [i[2].lower() for i in intents],
         "topic": [i[4] for i in intents]})).all()
    return [_reason(row, intent[1], intent[3], intent[4]) for row, intent in zip(rows, intents, strict=True)]


async def postal_addresses(session: AsyncSession, workspaces: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The ``postal_address`` setting of each workspace that has one (the footer of its marketing email)."""
    if not workspaces:
        return {}
    rows = await session.execute(text(
        "select id, settings->>'postal_address' from core.workspaces where id = any(CAST(:ids AS uuid[])) "
        "and jsonb_typeof(settings->'postal_address') = 'string'"), {"ids": list(workspaces)})
    return {r[0]: r[1] for r in rows}


def _reason(row: Any, channel: str, message_type: str, topic: str | None) -> str | None:
    marketing = message_type == "marketing"
    if row.suppression and (row.suppression in ALWAYS_BLOCKING or marketing or channel == "sms"):
        return f"suppressed: {row.suppression}"
    if marketing and row.is_email and row.opt_in_required and not row.confirmed:  # double opt-in
        return "not confirmed (double opt-in)"
    if marketing and channel == "sms" and row.opt_in_required and not row.confirmed:  # TCPA: prior express consent
        return "no SMS opt-in on record (marketing texts need the recipient's consent: POST /v1/sms-opt-ins)"
    if topic and marketing and row.topic_off:
        return f"unsubscribed from topic {topic}"
    return None


async def request_opt_in(session: AsyncSession, ws: uuid.UUID, address: str, topics: list[str]) -> dict[str, Any]:
    """Record (or renew) an address's request to subscribe to ``topics``, each one of the workspace's (else a 422
    naming it: confirming it would subscribe to nothing anyone can see or change)."""
    if errors := [body_error(["topics", i], p) for i, p in enumerate(await topic_problems(session, ws, list(topics)))
                  if p]:
        raise ValidationFailed(f"Unknown topic: {errors[0]['msg']}", errors=errors)
    row = (await session.execute(text(
        "insert into delivery.opt_ins (workspace_id, address, topics) values (:ws, :a, CAST(:t AS jsonb)) "
        "on conflict (workspace_id, address) do update set topics = excluded.topics, requested_at = now() "
        "returning address, topics, confirmed_at, requested_at"),
        {"ws": ws, "a": address.lower(), "t": dumps(sorted(set(topics)))})).mappings().one()
    return dict(row)


async def confirm_opt_in(session: AsyncSession, ws: uuid.UUID, address: str, identity: dict[str, Any] | None
                         ) -> bool:
    """The address clicked its confirmation link: marketing may go to it, on the topics it chose (an
    earlier unsubscribe is lifted: this is a fresh, explicit yes)."""
    row = (await session.execute(text(
        "update delivery.opt_ins set confirmed_at = now() "
        "where workspace_id = :ws and address = :a and confirmed_at is null returning topics"),
        {"ws": ws, "a": address.lower()})).first()
    if row is None:  # unknown, or confirmed before (a second click changes nothing)
        return (await session.execute(text(
            "select 1 from delivery.opt_ins where workspace_id = :ws and address = :a"),
            {"ws": ws, "a": address.lower()})).first() is not None
    await unsuppress(session, ws, "email", address, "double_opt_in", identity, only_unsubscribed=True)
    if row.topics:
        await set_topics(session, ws, address, dict.fromkeys(row.topics, True), "double_opt_in", identity)
    await _log(session, ws, address, "email", "confirmed", "double_opt_in", identity=identity)
    return True


async def record_sms_opt_in(session: AsyncSession, ws: uuid.UUID, number: str, source: str,
                            evidence: dict[str, Any] | None, identity: dict[str, Any] | None) -> dict[str, Any]:
    """A number's consent to marketing texts, kept with its evidence (the consent log's row); an ``Opted In``
    event for the person. Recording it again keeps the first time and logs the new evidence."""
    row = (await session.execute(text(
        "insert into delivery.opt_ins (workspace_id, address, topics, confirmed_at) values (:ws, :a, '[]', now()) "
        "on conflict (workspace_id, address) do update set confirmed_at = coalesce(delivery.opt_ins.confirmed_at, "
        "now()) returning address as phone, confirmed_at"), {"ws": ws, "a": number})).mappings().one()
    await _log(session, ws, number, "sms", "opted_in", source, identity=identity, evidence=evidence)
    return dict(row)


async def _log(session: AsyncSession, ws: uuid.UUID, address: str, channel: str, action: str, source: str,
               topic: str | None = None, identity: dict[str, Any] | None = None,
               evidence: dict[str, Any] | None = None, via: dict[str, Any] | None = None) -> None:
    await session.execute(text(
        "insert into delivery.consent_log (workspace_id, address, channel, topic, action, source, evidence) "
        "values (:ws, :a, :ch, :t, :action, :src, CAST(:ev AS jsonb))"),
        {"ws": ws, "a": address.lower(), "ch": channel, "t": topic, "action": action, "src": source,
         "ev": dumps(evidence) if evidence is not None else None})
    event = {"unsubscribed": "Unsubscribed", "resubscribed": "Resubscribed", "confirmed": "Opted In",
             "opted_in": "Opted In"}.get(action, "Subscription Changed")
    await queue_event(session, ws, identity, event, {"channel": channel, "address": address.lower(), "topic": topic,
                                                     "action": action, "source": source, **(via or {})})


async def texted_identity(session: AsyncSession, ws: uuid.UUID, number: str) -> dict[str, Any] | None:
    """Who the last text to ``number`` was for (its metadata's userId / anonymousId): whose STOP or START a
    reply from that number is. None when nothing was sent to it."""
    meta = (await session.execute(text(
        "select metadata from delivery.messages where workspace_id = :ws and to_address = :n and channel = 'sms' "
        "order by created_at desc limit 1"), {"ws": ws, "n": number})).scalar()
    return identity_of({"metadata": meta}) if meta else None


async def opted_in_since(session: AsyncSession, ws: uuid.UUID, channel: str, address: str, since: datetime,
                         source: str | None = None) -> bool:
    """Whether the address opted back in after ``since`` (lifted an unsubscribe, confirmed a double opt-in, texted
    START; only through ``source`` when given): a provider's report of an opt-out older than that (SendGrid's
    ``unsubscribe`` replayed, Twilio's 21610 about an earlier text) must not suppress it again."""
    return bool((await session.execute(text(
        "select exists (select 1 from delivery.consent_log where workspace_id = :ws and address = :a "
        "and channel = :ch and action in ('resubscribed', 'confirmed', 'opted_in') "
        "and (CAST(:src AS text) is null or source = :src) and at > :since)"),
        {"ws": ws, "a": address.lower(), "ch": channel, "src": source, "since": since})).scalar_one())


def identity_of(message: dict[str, Any]) -> dict[str, Any]:
    """Who a message was for, as ingest knows them (``metadata.userId`` / ``metadata.anonymousId``)."""
    meta = message.get("metadata") or {}
    return {k: meta.get(k) for k in ("userId", "anonymousId")}


def via_message(message: dict[str, Any]) -> dict[str, Any]:
    """What a consent change made through a message's link (unsubscribe, preference page) names of that message: its
    id and the campaign step that sent it, so the campaign counts the unsubscribes it caused."""
    return {"message_id": str(message["id"]), **journey_of(message)}


def journey_of(message: dict[str, Any]) -> dict[str, Any]:
    """What a message's events name of the campaign that sent it (its metadata): campaign, journey, step and
    variant, so campaign counts them in that step's funnel."""
    meta = message.get("metadata") or {}
    return {k: meta[k] for k in ("campaign_id", "journey_id", "step", "variant") if meta.get(k) is not None}


async def queue_event(session: AsyncSession, ws: uuid.UUID, identity: dict[str, Any] | None, event: str,
                      properties: dict[str, Any]) -> None:
    """An event for ingest, about the profile the message was for (skipped when that is unknown)."""
    identity = identity or {}
    ids = {k: identity[k] for k in ("userId", "anonymousId") if identity.get(k)}
    if not ids:
        return
    fid = uuid.uuid4()
    # the library names these as Tenure's: segment counts them as events but not as the person's activity
    payload = {"type": "track", "event": event, "messageId": f"delivery-{fid}", "properties": properties,
               "context": {"library": {"name": "tenure-delivery"}}, **ids}
    await session.execute(text("insert into delivery.feedback (id, workspace_id, payload) "
                               "values (:id, :ws, CAST(:p AS jsonb))"), {"id": fid, "ws": ws, "p": dumps(payload)})


async def suppress(session: AsyncSession, ws: uuid.UUID, channel: str, address: str, reason: str, source: str,
                   identity: dict[str, Any] | None = None, via: dict[str, Any] | None = None) -> bool:
    # a hard bounce or complaint outranks an earlier unsubscribe or manual entry (it also stops transactional
    # mail and cannot be lifted from the preference page)
    res = await session.execute(text(
        "insert into delivery.suppressions as s (workspace_id, channel, address, reason, source) "
        "values (:ws, :ch, :a, :r, :src) on conflict (workspace_id, channel, address) do update "
        "set reason = excluded.reason, source = excluded.source, created_at = now() "
        "where excluded.reason in ('hard_bounce', 'complaint') and s.reason not in ('hard_bounce', 'complaint')"),
        {"ws": ws, "ch": channel, "a": address.lower(), "r": reason, "src": source})
    if res.rowcount:  # type: ignore[attr-defined]
        await _log(session, ws, address, channel, "unsubscribed" if reason == "unsubscribed" else "suppressed",
                   source, identity=identity, via=via)
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def unsuppress(session: AsyncSession, ws: uuid.UUID, channel: str, address: str, source: str,
                     identity: dict[str, Any] | None = None, *, only_unsubscribed: bool = False,
                     via: dict[str, Any] | None = None) -> bool:
    """Lift a suppression (never a hard bounce or complaint; with ``only_unsubscribed``, as a recipient
    may, only one they made themselves)."""
    res = await session.execute(text(
        "delete from delivery.suppressions where workspace_id = :ws and channel = :ch and address = :a "
        "and reason not in ('hard_bounce', 'complaint') and (not :own or reason = 'unsubscribed')"),
        {"ws": ws, "ch": channel, "a": address.lower(), "own": only_unsubscribed})
    if res.rowcount:  # type: ignore[attr-defined]
        await _log(session, ws, address, channel, "resubscribed", source, identity=identity, via=via)
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def preferences(session: AsyncSession, ws: uuid.UUID, address: str, settings: dict[str, Any] | None
                      ) -> dict[str, Any]:
    chosen = dict((await session.execute(text(
        "select topic, subscribed from delivery.subscriptions where workspace_id = :ws and address = :a"),
        {"ws": ws, "a": address.lower()})).all())
    suppressed = (await session.execute(text(
        "select reason from delivery.suppressions where workspace_id = :ws and channel = 'email' and address = :a"),
        {"ws": ws, "a": address.lower()})).scalar()
    return {"address": address.lower(), "unsubscribed": suppressed is not None, "suppression": suppressed,
            "topics": [{**t, "subscribed": chosen.get(t["id"], True)} for t in topics_of(settings)]}


async def set_topics(session: AsyncSession, ws: uuid.UUID, address: str, choices: dict[str, bool], source: str,
                     identity: dict[str, Any] | None = None, via: dict[str, Any] | None = None) -> int:
    current = dict((await session.execute(text(
        "select topic, subscribed from delivery.subscriptions where workspace_id = :ws and address = :a "
        "for update"), {"ws": ws, "a": address.lower()})).all())
    changed = 0
    for topic, on in sorted(choices.items()):
        if current.get(topic, True) == on:  # no row means subscribed
            continue
        res = await session.execute(text(
            "insert into delivery.subscriptions (workspace_id, address, topic, subscribed) values (:ws, :a, :t, :on) "
            "on conflict (workspace_id, address, topic) do update set subscribed = excluded.subscribed, "
            "updated_at = now() where delivery.subscriptions.subscribed <> excluded.subscribed"),
            {"ws": ws, "a": address.lower(), "t": topic, "on": on})
        if res.rowcount:  # type: ignore[attr-defined]
            changed += 1
            await _log(session, ws, address, "email", "topic_on" if on else "topic_off", source, topic, identity,
                       via=via)
    return changed


async def suppression(session: AsyncSession, ws: uuid.UUID, channel: str, address: str) -> dict[str, Any]:
    row = (await session.execute(text(
        "select channel, address, reason, source, created_at from delivery.suppressions "
        "where workspace_id = :ws and channel = :ch and address = :a"),
        {"ws": ws, "ch": channel, "a": address.lower()})).mappings().one()
    return dict(row)


async def list_suppressions(session: AsyncSession, ws: uuid.UUID, channel: str | None, after: str | None,
                            limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """In address order, then channel: one address can be suppressed on several channels (a number on sms and
    push), so the cursor is ``channel:address``, the page's last row, not the address alone."""
    after_channel, after_address = None, None
    if after:
        after_channel, _, after_address = after.partition(":")
        if not (after_channel.isascii() and after_channel.isalpha() and after_address):
            raise InvalidCursor()
    items, more = await fetch_page(
        session,
        "select channel, address, reason, source, created_at from delivery.suppressions where workspace_id = :ws "
        "and (CAST(:ch AS text) is null or channel = :ch) "
        "and (CAST(:after AS text) is null or (address, channel) > (:after, :after_ch)) "
        "order by address, channel limit :lim",
        {"ws": ws, "ch": channel, "after": after_address, "after_ch": after_channel}, limit, key="address",
    )
    return items, f"{items[-1]['channel']}:{items[-1]['address']}" if more else None