"""Web Push to browsers: RFC 8030 (delivery), RFC 8291 (payload encryption) and RFC 8292 (VAPID).

- A browser's ``PushSubscription`` (``endpoint`` + ``keys.p256dh`` + ``keys.auth``) is registered as a
  ``web`` device; its endpoint must be a public http(s) URL (checked at registration and before every
  send: an API key cannot make the worker call the internal network).
- Payload: JSON ``{"title", "body", "deep_link", "image", "message_id", "data"}``, encrypted for the
  subscription (``aes128gcm``: ECDH P-256 with a fresh key per message, HKDF with the auth secret) with
  ``http_ece``; at most 4,096 bytes encrypted.
- Request: ``POST {endpoint}`` with ``TTL`` (seconds left until the message expires), ``Urgency`` (high
  for transactional, normal for marketing), ``Topic`` (from a ``collapse_key``, replacing an undelivered
  one), ``Content-Encoding: aes128gcm`` and ``Authorization: vapid t=<JWT ES256: aud = the endpoint's
  origin, exp = 12 h, sub = TENURE_VAPID_SUBJECT>,k=<public key>`` (no space after the comma, as the
  reference sender pywebpush writes it: py-vapid's verifier splits the header at its last space); browsers
  subscribe with that public key (``GET /v1/push/vapid-public-key``).
- Answers: 201 sent; 404/410 the subscription is gone (removed); 429 (honouring ``Retry-After``) and 5xx
  transient; 413 and other 4xx fail the message.
"""

import base64
import binascii
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.delivery.push import Device, Notification, Result, each_device, retry_after
from shared import netguard
from shared.settings import Settings

MAX_RECORD = 4096  # what push services must accept (RFC 8030 §7.2)
HEADER_LEN = 86  # salt 16 + record size 4 + key id length 1 + key id 65
JWT_LIFETIME_S = 12 * 3600
_RAW_KEY = re.compile(r"^[A-Za-z0-9_-]{43}=?$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_keys(p256dh: str, auth: str) -> None:
    """Raise ValueError unless ``p256dh`` is a P-256 public key and ``auth`` a 16-byte secret (base64url)."""
    try:
        point, secret = b64url_decode(p256dh), b64url_decode(auth)
    except (binascii.Error, ValueError):
        raise ValueError("keys.p256dh and keys.auth are base64url") from None
    if len(point) != 65 or point[0] != 4:
        raise ValueError("keys.p256dh is not an uncompressed P-256 public key (65 bytes)")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)  # ValueError when not on the curve
    if len(secret) != 16:
        raise ValueError("keys.auth is not a 16-byte secret")


@dataclass(frozen=True)
class VapidKey:
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, raw: str) -> "VapidKey":
        raw = raw.strip()
        if _RAW_KEY.match(raw):
            scalar = int.from_bytes(b64url_decode(raw), "big")
            return cls(ec.derive_private_key(scalar, ec.SECP256R1()))
        pem = raw if "-----BEGIN" in raw else Path(raw).read_text()
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the VAPID key must be a P-256 (prime256v1) EC key")
        return cls(key)

    @property
    def public_key(self) -> str:
        """The applicationServerKey browsers subscribe with: the uncompressed point, base64url."""
        return b64url(self.private.public_key().public_bytes(serialization.Encoding.X962,
                                                             serialization.PublicFormat.UncompressedPoint))


def vapid_key(settings: Settings) -> VapidKey | None:
    return VapidKey.load(settings.vapid_private_key) if settings.vapid_private_key else None


