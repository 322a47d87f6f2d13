"""The send loop: claim due messages, hand each to its channel's provider, record the outcome."""

import asyncio
import contextlib
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from sqlalchemy.exc import DBAPIError
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
from services.delivery.smtp_session import SmtpConnection, SmtpPool, send_smtp
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
                   http: httpx.AsyncClient | None = None, redis: Any = None) -> str:
    """One claimed message through the whole path; its new status, or "lease_lost"."""
    return (await send_batch(sessionmaker, settings, [message], 1, http, redis))[message["id"]]


# How old a batch's consent check may be when a message of it is sent; older, it is checked again.
CONSENT_FRESH_S = 5.0
# Messages confirmed as still ours (and their consent re-checked if old) together, just before they go out.
GROUP = 32


def _intent(message: dict[str, Any]) -> consent.Intent:
    return (message["workspace_id"], message.get("channel", "email"), message["to_address"],
            message.get("message_type", "marketing"), message.get("topic"))


def _fresh_s(settings: Settings) -> float:
    """How long a message's check (still ours, consent) holds; a message that waited longer in memory is
    checked again just before it goes out."""
    return min(settings.delivery_lease_s / 10, CONSENT_FRESH_S)


async def send_batch(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                     messages: list[dict[str, Any]], concurrency: int = 10, http: httpx.AsyncClient | None = None,
                     redis: Any = None, smtp: SmtpPool | None = None) -> dict[Any, str]:
    """Send claimed messages over ``concurrency`` senders (each keeping one SMTP session); returns each
    message's new status, or "lease_lost" for one that was no longer ours to send.

    No message waits on a database round trip of its own. A sender that runs out of checked messages
    confirms the next ``GROUP`` as still ours, in one statement (``outbox.confirm``, which re-checks
    consent when the batch's check is old); a message that then waits longer than ``_fresh_s`` before
    its turn is checked again, alone. Outcomes go to a recorder that writes them as they come, many per
    statement (while one write is in flight the next group gathers). Whatever ends the batch — done, an
    error, a cancellation — the recorder writes what it holds before this returns; a crash of the
    process leaves those messages ``sending`` until their lease runs out (see ``outbox``).
    """
    statuses: dict[Any, str] = {}
    recorder = _Recorder(sessionmaker, statuses)
    senders = max(1, min(concurrency, len(messages)))
    unchecked, ready = deque(messages), deque[dict[str, Any]]()
    checking = asyncio.Lock()
    fresh_s = _fresh_s(settings)

    async def next_message() -> dict[str, Any] | None:
        while recorder.failed is None:
            # the next group is checked while the senders still have work: when few checked ones are left
            if unchecked and len(ready) < senders and not checking.locked():
                async with checking:
                    group = [unchecked.popleft() for _ in range(min(GROUP, len(unchecked)))]
                    ready.extend(m for m, verdict in await _confirm(own, settings, group)
                                 if _route(m, verdict, statuses, recorder))
                continue
            if not ready:
                if not unchecked and not checking.locked():
                    return None
                async with checking:  # (another sender is checking the next group: wait for it)
                    continue
            m = ready.popleft()
            if time.monotonic() - m["checked_at"] <= fresh_s:
                return m
            # it waited too long since its check: again, alone (and it goes out now, not to the back)
            (_, verdict), = await _confirm(sessionmaker, settings, [m])
            if _route(m, verdict, statuses, recorder):
                return m
        return None

    async def sender(client: httpx.AsyncClient, pool: SmtpPool) -> None:
        conn = await pool.take()
        try:
            while (m := await next_message()) is not None:
                recorder.add(await _attempt(sessionmaker, settings, m, conn, client, redis))
        except BaseException:
            conn.abort()
            raise
        pool.give(conn)

    async with contextlib.AsyncExitStack() as stack:
        client = http or await stack.enter_async_context(httpx.AsyncClient())
        if smtp is None:  # sessions for this batch only
            smtp = SmtpPool(settings)
            stack.push_async_callback(smtp.close)
        own = await stack.enter_async_context(pinned(sessionmaker))  # for the group checks (one at a time)
        recording = asyncio.create_task(recorder.run())
        try:
            results = await asyncio.gather(*(sender(client, smtp) for _ in range(senders)), return_exceptions=True)
        finally:
            recorder.close()
            await _finish(recording)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return statuses


# How long a batch that ends (or is cancelled) waits for its outcomes to be written.
RECORD_WAIT_S = 30.0


async def _finish(recording: "asyncio.Task[None]") -> None:
    """Wait for the recorder to write what it holds — also when the batch is being cancelled (a job's
    timeout, SIGTERM): outcomes the providers took must not be lost. A second cancel gives up."""
    try:
        await asyncio.wait_for(asyncio.shield(recording), RECORD_WAIT_S)
    except asyncio.CancelledError:
        await asyncio.wait([recording], timeout=RECORD_WAIT_S)
        raise
    except TimeoutError:
        recording.cancel()
        raise


def _route(m: dict[str, Any], verdict: str | None, statuses: dict[Any, str], recorder: "_Recorder") -> bool:
    """True: send it; otherwise it is noted as lease lost, or recorded as suppressed."""
    if verdict == "lease_lost":
        log.warning("delivery.lease_lost", message_id=str(m["id"]), attempt=m["attempts"])
        statuses[m["id"]] = verdict
        return False
    if verdict:
        recorder.add(outbox.Outcome(m, datetime.now(UTC), "suppressed", verdict))
        return False
    return True


