"""The send loop: claim due messages, hand each to its channel's provider, record the outcome."""

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.delivery import (
    consent,
    devices,
    failover,
    links,
    mailer,
    outbox,
    push,
    sendgrid,
    sms,
    webhook_channel,
)
from shared import ratelimit
from shared.db import pinned
from shared.settings import Settings

log = structlog.get_logger()


async def _send_sms(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient,
                    message: dict[str, Any]) -> str:
    # Twilio calls it over the internet: without TENURE_DELIVERY_PUBLIC_URL there is no URL to give (an
    # internal one such as http://delivery is refused with error 21609, failing every SMS)
    callback = (f"{settings.public_url}/webhooks/twilio/{message['workspace_id']}/status"
                if settings.delivery_public_url else None)
    try:
        return await sms.send(settings, http, message["to_address"], message["text"] or "", callback)
    except sms.Unsubscribed:
        async with sessionmaker() as session, session.begin():  # Twilio knows of a STOP we missed: mirror it
            await consent.suppress(session, message["workspace_id"], "sms", message["to_address"], "unsubscribed",
                                   "twilio", consent.identity_of(message))
        raise


async def _send_http(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient,
                     message: dict[str, Any]) -> str:
    if message["channel"] == "sms":
        return await _send_sms(sessionmaker, settings, http, message)
    if message["channel"] == "push":
        return await _send_push(sessionmaker, settings, http, message)
    return await webhook_channel.send(settings, http, message["workspace_id"], message["id"], message["to_address"],
                                      (message["text"] or "{}").encode())


async def _send_push(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient,
                     message: dict[str, Any]) -> str:
    ws, user = message["workspace_id"], message["to_address"]
    async with sessionmaker() as session, session.begin():
        targets = await devices.devices_of(session, ws, user)
    if not targets:
        raise mailer.SendError(f"no device registered for {user}", permanent=True)
    created = message.get("created_at") or datetime.now(UTC)
    note = push.Notification(
        message_id=message["id"], title=message["subject"], body=message["text"] or "",
        data=(message.get("metadata") or {}).get("push_data") or {},
        expires_at=int(created.timestamp()) + settings.push_ttl_s,  # the same on every retry
        urgent=message.get("message_type") == "transactional")
    if settings.push_ttl_s and note.ttl_s() == 0:  # a retry after the window: "back in stock" a day late
        raise mailer.SendError(f"expired: not delivered within TENURE_PUSH_TTL_S ({settings.push_ttl_s} s) of its "
                               "creation", permanent=True)
    result = await push.send(settings, http, targets, note)
    async with sessionmaker() as session, session.begin():
        await devices.forget(session, ws, result.gone)
        await devices.used(session, ws, [d.token for d in targets if d.token not in result.gone])
    if result.sent:
        return ",".join(result.sent)
    if result.transient:
        raise mailer.SendError(result.transient, permanent=False, retry_after_s=result.retry_after_s)
    if result.failed:
        raise mailer.SendError(result.failed, permanent=True)
    raise mailer.SendError("every device of this user is gone (tokens removed)", permanent=True)


async def send_one(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, message: dict[str, Any],
                   smtp: mailer.SmtpConnection | None = None, http: httpx.AsyncClient | None = None,
                   redis: Any = None) -> str:
    """One attempt; whatever happens is recorded (an unexpected error is a permanent failure with its
    reason, never a message left leased and retried forever)."""
    started = datetime.now(UTC)
    checked_at, reason = message.get("consent") or (float("-inf"), None)
    async with sessionmaker() as session, session.begin():
        if not await outbox.renew(session, message, settings.delivery_lease_s):
            log.warning("delivery.lease_lost", message_id=str(message["id"]), attempt=message["attempts"])
            return "lease_lost"  # taken over (sending too would send it twice), or erased
        if time.monotonic() - checked_at > CONSENT_FRESH_S:  # consent may have changed while it waited
            reason = (await consent.blocked_many(session, [_intent(message)]))[0]
    if reason:
        return await _record(sessionmaker, message, started, "suppressed", reason, None)
    try:
        return await _attempt(sessionmaker, settings, message, started, smtp, http, redis)
    except Exception as exc:  # noqa: BLE001 - a bug or bad input must not wedge the queue
        log.exception("delivery.send_crashed", message_id=str(message["id"]))
        return await _record(sessionmaker, message, started, "permanent_error",
                             f"could not be sent: {type(exc).__name__}: {exc}"[:500], None)


# How old a batch's consent check may be when a message of it is sent; older, it is checked again.
CONSENT_FRESH_S = 5.0


def _intent(message: dict[str, Any]) -> consent.Intent:
    return (message["workspace_id"], message.get("channel", "email"), message["to_address"],
            message.get("message_type", "marketing"), message.get("topic"))


