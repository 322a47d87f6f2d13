"""Signed links in messages: unsubscribe, preferences, the open pixel and click redirects.

A token names the workspace and the message it belongs to and carries an HMAC-SHA256 over them (with
the link's purpose and, for clicks, the target URL), so it cannot be forged, reused for another
purpose, or turned into an open redirect. Tokens are URL-safe base64, without padding.

Links are signed with the current secret only and checked against it and the previous ones of a rotation
(``TENURE_SIGNING_SECRET_PREVIOUS``): mail already sent keeps working unsubscribe and click links.
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


def verify(secrets: tuple[str, ...], purpose: str, token: str, extra: str = "") -> Subject:
    """The token's subject, if one of ``secrets`` (the current one, then the previous ones) signed it."""
    raw = _unb64(token)
    if len(raw) != 48:
        raise BadToken("malformed token")
    body, mac = raw[:32], raw[32:]
    if not any(hmac.compare_digest(mac, _mac(secret, purpose, body, extra)) for secret in secrets):
        raise BadToken("bad signature")
    return Subject(uuid.UUID(bytes=body[:16]), uuid.UUID(bytes=body[16:]))
