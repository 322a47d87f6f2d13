"""Erasure and export of what delivery holds about a person, found by their profile ids and by their own ids
(userId, anonymousId, email, phone), which ingest passes with every request:

- their messages: those sent for the profile (``metadata.profile_id``, which campaign fills in), those
  sent through the API under the user's ids (``metadata.userId`` / ``anonymousId``: a double opt-in's
  confirmation, a receipt), those sent to their own email address (in any case: delivery keeps an address's
  local part as given, and ``Mia@…`` is ``mia@…``) or phone number (a receipt sent by address alone), and the
  pushes to their userId or anonymousId, with every attempt and provider report kept for them (``early_events``);
- the opens and clicks of those messages (``engagements``: time, URL, user agent);
- the events about them for ingest (``feedback``), forwarded or still pending: those of the messages and
  those naming the user's ids. A pending one sent after the erasure would recreate a profile in ingest;
- the devices (push tokens, Web Push subscriptions) registered under the user's ids;
- the consent records of their addresses (the messages' recipients, and the email or phone among their
  ids): double opt-in requests and SMS opt-ins (``opt_ins``: the consent marketing needs, so nothing is sent
  on it after the erasure) and topics they chose to receive (``subscriptions``).

Kept, deliberately, because they are what proves and honours an opt-out (GDPR art. 17(3)(b) and (e), art.
21(3)): suppressions, the consent log, and topics the address opted out of (``subscriptions`` rows with
``subscribed = false``, a suppression for one topic). They hold an address, not a profile; deleting them
would let the address be mailed again if it came back (imported, signed up on another profile). The consent
log's opt-in entries stay with it: they are the evidence that texts already sent had consent (a TCPA claim,
art. 17(3)(e)); the opt-in itself (``opt_ins``) goes, so nothing more is sent on it. Also kept:
``webhook_receipts``, which hold only a provider's id of an inbound STOP / START text or of a text Twilio
refused with 21610 (no number, no content), cannot be tied to a person here, and stop a retried STOP or 21610
from being applied twice; and ``sendgrid_event_ids`` (SendGrid's event ids alone, for 25 hours).

The export lists all of the above, what is kept included (the opt-out records of the person's addresses),
except two transient copies: the feedback rows (copies of the engagements and consent entries exported,
on their way to ingest) and a provider's report kept until its send is recorded (up to a day).

Erasure runs in the caller's transaction and is idempotent: a retry finds nothing more to delete.
"""

import uuid
from typing import Any

from email_validator import EmailNotValidError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery.schemas import e164, normalized_email
from shared.errors import Conflict

_ADDRESSED = ("email", "sms")  # channels whose recipient is an address (consent is kept per address)
_MINE = ("workspace_id = :ws and ((metadata->>'profile_id') = any(CAST(:p AS text[])) "
         "or (metadata->>'userId') = any(CAST(:ids AS text[])) "
         "or (metadata->>'anonymousId') = any(CAST(:ids AS text[])) "
         # sent to the person's own address, for them or not (a receipt sent by address alone); an email in any
         # case. (No index serves this: the metadata tests above read the workspace's messages anyway.)
         "or (channel = 'email' and lower(to_address) = any(CAST(:to AS text[]))) "
         "or (channel = 'sms' and to_address = any(CAST(:to AS text[]))) "
         # a push's recipient is a userId or anonymousId (a webhook's is a URL, never the person's id)
         "or (channel = 'push' and to_address = any(CAST(:ids AS text[]))))")
_AT_ADDRESS = "workspace_id = :ws and address = any(CAST(:a AS text[]))"


def _as_addresses(identity: str) -> set[str]:
    """The forms an id that is an email or a phone number takes as a message's recipient: an email lower-cased
    (compared with the recipient lower-cased: email_validator's form, which delivery stores, keeps the local
    part's case), as given and in that form; a phone number as given and in E.164."""
    if "@" in identity:
        try:
            return {identity.lower(), normalized_email(identity).lower()}
        except EmailNotValidError:
            return {identity.lower()}
    try:
        return {identity, e164(identity)}
    except ValueError:  # not a phone number (a userId)
        return {identity}


def _params(ws: uuid.UUID, pids: list[uuid.UUID], identities: list[str]) -> dict[str, Any]:
    ids = sorted(set(identities))
    return {"ws": ws, "p": [str(p) for p in pids], "ids": ids,
            "to": sorted(set().union(*(_as_addresses(i) for i in ids)) if ids else set())}


def _addresses(recipients: list[tuple[str, str]], params: dict[str, Any]) -> list[str]:
    """The person's addresses: their messages' recipients ((channel, address) pairs) and their ids (an
    email, a phone, in the forms messages are addressed by), as consent records store them (lower case)."""
    return sorted({to.lower() for channel, to in recipients if channel in _ADDRESSED}
                  | {i.lower() for i in params["to"]})


class InFlight(Conflict):
    """An erasure that must wait: a message of the person's is with a sender."""


