"""Signed links in messages: unsubscribe, preferences, the open pixel and click redirects.

A token names the workspace and the message it belongs to and carries an HMAC-SHA256 over them (with
the link's purpose and, for clicks, the target URL), so it cannot be forged, reused for another
purpose, or turned into an open redirect. Tokens are URL-safe base64, without padding.
"""

import base64
import hmac
import uuid
from dataclasses import dataclass


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class Subject:
    workspace_id: uuid.UUID
    message_id: uuid.UUID


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise BadToken("malformed token") from None


def _mac(secret: str, purpose: str, body: bytes, extra: str = "") -> bytes:
    return hmac.digest(secret.encode(), purpose.encode() + b"\0" + body + b"\0" + extra.encode(), "sha256")[:16]


def sign(secret: str, purpose: str, subject: Subject, extra: str = "") -> str:
    body = subject.workspace_id.bytes + subject.message_id.bytes
    return _b64(body + _mac(secret, purpose, body, extra))


def verify(secret: str, purpose: str, token: str, extra: str = "") -> Subject:
    raw = _unb64(token)
    if len(raw) != 48:
        raise BadToken("malformed token")
    body, mac = raw[:32], raw[32:]
    if not hmac.compare_digest(mac, _mac(secret, purpose, body, extra)):
        raise BadToken("bad signature")
    return Subject(uuid.UUID(bytes=body[:16]), uuid.UUID(bytes=body[16:]))
