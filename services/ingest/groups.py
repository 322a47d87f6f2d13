"""Accounts (B2B): ``group`` calls keep each account's traits and which profiles belong to it."""

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import traits as trait_merge
from shared.jsonutil import dumps

if TYPE_CHECKING:
    from services.ingest.tracking import Envelope



async def record_groups(session: AsyncSession, ws: uuid.UUID, envs: list["Envelope"], stamps: list[str]) -> None:
    if not envs:
        return
    updates: dict[str, list[trait_merge.Update]] = {}
    members: set[tuple[str, uuid.UUID]] = set()
    for env, ts in zip(envs, stamps, strict=True):
        assert env.group_id is not None and env.profile_id is not None
        updates.setdefault(env.group_id, []).append((ts, env.traits))
        members.add((env.group_id, env.profile_id))
    ids = sorted(updates)
    await session.execute(
        text("insert into ingest.groups (workspace_id, group_id) select :ws, g from unnest(CAST(:ids AS text[])) g "
             "on conflict do nothing"),
        {"ws": ws, "ids": ids},
    )
    rows = await session.execute(
        text("select group_id, traits, trait_times from ingest.groups where workspace_id = :ws "
             "and group_id = any(CAST(:ids AS text[])) order by group_id for update"),
        {"ws": ws, "ids": ids},
    )
    merged = {gid: trait_merge.merge(t, tt, updates[gid]) for gid, t, tt in rows}
    await session.execute(
        text(
            """
            update ingest.groups g set traits = u.t::jsonb, trait_times = u.tt::jsonb, updated_at = now()
              from unnest(CAST(:ids AS text[]), CAST(:t AS text[]), CAST(:tt AS text[])) as u(gid, t, tt)
             where g.workspace_id = :ws and g.group_id = u.gid
            """
        ),
        {"ws": ws, "ids": list(merged), "t": [dumps(v[0]) for v in merged.values()],
         "tt": [dumps(v[1]) for v in merged.values()]},
    )
    await session.execute(
        text("insert into ingest.group_members (workspace_id, group_id, profile_id) "
             "select :ws, * from unnest(CAST(:gids AS text[]), CAST(:pids AS uuid[])) on conflict do nothing"),
        {"ws": ws, "gids": [m[0] for m in members], "pids": [m[1] for m in members]},
    )


async def groups_of(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text("select g.group_id, g.traits from ingest.group_members m join ingest.groups g "
             "on g.workspace_id = m.workspace_id and g.group_id = m.group_id "
             "where m.workspace_id = :ws and m.profile_id = :pid order by g.group_id"),
        {"ws": ws, "pid": profile_id},
    )
    return [{"group_id": gid, "traits": traits} for gid, traits in rows]
