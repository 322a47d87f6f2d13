"""What campaign asks ingest about people: profiles by id (merges followed) and references to profiles."""

import uuid
from typing import Any

from shared.auth import WORKSPACE_HEADER
from shared.errors import NotFound, UpstreamUnavailable
from shared.http import InternalClient
from shared.jsonutil import loads


async def lookup_profiles(internal: InternalClient, ws: uuid.UUID | str, ids: list[str]) -> dict[str, Any]:
    """Asked id -> {id, user_id, anonymous_id, traits} of the live profile; unknown ids are left out."""
    resp = await internal.request("POST", "ingest", "/v1/profiles/lookup", retry=True,
                                  headers={WORKSPACE_HEADER: str(ws)}, json={"ids": sorted(set(ids))})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"ingest answered {resp.status_code} looking up profiles")
    return dict(loads(resp.content)["profiles"])


async def resolve_user(internal: InternalClient, ws: uuid.UUID, ref: str) -> uuid.UUID:
    resp = await internal.request("POST", "ingest", "/v1/profiles/resolve", retry=True,
                                  headers={WORKSPACE_HEADER: str(ws)}, json={"refs": [ref]})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"ingest answered {resp.status_code} resolving the user")
    found = loads(resp.content)["profiles"].get(ref)
    if found is None:
        raise NotFound(f"No profile {ref!r} in this workspace")
    return uuid.UUID(found)
