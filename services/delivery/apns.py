"""Push to iOS devices through Apple Push Notification service, token-based (HTTP/2, JWT ES256).

- Provider token: a JWT signed ES256 with the team's .p8 key; header ``kid`` = Key ID, claims ``iss`` =
  Team ID and ``iat``. One token is reused by every request of the process: Apple rejects a token older
  than an hour (403 ``ExpiredProviderToken``) and answers 429 ``TooManyProviderTokenUpdates`` to one
  refreshed more often than every 20 minutes — so it is replaced after 50 minutes, and a token APNs
  rejects (403 ``ExpiredProviderToken``/``InvalidProviderToken``) is re-minted once; its replacement is
  not replaced again before it is 20 minutes old (a wrong key id or team id fails the message instead).
- Send: ``POST {base}/3/device/{token}`` over one kept-open HTTP/2 connection, headers ``apns-topic``
  (bundle id), ``apns-push-type: alert``, ``apns-priority`` (10 transactional, 5 marketing),
  ``apns-expiration`` (the message's expiry, the same on every retry), ``apns-id`` (a UUID derived from
  our message id and the device token: stable across retries, so Apple's logs and ours line up) and
  ``apns-collapse-id`` when the data has a ``collapse_key``. Payload ``{"aps": {"alert": {title, body}},
  ...data}``: the data's keys (``deep_link``, ``image``, …) ride beside ``aps``; an image sets
  ``mutable-content`` for the app's notification service extension to fetch it.
- Answers: 200 sent; 410 ``Unregistered`` removes the device; 429 and 5xx are transient; other 4xx fail
  the message and keep the device, 400 ``BadDeviceToken``/``DeviceTokenNotForTopic`` included (Apple also
  gives them for a wrong environment or bundle id: our misconfiguration must not erase every iOS token).
"""

import hashlib
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from services.delivery.push import Device, Notification, Result, each_device, retry_after
from shared.settings import Settings

REFRESH_AFTER_S = 50 * 60  # well inside Apple's hour
MIN_REFRESH_S = 20 * 60  # Apple's floor between two tokens
# Only a 410 says the token itself is dead. Apple answers 400 BadDeviceToken for a token of the other
# environment (sandbox vs production) and DeviceTokenNotForTopic for a wrong bundle id, i.e. for our
# misconfiguration too: removing every iOS token on that would be unrecoverable, so they keep the device.
TOKEN_REJECTED = {"ExpiredProviderToken", "InvalidProviderToken"}
_HEX = re.compile(r"^[0-9a-fA-F]{32,200}$")


def configured(settings: Settings) -> bool:
    return bool(settings.apns_key and settings.apns_key_id and settings.apns_team_id and settings.apns_bundle_id)


def is_device_token(token: str) -> bool:
    """An APNs device token (hex); an FCM registration token of an iOS app is not."""
    return bool(_HEX.match(token))


def apns_id(message_id: uuid.UUID, token: str) -> str:
    return str(uuid.uuid5(message_id, token))


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    team_id: str
    pem: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "SigningKey":
        raw = settings.apns_key or ""
        pem = raw if "-----BEGIN" in raw else Path(raw).read_text()
        return cls(settings.apns_key_id or "", settings.apns_team_id or "", pem)

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return self.team_id, self.key_id, hashlib.sha256(self.pem.encode()).hexdigest()


@dataclass
class _Minted:
    token: str
    at: float
    forced: bool  # minted because APNs rejected the previous one


