"""Push through Firebase Cloud Messaging HTTP v1, to every device a user registered.

- Auth: an OAuth 2.0 access token minted from the service account key — a JWT (RS256) with ``iss`` =
  the client email, ``scope`` = firebase.messaging, ``aud`` = the key's ``token_uri``, exchanged at that
  URI (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``); cached until shortly before expiry.
- Send: ``POST {base}/v1/projects/{project}/messages:send`` with one token per request; ``data``
  values are strings. ``UNREGISTERED`` (404) and ``SENDER_ID_MISMATCH`` remove the device; other 400s
  (``INVALID_ARGUMENT``: a bad payload) fail the message and keep the device; 429 and 5xx are transient;
  401 mints a new token once.
- A message is sent when at least one device took it; it fails permanently when no device is left.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from services.delivery.mailer import SendError
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
        if resp.status_code != 200:
            raise SendError(f"FCM token endpoint answered {resp.status_code}", permanent=resp.status_code < 500)
        body = resp.json()
        self._tokens[key] = (body["access_token"], time.time() + float(body.get("expires_in", 3600)))
        return str(body["access_token"])


TOKENS = TokenCache()


def fcm_message(token: str, title: str, body: str, data: dict[str, Any]) -> dict[str, Any]:
    notification = {"title": title, "body": body, **({"image": data["image"]} if data.get("image") else {})}
    return {"message": {"token": token, "notification": notification,
                        "data": {k: str(v) for k, v in data.items() if v is not None}}}


@dataclass
class Result:
    sent: list[str]  # FCM message names
    gone: list[str]  # tokens to remove
    transient: str | None  # why a device should be tried again


async def send(settings: Settings, http: httpx.AsyncClient, tokens: list[str], title: str, body: str,
               data: dict[str, Any]) -> Result:
    if not settings.fcm_service_account:
        raise SendError("Push is not configured (TENURE_FCM_SERVICE_ACCOUNT)", permanent=True)
    account = ServiceAccount.load(settings.fcm_service_account)
    url = f"{settings.fcm_base_url.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
    result = Result([], [], None)
    for token in tokens:
        for fresh in (False, True):
            access = await TOKENS.get(http, account, settings.provider_timeout_s, fresh=fresh)
            try:
                resp = await http.post(url, json=fcm_message(token, title, body, data),
                                       timeout=settings.provider_timeout_s,
                                       headers={"Authorization": f"Bearer {access}"})
            except httpx.HTTPError as exc:
                result.transient = f"FCM unreachable: {type(exc).__name__}"
                break
            if resp.status_code == 401 and not fresh:
                continue  # the access token expired early: mint a new one, once
            if resp.status_code == 200:
                result.sent.append(str(resp.json().get("name", "")))
            elif _error_code(resp) in GONE or resp.status_code == 404:
                result.gone.append(token)
            elif resp.status_code == 429 or resp.status_code >= 500:
                result.transient = f"FCM {resp.status_code} ({_error_code(resp)})"
            else:
                raise SendError(f"FCM {resp.status_code} ({_error_code(resp)})", permanent=True)
            break
    return result


def _error_code(resp: httpx.Response) -> str:
    try:
        details = resp.json().get("error", {}).get("details", [])
    except ValueError:
        return ""
    return next((d.get("errorCode", "") for d in details if isinstance(d, dict) and d.get("errorCode")), "")
