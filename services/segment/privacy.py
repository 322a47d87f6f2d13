"""Erasure and export of what segment holds about profiles: traits copy, counts, stored events, account and
list memberships, segment memberships, transitions, order ids."""

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import profile_merges

_TABLES = ("event_counts", "profile_events", "profile_orders", "profile_traits", "profile_stats", "account_members",
           "list_members", "memberships", "transitions")
# bookkeeping, not exported: a mark left for re-evaluation brought the profile back into "has not done X" segments
_ALSO_ERASED = ("dirty_profiles",)


async def erase(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, int]:
    removed = {}
    for table in (*_TABLES, *_ALSO_ERASED):
        res = await session.execute(
            text(f"delete from segment.{table} where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
            {"ws": ws, "p": pids},
        )
        removed[table] = res.rowcount  # type: ignore[attr-defined]
    removed["merged_profiles"] = await profile_merges.forget(session, "segment", ws, pids)
    return removed


async def export(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in _TABLES:
        rows = await session.execute(
            text(f"select * from segment.{table} where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
            {"ws": ws, "p": pids},
        )
        out[table] = [{k: v for k, v in r.items() if k not in ("xid",)} for r in rows.mappings()]
    return out