class ProviderTokens:
    """The provider token per key, shared by a process's sends (no await inside: no lock needed)."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], _Minted] = {}
        self.minted = 0

    def get(self, key: SigningKey, *, rejected: str | None = None) -> str | None:
        """The token to use; after APNs ``rejected`` one, a new one — or None when the rule against
        refreshing too often forbids replacing it (then the rejection stands)."""
        now = self._clock()
        cached = self._tokens.get(key.cache_key)
        if cached and rejected is not None and cached.token == rejected:
            if cached.forced and now - cached.at < MIN_REFRESH_S:
                return None
            return self._mint(key, now, forced=True)
        if cached and now - cached.at < REFRESH_AFTER_S:
            return cached.token
        return self._mint(key, now, forced=False)

    def _mint(self, key: SigningKey, now: float, *, forced: bool) -> str:
        token = jwt.encode({"iss": key.team_id, "iat": int(now)}, key.pem, algorithm="ES256",
                           headers={"kid": key.key_id})
        self._tokens[key.cache_key] = _Minted(token, now, forced)
        self.minted += 1
        return token


TOKENS = ProviderTokens()
_CLIENTS: dict[tuple[int, str, str | None], httpx.AsyncClient] = {}


def client_for(settings: Settings) -> httpx.AsyncClient:
    """One HTTP/2 client (one kept-open connection) per event loop and APNs endpoint, as Apple asks."""
    import asyncio

    loop = asyncio.get_running_loop()
    key = (id(loop), settings.apns_base_url, settings.apns_ca_file)
    client = _CLIENTS.get(key)
    if client is None or client.is_closed:
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=settings.apns_ca_file)
                                         if settings.apns_ca_file else True)
        # https: HTTP/2 negotiated by ALPN; http: HTTP/2 with prior knowledge (h2c), for a local relay
        client = httpx.AsyncClient(http2=True, http1=settings.apns_base_url.startswith("https://"), verify=verify,
                                   timeout=settings.apns_timeout_s)
        _CLIENTS[key] = client
    return client


async def close_clients() -> None:
    while _CLIENTS:
        await _CLIENTS.popitem()[1].aclose()


def payload(note: Notification) -> dict[str, Any]:
    aps: dict[str, Any] = {"alert": {"title": note.title, "body": note.body}, "sound": "default"}
    if note.image:
        aps["mutable-content"] = 1
    custom = {k: v for k, v in note.data.items() if v is not None and k not in ("aps", "collapse_key")}
    return {"aps": aps, **custom}


async def send(settings: Settings, http: httpx.AsyncClient, devices: list[Device], note: Notification) -> Result:
    """``http`` is not used: APNs needs HTTP/2, on its own long-lived client."""
    result = Result()
    try:
        key = SigningKey.from_settings(settings)
    except OSError as exc:
        result.failed = f"APNs key unreadable: {type(exc).__name__}"
        return result
    client = client_for(settings)
    base = settings.apns_base_url.rstrip("/")
    headers = {"apns-topic": settings.apns_bundle_id or "", "apns-push-type": "alert",
               "apns-priority": "10" if note.urgent else "5",
               "apns-expiration": str(note.expires_at) if settings.push_ttl_s else "0"}  # 0: now or never
    if note.collapse_key:
        key_ = note.collapse_key
        # an HTTP header is ASCII: anything else collapses under a digest of it
        headers["apns-collapse-id"] = key_[:64] if key_.isascii() else hashlib.sha256(key_.encode()).hexdigest()[:64]
    body = payload(note)
    await each_device(devices, lambda d: _send_one(settings, client, key, f"{base}/3/device/{d.token}",
                                                   {**headers, "apns-id": apns_id(note.message_id, d.token)}, body,
                                                   d.token, result), result, note.start_by)
    return result


async def _send_one(settings: Settings, client: httpx.AsyncClient, key: SigningKey, url: str, headers: dict[str, str],
                    body: dict[str, Any], token: str, result: Result) -> None:
    rejected: str | None = None
    reason = ""
    for _ in range(2):
        bearer = TOKENS.get(key, rejected=rejected)
        if bearer is None:
            result.failed = f"APNs refused our provider token twice ({reason}): check the key id, team id and key"
            return
        try:
            resp = await client.post(url, json=body, timeout=settings.apns_timeout_s,
                                     headers={**headers, "authorization": f"bearer {bearer}"})
        except httpx.HTTPError as exc:
            result.retry(f"APNs unreachable: {type(exc).__name__}")
            return
        reason = _reason(resp)
        if resp.status_code == 403 and reason in TOKEN_REJECTED and rejected is None:
            rejected = bearer  # re-mint once
            continue
        if resp.status_code == 200:
            result.delivered[token] = resp.headers.get("apns-id") or headers["apns-id"]
        elif resp.status_code == 410:
            result.gone.append(token)
        elif resp.status_code == 429 or resp.status_code >= 500:
            result.retry(f"APNs {resp.status_code} ({reason})", retry_after(resp))
        else:
            result.failed = f"APNs {resp.status_code} ({reason})"
        return


def _reason(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("reason", ""))
    except ValueError:
        return ""