async def _confirm(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                   group: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """Each message of the group with "lease_lost" (taken over or erased meanwhile), the reason consent
    now forbids it, or None: send it (its ``checked_at`` is now)."""
    async with sessionmaker() as session, session.begin():
        owned = await outbox.confirm(session, group, settings.delivery_lease_s)
        now = time.monotonic()
        # consent may have changed while they waited: checked again when the batch's check is old
        stale = [m for m in group if m["id"] in owned and now - m.get("consent", (float("-inf"),))[0] > CONSENT_FRESH_S]
        for m, reason in zip(stale, await consent.blocked_many(session, [_intent(m) for m in stale]) if stale else [],
                             strict=True):
            m["consent"] = (now, reason)
    for m in group:
        m["checked_at"] = now
    return [(m, "lease_lost" if m["id"] not in owned else m.get("consent", (0.0, None))[1]) for m in group]


class _Recorder:
    """Writes outcomes as they come, many per statement, on one connection of its own. A group the
    database refuses is written again one outcome at a time, so one bad outcome loses no other."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], statuses: dict[Any, str]):
        self._sessionmaker = sessionmaker
        self._statuses = statuses
        self._pending: list[outbox.Outcome] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.failed: BaseException | None = None  # the senders stop taking messages

    def add(self, outcome: outbox.Outcome) -> None:
        self._pending.append(outcome)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        try:
            async with pinned(self._sessionmaker) as own:
                while not (self._closed and not self._pending):
                    await self._wake.wait()
                    self._wake.clear()
                    while self._pending:
                        batch, self._pending = self._pending, []
                        self._done(batch, await self._write(own, batch))
        except BaseException as exc:
            self.failed = exc
            raise

    async def _write(self, own: async_sessionmaker[AsyncSession], batch: list[outbox.Outcome]) -> set[Any]:
        try:
            async with own() as session, session.begin():
                return await outbox.record_many(session, batch)
        except DBAPIError:
            if len(batch) == 1:
                raise
        updated: set[Any] = set()
        wrote = False
        for o in batch:
            try:
                async with own() as session, session.begin():
                    updated |= await outbox.record_many(session, [o])
                wrote = True
            except DBAPIError:  # it stays `sending`, and is claimed again once its lease runs out
                log.exception("delivery.record_failed", message_id=str(o.message["id"]))
        if not wrote:
            raise RuntimeError(f"could not record any of {len(batch)} outcomes")
        return updated

    def _done(self, batch: list[outbox.Outcome], updated: set[Any]) -> None:
        for o in batch:
            # (not updated: taken over by another holder, or erased, meanwhile)
            status = o.status() if o.message["id"] in updated else "lease_lost"
            self._statuses[o.message["id"]] = status
            log.info("delivery.attempted", message_id=str(o.message["id"]), attempt=o.message["attempts"],
                     status=status, error=o.error)


async def _attempt(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, message: dict[str, Any],
                   smtp: SmtpConnection, http: httpx.AsyncClient, redis: Any) -> outbox.Outcome:
    """One attempt at the provider; whatever happens is its outcome (an unexpected error is a permanent
    failure with its reason, never a message left leased and retried forever)."""
    started = datetime.now(UTC)
    try:
        if message.get("channel") in ("sms", "push", "webhook"):
            try:
                provider_id = await _send_http(sessionmaker, settings, http, message)
            except mailer.SendError as exc:
                return outbox.Outcome(message, started, "permanent_error" if exc.permanent else "transient_error",
                                      str(exc), retry_after_s=exc.retry_after_s)
            return outbox.Outcome(message, started, "sent", None, provider_id)
        return await _attempt_email(settings, message, started, smtp, http, redis)
    except Exception as exc:  # noqa: BLE001 - a bug or bad input must not wedge the queue
        log.exception("delivery.send_crashed", message_id=str(message["id"]))
        return outbox.Outcome(message, started, "permanent_error",
                              f"could not be sent: {type(exc).__name__}: {exc}"[:500])


async def _attempt_email(settings: Settings, message: dict[str, Any], started: datetime, smtp: SmtpConnection,
                         http: httpx.AsyncClient, redis: Any) -> outbox.Outcome:
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
            provider_id = await sendgrid.send(settings, http, mail)
        elif provider == settings.email_provider:
            provider_id = await smtp.send(mail)
        else:
            provider_id = await send_smtp(settings, mail)
        await failover.succeeded(redis, settings, provider)
        return outbox.Outcome(message, started, "sent", None, provider_id, pin)
    except mailer.SendError as exc:
        if exc.not_sent:  # certainly not taken: free to go elsewhere, and it counts against the provider
            pin = message.get("provider")
            if not exc.permanent:
                await failover.failed(redis, settings, provider)
        return outbox.Outcome(message, started, "permanent_error" if exc.permanent else "transient_error",
                              f"{provider}: {exc}", None, pin)


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


async def send_due(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, limit: int = 300,
                   concurrency: int = 10, http: httpx.AsyncClient | None = None, redis: Any = None,
                   smtp: SmtpPool | None = None) -> int:
    """Claim a batch of due messages and send it; the number claimed (0: nothing was due)."""
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
    await send_batch(sessionmaker, settings, messages, concurrency, http, redis, smtp)
    return len(messages)
