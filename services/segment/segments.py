"""Segment definitions, memberships and the transition feed (no HTTP here)."""

import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import conditions, evaluation, lifecycle
from shared.db import fetch_one, fetch_page, insert_one_or_conflict, row_dict
from shared.errors import Conflict, ValidationFailed, body_error
from shared.feed import Cursor, feed_params, feed_query
from shared.jsonutil import dumps
from shared.validation import error_message

_COLUMNS = "id, name, definition, version, created_at, updated_at"
# levels of and / or / not: far beyond any real definition, and far inside what a JSON answer may nest
MAX_DEPTH = 32


def _nodes(node: Any, at: str = "definition", depth: int = 0) -> Iterator[tuple[str, int, Any]]:
    """Each node of a parsed definition with its place, named as validation errors name it
    (``definition.and.children.1``), and how many and / or / not nodes it is nested in."""
    yield at, depth, node
    if isinstance(node, conditions.AndNode | conditions.OrNode):
        for i, child in enumerate(node.children):
            yield from _nodes(child, f"{at}.{node.type}.children.{i}", depth + 1)
    elif isinstance(node, conditions.NotNode):
        yield from _nodes(node.child, f"{at}.not.child", depth + 1)


def validate_definition(definition: dict[str, Any]) -> Any:
    try:
        node = conditions.parse(definition)
    except ValidationError as exc:
        errors = [body_error(["definition", *e["loc"]], error_message(e)) for e in exc.errors(include_url=False)]
        raise ValidationFailed("The segment definition is not valid", errors=errors) from None
    too_deep = next((at for at, depth, _ in _nodes(node) if depth > MAX_DEPTH), None)
    if too_deep:
        raise ValidationFailed("The segment definition is not valid", errors=[
            body_error(too_deep, f"nested more than {MAX_DEPTH} levels deep (and / or / not)")])
    # what parses but could never match meaningfully is refused on save only: stored definitions must still load
    for at, _, n in _nodes(node):
        if isinstance(n, conditions.AttributeNode) and (problem := conditions.attribute_op_problem(n)):
            raise ValidationFailed("The segment definition is not valid", errors=[
                body_error(f"{at}.attribute.op", problem)])
        for place, op, value in conditions.compared_values(n):
            if problem := conditions.value_problem(op, value):
                raise ValidationFailed("The segment definition is not valid", errors=[
                    body_error(f"{at}.{n.type}.{place}", problem)])
        if isinstance(n, conditions.RandomBucketNode) and "seed" not in n.model_fields_set:
            raise ValidationFailed("The segment definition is not valid", errors=[body_error(
                f"{at}.random_bucket.seed", "a seed is required: it names the draw (segments with the same seed "
                                            "draw the same profiles)", "missing")])
    return node


def _reads(graph: dict[uuid.UUID, set[uuid.UUID]], start: uuid.UUID, target: uuid.UUID) -> bool:
    """Whether segment ``start`` is ``target`` or reads it, directly or through other segments."""
    stack, seen = [start], set()
    while stack:
        sid = stack.pop()
        if sid == target:
            return True
        if sid not in seen:
            seen.add(sid)
            stack.extend(graph.get(sid, ()))
    return False


