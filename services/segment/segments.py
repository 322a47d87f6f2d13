"""Segment definitions, memberships and the transition feed (no HTTP here)."""

import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import conditions
from shared.db import is_unique_violation
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.feed import Cursor, feed_order, feed_where

_COLUMNS = "id, name, definition, version, created_at, updated_at"


def _out(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    d["id"] = str(d["id"])
    return d


def validate_definition(definition: dict[str, Any]) -> Any:
    try:
        return conditions.parse(definition)
    except ValidationError as exc:
        errors = [{"at": "definition." + ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
                  for e in exc.errors(include_url=False)]
        raise ValidationFailed("The segment definition is not valid", errors=errors) from None


async def create_segment(session: AsyncSession, ws: uuid.UUID, name: str, definition: dict[str, Any]
                         ) -> dict[str, Any]:
    node = validate_definition(definition)
    try:
        async with session.begin_nested():
            row = (await session.execute(
                text(f"insert into segment.segments (id, workspace_id, name, definition) "
                     f"values (:id, :ws, :name, CAST(:d AS jsonb)) returning {_COLUMNS}"),
                {"id": uuid.uuid4(), "ws": ws, "name": name,
                 "d": orjson.dumps(node.model_dump(mode="json")).decode()},
            )).one()
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        raise Conflict(f"A segment named {name!r} already exists") from None
    return _out(row)


async def get_segment(session: AsyncSession, ws: uuid.UUID, segment_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(
        text(f"select {_COLUMNS} from segment.segments where workspace_id = :ws and id = :id"),
        {"ws": ws, "id": segment_id},
    )).first()
    if row is None:
        raise NotFound(f"No segment {segment_id}")
    return _out(row)


async def list_segments(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                        ) -> tuple[list[dict[str, Any]], str | None]:
    rows = (await session.execute(
        text(f"select {_COLUMNS} from segment.segments where workspace_id = :ws "
             f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim"),
        {"ws": ws, "after": after, "lim": limit + 1},
    )).all()
    items = [_out(r) for r in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


async def list_members(session: AsyncSession, ws: uuid.UUID, segment_id: uuid.UUID, after: str | None,
                       limit: int) -> tuple[list[dict[str, Any]], str | None]:
    await get_segment(session, ws, segment_id)
    rows = (await session.execute(
        text("select profile_id, entered_at from segment.memberships where workspace_id = :ws "
             "and segment_id = :sid and (CAST(:after AS uuid) is null or profile_id > CAST(:after AS uuid)) "
             "order by profile_id limit :lim"),
        {"ws": ws, "sid": segment_id, "after": after, "lim": limit + 1},
    )).all()
    items = [{"profile_id": str(r.profile_id), "entered_at": r.entered_at} for r in rows[:limit]]
    return items, (items[-1]["profile_id"] if len(rows) > limit else None)


async def read_transitions(session: AsyncSession, after: Cursor, limit: int
                           ) -> tuple[list[dict[str, Any]], Cursor]:
    rows = (await session.execute(
        text(f"select xid::text as xid, seq, workspace_id, segment_id, segment_version, profile_id, kind, at "
             f"from segment.transitions where {feed_where()} order by {feed_order()} limit :limit"),
        {"after_xid": str(after.xid), "after_seq": after.seq, "limit": limit},
    )).mappings().all()
    out = []
    cursor = after
    for r in rows:
        cursor = Cursor(int(r["xid"]), r["seq"])
        out.append({"cursor": cursor.encode(), "workspace_id": str(r["workspace_id"]),
                    "segment_id": str(r["segment_id"]), "segment_version": r["segment_version"],
                    "profile_id": str(r["profile_id"]), "kind": r["kind"], "at": r["at"]})
    return out, cursor
