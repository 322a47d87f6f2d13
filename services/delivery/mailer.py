"""Email: MIME building (pure), and the error every email provider reports (``SendError``).

Errors are sorted into transient (connection trouble, 4xx replies: try again later) and permanent
(5xx replies: stop at once), which is all the outbox needs to know. The SMTP transport is in
``smtp_session``.
"""

import binascii
import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email


class SendError(Exception):
    """A failed attempt. ``not_sent``: the provider certainly did not take the message (it refused, or was
    never reached) — the only failures after which another provider may be tried for it."""

    def __init__(self, message: str, *, permanent: bool, not_sent: bool = False, retry_after_s: float | None = None,
                 bounce: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.not_sent = not_sent
        self.retry_after_s = retry_after_s  # the provider asked to wait at least this long (Retry-After)
        self.bounce = bounce  # the recipient's address does not take mail (a hard bounce): suppress it


@dataclass(frozen=True)
class Email:
    message_id: str  # our id; becomes the stable RFC 5322 Message-ID
    sender: str
    to: str
    subject: str
    html: str | None
    text: str | None
    headers: tuple[tuple[str, str], ...] = ()


class _OneLine(str):
    """A header written on one line exactly as given. The email package folds a header longer than 78
    characters, and a URL has no space to fold at, so it turns ``<https://…>`` into RFC 2047 encoded-words
    (``=?utf-8?q?=3Chttps=3A//…?=``): mailbox providers then find no List-Unsubscribe URL at all (RFC 2369
    values are URLs in angle brackets, never encoded-words). For the ``EmailMessage`` path (SMTPUTF8)
    aiosmtplib flattens with its own SMTP policy, so the header object itself has to refuse the folding
    (lines stay far below RFC 5322's 998)."""

    name: str

    def __new__(cls, name: str, value: str) -> "_OneLine":
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


_BARE_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


def split_address(value: str) -> tuple[str, str]:
    """(display name, address) of a From/To value. Most are a bare ``local@domain``, taken as is; the
    rest go through ``email.utils.parseaddr`` (its parser was a tenth of a sender's CPU)."""
    if _BARE_ADDRESS.fullmatch(value):
        return "", value
    return _parse_address(value)


@lru_cache(maxsize=1024)
def _parse_address(value: str) -> tuple[str, str]:  # (a workspace's "Name <from@…>", the same on every message)
    return parseaddr(value)


def message_id_header(message_id: str, sender: str) -> str:
    domain = split_address(sender)[1].rpartition("@")[2].strip() or "tenure.localhost"
    return f"<{message_id}@{domain}>"


@lru_cache(maxsize=1024)
def _ascii_address(address: str) -> str:
    """``local@domain`` with an internationalized domain as its A-labels (``xn--…``, IDNA 2008 as
    email_validator normalises it); unchanged when the local part is not ASCII (that needs SMTPUTF8)."""
    try:
        return validate_email(address, check_deliverability=False).ascii_email or address
    except EmailNotValidError:
        return address


def ascii_domains(mail: Email) -> Email:
    """The message with internationalized domains in From and To written in ASCII (RFC 5890): a server
    without SMTPUTF8 takes ``ada@xn--bcher-kva.example`` and delivers it to ``ada@bücher.example``; only a
    non-ASCII local part (``zoë@…``) needs SMTPUTF8. Addresses stay stored (and suppressed) in Unicode."""
    changes = {}
    for field in ("sender", "to"):
        value = getattr(mail, field)
        address = split_address(value)[1]
        if not address.isascii() and (ascii_ := _ascii_address(address)) != address:
            head, _, tail = value.rpartition(address)
            changes[field] = head + ascii_ + tail
    return dataclasses.replace(mail, **changes) if changes else mail


def build_mime(mail: Email) -> bytes | EmailMessage:
    """The message as it goes on the wire: headers, then a text and/or HTML part (multipart/alternative
    when both), UTF-8 in quoted-printable.

    Nearly every message has ASCII addresses and is rendered straight to bytes: headers encoded by
    ``email.header``, bodies by ``binascii.b2a_qp`` (C). The ``email`` package's header registry and
    line-by-line generator cost ≈ 2.5–5 ms per message (the largest CPU cost of sending, more for long
    HTML); this costs a fraction of it. An internationalized address needs SMTPUTF8, which aiosmtplib
    negotiates for an ``EmailMessage``: those few take that path. Line ends are LF; the SMTP session
    sends every line end as CRLF and dot-stuffs.
    """
    if not (split_address(mail.sender)[1] + split_address(mail.to)[1]).isascii():
        return _build_utf8(mail)
    lines = [f"{name}: {_encode_header(name, value)}" for name, value in _headers(mail)]
    parts = [(f"text/{subtype}", body) for body, subtype in ((mail.text, "plain"), (mail.html, "html")) if body]
    lines.append("MIME-Version: 1.0")
    if len(parts) <= 1:
        content_type, body = parts[0] if parts else ("text/html", "")
        return "\n".join([*lines, *_part_headers(content_type), "", ""]).encode() + _qp(body)
    boundary = f"=_{mail.message_id.replace('-', '')}"  # unique per message; "=_" never occurs in quoted-printable
    out = "\n".join([*lines, f'Content-Type: multipart/alternative; boundary="{boundary}"', "", ""]).encode()
    for content_type, body in parts:
        out += "\n".join([f"--{boundary}", *_part_headers(content_type), "", ""]).encode() + _qp(body) + b"\n"
    return out + f"--{boundary}--\n".encode()


def _encode_header(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:  # what EmailMessage refuses too: a header injection
        raise ValueError(f"Header values may not contain linefeed or carriage return characters ({name})")
    if name in ("From", "To"):
        display, address = split_address(value)
        if display and not display.isascii():  # encoded-words of ≤ 75 characters, folded (RFC 2047)
            return f"{_encoded_words(name, display)} <{address}>"
        return formataddr((display, address)) if display else address
    if value.isascii() and len(name) + len(value) < 996:  # as is: folding a long URL would break it
        return value
    # UTF-8 encoded-words can be cut anywhere, so even one 998-character word folds without gaining a space
    return _encoded_words(name, value)


def _encoded_words(name: str, value: str) -> str:
    # maxlinelen 74: at its default (76) the email package writes 76-character encoded-words (RFC 2047: ≤ 75)
    return Header(value, "utf-8", header_name=name).encode(maxlinelen=74)


def _part_headers(content_type: str) -> list[str]:
    return [f'Content-Type: {content_type}; charset="utf-8"', "Content-Transfer-Encoding: quoted-printable"]


def _qp(body: str) -> bytes:
    return binascii.b2a_qp(body.replace("\r\n", "\n").encode(), istext=True)


def _headers(mail: Email) -> list[tuple[str, str]]:
    return [
        ("From", mail.sender), ("To", mail.to), ("Subject", mail.subject),
        ("Date", format_datetime(datetime.now(UTC))),  # "+0000": RFC 5322 §4.3 forbids generating "GMT"
        # Stable across retries, so a receiver can tell a re-attempt from a new message.
        ("Message-ID", message_id_header(mail.message_id, mail.sender)),
        ("X-Tenure-Message-Id", mail.message_id),
        *mail.headers,
    ]


def _build_utf8(mail: Email) -> EmailMessage:
    msg = EmailMessage()
    for name, value in _headers(mail):
        # ours (List-Unsubscribe, RFC 2369 / 8058) stay on one line, as in build_mime
        msg[name] = _OneLine(name, value) if (name, value) in mail.headers else value
    if mail.text:
        msg.set_content(mail.text)
        if mail.html:
            msg.add_alternative(mail.html, subtype="html")
    else:
        msg.set_content(mail.html or "", subtype="html")
    return msg
