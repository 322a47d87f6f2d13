"""The webhook channel: a message POSTed as JSON to a customer's URL, signed so the receiver can trust it.

``Tenure-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` — the scheme
Stripe-style receivers know: recompute over the raw bytes, compare in constant time, reject old ``t``.
The secret is per workspace (derived from ``TENURE_SIGNING_SECRET``; ``GET /v1/webhook-secret``).
``Idempotency-Key`` carries the message id, stable across retries. 2xx is sent; 408, 429 and 5xx are
retried (not before the receiver's ``Retry-After``); other answers fail at once.
"""

import hashlib
import hmac
import time
import uuid

import httpx

from services.delivery.mailer import SendError
from services.delivery.push import retry_after
from shared import netguard
from shared.settings import Settings


def secret_for(settings: Settings, workspace_id: uuid.UUID) -> str:
    return hmac.new(settings.signing_secret.encode(), f"webhook:{workspace_id}".encode(), hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300, now: int | None = None) -> bool:
    """What a receiver does (and what our tests do): check the signature and the timestamp's age."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((int(time.time()) if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(signature_header(secret, body, t).split("v1=")[1], parts.get("v1", ""))


async def send(settings: Settings, http: httpx.AsyncClient, workspace_id: uuid.UUID, message_id: uuid.UUID,
               url: str, body: bytes) -> str:
    try:
        await netguard.check_public(url, allow_private=settings.webhook_allow_private)
    except netguard.BlockedURL as exc:
        raise SendError(f"webhook refused: {exc}", permanent=True) from None
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(message_id),
               "Tenure-Signature": signature_header(secret_for(settings, workspace_id), body),
               "User-Agent": "Tenure-Webhooks/1"}
    try:
        resp = await http.post(url, content=body, headers=headers, timeout=settings.provider_timeout_s)
    except httpx.HTTPError as exc:
        raise SendError(f"webhook unreachable: {type(exc).__name__}", permanent=False) from None
    if 200 <= resp.status_code < 300:
        return f"{resp.status_code}"
    transient = resp.status_code in (408, 429) or resp.status_code >= 500
    raise SendError(f"webhook answered {resp.status_code}", permanent=not transient,
                    retry_after_s=retry_after(resp) if transient else None)
