"""The internal HTTP client: explicit timeouts, bounded retries with backoff, request-id propagation.

One client per process, created in a lifespan or worker start-up and closed on shutdown.
"""

import asyncio
import random
from typing import Any

import httpx
import structlog

from shared.jsonutil import dumps_bytes
from shared.settings import Settings

log = structlog.get_logger()

USER_AGENT = "tenure/0.1"
REQUEST_ID_HEADER = "X-Request-ID"
_RETRY_STATUS = {429, 502, 503, 504}
# An idle pooled connection is dropped before the server may close it (uvicorn: 5 s): reused at the very
# moment the server closes it, a request fails with RemoteProtocolError / ReadError (seen as an
# `http.retry` warning a minute after `tenure dev` starts).
KEEPALIVE_EXPIRY_S = 4.0


async def _propagate_request_id(request: httpx.Request) -> None:
    rid = structlog.contextvars.get_contextvars().get("request_id")
    if rid and REQUEST_ID_HEADER not in request.headers:
        request.headers[REQUEST_ID_HEADER] = str(rid)


def make_http_client(settings: Settings, *, base_url: str = "", **kw: Any) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.http_timeout_s, connect=min(5.0, settings.http_timeout_s))
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY_S),
        headers={"User-Agent": USER_AGENT},
        event_hooks={"request": [_propagate_request_id]},
        **kw,
    )


class InternalClient:
    """Calls another Tenure service with the internal token, retrying idempotent requests.

    Only requests that are safe to repeat are retried: GETs, and POSTs that carry an idempotency key
    the receiving service enforces (pass ``retry=True``).
    """

    def __init__(self, settings: Settings, http: httpx.AsyncClient):
        self._settings = settings
        self._http = http

    @property
    def settings(self) -> Settings:
        return self._settings

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        retry: bool | None = None,
        **kw: Any,
    ) -> httpx.Response:
        url = self._settings.url_of(service) + path  # type: ignore[arg-type]
        headers = {"Authorization": f"Bearer {self._settings.internal_token}", **kw.pop("headers", {})}
        if "json" in kw:  # encoded with orjson (httpx uses the standard library's encoder)
            kw["content"] = dumps_bytes(kw.pop("json"))
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        attempts = 1 + (self._settings.http_retries if (retry if retry is not None else method == "GET") else 0)
        for attempt in range(1, attempts + 1):
            try:
                resp = await self._http.request(method, url, headers=headers, **kw)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt == attempts:
                    raise
                log.warning("http.retry", service=service, path=path, attempt=attempt, error=type(exc).__name__)
            else:
                if resp.status_code not in _RETRY_STATUS or attempt == attempts:
                    return resp
                log.warning("http.retry", service=service, path=path, attempt=attempt, status=resp.status_code)
            await asyncio.sleep(min(5.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random()))
        raise AssertionError("unreachable")