def _count(result: Any) -> int:
    return int(result.rowcount)


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], identities: list[str] | None = None
                ) -> dict[str, int]:
    """Delete what is held about the person; rows removed per kind. Raises :class:`InFlight` (nothing deleted) while
    a message of theirs is with a sender: the erasure is asked again, and is complete only once that message went
    out or failed (deleted under the sender, it could still reach them after "completed")."""
    params = _params(ws, pids, identities or [])
    # locked first: a sender's claim skips them and its check just before the provider call waits, then finds the
    # message gone (not sent)
    sending = (await session.execute(text(
        f"select count(*) filter (where status = 'sending' and claimed_until > now()) from ("
        f"select status, claimed_until from delivery.messages where {_MINE} for update) m"), params)).scalar_one()
    if sending:
        raise InFlight(f"{sending} message(s) to this person are being sent right now; ask again once they are "
                       "out (within the delivery lease)")
    # messages first: a worker recording an attempt, or a click or consent change arriving meanwhile (they lock
    # the message), then sees the message gone and writes nothing, or committed before, and what it wrote goes
    # with the ids deleted here (each statement below sees what committed before it)
    rows = (await session.execute(text(
        f"delete from delivery.messages where {_MINE} returning id, channel, to_address, provider_message_id, "
        "metadata->>'userId' as user_id, metadata->>'anonymousId' as anonymous_id"), params)).all()
    mids = [r.id for r in rows]
    by_message = {"ws": ws, "m": mids}
    removed = {"messages": len(rows)}
    removed["attempts"] = _count(await session.execute(text(
        "delete from delivery.attempts where message_id = any(CAST(:m AS uuid[]))"), by_message))
    # provider reports kept for them (provider_events): by our id (SendGrid) or the provider's (Twilio)
    removed["early_events"] = _count(await session.execute(text(
        "delete from delivery.early_events where workspace_id = :ws and ref = any(CAST(:refs AS text[]))"),
        {"ws": ws, "refs": [str(r.id) for r in rows] + [r.provider_message_id for r in rows if r.provider_message_id]}))
    removed["engagements"] = _count(await session.execute(text(
        "delete from delivery.engagements where workspace_id = :ws and message_id = any(CAST(:m AS uuid[]))"),
        by_message))
    # events for ingest, forwarded or not: about these messages, or naming the user (also as the messages did)
    who = sorted(set(params["ids"]) | {i for r in rows for i in (r.user_id, r.anonymous_id) if i})
    removed["feedback"] = _count(await session.execute(text(
        "delete from delivery.feedback where workspace_id = :ws and ((payload->>'userId') = any(CAST(:who AS text[])) "
        "or (payload->>'anonymousId') = any(CAST(:who AS text[])) "
        "or (payload->'properties'->>'message_id') = any(CAST(:m AS text[])))"),
        {"ws": ws, "who": who, "m": [str(m) for m in mids]}))
    at_address = {"ws": ws, "a": _addresses([(r.channel, r.to_address) for r in rows], params)}
    removed["opt_ins"] = _count(await session.execute(text(
        f"delete from delivery.opt_ins where {_AT_ADDRESS}"), at_address))
    # topics chosen; those opted out of stay (with suppressions and the consent log): see the module docstring
    removed["subscriptions"] = _count(await session.execute(text(
        f"delete from delivery.subscriptions where {_AT_ADDRESS} and subscribed"), at_address))
    removed["devices"] = _count(await session.execute(text(
        "delete from delivery.devices where workspace_id = :ws and user_ref = any(CAST(:ids AS text[]))"), params))
    return removed


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], identities: list[str] | None = None
                 ) -> dict[str, Any]:
    """Everything held about the person (what erasure deletes, and what it keeps about their addresses)."""
    params = _params(ws, pids, identities or [])

    async def rows(sql: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in (await session.execute(text(sql), args)).mappings()]

    messages = (await session.execute(text(
        f"select id, channel, to_address, subject, html, text, message_type, topic, status, attempts, last_error, "
        f"metadata, created_at, sent_at from delivery.messages where {_MINE} order by created_at, id"),
        params)).mappings().all()
    by_message = {"ws": ws, "m": [m["id"] for m in messages]}
    at_address = {"ws": ws, "a": _addresses([(m["channel"], m["to_address"]) for m in messages], params)}
    return {
        "messages": [dict(m) for m in messages],
        "attempts": await rows(
            "select message_id, attempt, outcome, error, started_at, finished_at from delivery.attempts "
            "where message_id = any(CAST(:m AS uuid[])) order by started_at, id", by_message),
        "engagements": await rows(
            "select message_id, kind, url, user_agent, bot, at from delivery.engagements "
            "where workspace_id = :ws and message_id = any(CAST(:m AS uuid[])) order by at, id", by_message),
        "subscriptions": await rows(
            f"select address, topic, subscribed, updated_at from delivery.subscriptions where {_AT_ADDRESS} "
            "order by address, topic", at_address),
        "opt_ins": await rows(
            f"select address, topics, requested_at, confirmed_at from delivery.opt_ins where {_AT_ADDRESS} "
            "order by address", at_address),
        "suppressions": await rows(
            f"select channel, address, reason, source, created_at from delivery.suppressions where {_AT_ADDRESS} "
            "order by channel, address", at_address),
        "consent_log": await rows(
            f"select address, channel, topic, action, source, evidence, at from delivery.consent_log "
            f"where {_AT_ADDRESS} order by at, id", at_address),
        "devices": await rows(
            "select user_ref as user, platform, token, created_at, last_used_at from delivery.devices "
            "where workspace_id = :ws and user_ref = any(CAST(:ids AS text[])) order by created_at", params),
    }

