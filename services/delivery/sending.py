"""The send loop: claim due messages, hand each to its channel's provider, record the outcome."""

import asyncio
import contextlib
import time
from collections import deque
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
    provider_events,
    push,
    sendgrid,
    sms,
    sms_hours,
    webhook_channel,
)
from services.delivery.smtp_session import SmtpConnection, SmtpPool, send_smtp
from shared import ratelimit
from shared.db import Outage, pinned, retry_while_unreachable
from shared.html_text import html_to_text
from shared.settings import Settings
from shared.validation import parse_day_window

log = structlog.get_logger()


async def _send_sms(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient,
                    message: dict[str, Any]) -> str:
    # Twilio calls it over the internet: without TENURE_DELIVERY_PUBLIC_URL there is no URL to give (an
    # internal one such as http://delivery is refused with error 21609, failing every SMS)
    callback = (f"{settings.public_url}/webhooks/twilio/{message['workspace_id']}/status"
                if settings.delivery_public_url else None)
    body = message["text"] or ""
    if message.get("provider") == "twilio":  # an earlier attempt may have reached Twilio: did it take it?
        taken = await sms.find_sent(settings, http, message["to_address"], body, message["created_at"])
        if taken:
            async with sessionmaker() as session, session.begin():
                known = await outbox.known_sms_ids(session, taken)
            if mine := next((sid for sid in taken if sid not in known), None):
                log.info("delivery.earlier_attempt_found", message_id=str(message["id"]), provider_message_id=mine)
                return mine
    try:
        return await sms.send(settings, http, message["to_address"], body, callback)
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


RECEIPTS_WAIT_S = 20.0


def _push_start_by(settings: Settings, message: dict[str, Any]) -> float:
    """When the last device may be started (``time.monotonic()``): the message's lease, less the longest a device's
    send may take (FCM: a post refused 401, a new access token, a post again, each up to a timeout), less a margin;
    at least a second from now, so every attempt reaches some devices."""
    worst_s = 3 * max(settings.provider_timeout_s, settings.apns_timeout_s) + 5.0
    lease_end = message.get("leased_at", time.monotonic()) + settings.delivery_lease_s
    return max(lease_end - worst_s, time.monotonic() + 1.0)


async def _send_push(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient,
                     message: dict[str, Any]) -> str:
    """The message to each of its user's devices that has not had it (``push_receipts``): sent once all have it
    (or are gone, or refused it for good); while a device has a transient error, the message is retried for
    that device alone."""
    ws, user = message["workspace_id"], message["to_address"]
    async with sessionmaker() as session, session.begin():
        targets = await devices.devices_of(session, ws, user)
        reached = await devices.receipts(session, message["id"])
    if not targets and not reached:
        raise mailer.SendError(f"no device registered for {user}", permanent=True)
    targets = [d for d in targets if d.token not in reached]
    created = message.get("created_at") or datetime.now(UTC)
    note = push.Notification(
        message_id=message["id"], title=message["subject"], body=message["text"] or "",
        data=(message.get("metadata") or {}).get("push_data") or {},
        expires_at=int(created.timestamp()) + settings.push_ttl_s,  # the same on every retry
        urgent=message.get("message_type") == "transactional", start_by=_push_start_by(settings, message))
    if targets and settings.push_ttl_s and note.ttl_s() == 0:  # a retry after the window: "back in stock" a day late
        if reached:  # (sent: to the devices that had it in time)
            return ",".join(reached.values())
        raise mailer.SendError(f"expired: not delivered within TENURE_PUSH_TTL_S ({settings.push_ttl_s} s) of its "
                               "creation", permanent=True)
    result = await push.send(settings, http, targets, note) if targets else push.Result()

    async def bookkeeping() -> None:  # (each reached device at once: a retry skips it)
        async with sessionmaker() as session, session.begin():
            await devices.forget(session, ws, result.gone)
            await devices.used(session, ws, list(result.delivered))
            await devices.record_receipts(session, message["id"], result.delivered)

    # ridden through a PostgreSQL blip (the providers took these: lost receipts would send them again)
    await retry_while_unreachable(bookkeeping, give_up_after_s=RECEIPTS_WAIT_S,
                                  outage=Outage("delivery.push_receipts_waiting", "delivery.push_receipts_written"),
                                  message_id=str(message["id"]))
    if result.transient:  # (the devices reached keep their receipts: the retry goes to the others)
        raise mailer.SendError(result.transient, permanent=False, retry_after_s=result.retry_after_s)
    if reached or result.delivered:
        return ",".join({**reached, **result.delivered}.values())
    if result.failed:
        raise mailer.SendError(result.failed, permanent=True)
    raise mailer.SendError("every device of this user is gone (tokens removed)", permanent=True)


