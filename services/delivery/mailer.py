"""Email over SMTP: MIME building (pure) and the aiosmtplib transport.

Errors are sorted into transient (connection trouble, 4xx replies: try again later) and permanent
(5xx replies: stop at once), which is all the outbox needs to know.
"""

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from shared.settings import Settings


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Email:
    message_id: str  # our id; becomes the stable RFC 5322 Message-ID
    sender: str
    to: str
    subject: str
    html: str | None
    text: str | None
    headers: tuple[tuple[str, str], ...] = ()


def message_id_header(message_id: str, sender: str) -> str:
    domain = sender.rpartition("@")[2].strip(">").strip() or "tenure.localhost"
    return f"<{message_id}@{domain}>"


def build_mime(mail: Email) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail.sender
    msg["To"] = mail.to
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    # Stable across retries, so a receiver can tell a re-attempt from a new message.
    msg["Message-ID"] = message_id_header(mail.message_id, mail.sender) if mail.message_id else make_msgid()
    msg["X-Tenure-Message-Id"] = mail.message_id
    for name, value in mail.headers:
        msg[name] = value
    if mail.text:
        msg.set_content(mail.text)
        if mail.html:
            msg.add_alternative(mail.html, subtype="html")
    else:
        msg.set_content(mail.html or "", subtype="html")
    return msg


async def send_smtp(settings: Settings, mail: Email) -> str:
    """Send one message; returns the Message-ID. Raises :class:`SendError`."""
    mime = build_mime(mail)
    try:
        await aiosmtplib.send(
            mime,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            use_tls=settings.smtp_tls,
            start_tls=settings.smtp_starttls if not settings.smtp_tls else False,
            timeout=settings.smtp_timeout_s,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [e.code for e in exc.recipients]
        raise SendError(f"recipient refused: {codes}", permanent=all(500 <= c < 600 for c in codes)) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SendError(f"SMTP transport: {type(exc).__name__}: {exc}", permanent=False) from None
    return str(mime["Message-ID"])
