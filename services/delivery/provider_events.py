"""What providers report about the messages they took — Twilio's status callbacks, SendGrid's Event
Webhook — applied to the outbox, including reports that arrive before the send is recorded.

A report only moves a message forward from ``sent`` (delivered, failed, bounced), so a late or repeated one
changes nothing. But a provider can deliver a message and report it before its answer to our send has
reached us, or while our outcome waits to be committed: the report then names a message that is not
``sent`` yet (Twilio's MessageSid is not even stored). Twilio does not retry a status callback we answer
with an error (by default it retries only a failed connection), so answering "try later" would lose it.
Such a report is kept in ``delivery.early_events`` and applied when the send is recorded.

Both sides commit first and look for the other afterwards — the webhook keeps the report, commits, then
tries to apply it; the recorder commits the send, then applies what is kept for it — so whichever commits
last sees the other's row. A kept report is deleted once applied, or once its message has moved on without
it; one whose message never shows up as sent (the provider's message id was never recorded: the worker died
and the message went out again under another id) is dropped after a day.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery import consent, sendgrid, sms
from shared import metrics
from shared.jsonutil import dumps

# (applied: the message moved; ignored: nothing to do, now or later; held: kept until the send is recorded)
APPLIED, IGNORED, HELD = "applied", "ignored", "held"
KEPT_FOR = "1 day"
TWILIO_STATUS = {"delivered": "delivered", "undelivered": "failed", "failed": "failed"}
NOT_YET_SENT = ("queued", "sending")


async def _hold(session: AsyncSession, ws: uuid.UUID, provider: str, ref: str, payload: dict[str, Any]) -> None:
    await session.execute(text(f"delete from delivery.early_events where received_at < now() - interval '{KEPT_FOR}'"))
    await session.execute(text(
        "insert into delivery.early_events (workspace_id, provider, ref, payload) "
        "values (:ws, :p, :ref, CAST(:payload AS jsonb))"),
        {"ws": ws, "p": provider, "ref": ref, "payload": dumps(payload)})


async def first_receipt(session: AsyncSession, ws: uuid.UUID, provider: str, key: str | None) -> bool:
    """False when this report was acted on before (``delivery.webhook_receipts``: providers deliver at least once,
    and a signed request can be replayed); True, and noted, the first time."""
    if not key:
        return True
    res = await session.execute(text(
        "insert into delivery.webhook_receipts (workspace_id, provider, event_key) values (:ws, :p, :k) "
        "on conflict do nothing"), {"ws": ws, "p": provider, "k": key[:200]})
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def twilio_status(session: AsyncSession, ws: uuid.UUID, sid: str, status: str, error_code: str = "", *,
                        hold: bool = True) -> str:
    """A Twilio status callback: ``delivered``, ``undelivered`` or ``failed`` of the SMS with this MessageSid
    (the others — queued, sending, sent — tell us nothing new). A failure with error 21610 (the recipient
    replied STOP) also suppresses the number, as the same error answering the send does: on the first report of
    it for this text only, and not when the number has texted START since the text was sent."""
    ours = TWILIO_STATUS.get(status)
    if ours is None or not sid:
        return IGNORED
    row = (await session.execute(text(
        "select id, status, metadata, to_address, coalesce(sent_at, created_at) as sent_at from delivery.messages "
        "where workspace_id = :ws and channel = 'sms' and provider_message_id = :sid for update"),
        {"ws": ws, "sid": sid})).mappings().first()
    if row is None:  # no send recorded with this sid (yet)
        if hold:
            await _hold(session, ws, "twilio", sid, {"status": status, "error_code": error_code})
        return HELD
    if ours == "failed" and error_code.strip() == str(sms.UNSUBSCRIBED_RECIPIENT) and await first_receipt(
            session, ws, "twilio_status", f"{sid}:failed:{sms.UNSUBSCRIBED_RECIPIENT}") and not (
            await consent.opted_in_since(session, ws, "sms", row["to_address"], row["sent_at"], "sms_keyword")):
        # the recipient replied STOP (to a Messaging Service sender Twilio says so only here): mirrored as the
        # send's own 21610 is, whatever the order the callbacks came in — once per text (a repeated or replayed
        # callback must not undo a START texted since), and not when the number texted START after this text went
        # out (the refusal is older than the START, which Twilio honours too)
        await consent.suppress(session, ws, "sms", row["to_address"], "unsubscribed", "twilio",
                               consent.identity_of(dict(row)))
    if row["status"] != "sent":  # already final (a repeat, or out of order): never moves back
        return IGNORED
    await session.execute(text(
        "update delivery.messages set status = :s, updated_at = now(), "
        "last_error = case when :s = 'failed' then :err else last_error end where id = :id"),
        {"s": ours, "err": f"Twilio {status} ({error_code})", "id": row["id"]})
    metrics.MESSAGES.labels("sms", ours).inc()
    await consent.queue_event(session, ws, consent.identity_of(dict(row)),
                              "SMS Delivered" if ours == "delivered" else "SMS Failed",
                              {"message_id": str(row["id"]), "status": status, **consent.journey_of(dict(row))})
    return APPLIED


# SendGrid drops mail to an address on its own lists and says which (its "reason")
DROPPED_BECAUSE = {"Bounced Address": "hard_bounce", "Spam Reporting Address": "complaint",
                   "Unsubscribed Address": "unsubscribed"}
SENDGRID_FIELDS = ("event", "type", "reason", "email", "tenure_message_id", "sg_event_id", "timestamp")  # what is
# read of an event (and kept)
SENDGRID_APPLIED = ("delivered", "bounce", "dropped", "spamreport", "unsubscribe")  # the kinds we act on
# an event's id is kept as long as a signature of its batch is accepted: a replay within that window is ignored
SEEN_FOR_S = sendgrid.MAX_EVENT_AGE_S + sendgrid.MAX_CLOCK_SKEW_S
_REPORTED = "tenure_reported"  # (in a kept event: its report to ingest went out when it arrived)


def _event_id(e: dict[str, Any]) -> str | None:
    value = e.get("sg_event_id")
    return str(value)[:200] if value not in (None, "") and e.get("event") in SENDGRID_APPLIED else None


async def new_sendgrid_events(session: AsyncSession, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of a batch not applied before, by their ``sg_event_id`` (kept ``SEEN_FOR_S``, as long as a
    signature of the batch is accepted): a batch posted again within its signature window — a captured request
    replayed, a duplicate delivery — changes nothing. (SendGrid's own retries may carry new ids: an unsubscribe is
    also checked against later resubscriptions, see ``sendgrid_event``.) One statement for the batch."""
    await session.execute(text("delete from delivery.sendgrid_event_ids "
                               "where received_at < now() - make_interval(secs => :s)"), {"s": SEEN_FOR_S})
    ids = sorted({i for e in events if (i := _event_id(e))})
    fresh = set((await session.execute(text(
        "insert into delivery.sendgrid_event_ids (sg_event_id) select unnest(CAST(:ids AS text[])) "
        "on conflict do nothing returning sg_event_id"), {"ids": ids})).scalars()) if ids else set()
    new = []
    for e in events:
        i = _event_id(e)
        if i is None or i in fresh:
            fresh.discard(i)  # (the same id twice in one batch: the first)
            new.append(e)
    return new


