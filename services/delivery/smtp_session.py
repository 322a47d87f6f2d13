"""SMTP sessions reused for many messages, pipelined (RFC 2920) when the server offers it.

aiosmtplib opens each session: connect, greeting, EHLO (HELO for old servers), STARTTLS or implicit TLS,
AUTH, with its error handling. Then the session's transport is handed to :class:`_Replies`, which writes
a message's ``MAIL FROM``, ``RCPT TO`` and ``DATA`` in one packet and its content in a second, so a
message costs two round trips instead of four. aiosmtplib cannot pipeline (its protocol hands out one
reply per packet received), and on two cores its per-command cost was the largest part of sending:
≈ 0.26–0.43 ms of client CPU per message against ≈ 0.1 ms here (measured, see bench/RESULTS.md).

Error classes for the outbox: a refusal (4xx / 5xx reply) means the server did not take the message
(``not_sent``); a connection that breaks or times out after the content was written leaves the outcome
unknown (transient, never re-routed to another provider); before the content it is a plain retry.
"""

import asyncio
import re
import time
from collections import deque
from typing import Any, NamedTuple

import aiosmtplib

from services.delivery.mailer import Email, SendError, ascii_domains, build_mime, message_id_header, split_address
from shared.settings import Settings

_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_MAX_REPLY = 64 * 1024


class Reply(NamedTuple):
    code: int
    text: str


class _Lost(Exception):
    """The connection closed (or broke) while replies were awaited."""


class _Refused(Exception):
    def __init__(self, stage: str, reply: Reply):
        super().__init__(f"{stage}: SMTP {reply.code}: {reply.text}")
        self.stage = stage
        self.reply = reply