async def check_references(session: AsyncSession, ws: uuid.UUID, node: Any, segment_id: uuid.UUID | None = None
                           ) -> None:
    """Segments and lists a definition names must exist in the workspace, and segments must not read
    each other in a cycle (``segment_id``: the segment being edited). Errors name the node."""
    nodes = [(at, n) for at, _, n in _nodes(node)]
    refs = [(f"{at}.segment.segment_id", n.segment_id) for at, n in nodes if isinstance(n, conditions.SegmentRefNode)]
    lists = [(f"{at}.list.list_id", n.list_id) for at, n in nodes if isinstance(n, conditions.ListNode)]
    errors = []
    if refs or segment_id:
        graph = {r.id: conditions.segments_of(conditions.parse(r.definition)) for r in await session.execute(
            text("select id, definition from segment.segments where workspace_id = :ws"), {"ws": ws})}
        errors += [body_error(at, f"no segment {sid} in this workspace", "not_found") for at, sid in refs
                   if sid not in graph]
        if segment_id is not None:
            graph[segment_id] = {sid for _, sid in refs}
            errors += [body_error(at, "segments would read each other in a cycle")
                       for at, ref in refs if _reads(graph, ref, segment_id)][:1]
    if lists:
        known = set((await session.execute(
            text("select id from segment.lists where workspace_id = :ws and id = any(CAST(:ids AS uuid[]))"),
            {"ws": ws, "ids": list({lid for _, lid in lists})})).scalars())
        errors += [body_error(at, f"no list {lid} in this workspace", "not_found") for at, lid in lists
                   if lid not in known]
    if errors:
        raise ValidationFailed("The segment definition is not valid", errors=errors)


async def create_segment(session: AsyncSession, ws: uuid.UUID, name: str, definition: dict[str, Any]
                         ) -> dict[str, Any]:
    node = validate_definition(definition)
    await check_references(session, ws, node)
    row = await insert_one_or_conflict(
        session,
        f"insert into segment.segments (id, workspace_id, name, definition) "
        f"values (:id, :ws, :name, CAST(:d AS jsonb)) returning {_COLUMNS}",
        {"id": uuid.uuid4(), "ws": ws, "name": name, "d": dumps(node.model_dump(mode="json"))},
        f"A segment named {name!r} already exists",
    )
    return row_dict(row)


async def update_segment(session: AsyncSession, ws: uuid.UUID, segment_id: uuid.UUID, name: str | None,
                         definition: dict[str, Any] | None) -> dict[str, Any]:
    """Rename and/or redefine. A definition that differs from the current one makes a new version (members
    are re-evaluated in the background and only real changes are written); a rename, or the same
    definition again, keeps the version."""
    if _stage_of(ws, segment_id) is not None:
        raise Conflict(f"Segment {segment_id} is a lifecycle stage: the workspace's lifecycle settings define it")
    d = None
    if definition is not None:
        node = validate_definition(definition)
        await check_references(session, ws, node, segment_id)
        d = dumps(node.model_dump(mode="json"))
    row = await insert_one_or_conflict(
        session,
        f"update segment.segments set name = coalesce(:name, name), "
        f"definition = coalesce(CAST(:d AS jsonb), definition), "
        f"version = case when CAST(:d AS jsonb) is null or CAST(:d AS jsonb) = definition then version "
        f"else version + 1 end, updated_at = now() where workspace_id = :ws and id = :id returning {_COLUMNS}",
        {"ws": ws, "id": segment_id, "name": name, "d": d},
        f"A segment named {name!r} already exists",
        missing=f"No segment {segment_id}",
    )
    return row_dict(row)


def _stage_of(ws: uuid.UUID, segment_id: uuid.UUID) -> str | None:
    """The lifecycle stage whose fixed segment id (GET /v1/lifecycle) ``segment_id`` is, else None."""
    return next((st for st in lifecycle.STAGES if lifecycle.stage_segment_id(ws, st) == segment_id), None)


async def get_segment(session: AsyncSession, ws: uuid.UUID, segment_id: uuid.UUID) -> dict[str, Any]:
    """A saved segment, or a lifecycle stage's segment: it holds the profiles in that stage, as a saved segment
    ``{"type": "stage", "stage": ...}`` would, at version 0 (its transitions' version in the feed); the stages
    exist since the workspace does. Its id came back from GET /v1/lifecycle and was a 404 here."""
    if (stage := _stage_of(ws, segment_id)) is not None:
        created = await session.scalar(text("select created_at from core.workspaces where id = :ws"), {"ws": ws})
        return {"id": str(segment_id), "name": f"lifecycle stage {stage}",
                "definition": {"type": "stage", "stage": stage}, "version": 0,
                "created_at": created, "updated_at": created}
    return await fetch_one(
        session,
        f"select {_COLUMNS} from segment.segments where workspace_id = :ws and id = :id",
        {"ws": ws, "id": segment_id},
        missing=f"No segment {segment_id}",
    )


