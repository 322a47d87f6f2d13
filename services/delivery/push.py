"""Push to every device a user registered: the adapter per device, and Firebase Cloud Messaging HTTP v1.

Routing (``adapter_of``): a ``web`` device registered with a Web Push subscription (endpoint + keys) goes
to its push service (``webpush.py``); an ``ios`` device token goes to APNs (``apns.py``) when APNs is
configured and the token is an APNs device token (hex) — an FCM registration token of an iOS app still goes
to FCM; everything else (android, web and iOS FCM tokens) goes to FCM. Each adapter answers a
:class:`Result`: the devices that took the notification, the ones that are gone (removed), and why others
should be tried again (transient) or will never take it (failed).

FCM HTTP v1:
- Auth: an OAuth 2.0 access token minted from the service account key — a JWT (RS256) with ``iss`` =
  the client email, ``scope`` = firebase.messaging, ``aud`` = the key's ``token_uri``, exchanged at that
  URI (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``); cached until shortly before expiry.
- Send: ``POST {base}/v1/projects/{project}/messages:send`` with one token per request; ``data``
  values are strings. ``UNREGISTERED`` (404), ``SENDER_ID_MISMATCH`` and an ``INVALID_ARGUMENT`` about
  the registration token remove the device; other 400s (``INVALID_ARGUMENT``: a bad payload) fail the
  message and keep the device; so does a 404 without ``UNREGISTERED`` (a project id or base URL that leads
  nowhere: our configuration, which every device would answer alike); 429 and 5xx are transient (a 429,
  ``QUOTA_EXCEEDED``, waits at least a minute when FCM gives no ``Retry-After``, as its error reference asks);
  401 mints a new token once. ``android.ttl``, ``apns-expiration`` and the ``webpush`` ``TTL`` header carry
  what is left of ``TENURE_PUSH_TTL_S`` (FCM's own default is 4 weeks). An image rides in
  ``notification.image`` (Android, web) and, for iOS, ``apns.fcm_options.image`` with ``mutable-content``;
  an https deep link becomes the web click link.
- Each device that takes a message gets a receipt (``sending._send_push``): a retry goes to the others only, and
  the message is sent once every device has it, is gone, or refused it for good.
"""

import asyncio
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt

from services.delivery.mailer import SendError
from shared.jsonutil import dumps
from shared.settings import Settings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GONE = {"UNREGISTERED", "SENDER_ID_MISMATCH"}  # the token itself is dead (INVALID_ARGUMENT can be our payload)


@dataclass
class ServiceAccount:
    project_id: str
    client_email: str
    private_key: str
    token_uri: str

    @classmethod
    def load(cls, raw: str) -> "ServiceAccount":
        text = Path(raw).read_text() if not raw.lstrip().startswith("{") else raw
        data = json.loads(text)
        return cls(data["project_id"], data["client_email"], data["private_key"], data["token_uri"])