class VapidTokens:
    """Signed VAPID JWTs per (key, push service origin), reused until an hour before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, int]] = {}

    def get(self, key: VapidKey, audience: str, subject: str) -> str:
        now = int(time.time())
        cache_key = (key.public_key, audience, subject)
        cached = self._tokens.get(cache_key)
        if cached and cached[1] - now > 3600:
            return cached[0]
        exp = now + JWT_LIFETIME_S
        token = jwt.encode({"aud": audience, "exp": exp, "sub": subject}, key.private, algorithm="ES256")
        self._tokens[cache_key] = (token, exp)
        return token


TOKENS = VapidTokens()


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def encrypt(plaintext: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291: the message for one subscription, in the aes128gcm content coding (one record)."""
    return bytes(http_ece.encrypt(plaintext, salt=os.urandom(16), private_key=ec.generate_private_key(ec.SECP256R1()),
                                  dh=b64url_decode(p256dh), auth_secret=b64url_decode(auth), version="aes128gcm"))


def payload(note: Notification) -> bytes:
    return json.dumps({"title": note.title, "body": note.body, "deep_link": note.deep_link, "image": note.image,
                       "message_id": str(note.message_id), "data": {k: v for k, v in note.data.items()
                                                                     if v is not None}},
                      separators=(",", ":"), default=str).encode()


def topic(collapse_key: str) -> str:
    """RFC 8030 §5.4: at most 32 characters of the URL-safe base64 alphabet."""
    return b64url(hashlib.sha256(collapse_key.encode()).digest())[:32]


async def send(settings: Settings, http: httpx.AsyncClient, devices: list[Device], note: Notification) -> Result:
    result = Result()
    if not settings.vapid_private_key or not settings.vapid_subject:
        result.failed = "Web Push is not configured (TENURE_VAPID_PRIVATE_KEY, TENURE_VAPID_SUBJECT)"
        return result
    try:
        key = VapidKey.load(settings.vapid_private_key)
    except (OSError, ValueError) as exc:
        result.failed = f"VAPID key unusable: {type(exc).__name__}"
        return result
    plaintext = payload(note)
    if len(plaintext) + HEADER_LEN + 17 > MAX_RECORD:  # 16-byte tag + the padding delimiter
        result.failed = f"Web Push payload too large ({len(plaintext)} bytes; at most {MAX_RECORD - HEADER_LEN - 17})"
        return result
    headers = {"TTL": str(note.ttl_s()), "Urgency": "high" if note.urgent else "normal",
               "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream"}
    if note.collapse_key:
        headers["Topic"] = topic(note.collapse_key)
    await each_device(devices, lambda d: _send_one(settings, http, key, d, plaintext, headers, result), result,
                      note.start_by)
    return result


async def _send_one(settings: Settings, http: httpx.AsyncClient, key: VapidKey, device: Device, plaintext: bytes,
                    headers: dict[str, str], result: Result) -> None:
    endpoint = device.token
    try:
        await netguard.check_public(endpoint, allow_private=settings.webhook_allow_private)
    except netguard.BlockedURL as exc:
        result.failed = f"Web Push endpoint refused: {exc}"
        return
    vapid = TOKENS.get(key, origin(endpoint), settings.vapid_subject or "")
    body = encrypt(plaintext, device.p256dh or "", device.auth or "")
    try:
        resp = await http.post(endpoint, content=body, timeout=settings.provider_timeout_s,
                               headers={**headers, "Authorization": f"vapid t={vapid},k={key.public_key}"})
    except httpx.HTTPError as exc:
        result.retry(f"push service unreachable: {type(exc).__name__}")
        return
    where = urlsplit(endpoint).hostname
    if 200 <= resp.status_code < 300:
        result.delivered[endpoint] = resp.headers.get("location") or f"{where}:{resp.status_code}"
    elif resp.status_code in (404, 410):
        result.gone.append(endpoint)
    elif resp.status_code == 429 or resp.status_code >= 500:
        result.retry(f"push service {where} answered {resp.status_code}", retry_after(resp))
    else:
        result.failed = f"push service {where} answered {resp.status_code}: {_detail(resp)}"


def _detail(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
        return str(body.get("message") or body.get("reason") or body)[:200]
    except ValueError:
        return resp.text[:200]