async def send_one(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, message: dict[str, Any],
                   http: httpx.AsyncClient | None = None, redis: Any = None) -> str:
    """One claimed message through the whole path; its new status, or "lease_lost"."""
    return (await send_batch(sessionmaker, settings, [message], 1, http, redis))[message["id"]]


# How old a message's consent check (and ownership check) may be when it is sent; older, both are checked again.
CONSENT_FRESH_S = 5.0
# Messages confirmed as still ours (and their consent re-checked if old) together, just before they go out.
GROUP = 32


def retry_for_s(settings: Settings, message: dict[str, Any]) -> float:
    """How long a message is retried while its provider answers with transient errors: email for days (RFC 5321
    §4.5.4.1; a greylisting server wants minutes), the others for ``TENURE_DELIVERY_RETRY_FOR_S``."""
    return settings.email_retry_for_s if message.get("channel", "email") == "email" else settings.delivery_retry_for_s


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
    confirms the next ``GROUP`` as still ours, with their consent, in one transaction (``_confirm``); a
    message that then waits longer than ``_fresh_s`` before its turn is checked again, alone. Outcomes
    go to a recorder that writes them as they come, many per statement (while one write is in flight the
    next group gathers). Whatever ends the batch — done, an error, a cancellation — the recorder writes
    what it holds, and messages never attempted are given back to the queue, before this returns; a
    crash of the process leaves them ``sending`` until their lease runs out (see ``outbox``).
    """
    for m in messages:  # how long a transient failure of each is retried (outbox.Outcome)
        m["retry_for_s"] = retry_for_s(settings, m)
    statuses: dict[Any, str] = {}
    recorder = _Recorder(sessionmaker, statuses)
    senders = max(1, min(concurrency, len(messages)))
    unchecked, ready = deque(messages), deque[dict[str, Any]]()
    settled: set[Any] = set()  # attempted, or settled without an attempt (lease lost, suppressed)
    checking = asyncio.Lock()
    fresh_s = _fresh_s(settings)

    window = parse_day_window(settings.sms_marketing_hours)

    def route(m: dict[str, Any], verdict: str | None) -> bool:
        go = _route(m, verdict, statuses, recorder, window)
        if not go:
            settled.add(m["id"])
        return go

    async def next_message() -> dict[str, Any] | None:
        while not recorder.failing:
            # the next group is checked while the senders still have work: when few checked ones are left
            if unchecked and len(ready) < senders and not checking.locked():
                async with checking:
                    group = [unchecked.popleft() for _ in range(min(GROUP, len(unchecked)))]
                    try:
                        verdicts = await _confirm(own, settings, group)
                    except BaseException:
                        unchecked.extendleft(reversed(group))  # (given back below)
                        raise
                    ready.extend(m for m, verdict in verdicts if route(m, verdict))
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
            try:
                (_, verdict), = await _confirm(sessionmaker, settings, [m])
            except BaseException:
                ready.appendleft(m)
                raise
            if route(m, verdict):
                return m
        return None

    async def sender(client: httpx.AsyncClient, pool: SmtpPool) -> None:
        conn = await pool.take()
        try:
            while (m := await next_message()) is not None:
                settled.add(m["id"])
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
        cancelled = False
        try:
            results = await asyncio.gather(*(sender(client, smtp) for _ in range(senders)), return_exceptions=True)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            recorder.close()
            unsent = [m for m in messages if m["id"] not in settled]
            await _finish(recording, recorder, sessionmaker, unsent, cancelled=cancelled)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return statuses


# How long a batch that ends (or is cancelled) waits for its outcomes to be written.
RECORD_WAIT_S = 30.0


async def _finish(recording: "asyncio.Task[None]", recorder: "_Recorder",
                  sessionmaker: async_sessionmaker[AsyncSession], unsent: list[dict[str, Any]], *,
                  cancelled: bool) -> None:
    """Let the recorder write what it holds and give the never-attempted messages back, within
    ``RECORD_WAIT_S`` in all — also when the batch is being cancelled (a job's timeout, SIGTERM): outcomes
    the providers took must not be lost. Cancelled twice, it gives up at once."""

    releasing = Outage()  # giving back waits for an unreachable PostgreSQL too (quietly: the worker's polls log it)

    async def release() -> None:
        async with sessionmaker() as session, session.begin():
            await outbox.release(session, unsent)

    async def wrap_up() -> None:
        await recording
        if unsent:  # (no limit of its own: the deadline below bounds it)
            await retry_while_unreachable(release, give_up_after_s=None, outage=releasing)
            log.info("delivery.given_back", messages=len(unsent))

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(wrap_up())
    deadline = loop.time() + RECORD_WAIT_S
    interrupted = False  # a first cancel arrived while wrapping up: finish, then give in to it
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            if cancelled or interrupted:  # cancelled again: give up at once
                task.cancel()
                recording.cancel()
                raise
            interrupted = True
            continue
        except TimeoutError:
            away = recorder.held.down_since is not None or releasing.down_since is not None
            if away and not (cancelled or interrupted):
                # PostgreSQL is away: outcomes the providers took are held until it answers (the job's timeout,
                # two minutes, is the bound: its cancellation gives up)
                deadline = loop.time() + RECORD_WAIT_S
                continue
            task.cancel()
            recording.cancel()
            if not (cancelled or interrupted):
                raise
            log.warning("delivery.wrap_up_timed_out", unsent=len(unsent))
        except Exception:  # noqa: BLE001 - a cancellation wins over a failure to wrap up
            if not (cancelled or interrupted):
                raise
            log.exception("delivery.wrap_up_failed")
        break
    if interrupted:
        raise asyncio.CancelledError


def _route(m: dict[str, Any], verdict: str | None, statuses: dict[Any, str], recorder: "_Recorder",
           sms_window: sms_hours.Window | None) -> bool:
    """True: send it; otherwise it is noted as lease lost, recorded as suppressed, or (a marketing text outside
    the recipient's hours) deferred to when they begin."""
    if verdict == "lease_lost":
        log.warning("delivery.lease_lost", message_id=str(m["id"]), attempt=m["attempts"])
        statuses[m["id"]] = verdict
        return False
    now = datetime.now(UTC)
    if verdict:
        recorder.add(outbox.Outcome(m, now, "suppressed", verdict))
        return False
    if m.get("channel") == "sms" and m.get("message_type", "marketing") == "marketing" and (
            until := sms_hours.held_until(m["to_address"], now, sms_window)) is not None:
        assert sms_window is not None
        local = until.astimezone(sms_hours.zones_of(m["to_address"])[0])
        recorder.add(outbox.Outcome(
            m, now, "deferred", f"held: marketing texts reach recipients {sms_window[0]:%H:%M}–"
                                f"{sms_window[1]:%H:%M} their time; due {local.isoformat()} ({local.tzinfo})",
            retry_after_s=(until - now).total_seconds()))
        return False
    return True


async def _confirm(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                   group: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """Each message of the group with "lease_lost" (taken over or erased meanwhile), the reason consent
    now forbids it, or None: send it. Both are checked in one transaction, and a message is sent within
    ``_fresh_s`` of it (``checked_at``) or checked again."""
    async with sessionmaker() as session, session.begin():
        now = time.monotonic()  # (before the reads: the check is at least this recent)
        owned = await outbox.confirm(session, group, settings.delivery_lease_s)
        mine = [m for m in group if m["id"] in owned]
        reasons = dict(zip([m["id"] for m in mine], await consent.blocked_many(session, [_intent(m) for m in mine])
                           if mine else [], strict=True))
        addresses = await consent.postal_addresses(session, {
            m["workspace_id"] for m in mine
            if m.get("channel", "email") == "email" and m.get("message_type", "marketing") == "marketing"})
    for m in mine:
        m["postal_address"] = addresses.get(m["workspace_id"])
    for m in group:
        m["checked_at"] = now
    return [(m, reasons[m["id"]] if m["id"] in owned else "lease_lost") for m in group]


class _Recorder:
    """Writes outcomes as they come, many per statement, on one connection of its own.

    A write that fails is tried again on a fresh connection (with a pause), then one outcome at a time,
    so one outcome the database refuses loses no other; such an outcome is logged and left (its message
    stays ``sending`` and is claimed again after its lease). While writes fail, ``failing`` is set and
    the senders take no more messages; the recorder itself only stops when closed and empty (or when
    ``_finish`` gives up on it)."""

    RETRY_PAUSES_S = (0.2, 1.0, 3.0)

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], statuses: dict[Any, str]):
        self._sessionmaker = sessionmaker
        self._statuses = statuses
        self._pending: list[outbox.Outcome] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._use_pool = False
        self.failing = False
        # outcomes wait for an unreachable PostgreSQL (since ``held.down_since``): one wait across batches
        self.held = Outage("delivery.outcomes_held", "delivery.outcomes_recorded", lasted="held_s")

    def add(self, outcome: outbox.Outcome) -> None:
        self._pending.append(outcome)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        async with pinned(self._sessionmaker) as own:
            while not (self._closed and not self._pending):
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch, self._pending = self._pending, []
                    updated = await self._write(own, batch)
                    await self._apply_early(own, batch, updated)
                    self._done(batch, updated)

    async def _write(self, own: async_sessionmaker[AsyncSession], batch: list[outbox.Outcome]) -> set[Any]:
        """While PostgreSQL is unreachable (a restart, an outage) the outcomes are held and the write tried again
        every second, however long it takes (no limit, unlike campaign's hand-over): given up, a sent message would
        stay ``sending`` and go out a second time after its lease. Other failures are tried ``RETRY_PAUSES_S`` more
        times, then one outcome at a time."""

        async def write() -> set[Any]:
            try:  # after any failure, fresh connections from the pool (the pinned one may be broken)
                async with (self._sessionmaker if self._use_pool else own)() as session, session.begin():
                    return await outbox.record_many(session, batch)
            except Exception:
                self.failing = self._use_pool = True
                raise

        for failures, pause in enumerate((*self.RETRY_PAUSES_S, None), start=1):
            try:
                updated = await retry_while_unreachable(write, give_up_after_s=None, outage=self.held,
                                                        outcomes=len(batch))
            except Exception:  # noqa: BLE001 - a connection reset, one unstorable outcome…
                log.warning("delivery.record_retry", outcomes=len(batch), attempt=failures, exc_info=True)
                if pause is None:
                    break
                await asyncio.sleep(pause)
                continue
            self.failing = False
            return updated
        updated: set[Any] = set()  # still refused: one at a time, so one bad outcome loses no other
        for o in batch:
            try:
                async with self._sessionmaker() as session, session.begin():
                    updated |= await outbox.record_many(session, [o])
            except Exception:  # noqa: BLE001 - left `sending`: claimed again after its lease
                log.exception("delivery.record_failed", message_id=str(o.message["id"]))
        return updated

    async def _apply_early(self, own: async_sessionmaker[AsyncSession], batch: list[outbox.Outcome],
                           updated: set[Any]) -> None:
        """Provider reports that arrived before these sends were recorded (a status callback that beat our
        commit), applied now that they are: see ``provider_events``."""
        refs = provider_events.refs_of_sent(batch, updated)
        if not refs:
            return
        try:
            async with (self._sessionmaker if self._use_pool else own)() as session, session.begin():
                await provider_events.apply_held(session, refs)
        except Exception:  # noqa: BLE001 - the sends are recorded; the kept reports wait for the next try
            log.warning("delivery.early_events_not_applied", messages=len(refs), exc_info=True)

    def _done(self, batch: list[outbox.Outcome], updated: set[Any]) -> None:
        for o in batch:
            # (not updated: taken over by another holder, or erased, meanwhile — or not recorded at all)
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
                # a text Twilio may have taken stays pinned to it: the next attempt asks Twilio first
                pin = "twilio" if message.get("channel") == "sms" and not exc.not_sent else None
                return outbox.Outcome(message, started, "permanent_error" if exc.permanent else "transient_error",
                                      str(exc), provider=pin, retry_after_s=exc.retry_after_s)
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
                                   message["id"], message.get("locale"), message.get("postal_address"))
    mail = mailer.Email(
        message_id=str(message["id"]), sender=message["from_address"], to=message["to_address"],
        subject=message["subject"],
        html=links.decorate_html(message["html"], link, marketing=marketing) if message["html"] else None,
        # HTML alone gets a text part too (plain-text readers, spam filters), from the HTML as the sender wrote it
        text=links.decorate_text(text, link, marketing=marketing) if (text := message["text"] or (
            html_to_text(message["html"]) if message["html"] else None)) else None,
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
        outcome = "bounced" if exc.bounce else "permanent_error" if exc.permanent else "transient_error"
        return outbox.Outcome(message, started, outcome, f"{provider}: {exc}", None, pin, exc.retry_after_s)


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
    held: list[dict[str, Any]] = []
    for (provider, ws), group in groups.items():
        n = await ratelimit.take_tokens(redis, f"provider:{provider}", settings.provider_rate_per_s.get(provider, 0),
                                        len(group))
        n = min(n, await ratelimit.take_tokens(redis, f"workspace:{ws}", settings.workspace_send_rate_per_s, n))
        allowed += group[:n]
        held += group[n:]
    if held:
        async with sessionmaker() as session, session.begin():
            await outbox.release(session, held, 1.0)
        log.info("delivery.rate_limited", held=len(held), sending=len(allowed))
    return allowed


async def send_due(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, limit: int = 300,
                   concurrency: int | None = None, http: httpx.AsyncClient | None = None, redis: Any = None,
                   smtp: SmtpPool | None = None) -> int:
    """Claim a batch of due messages and send it; the number claimed (0: nothing was due)."""
    async with sessionmaker() as session, session.begin():
        claimed = await outbox.claim(session, limit, settings.delivery_lease_s)
    if not claimed:
        return 0
    messages = await _within_limits(sessionmaker, settings, redis, claimed)
    if not messages:
        return len(claimed)
    await send_batch(sessionmaker, settings, messages, concurrency or settings.delivery_concurrency, http, redis, smtp)
    return len(messages)
