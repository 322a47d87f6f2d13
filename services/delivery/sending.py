"""The send loop: claim due messages, hand each to its channel's provider, record the outcome."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.delivery import links, mailer, outbox
from shared.settings import Settings

log = structlog.get_logger()


async def send_one(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, message: dict[str, Any],
                   smtp: mailer.SmtpConnection | None = None) -> str:
    started = datetime.now(UTC)
    marketing = message.get("message_type", "marketing") == "marketing"
    link = links.Links.for_message(settings.public_url, settings.signing_secret, message["workspace_id"],
                                   message["id"])
    mail = mailer.Email(
        message_id=str(message["id"]), sender=message["from_address"], to=message["to_address"],
        subject=message["subject"],
        html=links.decorate_html(message["html"], link, marketing=marketing) if message["html"] else None,
        text=links.decorate_text(message["text"], link, marketing=marketing) if message["text"] else None,
        headers=tuple(links.headers(link, marketing).items()))
    try:
        provider_id = await (smtp.send(mail) if smtp is not None else mailer.send_smtp(settings, mail))
        outcome, error = "sent", None
    except mailer.SendError as exc:
        provider_id, error = None, str(exc)
        outcome = "permanent_error" if exc.permanent else "transient_error"
    async with sessionmaker() as session, session.begin():
        status = await outbox.record(session, message, started_at=started, outcome=outcome, error=error,
                                     provider_message_id=provider_id)
    log.info("delivery.attempted", message_id=str(message["id"]), attempt=message["attempts"], status=status,
             error=error)
    return status


async def send_due(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, limit: int = 100,
                   concurrency: int = 10) -> int:
    async with sessionmaker() as session, session.begin():
        messages = await outbox.claim(session, limit)
    if not messages:
        return 0
    # each of `concurrency` senders keeps one SMTP session open for its share of the batch
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def sender() -> None:
        smtp = mailer.SmtpConnection(settings)
        try:
            while not queue.empty():
                await send_one(sessionmaker, settings, queue.get_nowait(), smtp)
        finally:
            await smtp.close()

    await asyncio.gather(*(sender() for _ in range(min(concurrency, len(messages)))))
    return len(messages)