async def _resubscribed_after(session: AsyncSession, ws: uuid.UUID, address: str, e: dict[str, Any]) -> bool:
    """The address opted back in after this event happened (its ``timestamp``, whole seconds: a resubscription
    within the same second does not count, so a doubt unsubscribes)."""
    try:
        happened = datetime.fromtimestamp(int(e["timestamp"]) + 1, UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return False  # (SendGrid always says when; without it, the unsubscribe stands)
    return await consent.opted_in_since(session, ws, "email", address, happened)


def _moves_status(e: dict[str, Any]) -> bool:
    kind = e.get("event")
    return kind in ("delivered", "dropped") or kind == "bounce" and e.get("type", "bounce") == "bounce"


async def sendgrid_event(session: AsyncSession, e: dict[str, Any], *, hold: bool = True) -> str:
    """One event of SendGrid's Event Webhook, found by the ``tenure_message_id`` we gave it in custom_args.

    SendGrid is configured once per deployment, so its one Event Webhook reports every workspace's mail: the
    event's workspace is its message's (message ids are UUIDs, unique across workspaces, and the batch's
    signature proves SendGrid sent it), never the one a webhook URL names.

    ``delivered`` moves a sent message to delivered; a ``bounce`` (type bounce) or ``dropped`` to bounced,
    and suppresses the address (a drop only when SendGrid names one of its own lists); ``spamreport``
    suppresses (complaint), ``unsubscribe`` (SendGrid's own link) unsubscribes — unless the address resubscribed
    after the event happened (a retry or replay of an old unsubscribe must not undo that; nor a drop of an
    "Unsubscribed Address"). A suppression is applied at once; a status change of a message whose send is not
    recorded yet waits for it (kept)."""
    kind, address = e.get("event"), str(e.get("email") or "")
    try:
        message_id = uuid.UUID(str(e.get("tenure_message_id")))
    except ValueError:
        return IGNORED  # not one of ours
    row = (await session.execute(text(
        "select id, workspace_id, status, metadata, to_address from delivery.messages where id = :id and channel = "
        "'email' for update"), {"id": message_id})).mappings().first()
    if row is None:
        return IGNORED  # erased, or not one of ours (another deployment sharing the SendGrid account)
    message = dict(row)
    ws = message["workspace_id"]
    who = consent.identity_of(message)
    address = address or message["to_address"]
    early = _moves_status(e) and message["status"] in NOT_YET_SENT
    changed = False  # SendGrid retries (and replays) must not report the same event twice
    if kind == "delivered" and message["status"] == "sent":
        await session.execute(text("update delivery.messages set status = 'delivered', updated_at = now() "
                                   "where id = :id"), {"id": message_id})
        metrics.MESSAGES.labels("email", "delivered").inc()
        changed = True
    elif kind in ("bounce", "dropped") and _moves_status(e):
        res = await session.execute(text(
            "update delivery.messages set status = 'bounced', last_error = :why, updated_at = now() "
            "where id = :id and status in ('sent', 'delivered')"),
            {"id": message_id, "why": f"SendGrid {kind}: {e.get('reason', '')}"[:500]})
        changed = bool(res.rowcount)  # type: ignore[attr-defined]
        if changed:
            metrics.MESSAGES.labels("email", "bounced").inc()
        # a bounce suppresses; so does a drop for an address on one of SendGrid's own suppression lists
        mirrored = "hard_bounce" if kind == "bounce" else DROPPED_BECAUSE.get(str(e.get("reason")))
        if mirrored and not (mirrored == "unsubscribed" and await _resubscribed_after(session, ws, address, e)):
            changed |= await consent.suppress(session, ws, "email", address, mirrored, "sendgrid", who)
    elif kind == "spamreport":
        changed = await consent.suppress(session, ws, "email", address, "complaint", "sendgrid", who)
    elif kind == "unsubscribe":  # SendGrid's own unsubscribe link (subscription tracking); logged as Unsubscribed
        # (not when the person resubscribed after it: a retried or replayed event must not undo that)
        if not await _resubscribed_after(session, ws, address, e):
            await consent.suppress(session, ws, "email", address, "unsubscribed", "sendgrid", who)
    if changed and not e.get(_REPORTED):
        await consent.queue_event(session, ws, who, {
            "delivered": "Email Delivered", "bounce": "Email Bounced", "dropped": "Email Bounced",
            "spamreport": "Email Marked as Spam"}[str(kind)],
            {"message_id": str(message_id), "provider": "sendgrid", **consent.journey_of(message)})
    if not early:
        return APPLIED if changed else IGNORED
    if hold:
        kept = {k: e[k] for k in SENDGRID_FIELDS if k in e}
        await _hold(session, ws, "sendgrid", str(message_id), {**kept, _REPORTED: bool(changed or e.get(_REPORTED))})
    return HELD


async def apply_held(session: AsyncSession, refs: list[str]) -> int:
    """Apply the kept reports on these messages (Twilio MessageSids, our message ids for SendGrid) whose send
    is now recorded; the others stay kept. Returns how many were applied or found obsolete (deleted)."""
    if not refs:
        return 0
    rows = (await session.execute(text(
        "select id, workspace_id, provider, ref, payload from delivery.early_events "
        "where ref = any(CAST(:refs AS text[])) order by id for update"), {"refs": sorted(set(refs))})).mappings().all()
    done = []
    for r in rows:
        p = r["payload"]
        if r["provider"] == "twilio":
            outcome = await twilio_status(session, r["workspace_id"], r["ref"], str(p.get("status", "")),
                                          str(p.get("error_code", "")), hold=False)
        else:
            outcome = await sendgrid_event(session, p, hold=False)
        if outcome != HELD:
            done.append(r["id"])
    if done:
        await session.execute(text("delete from delivery.early_events where id = any(CAST(:ids AS bigint[]))"),
                              {"ids": done})
    return len(done)


def refs_of_sent(outcomes: list[Any], updated: set[Any]) -> list[str]:
    """What the kept reports would name the messages these recorded outcomes sent by: the MessageSid of an
    SMS, our id of an email SendGrid took."""
    refs = []
    for o in outcomes:
        if o.outcome != "sent" or o.message["id"] not in updated:
            continue
        if o.message.get("channel") == "sms" and o.provider_message_id:
            refs.append(str(o.provider_message_id))
        elif o.message.get("channel", "email") == "email" and o.provider == "sendgrid":
            refs.append(str(o.message["id"]))
    return refs
