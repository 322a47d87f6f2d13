"""The settings document Segment's client SDKs fetch before they send anything.

analytics-next (``{cdnURL}/v1/projects/{writeKey}/settings``), analytics-swift and analytics-kotlin
(``https://{cdnHost}/projects/{writeKey}/settings``) load it from Segment's CDN, which knows no Tenure write key;
pointing their CDN setting at ingest makes them find their ``apiHost`` here. The shape follows what the SDKs read:
``integrations["Segment.io"]`` (``apiKey``, ``apiHost``, optional ``protocol``), ``plan``, ``metrics`` (a sample
rate of 0 keeps the SDKs' own telemetry from going to Segment) and empty middleware, edge-function and
remote-plugin sections.
"""

from typing import Any
from urllib.parse import urlsplit

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def api_host_of(public_url: str) -> tuple[str, str]:
    """``(apiHost, protocol)`` of a base URL: ``https://t.example.com/x`` → ``("t.example.com/x/v1", "https")``."""
    parts = urlsplit(public_url.rstrip("/"))
    return f"{parts.netloc}{parts.path}/v1", parts.scheme or "https"


def settings_for(write_key: str, api_host: str, protocol: str | None) -> dict[str, Any]:
    segment_io: dict[str, Any] = {
        "apiKey": write_key, "apiHost": api_host, "unbundledIntegrations": [], "addBundledMetadata": True,
        "maybeBundledConfigIds": {},
        # switches on the SDKs' status-code policy (4xx other than 408/410/429/460 drop the batch): without it
        # analytics-swift drops a batch only on 400 and would retry one answered 413 or 422 at every flush
        "httpConfig": {"rateLimitConfig": {"enabled": True}, "backoffConfig": {"enabled": True}},
    }
    if protocol and protocol != "https":  # the SDKs' default; Swift and Kotlin only speak https
        segment_io["protocol"] = protocol
    enabled = {"__default": {"enabled": True, "integrations": {}}}
    return {
        "integrations": {"Segment.io": segment_io},
        "plan": {"track": enabled, "identify": enabled, "group": enabled},
        "metrics": {"sampleRate": 0, "flushTimer": 30000, "maxQueueSize": 20},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
