"""Email through SendGrid's v3 Mail Send API, and SendGrid's signed Event Webhook.

- Sending: ``POST {base}/v3/mail/send`` (Bearer API key) with personalizations, from, subject, content
  (text/plain first, then text/html), our headers (Message-ID, RFC 8058) and ``custom_args``
  (``tenure_message_id``, echoed back on every event). 202 means accepted; ``X-Message-Id`` is the
  provider id. 429, 5xx and 401/403 (the API key: revoked, rotated, without the Mail Send scope) are transient;
  other 4xx permanent. A 429 carries ``X-RateLimit-Reset``, the
  Unix time the rate limit's refresh period ends (SendGrid's "Rate Limits" page; no ``Retry-After``): the
  retry waits until then (a ``Retry-After``, should one come, is honoured first).
- Events: a JSON array, signed with ECDSA P-256 over ``timestamp + raw body``
  (``X-Twilio-Email-Event-Webhook-Signature``: base64 DER; ``…-Timestamp``), verified with the public
  key from SendGrid's settings. ``delivered`` moves a message to delivered; a ``bounce`` (type bounce)
  suppresses the address (hard bounce), ``spamreport`` too (complaint), ``dropped`` fails the message.
"""

import base64
import time
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from services.delivery.mailer import Email, SendError, message_id_header, split_address
from services.delivery.push import retry_after
from shared.settings import Settings

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def payload(mail: Email) -> dict[str, Any]:
    name, address = split_address(mail.sender)  # the bare name: SendGrid quotes it itself
    sender = {"email": address or mail.sender, **({"name": name} if name else {})}
    content = [{"type": "text/plain", "value": mail.text}] if mail.text else []
    content += [{"type": "text/html", "value": mail.html}] if mail.html else []
    return {
        "personalizations": [{"to": [{"email": mail.to}]}],
        "from": sender,
        "subject": mail.subject,
        "content": content,
        "headers": {"Message-ID": message_id_header(mail.message_id, mail.sender), **dict(mail.headers)},
        "custom_args": {"tenure_message_id": mail.message_id},
    }


async def send(settings: Settings, http: httpx.AsyncClient, mail: Email) -> str:
    if not settings.sendgrid_api_key:
        raise SendError("SendGrid is not configured (TENURE_SENDGRID_API_KEY)", permanent=True)
    try:
        resp = await http.post(f"{settings.sendgrid_base_url.rstrip('/')}/v3/mail/send", json=payload(mail),
                               headers={"Authorization": f"Bearer {settings.sendgrid_api_key}"},
                               timeout=settings.provider_timeout_s)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached SendGrid
        raise SendError(f"SendGrid unreachable: {type(exc).__name__}", permanent=False, not_sent=True) from None
    except httpx.HTTPError as exc:  # it may have arrived: the outcome is unknown
        raise SendError(f"SendGrid: {type(exc).__name__}", permanent=False) from None
    if resp.status_code in (200, 202):
        return resp.headers.get("x-message-id") or mail.message_id
    try:
        errors = "; ".join(e.get("message", "") for e in resp.json().get("errors", []))
    except ValueError:
        errors = resp.text[:200]
    # 401/403: the account's key (revoked, rotated, lacking the Mail Send scope), not the message: retried, and it
    # counts against SendGrid so a fallback provider takes over (every message failed for good before)
    transient = resp.status_code in (401, 403, 429) or resp.status_code >= 500
    raise SendError(f"SendGrid {resp.status_code}: {errors}", permanent=not transient, not_sent=True,
                    retry_after_s=wait_s(resp) if transient else None)


def wait_s(resp: httpx.Response, now: float | None = None) -> float | None:
    """How long SendGrid asked us to wait: ``Retry-After`` (delta seconds), else on a 429 until
    ``X-RateLimit-Reset`` (a Unix time); None when it said nothing usable."""
    after = retry_after(resp)
    if after is not None or resp.status_code != 429:
        return after
    try:
        reset = float(resp.headers.get("x-ratelimit-reset", ""))
    except ValueError:
        return None
    return max(0.0, reset - (time.time() if now is None else now))


# SendGrid retries a batch for up to 24 hours and does not say it signs a retry anew: a window of minutes (the usual
# replay guard) would refuse every retry after an outage of ours longer than that — bounces, complaints and
# unsubscribes lost for good. Applying a report is idempotent (a repeat changes nothing), so a genuine request
# replayed within the day does no harm; older is refused, as is a timestamp ahead of our clock by more than skew.
MAX_EVENT_AGE_S = 25 * 3600
MAX_CLOCK_SKEW_S = 600


def event_signature_problem(public_key: str, body: bytes, signature_b64: str | None, timestamp: str | None,
                            now: float | None = None) -> str | None:
    """Why this Event Webhook request is not SendGrid's (None: it is)."""
    if not signature_b64 or not timestamp:
        return f"Missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a Unix time"
    if age > MAX_EVENT_AGE_S:
        return (f"The SendGrid signature is {int(age)} s old (over {MAX_EVENT_AGE_S} s, past SendGrid's day of retries:"
                " a replay?)")
    if -age > MAX_CLOCK_SKEW_S:
        return f"The SendGrid signature is {int(-age)} s ahead of our clock (over {MAX_CLOCK_SKEW_S} s)"
    try:
        key = (load_pem_public_key(public_key.encode()) if "BEGIN PUBLIC KEY" in public_key
               else load_der_public_key(base64.b64decode(public_key)))  # as SendGrid shows it, or PEM
        assert isinstance(key, ec.EllipticCurvePublicKey)
    except (ValueError, AssertionError):
        return "TENURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not an EC public key (base64 DER or PEM)"
    try:
        key.verify(base64.b64decode(signature_b64), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return "The SendGrid signature does not match the timestamp and body"
    return None


def valid_event_signature(public_key: str, body: bytes, signature_b64: str | None, timestamp: str | None,
                          now: float | None = None) -> bool:
    return event_signature_problem(public_key, body, signature_b64, timestamp, now) is None
