"""What campaign asks segment about segments (journeys' triggers and branches name them)."""

import uuid
from collections.abc import Iterable

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