async def _attempt(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, message: dict[str, Any],
                   started: datetime, smtp: mailer.SmtpConnection | None, http: httpx.AsyncClient | None,
                   redis: Any) -> str:
    if message.get("channel") in ("sms", "push", "webhook"):
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = http or await stack.enter_async_context(httpx.AsyncClient())
                provider_id: str | None = await _send_http(sessionmaker, settings, client, message)
            outcome, error = "sent", None
        except mailer.SendError as exc:
            provider_id, error = None, str(exc)
            outcome = "permanent_error" if exc.permanent else "transient_error"
            return await _record(sessionmaker, message, started, outcome, error, None,
                                 retry_after_s=exc.retry_after_s)
        return await _record(sessionmaker, message, started, outcome, error, provider_id)
    marketing = message.get("message_type", "marketing") == "marketing"
    link = links.Links.for_message(settings.public_url, settings.signing_secret, message["workspace_id"],
                                   message["id"])
    mail = mailer.Email(
        message_id=str(message["id"]), sender=message["from_address"], to=message["to_address"],
        subject=message["subject"],
        html=links.decorate_html(message["html"], link, marketing=marketing) if message["html"] else None,
        text=links.decorate_text(message["text"], link, marketing=marketing) if message["text"] else None,
        headers=tuple(links.headers(link, marketing).items()))
    provider = await failover.choose(redis, settings, message.get("provider"))
    pin: str | None = provider  # the provider that may now hold the message
    try:
        if provider == "sendgrid":
            async with contextlib.AsyncExitStack() as stack:
                client = http or await stack.enter_async_context(httpx.AsyncClient())
                provider_id = await sendgrid.send(settings, client, mail)
        elif smtp is not None and provider == settings.email_provider:
            provider_id = await smtp.send(mail)
        else:
            provider_id = await mailer.send_smtp(settings, mail)
        outcome, error = "sent", None
        await failover.succeeded(redis, provider)
    except mailer.SendError as exc:
        provider_id, error = None, f"{provider}: {exc}"
        outcome = "permanent_error" if exc.permanent else "transient_error"
        if exc.not_sent:  # certainly not taken: free to go elsewhere, and it counts against the provider
            pin = message.get("provider")
            if not exc.permanent:
                await failover.failed(redis, settings, provider)
    return await _record(sessionmaker, message, started, outcome, error, provider_id, pin)


async def _record(sessionmaker: async_sessionmaker[AsyncSession], message: dict[str, Any], started: datetime,
                  outcome: str, error: str | None, provider_id: str | None, pin: str | None = None,
                  retry_after_s: float | None = None) -> str:
    async with sessionmaker() as session, session.begin():
        status = await outbox.record(session, message, started_at=started, outcome=outcome, error=error,
                                     provider_message_id=provider_id, provider=pin, retry_after_s=retry_after_s)
    log.info("delivery.attempted", message_id=str(message["id"]), attempt=message["attempts"], status=status,
             error=error)
    return status


def provider_of(settings: Settings, message: dict[str, Any]) -> str:
    channel = message.get("channel", "email")
    return {"sms": "twilio", "push": "fcm", "webhook": "webhook"}.get(channel, settings.email_provider)


async def _within_limits(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: Any,
                         messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages the shared token buckets (per provider, per workspace) allow now; the rest go back to
    the queue for a second, without counting an attempt (back-pressure, not failure)."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for m in messages:
        groups.setdefault((provider_of(settings, m), m["workspace_id"]), []).append(m)
    allowed: list[dict[str, Any]] = []
    held: list[Any] = []
    for (provider, ws), group in groups.items():
        n = await ratelimit.take_tokens(redis, f"provider:{provider}", settings.provider_rate_per_s.get(provider, 0),
                                        len(group))
        n = min(n, await ratelimit.take_tokens(redis, f"workspace:{ws}", settings.workspace_send_rate_per_s, n))
        allowed += group[:n]
        held += [m["id"] for m in group[n:]]
    if held:
        async with sessionmaker() as session, session.begin():
            await outbox.release(session, held, 1.0)
        log.info("delivery.rate_limited", held=len(held), sending=len(allowed))
    return allowed


async def send_due(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, limit: int = 100,
                   concurrency: int = 10, http: httpx.AsyncClient | None = None, redis: Any = None) -> int:
    async with sessionmaker() as session, session.begin():
        claimed = await outbox.claim(session, limit, settings.delivery_lease_s)
        # consent for the whole batch in one query; a message sent more than CONSENT_FRESH_S later re-checks
        reasons = await consent.blocked_many(session, [_intent(m) for m in claimed])
    checked_at = time.monotonic()
    for m, reason in zip(claimed, reasons, strict=True):
        m["consent"] = (checked_at, reason)
    if not claimed:
        return 0
    messages = await _within_limits(sessionmaker, settings, redis, claimed)
    if not messages:
        return len(claimed)
    # each of `concurrency` senders keeps one SMTP session open for its share of the batch
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def sender(client: httpx.AsyncClient) -> None:
        smtp = mailer.SmtpConnection(settings)
        try:
            async with pinned(sessionmaker) as own:  # and one database connection
                while not queue.empty():
                    await send_one(own, settings, queue.get_nowait(), smtp, client, redis)
        finally:
            await smtp.close()

    async with contextlib.AsyncExitStack() as stack:
        client = http or await stack.enter_async_context(httpx.AsyncClient())
        await asyncio.gather(*(sender(client) for _ in range(min(concurrency, len(messages)))))
    return len(messages)
