"""What campaign asks segment: whether segments exist (journeys' triggers and branches name them), and the computed
attributes templates show."""

import uuid
from collections.abc import Iterable
from typing import Any

import httpx

from shared.auth import WORKSPACE_HEADER
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient
from shared.jsonutil import loads

# How long one attributes request may take (each of its retries alike): a send waiting on it holds a 120 s lease.
ATTRIBUTES_TIMEOUT_S = 5.0
ATTRIBUTES_PAGE = 1000  # segment's limit per request


async def missing_segments(internal: InternalClient, ws: uuid.UUID, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``ids`` that are no segment of the workspace (a journey names a few: one request each)."""
    missing: set[uuid.UUID] = set()
    for sid in sorted(set(ids)):
        resp = await internal.request("GET", "segment", f"/v1/segments/{sid}", headers={WORKSPACE_HEADER: str(ws)})
        if resp.status_code == 404:
            missing.add(sid)
        elif resp.status_code != 200:
            raise UpstreamUnavailable(f"segment answered {resp.status_code} looking up segment {sid}")
    return missing


async def profile_attributes(internal: InternalClient, ws: uuid.UUID | str, profile_ids: Iterable[str]
                             ) -> dict[str, dict[str, Any]]:
    """Profile id -> its computed attributes (order count, total revenue, …), a request per 1,000 profiles.
    UpstreamUnavailable when segment does not answer them (down, too slow, an error): a message is not rendered
    with the values missing."""
    ids = sorted(set(profile_ids))
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), ATTRIBUTES_PAGE):
        try:
            resp = await internal.request("POST", "segment", "/v1/attributes/lookup", retry=True,  # (a read)
                                          headers={WORKSPACE_HEADER: str(ws)}, timeout=ATTRIBUTES_TIMEOUT_S,
                                          json={"profile_ids": ids[start:start + ATTRIBUTES_PAGE]})
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"segment unreachable looking up computed attributes: "
                                      f"{type(exc).__name__}") from None
        if resp.status_code != 200:
            raise UpstreamUnavailable(f"segment answered {resp.status_code} looking up computed attributes")
        out.update(loads(resp.content)["attributes"])
    return out