class TokenCache:
    """Access tokens per service account (and token endpoint), shared by a process's sends."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def get(self, http: httpx.AsyncClient, account: ServiceAccount, timeout_s: float, *, fresh: bool = False
                  ) -> str:
        key = (account.client_email, account.token_uri)
        stale = self._tokens.get(key)
        async with self._locks.setdefault(key, asyncio.Lock()):  # concurrent senders mint one token, not many
            cached = self._tokens.get(key)
            if cached and time.time() < cached[1] - 60 and (not fresh or cached != stale):
                return cached[0]
            return await self._mint(http, account, timeout_s, key)

    async def _mint(self, http: httpx.AsyncClient, account: ServiceAccount, timeout_s: float,
                    key: tuple[str, str]) -> str:
        now = int(time.time())
        assertion = jwt.encode({"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri,
                                "iat": now, "exp": now + 3600}, account.private_key, algorithm="RS256")
        try:
            resp = await http.post(account.token_uri, timeout=timeout_s, data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
        except httpx.HTTPError as exc:
            raise SendError(f"FCM token endpoint unreachable: {type(exc).__name__}", permanent=False) from None
        if resp.status_code != 200:  # (a 429 or 5xx passes: retried; a 400/401 is our account's, for good)
            raise SendError(f"FCM token endpoint answered {resp.status_code}",
                            permanent=resp.status_code < 500 and resp.status_code != 429,
                            retry_after_s=retry_after(resp))
        body = resp.json()
        self._tokens[key] = (body["access_token"], time.time() + float(body.get("expires_in", 3600)))
        return str(body["access_token"])


TOKENS = TokenCache()


@dataclass(frozen=True)
class Notification:
    """What every adapter sends: the message's title and body, its data (``deep_link``, ``image`` and other
    values), when it stops being worth delivering and whether it is urgent (transactional)."""

    message_id: uuid.UUID
    title: str
    body: str
    data: dict[str, Any]
    expires_at: int  # unix seconds
    urgent: bool = False
    # (time.monotonic()) a device not yet sent to by then waits for the next attempt: a user's many slow devices
    # cannot outlast the message's lease, after which another worker would send to all of them again
    start_by: float = math.inf

    @property
    def deep_link(self) -> str | None:
        return str(self.data["deep_link"]) if self.data.get("deep_link") else None

    @property
    def image(self) -> str | None:
        return str(self.data["image"]) if self.data.get("image") else None

    @property
    def collapse_key(self) -> str | None:
        return str(self.data["collapse_key"]) if self.data.get("collapse_key") else None

    def ttl_s(self, now: float | None = None) -> int:
        return max(0, self.expires_at - int(time.time() if now is None else now))


@dataclass(frozen=True)
class Device:
    token: str  # FCM registration token, APNs device token, or a Web Push subscription's endpoint URL
    platform: str  # android | ios | web
    p256dh: str | None = None  # Web Push: the browser's P-256 public key (base64url)
    auth: str | None = None  # Web Push: the 16-byte authentication secret (base64url)


@dataclass
class Result:
    delivered: dict[str, str] = field(default_factory=dict)  # token -> the provider's id of what it took
    gone: list[str] = field(default_factory=list)  # tokens to remove
    transient: str | None = None  # why a device should be tried again
    failed: str | None = None  # why a device will never take this message (it stays registered)
    retry_after_s: float | None = None  # the longest wait a provider asked for

    def retry(self, reason: str, after_s: float | None = None) -> None:
        self.transient = reason
        if after_s is not None:
            self.retry_after_s = max(after_s, self.retry_after_s or 0.0)

    def merge(self, other: "Result") -> None:
        self.delivered.update(other.delivered)
        self.gone += other.gone
        self.transient = other.transient or self.transient
        self.failed = other.failed or self.failed
        if other.retry_after_s is not None:
            self.retry(self.transient or "", other.retry_after_s)


MAX_PARALLEL = 10  # devices of one user sent to at once: the message's time is one provider timeout, not N


async def each_device(devices: list[Any], send: Callable[[Any], Awaitable[None]], result: Result,
                      start_by: float = math.inf) -> None:
    """``send(device)`` for every device, ``MAX_PARALLEL`` at a time, each on its own: a device whose send raises
    fails, the others are still sent to. One not started by ``start_by`` is left for the next attempt (a
    transient error: the devices already reached have their receipts and are not sent to again)."""
    gate = asyncio.Semaphore(MAX_PARALLEL)

    async def one(device: Any) -> None:
        async with gate:
            if time.monotonic() > start_by:
                result.retry("the user's devices take longer than a lease: the rest go in the next attempt", 0.0)
                return
            try:
                await send(device)
            except SendError as exc:  # (the token endpoint, asked again mid-send: an outage there is retried)
                if exc.permanent:
                    result.failed = str(exc)[:300]
                else:
                    result.retry(str(exc)[:300], exc.retry_after_s)
            except Exception as exc:  # noqa: BLE001 - a bad device (odd URL, header) must not sink the rest
                result.failed = f"{type(exc).__name__}: {exc}"[:300]

    await asyncio.gather(*(one(d) for d in devices))


MAX_RETRY_AFTER_S = 3600.0  # a longer wait asked for is read as an hour (the outbox honours no more)
QUOTA_RETRY_AFTER_S = 60.0  # FCM's QUOTA_EXCEEDED without a Retry-After: "a minimum initial delay of 1 minute"


def retry_after(resp: httpx.Response, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, in either form RFC 9110 §10.2.3 allows: delta-seconds (``120``) or an HTTP date
    (``Wed, 21 Oct 2026 07:28:00 GMT``, read as the time until then). A date already past is 0, a wait beyond
    ``MAX_RETRY_AFTER_S`` that; None when the header is absent or is neither. Read for FCM, APNs, Web Push, Twilio,
    SendGrid and webhook receivers alike."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # (older Pythons answered None for a date they could not read)
            return None
        if when.tzinfo is None:  # "-0000": an HTTP date is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def fcm_message(token: str, note: Notification) -> dict[str, Any]:
    notification = {"title": note.title, "body": note.body, **({"image": note.image} if note.image else {})}
    message: dict[str, Any] = {"token": token, "notification": notification,
                               "data": {k: v if isinstance(v, str) else dumps(v) for k, v in note.data.items()
                                        if v is not None and k != "collapse_key"}}  # a reserved key in FCM
    # FCM keeps an undelivered notification for 4 weeks unless each platform block says otherwise
    ttl = note.ttl_s()
    android: dict[str, Any] = {"ttl": f"{ttl}s"}
    apns: dict[str, Any] = {"headers": {"apns-expiration": str(note.expires_at) if ttl else "0"}}  # 0: now or never
    webpush: dict[str, Any] = {"headers": {"TTL": str(ttl)}}
    if note.image:  # iOS shows it only through a notification service extension: mutable-content
        apns |= {"payload": {"aps": {"mutable-content": 1}}, "fcm_options": {"image": note.image}}
    if note.collapse_key:
        android["collapse_key"] = note.collapse_key
        apns["headers"]["apns-collapse-id"] = note.collapse_key[:64]
    if note.deep_link and note.deep_link.startswith("https://"):
        webpush["fcm_options"] = {"link": note.deep_link}
    return {"message": {**message, "android": android, "apns": apns, "webpush": webpush}}


async def send_fcm(settings: Settings, http: httpx.AsyncClient, devices: list[Device], note: Notification) -> Result:
    result = Result()
    if not settings.fcm_service_account:
        result.failed = "Push is not configured (TENURE_FCM_SERVICE_ACCOUNT)"
        return result
    account = ServiceAccount.load(settings.fcm_service_account)
    url = f"{settings.fcm_base_url.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
    try:
        await TOKENS.get(http, account, settings.provider_timeout_s)  # one access token for every device
        await each_device(devices, lambda d: _send_fcm_one(settings, http, account, url, d.token, note, result),
                          result, note.start_by)
    except SendError as exc:  # the token endpoint failed: no FCM device can be reached now
        if exc.permanent:
            result.failed = str(exc)
        else:
            result.retry(str(exc), exc.retry_after_s)
    return result


async def _send_fcm_one(settings: Settings, http: httpx.AsyncClient, account: ServiceAccount, url: str, token: str,
                        note: Notification, result: Result) -> None:
    for fresh in (False, True):
        access = await TOKENS.get(http, account, settings.provider_timeout_s, fresh=fresh)
        try:
            resp = await http.post(url, json=fcm_message(token, note), timeout=settings.provider_timeout_s,
                                   headers={"Authorization": f"Bearer {access}"})
        except httpx.HTTPError as exc:
            result.retry(f"FCM unreachable: {type(exc).__name__}")
            return
        if resp.status_code == 401 and not fresh:
            continue  # the access token expired early: mint a new one, once
        if resp.status_code == 200:
            result.delivered[token] = str(resp.json().get("name", ""))
        elif _error_code(resp) in GONE or _bad_token(resp):
            result.gone.append(token)
        elif resp.status_code == 429 or resp.status_code >= 500:
            after = retry_after(resp)
            if resp.status_code == 429 and after is None:  # QUOTA_EXCEEDED: FCM asks for a minute at least
                after = QUOTA_RETRY_AFTER_S
            result.retry(f"FCM {resp.status_code} ({_error_code(resp)})", after)
        elif resp.status_code == 404:  # no UNREGISTERED: not the token, the URL (every device would answer it)
            result.failed = (f"FCM 404 without UNREGISTERED at {url}: no such project or path — check the service "
                             "account's project_id and TENURE_FCM_BASE_URL (devices kept)")
        else:
            result.failed = f"FCM {resp.status_code} ({_error_code(resp)})"
        return


def _bad_token(resp: httpx.Response) -> bool:
    """An ``INVALID_ARGUMENT`` about the registration token itself (FCM says so only in the message: "The
    registration token is not a valid FCM registration token"), not about our payload."""
    try:
        error = resp.json().get("error", {})
        return resp.status_code == 400 and "not a valid fcm registration token" in str(error.get("message", "")).lower()
    except (ValueError, AttributeError):
        return False


def _error_code(resp: httpx.Response) -> str:
    try:
        details = resp.json().get("error", {}).get("details", [])
    except ValueError:
        return ""
    return next((d.get("errorCode", "") for d in details if isinstance(d, dict) and d.get("errorCode")), "")


Adapter = Callable[[Settings, httpx.AsyncClient, list[Device], Notification], Awaitable[Result]]


def adapter_of(settings: Settings, device: Device) -> str:
    from services.delivery import apns

    if device.platform == "web" and device.p256dh and device.auth:
        return "webpush"
    if device.platform == "ios" and apns.configured(settings) and apns.is_device_token(device.token):
        return "apns"
    return "fcm"


async def send(settings: Settings, http: httpx.AsyncClient, devices: list[Device], note: Notification) -> Result:
    """The notification to each device, through the adapter its platform (and registration) decides."""
    from services.delivery import apns, webpush

    adapters: dict[str, Adapter] = {"fcm": send_fcm, "apns": apns.send, "webpush": webpush.send}
    groups: dict[str, list[Device]] = {}
    for device in devices:
        groups.setdefault(adapter_of(settings, device), []).append(device)
    result = Result()
    for name, group in groups.items():
        result.merge(await adapters[name](settings, http, group, note))
    return result
