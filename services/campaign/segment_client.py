"""What campaign asks segment about segments (journeys' triggers and branches name them)."""

import uuid
from collections.abc import Iterable
from typing import Any

from shared.auth import WORKSPACE_HEADER
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient


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
    """Profile id -> computed attributes (order count, revenue, …) from segment, 1,000 profiles a request.
    UpstreamUnavailable when segment cannot answer: a message is not sent with the values missing."""
    ids = sorted(set(profile_ids))
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        resp = await internal.request("POST", "segment", "/v1/attributes/lookup", retry=True,  # (a read)
                                      headers={WORKSPACE_HEADER: str(ws)},
                                      json={"profile_ids": ids[start:start + 1000]})
        if resp.status_code != 200:
            raise UpstreamUnavailable(f"segment answered {resp.status_code} looking up computed attributes")
        out.update(resp.json()["attributes"])
    return out