class _Replies(asyncio.Protocol):
    """The session after set-up: commands go out as written, replies come back in order to their waiters."""

    def __init__(self, transport: asyncio.BaseTransport, pipelining: bool):
        self.transport: Any = transport
        self.pipelining = pipelining
        self._buf = bytearray()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._lost = False

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (reply := self._next_reply()) is not None:
            if self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
            # (an unsolicited reply, e.g. a 421 just before the server hangs up: connection_lost follows)
        if len(self._buf) > _MAX_REPLY:
            self.transport.close()

    def _next_reply(self) -> Reply | None:
        offset, lines = 0, []
        while (end := self._buf.find(b"\n", offset)) >= 0:
            line = bytes(self._buf[offset:end]).rstrip(b"\r")
            offset = end + 1
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":  # "250 ok" ends a reply, "250-…" continues it
                del self._buf[:offset]
                try:
                    return Reply(int(line[:3]), "\n".join(lines))
                except ValueError:
                    return Reply(0, f"malformed reply: {line[:80]!r}")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(_Lost(f"connection closed: {exc}" if exc else "connection closed by the server"))

    def send(self, data: bytes, replies: int) -> list[asyncio.Future[Reply]]:
        if self._lost or self.transport.is_closing():
            raise _Lost("connection closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self.transport.write(data)
        return futures

    async def command(self, line: bytes) -> Reply:
        return await self.send(line + b"\r\n", 1)[0]

    async def envelope(self, sender: str, to: str) -> None:
        """``MAIL FROM``, ``RCPT TO`` and ``DATA`` (one round trip when pipelined); raises :class:`_Refused`."""
        envelope = (b"MAIL FROM:<%s>\r\n" % sender.encode(), b"RCPT TO:<%s>\r\n" % to.encode(), b"DATA\r\n")
        if self.pipelining:
            replies = await asyncio.gather(*self.send(b"".join(envelope), 3), return_exceptions=True)
            first = replies[0]
            if isinstance(first, Reply) and first.code != 250:  # (a 421 to MAIL, then the server hung up: the
                raise _Refused("MAIL", first)  # refusal, with its words, not the lost connection after it)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            mail, rcpt, data = replies
        else:
            mail = await self.send(envelope[0], 1)[0]
            rcpt = await self.send(envelope[1], 1)[0] if mail.code == 250 else Reply(503, "not sent")
            data = await self.send(envelope[2], 1)[0] if rcpt.code in (250, 251) else Reply(503, "not sent")
        if data.code == 354 and (mail.code != 250 or rcpt.code not in (250, 251)):
            await self.send(b".\r\n", 1)[0]  # a server that opened DATA anyway: end it empty
        for stage, reply, ok in (("MAIL", mail, (250,)), ("RCPT", rcpt, (250, 251)), ("DATA", data, (354,))):
            if reply.code not in ok:
                raise _Refused(stage, reply)

    def content(self, content: bytes) -> "asyncio.Future[Reply]":
        """The message itself, written after ``354``: the server's verdict on it, to wait for."""
        return self.send(_dot_stuffed(content), 1)[0]


def final_reply_s(settings: Settings) -> float:
    """How long the reply to a message's final "." is waited for: three quarters of the lease, at least the SMTP
    timeout."""
    return max(settings.smtp_timeout_s, 0.75 * settings.delivery_lease_s)


def hard_bounce(stage: str, reply: Reply) -> bool:
    """Whether a refusal says the recipient's address takes no mail (a hard bounce, to suppress) rather than
    refusing this message or this sender: a permanent (5xx) reply to ``RCPT TO`` — other than a policy refusal
    (enhanced status 5.7.x: relay denied, a blocklisted sender) — or, at any stage, an enhanced status of
    class 5.1 (bad mailbox or domain: 5.1.1 user unknown, 5.1.10 null MX) or 5.2.1 (mailbox disabled), as
    RFC 3463 defines them. A full mailbox (5.2.2) or a message too big (5.3.4) is not the address's fault."""
    if not 500 <= reply.code < 600:
        return False
    status = _ENHANCED.match(reply.text)
    if status:
        cls = status.group(1)
        return cls.startswith("5.1.") or cls == "5.2.1" or (stage == "RCPT" and not cls.startswith(("5.7.", "5.2.",
                                                                                                       "5.3.")))
    return stage == "RCPT"


_ENHANCED = re.compile(r"\s*(5\.\d{1,3}\.\d{1,3})\b")


def _dot_stuffed(content: bytes) -> bytes:
    body = _LEADING_DOT.sub(b"..", _LINE_ENDS.sub(b"\r\n", content))
    return body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n")


def _envelope_address(value: str) -> str:
    address = split_address(value)[1]
    if not address or any(c in address for c in "\r\n<> "):
        raise SendError(f"not a usable envelope address: {value!r}", permanent=True, not_sent=True)
    return address


class SmtpConnection:
    """One SMTP session reused for many messages (connect, TLS, EHLO and AUTH once). A stale session, or a
    421 (the server is closing it), gets one retry on a fresh connection — only while the message's
    content has not been written, so a message is never offered twice by this path."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._session: _Replies | None = None

    async def _connect(self) -> _Replies:
        smtp = _client(self._settings)
        try:  # one timeout for the whole set-up, not one per each of its five exchanges
            async with asyncio.timeout(self._settings.smtp_timeout_s):
                await smtp.connect()
                if smtp.is_ehlo_or_helo_needed:
                    try:
                        await smtp.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await smtp.helo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            raise SendError(f"SMTP unreachable: {type(exc).__name__}: {exc}", permanent=False, not_sent=True) from None
        except BaseException:  # (cancelled mid-set-up: the socket is not left open)
            smtp.close()
            raise
        assert smtp.transport is not None
        session = _Replies(smtp.transport, pipelining=smtp.supports_extension("pipelining"))
        smtp.transport.set_protocol(session)  # from here on the session is ours (aiosmtplib's object is dropped)
        return session

    async def send(self, mail: Email) -> str:
        """Send one message; returns the Message-ID. Raises :class:`SendError`."""
        mail = ascii_domains(mail)
        mime = build_mime(mail)
        if not isinstance(mime, bytes):  # an internationalized address: aiosmtplib negotiates SMTPUTF8
            return await _send_utf8(self._settings, mail, mime)
        sender, to = _envelope_address(mail.sender), _envelope_address(mail.to)
        for attempt in (1, 2):
            if self._session is None:
                self._session = await self._connect()
            session, written = self._session, False
            try:
                async with asyncio.timeout(self._settings.smtp_timeout_s):
                    await session.envelope(sender, to)
                    written = True
                    verdict = session.content(mime)
                # RFC 5321 §4.5.3.2.6: the reply to the final "." may take ten minutes (filters, a slow disk); given
                # up on, the message is sent again, and a server that was only slow holds it twice. Waited for as
                # long as the message's lease allows (at least the SMTP timeout)
                async with asyncio.timeout(final_reply_s(self._settings)):
                    final = await verdict
            except _Refused as exc:
                if exc.reply.code == 421 and attempt == 1:
                    await self.close()
                    continue
                await self._reset()
                permanent = 500 <= exc.reply.code < 600
                what = "recipient refused" if exc.stage == "RCPT" else f"{exc.stage} refused"
                raise SendError(f"{what}: SMTP {exc.reply.code} {exc.reply.text}"[:300], permanent=permanent,
                                not_sent=True, bounce=hard_bounce(exc.stage, exc.reply)) from None
            except (_Lost, OSError, TimeoutError) as exc:
                await self.close()
                if not written and attempt == 1 and isinstance(exc, _Lost):
                    continue  # a reused session went stale before this message was offered
                raise SendError(f"SMTP transport: {type(exc).__name__}: {exc}", permanent=False,
                                not_sent=not written) from None
            if 200 <= final.code < 300:
                return message_id_header(mail.message_id, mail.sender)
            if 400 <= final.code < 600:  # refused (the transaction is over; 421: the server is closing the session)
                if final.code == 421:
                    await self.close()
                raise SendError(f"SMTP {final.code}: {final.text}"[:300], permanent=final.code >= 500, not_sent=True,
                                bounce=hard_bounce("DATA", final))
            await self.close()  # an answer that is neither: the server may hold the message
            raise SendError(f"SMTP outcome unknown: {final.code} {final.text}"[:300], permanent=False)
        raise SendError("SMTP session closed twice", permanent=False, not_sent=True)

    async def _reset(self) -> None:
        """After a refused transaction, make the session usable for the next message."""
        if self._session is None:
            return
        try:
            async with asyncio.timeout(self._settings.smtp_timeout_s):
                if (await self._session.command(b"RSET")).code == 250:
                    return
        except (_Lost, OSError, TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        """QUIT politely (briefly), then close the socket whatever happens."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            async with asyncio.timeout(min(self._settings.smtp_timeout_s, 5.0)):
                await session.command(b"QUIT")
        except (_Lost, OSError, TimeoutError):
            pass
        finally:
            session.transport.close()

    def abort(self) -> None:
        """Drop the session at once (a sender cancelled mid-message, or a session idle too long)."""
        session, self._session = self._session, None
        if session is not None:
            session.transport.abort()


class SmtpPool:
    """Idle SMTP sessions kept between batches (one per concurrent sender). One idle longer than
    ``IDLE_S`` is closed rather than reused: servers drop quiet sessions (Postfix after 300 s)."""

    IDLE_S = 60.0

    def __init__(self, settings: Settings):
        self._settings = settings
        self._idle: list[tuple[float, SmtpConnection]] = []

    async def take(self) -> SmtpConnection:
        """The most recently used idle session (warm), after dropping every one idle too long."""
        now, kept = time.monotonic(), []
        for since, conn in self._idle:
            if now - since < self.IDLE_S:
                kept.append((since, conn))
            else:
                conn.abort()
        self._idle = kept
        return self._idle.pop()[1] if self._idle else SmtpConnection(self._settings)

    def give(self, conn: SmtpConnection) -> None:
        self._idle.append((time.monotonic(), conn))

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop()[1].close()


def _client(s: Settings) -> aiosmtplib.SMTP:
    """aiosmtplib, configured from the settings (not yet connected)."""
    return aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, username=s.smtp_username, password=s.smtp_password,
                           use_tls=s.smtp_tls, start_tls=s.smtp_starttls if not s.smtp_tls else False,
                           timeout=s.smtp_timeout_s, cert_bundle=s.smtp_ca_file)


