"""The dev inbox: a local SMTP server that keeps every message it receives, and a small web page.

``tenure dev`` points delivery's SMTP settings at it (port 1025) and serves the inbox on port 8025:
``GET /`` is a page (each mail shown without its open pixel: showing it is not reading it), ``GET /api/messages``
the JSON list (recipient, subject, text, html as received, headers). HEAD works on both.
Messages live in memory and in ``<state_dir>/mail.jsonl`` so they survive a restart of ``tenure dev``.
"""

import html
import uuid
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from services.delivery.links import without_pixel
from shared.web import HeadAsGetMiddleware


def parse_message(raw: bytes, envelope_from: str, rcpt_tos: list[str]) -> dict[str, Any]:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    return {
        "id": uuid.uuid4().hex,
        "received_at": datetime.now(UTC).isoformat(),
        "from": envelope_from,
        "to": rcpt_tos,
        "subject": str(msg.get("Subject", "")),
        "text": text_part.get_content() if text_part else None,
        "html": html_part.get_content() if html_part else None,
        "headers": {k: str(v) for k, v in msg.items()},
    }


class Mailbox:
    def __init__(self, path: Path | None = None):
        self.path = path
        self.messages: list[dict[str, Any]] = []
        if path and path.exists():
            self.messages = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.path:
            with self.path.open("ab") as f:
                f.write(orjson.dumps(message) + b"\n")

    def clear(self) -> None:
        self.messages.clear()
        if self.path and self.path.exists():
            self.path.unlink()


class _Handler:
    def __init__(self, mailbox: Mailbox):
        self.mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (envelope.content if isinstance(envelope.content, bytes) else b"")
        self.mailbox.add(parse_message(raw, str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def start_smtp(mailbox: Mailbox, host: str, port: int) -> Controller:
    controller = Controller(_Handler(mailbox), hostname=host, port=port)
    controller.start()
    return controller


def _shown(message: dict[str, Any]) -> str:
    """What the page shows of a mail: its HTML (less the open pixel), else its text."""
    if message["html"]:
        return without_pixel(message["html"])
    return f"<pre>{html.escape(message['text'] or '')}</pre>"


def create_inbox_app(mailbox: Mailbox) -> FastAPI:
    app = FastAPI(title="Tenure dev inbox", description="Mail received by the local SMTP server")
    app.add_middleware(HeadAsGetMiddleware)  # `curl -I`, uptime checks: HEAD answers as GET (it was a 405)

    @app.get("/api/messages", operation_id="list_inbox_messages", summary="Received mail, newest first")
    async def list_messages() -> dict[str, Any]:
        return {"messages": list(reversed(mailbox.messages))}

    @app.delete("/api/messages", status_code=204, operation_id="clear_inbox", summary="Forget all mail")
    async def clear() -> None:
        mailbox.clear()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        rows = "".join(
            f"<article><h2>{html.escape(m['subject'])}</h2><p class=meta>to {html.escape(', '.join(m['to']))}"
            f" · {html.escape(m['received_at'])}</p>"
            # no scripts in a mail; its links (unsubscribe, preferences, a click) open in a tab of their own, outside
            # the sandbox, where the pages' forms work and the page's refresh does not take them away. No open pixel:
            # every reload fetched it, and each message looked opened ("Email Opened" sent to ingest)
            f"<iframe sandbox=\"allow-popups allow-popups-to-escape-sandbox\" srcdoc=\""
            f"{html.escape('<base target=_blank>' + _shown(m))}"
            f"\"></iframe></article>"
            for m in reversed(mailbox.messages)
        ) or "<p>No mail yet. Send an event and it will show up here.</p>"
        return (
            "<!doctype html><meta charset=utf-8><title>Tenure inbox</title>"
            "<meta http-equiv=refresh content=5>"
            "<style>body{font:15px system-ui;margin:2rem auto;max-width:50rem}"
            "article{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}"
            ".meta{color:#666}iframe{width:100%;border:0;min-height:8rem}</style>"
            f"<h1>Tenure dev inbox ({len(mailbox.messages)})</h1>{rows}"
        )

    return app
