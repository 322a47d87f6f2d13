"""Where a merged-away profile went: each consumer of ingest's feed keeps its own copy of the merges it folded.

Ingest merges a profile into another when two prove to be one person (alias, a login from a device with
anonymous history) and appends a ``merge`` event to its feed. Segment and campaign fold the merged-away profile's
state into the survivor; this map lets their per-profile routes answer an old id with the survivor's state instead
of a 404 or an empty page. Each service keeps the map in its own schema (``<schema>.merged_profiles``, one row per
merged-away profile: no cross-schema reads), compressed like ingest's ``merged_into``: a row always names the last
survivor, so a chain (A into B, B into C) is one primary-key lookup to read. Merges are rare: a few statements each.
"""

import re
import uuid
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

Merge = tuple[uuid.UUID, uuid.UUID, uuid.UUID]  # (workspace, merged-away profile, profile it was merged into)

_SCHEMA = re.compile(r"[a-z_]+")

# the OpenAPI text of every per-profile route that follows merges (segment's and campaign's alike)
PATH_DESCRIPTION = "the profile's id (UUID) in ingest; the id of a profile merged into another answers as the survivor"
ROUTE_DESCRIPTION = (
    "Follows ingest's profile merges: the id of a profile merged into another (an alias; a login from a device "
    "with anonymous history), however many merges ago, answers with the surviving profile's state, and "
    "`profile_id` in the answer is the survivor's id: compare it with the id asked for to see the redirect. "
    "Profile ids only: look a userId, anonymousId or email up with ingest's `GET /v1/profiles/{ref}` first."
)


def _table(schema: str) -> str:
    if not _SCHEMA.fullmatch(schema):
        raise ValueError(f"not a schema name: {schema!r}")
    return f"{schema}.merged_profiles"


async def survivor(session: AsyncSession, schema: str, ws: uuid.UUID, profile_id: uuid.UUID) -> uuid.UUID:
    """The profile ``profile_id`` lives on as now: itself unless it was merged away."""
    found = await session.scalar(
        text(f"select survivor_id from {_table(schema)} where workspace_id = :ws and profile_id = :pid"),
        {"ws": ws, "pid": profile_id})
    return found or profile_id


async def record(session: AsyncSession, schema: str, merges: Iterable[Merge]) -> None:
    """Remember merges, in feed order; idempotent (a replayed page writes the same rows). A merge into a profile
    already merged away (read late, or replayed after the later merge) points at that profile's survivor, and the
    profiles merged into the merged-away one follow it to its survivor: every row names a live profile."""
    table = _table(schema)
    for ws, old, new in merges:
        live = await survivor(session, schema, ws, new)
        if live == old:  # a cycle ingest cannot produce: keep ``old`` live rather than lose it
            continue
        params = {"ws": ws, "old": old, "live": live}
        await session.execute(text(
            f"insert into {table} (workspace_id, profile_id, survivor_id) values (:ws, :old, :live) "
            f"on conflict (workspace_id, profile_id) do update set survivor_id = excluded.survivor_id"), params)
        await session.execute(text(
            f"update {table} set survivor_id = :live where workspace_id = :ws and survivor_id = :old"), params)


async def forget(session: AsyncSession, schema: str, ws: uuid.UUID, pids: list[uuid.UUID]) -> int:
    """Erasure: the rows naming any of ``pids`` (as merged-away profile or survivor) go. Returns how many."""
    res = await session.execute(text(
        f"delete from {_table(schema)} where workspace_id = :ws "
        f"and (profile_id = any(CAST(:p AS uuid[])) or survivor_id = any(CAST(:p AS uuid[])))"), {"ws": ws, "p": pids})
    return int(res.rowcount)  # type: ignore[attr-defined]