async def _send_utf8(settings: Settings, mail: Email, message: Any) -> str:
    """The rare message needing SMTPUTF8, through aiosmtplib on a connection of its own."""
    try:
        async with _client(settings) as smtp:
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            if not smtp.supports_extension("smtputf8"):  # nothing offered yet, and no retry would help
                raise SendError("the SMTP server does not offer SMTPUTF8, which an address with a non-ASCII local "
                                "part needs", permanent=True, not_sent=True)
            await smtp.send_message(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:  # (a hard bounce is one here too, as on the ASCII path)
        refused = exc.recipients[0]  # (one recipient a message)
        reply = Reply(refused.code, refused.message)
        raise SendError(f"recipient refused: SMTP {reply.code} {reply.text}"[:300], permanent=500 <= reply.code < 600,
                        not_sent=True, bounce=hard_bounce("RCPT", reply)) from None
    except aiosmtplib.SMTPResponseException as exc:
        reply = Reply(exc.code, exc.message)
        stage = "DATA" if isinstance(exc, aiosmtplib.SMTPDataError) else "MAIL"
        raise SendError(f"SMTP {exc.code}: {exc.message}"[:300], permanent=500 <= exc.code < 600, not_sent=True,
                        bounce=hard_bounce(stage, reply)) from None
    except aiosmtplib.SMTPConnectError as exc:
        raise SendError(f"SMTP unreachable: {exc}", permanent=False, not_sent=True) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SendError(f"SMTP transport: {type(exc).__name__}: {exc}", permanent=False) from None
    return message_id_header(mail.message_id, mail.sender)


async def send_smtp(settings: Settings, mail: Email) -> str:
    """Send one message on its own connection (see :class:`SmtpConnection` to reuse one)."""
    conn = SmtpConnection(settings)
    try:
        return await conn.send(mail)
    finally:
        await conn.close()
