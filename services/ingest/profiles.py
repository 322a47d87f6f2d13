"""Profiles and the identity map: which profile a ``userId`` / ``anonymousId`` belongs to.

Identity creation is serialised per identity with transaction-scoped advisory locks (taken in a fixed
order, so two batches never deadlock), which makes concurrent first sightings of the same user resolve
to one profile. Merging two existing profiles (``alias``, a login joining an anonymous history to a
known user) is not done here yet: the known user's profile wins for new events.
"""

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import NotFound

if TYPE_CHECKING:
    from services.ingest.tracking import Envelope

Key = tuple[str, str]  # (kind, value)


def _keys(env: "Envelope") -> list[Key]:
    keys: list[Key] = []
    if env.user_id:
        keys.append(("user_id", env.user_id))
    if env.anonymous_id:
        keys.append(("anonymous_id", env.anonymous_id))
    return keys


async def _load(session: AsyncSession, ws: uuid.UUID, keys: set[Key]) -> dict[Key, uuid.UUID]:
    if not keys:
        return {}
    kinds, values = zip(*sorted(keys), strict=True)
    rows = await session.execute(
        text(
            """
            select i.kind, i.value, i.profile_id from ingest.identities i
              join unnest(CAST(:kinds AS text[]), CAST(:vals AS text[])) as k(kind, value)
                on i.kind = k.kind and i.value = k.value
             where i.workspace_id = :ws
            """
        ),
        {"ws": ws, "kinds": list(kinds), "vals": list(values)},
    )
    return {(r.kind, r.value): r.profile_id for r in rows}


async def resolve_profiles(session: AsyncSession, ws: uuid.UUID, batch: list["Envelope"]) -> None:
    """Set ``profile_id`` on every envelope, creating profiles and identities that are new."""
    wanted = {k for env in batch for k in _keys(env)}
    known = await _load(session, ws, wanted)
    missing = wanted - known.keys()
    if missing:
        for kind, value in sorted(missing):
            await session.execute(
                text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{ws}:{kind}:{value}"}
            )
        known.update(await _load(session, ws, missing))  # another writer may have created them meanwhile
    new_profiles: dict[uuid.UUID, str | None] = {}
    new_ids: dict[Key, uuid.UUID] = {}
    named: dict[uuid.UUID, str] = {}
    for env in batch:
        keys = _keys(env)
        pid = next((known[k] for k in keys if k in known), None)
        if pid is None:
            pid = uuid.uuid4()
            new_profiles[pid] = env.user_id
        for k in keys:
            if k not in known:
                known[k] = new_ids[k] = pid
        if env.user_id and pid not in new_profiles:
            named.setdefault(pid, env.user_id)
        env.profile_id = pid
    if new_profiles:
        await session.execute(
            text(
                """
                insert into ingest.profiles (id, workspace_id, user_id)
                select u.id, :ws, u.uid from unnest(CAST(:ids AS uuid[]), CAST(:uids AS text[])) as u(id, uid)
                """
            ),
            {"ws": ws, "ids": list(new_profiles), "uids": list(new_profiles.values())},
        )
    if new_ids:
        await session.execute(
            text(
                """
                insert into ingest.identities (workspace_id, kind, value, profile_id)
                select :ws, u.kind, u.value, u.pid
                  from unnest(CAST(:kinds AS text[]), CAST(:vals AS text[]), CAST(:pids AS uuid[]))
                       as u(kind, value, pid)
                """
            ),
            {"ws": ws, "kinds": [k[0] for k in new_ids], "vals": [k[1] for k in new_ids],
             "pids": list(new_ids.values())},
        )
    if named:
        # an anonymous profile that just identified gets its userId
        await session.execute(
            text(
                """
                update ingest.profiles p set user_id = u.uid, updated_at = now()
                  from unnest(CAST(:pids AS uuid[]), CAST(:uids AS text[])) as u(pid, uid)
                 where p.id = u.pid and p.user_id is null
                """
            ),
            {"pids": list(named), "uids": list(named.values())},
        )


async def get_profile(session: AsyncSession, ws: uuid.UUID, ref: str) -> dict[str, Any]:
    """A profile by its id, ``userId``, ``anonymousId`` or email."""
    by_id: uuid.UUID | None = None
    try:
        by_id = uuid.UUID(ref)
    except ValueError:
        pass
    row = (
        await session.execute(
            text(
                """
                select p.* from ingest.profiles p
                 where p.workspace_id = :ws and (
                       p.id = :pid
                    or p.id = (select profile_id from ingest.identities
                                where workspace_id = :ws and kind = 'user_id' and value = :ref)
                    or p.id = (select profile_id from ingest.identities
                                where workspace_id = :ws and kind = 'anonymous_id' and value = :ref)
                    or (p.traits->>'email') = :ref)
                 order by (p.id = :pid) desc nulls last, p.updated_at desc
                 limit 1
                """
            ),
            {"ws": ws, "pid": by_id, "ref": ref},
        )
    ).mappings().first()
    if row is None:
        raise NotFound(f"No profile {ref!r} in this workspace")
    anon = await session.execute(
        text("select value from ingest.identities where workspace_id = :ws and profile_id = :pid "
             "and kind = 'anonymous_id' order by created_at"),
        {"ws": ws, "pid": row["id"]},
    )
    return {
        "id": str(row["id"]),
        "workspace_id": str(row["workspace_id"]),
        "user_id": row["user_id"],
        "anonymous_ids": [r[0] for r in anon],
        "traits": row["traits"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