async def list_segments(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                        ) -> tuple[list[dict[str, Any]], str | None]:
    return await fetch_page(
        session,
        f"select {_COLUMNS} from segment.segments where workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def list_members(session: AsyncSession, ws: uuid.UUID, segment_id: uuid.UUID, after: str | None,
                       limit: int) -> tuple[list[dict[str, Any]], str | None]:
    await get_segment(session, ws, segment_id)
    return await fetch_page(
        session,
        "select profile_id, entered_at from segment.memberships where workspace_id = :ws "
        "and segment_id = :sid and (CAST(:after AS uuid) is null or profile_id > CAST(:after AS uuid)) "
        "order by profile_id limit :lim",
        {"ws": ws, "sid": segment_id, "after": after}, limit, key="profile_id",
    )


async def read_transitions(session: AsyncSession, after: Cursor, limit: int
                           ) -> tuple[list[dict[str, Any]], Cursor]:
    rows = (await session.execute(
        text(feed_query("segment.transitions", "workspace_id, segment_id, segment_version, profile_id, kind, at")),
        feed_params(after, limit),
    )).mappings().all()
    out = []
    cursor = after
    for r in rows:
        cursor = Cursor(int(r["cursor_xid"]), r["cursor_seq"])
        out.append({"cursor": cursor.encode(), "workspace_id": str(r["workspace_id"]),
                    "segment_id": str(r["segment_id"]), "segment_version": r["segment_version"],
                    "profile_id": str(r["profile_id"]), "kind": r["kind"], "at": r["at"]})
    return out, cursor


async def stage_counts(session: AsyncSession, ws: uuid.UUID) -> list[dict[str, Any]]:
    ids = {lifecycle.stage_segment_id(ws, st): st for st in lifecycle.STAGES}
    rows = dict((await session.execute(
        text("select segment_id, count(*) from segment.memberships where workspace_id = :ws "
             "and segment_id = any(CAST(:ids AS uuid[])) group by segment_id"),
        {"ws": ws, "ids": list(ids)},
    )).all())
    return [{"stage": st, "segment_id": str(sid), "profiles": rows.get(sid, 0)} for sid, st in ids.items()]


async def profile_stage(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID) -> dict[str, Any]:
    """A known profile's stage (None until its first activity is evaluated), ``profile_id`` the survivor's for a
    merged-away one; NotFound for an unknown one."""
    live = await evaluation.require_known_profile(session, ws, profile_id)
    ids = {lifecycle.stage_segment_id(ws, st): st for st in lifecycle.STAGES}
    row = (await session.execute(
        text("select segment_id, entered_at from segment.memberships where workspace_id = :ws "
             "and profile_id = :pid and segment_id = any(CAST(:ids AS uuid[]))"),
        {"ws": ws, "pid": live, "ids": list(ids)},
    )).first()
    return {"profile_id": str(live), "stage": ids[row.segment_id] if row else None,
            "since": row.entered_at if row else None}


async def profile_segments(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID) -> dict[str, Any]:
    """A known profile's segments and stage (an empty list when it is in none), ``profile_id`` the survivor's for
    a merged-away one; NotFound for an unknown one."""
    live = await evaluation.require_known_profile(session, ws, profile_id)
    ids = {lifecycle.stage_segment_id(ws, st): st for st in lifecycle.STAGES}
    rows = (await session.execute(
        text("select segment_id from segment.memberships where workspace_id = :ws and profile_id = :pid "
             "order by segment_id"), {"ws": ws, "pid": live})).scalars().all()
    return {"profile_id": str(live), "segment_ids": [str(r) for r in rows if r not in ids],
            "stage": next((ids[r] for r in rows if r in ids), None)}
