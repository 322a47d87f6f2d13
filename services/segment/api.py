"""Segment HTTP routes: definitions, members, and the transition feed."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import evaluation, lifecycle, lists, metrics, segments
from services.segment.schemas import (
    AttributesFound,
    AttributesLookup,
    LifecycleOverview,
    ListCreate,
    ListIds,
    ListOut,
    ListPage,
    ListUpload,
    MemberList,
    PreviewOut,
    PreviewRequest,
    ProfileAttributes,
    ProfileSegments,
    ProfileStage,
    RetentionMetrics,
    SearchOut,
    SearchRequest,
    SegmentCreate,
    SegmentList,
    SegmentOut,
    SegmentUpdate,
    StageSeries,
    TransitionPage,
)
from shared import profile_merges
from shared.auth import InternalDep, WorkspaceDep
from shared.db import SessionDep
from shared.errors import COMMON_ERRORS, InvalidCursor, ValidationFailed, place_error, problem_schema
from shared.feed import Cursor, backlog
from shared.pagination import AfterDep, page_of
from shared.validation import IsoDate, IsoDatetime

router = APIRouter(prefix="/v1", tags=["segments"])
feed_router = APIRouter(prefix="/v1", tags=["feed"])

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
ProfileId = Annotated[uuid.UUID, Path(description=profile_merges.PATH_DESCRIPTION)]
_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("No such segment")}
_PROFILE_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("No such profile (no event, trait or list entry of it "
                                                             "has reached this workspace)")}


@router.post("/segments", status_code=201, response_model=SegmentOut, operation_id="create_segment",
             summary="Create a segment; existing profiles are evaluated in the background",
             responses={**COMMON_ERRORS, 409: problem_schema("Name already used")})
async def create_segment(
    body: SegmentCreate, ws: WorkspaceDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    async with session.begin():
        seg = await segments.create_segment(session, ws, body.name, body.definition)
    request.app.state.waker.request("segment", "evaluate_segments")
    return seg


@router.post("/segments/preview", response_model=PreviewOut, operation_id="preview_segment",
             summary="Count and sample the profiles a definition matches, without saving it", responses=COMMON_ERRORS)
async def preview_segment(body: PreviewRequest, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    node = segments.validate_definition(body.definition)
    async with session.begin():
        await segments.check_references(session, ws, node)
        return await evaluation.preview(session, ws, node, sample=body.sample)


@router.post("/profiles/search", response_model=SearchOut, operation_id="search_profiles", tags=["profiles"],
             summary="Profiles matching a condition (trait, computed attribute, segment membership, …), "
                     "a page at a time, with the total count",
             description="Profiles in id order. `after` is the `next_cursor` of the previous page of the same search: "
                         "a cursor belongs to its definition and workspace, and another one's (or an edited one) is a "
                         "400, as on every list.", responses=COMMON_ERRORS)
async def search_profiles(body: SearchRequest, ws: WorkspaceDep, session: SessionDep, request: Request
                          ) -> dict[str, Any]:
    node = segments.validate_definition(body.definition)
    page = page_of(request, ws, body.after, where="body", defined_by=body.definition)
    try:
        after = uuid.UUID(page.position) if page.position else None
    except ValueError:
        raise InvalidCursor("body") from None
    async with session.begin():
        await segments.check_references(session, ws, node)
        found = await evaluation.search(session, ws, node, after=after, limit=body.limit)
    return {**found, "next_cursor": page.next(found["next_cursor"])}


@router.put("/segments/{segment_id}", response_model=SegmentOut, operation_id="update_segment",
            summary="Rename or redefine a segment: a new definition is a new version, re-evaluated in the background "
                    "(only real changes emitted)",
            responses={**_NOT_FOUND, 409: problem_schema("Name already used, or the id is a lifecycle stage's")})
async def update_segment(segment_id: uuid.UUID, body: SegmentUpdate, ws: WorkspaceDep, session: SessionDep,
                         request: Request) -> dict[str, Any]:
    async with session.begin():
        seg = await segments.update_segment(session, ws, segment_id, body.name, body.definition)
    request.app.state.waker.request("segment", "evaluate_segments")
    return seg


@router.get("/segments", response_model=SegmentList, operation_id="list_segments", summary="List segments",
            responses=COMMON_ERRORS)
async def list_segments(ws: WorkspaceDep, session: SessionDep, page: AfterDep, limit: Limit = 100
                        ) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await segments.list_segments(session, ws, page.position, limit)
    return {"segments": items, "next_cursor": page.next(nxt)}


@router.get("/segments/{segment_id}", response_model=SegmentOut, operation_id="get_segment",
            summary="One segment (or a lifecycle stage's, by its id from GET /v1/lifecycle)", responses=_NOT_FOUND)
async def get_segment(segment_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await segments.get_segment(session, ws, segment_id)


@router.get("/segments/{segment_id}/members", response_model=MemberList, operation_id="list_segment_members",
            summary="Profiles currently in the segment (or lifecycle stage)", responses=_NOT_FOUND)
async def list_members(segment_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, page: AfterDep,
                       limit: Limit = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await segments.list_members(session, ws, segment_id, page.position, limit)
    return {"members": items, "next_cursor": page.next(nxt)}


@feed_router.get("/transitions", response_model=TransitionPage, operation_id="read_transition_feed",
                 summary="Segment entries and exits after a cursor (internal token)", responses=COMMON_ERRORS)
async def read_transitions(
    _: InternalDep,
    session: SessionDep,
    after: Annotated[str | None, Query(description="next_cursor of the previous page; empty = start")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> dict[str, Any]:
    async with session.begin():
        items, cursor = await segments.read_transitions(session, Cursor.decode(after), limit)
        behind = await backlog(session, "segment.transitions", cursor)
    return {"transitions": items, "next_cursor": cursor.encode(), "behind": behind}




@router.get("/profiles/{profile_id}/segments", response_model=ProfileSegments, operation_id="get_profile_segments",
            tags=["profiles"], summary="The segments (and lifecycle stage) a profile is in now",
            description=profile_merges.ROUTE_DESCRIPTION, responses=_PROFILE_NOT_FOUND)
async def get_profile_segments(profile_id: ProfileId, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await segments.profile_segments(session, ws, profile_id)


@router.get("/profiles/{profile_id}/attributes", response_model=ProfileAttributes,
            operation_id="get_profile_attributes", tags=["attributes"],
            summary="Computed attributes of a profile (order count, revenue, AOV, recency, …)",
            description=profile_merges.ROUTE_DESCRIPTION, responses=_PROFILE_NOT_FOUND)
async def get_profile_attributes(profile_id: ProfileId, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await evaluation.profile_attributes(session, ws, profile_id, datetime.now(UTC).date())


@router.post("/attributes/lookup", response_model=AttributesFound, operation_id="lookup_profile_attributes",
             tags=["attributes"], summary="Computed attributes of many profiles at once (internal token, "
                                          "X-Tenure-Workspace)",
             description="What campaign's templates show as `attributes` (order count, CLTV, …): one request for a "
                         "batch of sends. Merges are followed as by `GET /v1/profiles/{profile_id}/attributes`; "
                         "unlike it, a profile segment has no facts about yet answers with the zero values, not 404.",
             responses=COMMON_ERRORS)
async def lookup_attributes(body: AttributesLookup, principal: InternalDep, session: SessionDep) -> dict[str, Any]:
    ws = principal.require_workspace()
    async with session.begin():
        found = await evaluation.attributes_of_many(session, ws, list(dict.fromkeys(body.profile_ids)),
                                                    datetime.now(UTC).date())
    return {"attributes": {str(pid): values for pid, values in found.items()}}


@router.get("/lifecycle", response_model=LifecycleOverview, operation_id="lifecycle_overview", tags=["lifecycle"],
            summary="How many profiles are in each lifecycle stage, and each stage's segment id",
            responses=COMMON_ERRORS)
async def lifecycle_overview(ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return {"stages": await segments.stage_counts(session, ws)}


@router.get("/lifecycle/{profile_id}", response_model=ProfileStage, operation_id="get_profile_stage",
            tags=["lifecycle"], summary="A profile's lifecycle stage and since when",
            description=profile_merges.ROUTE_DESCRIPTION, responses=_PROFILE_NOT_FOUND)
async def get_profile_stage(profile_id: ProfileId, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await segments.profile_stage(session, ws, profile_id)


@router.get("/metrics", response_model=RetentionMetrics, operation_id="retention_metrics", tags=["metrics"],
            summary="Activation, repeat, loyal and churn rates, average CLTV, NPS and CSAT for a cohort",
            responses=_NOT_FOUND)
async def retention_metrics(
    ws: WorkspaceDep,
    session: SessionDep,
    start: Annotated[IsoDatetime, Query(description="cohort: profiles first seen from (inclusive; UTC unless an "
                                                    "offset is given)", examples=["2026-01-01T00:00:00Z"])],
    end: Annotated[IsoDatetime, Query(description="… until (exclusive)", examples=["2026-02-01T00:00:00Z"])],
    segment_id: Annotated[uuid.UUID | None, Query(description="only current members of this segment (or lifecycle "
                                                               "stage: its segment id from GET /v1/lifecycle)")] = None,
) -> dict[str, Any]:
    start, end = (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))  # answered in UTC
    if end <= start:
        raise ValidationFailed("end must be after start", errors=[place_error(["query", "end"], "must be after start")])
    async with session.begin():
        if segment_id is not None and segment_id not in {lifecycle.stage_segment_id(ws, st) for st in lifecycle.STAGES}:
            await segments.get_segment(session, ws, segment_id)  # a 404, not the metrics of nobody
        cfg = await evaluation.lifecycle_settings(session, ws)
        body = await metrics.retention_metrics(session, ws, start, end, segment_id, cfg)
    return {"start": start, "end": end, "segment_id": str(segment_id) if segment_id else None, **body}


@router.get("/metrics/stages", response_model=StageSeries, operation_id="stage_series", tags=["metrics"],
            summary="Profiles per lifecycle stage, day by day (ready to chart)", responses=COMMON_ERRORS)
async def stage_series(
    ws: WorkspaceDep,
    session: SessionDep,
    start: Annotated[IsoDate, Query(description="first day (UTC)")],
    end: Annotated[IsoDate, Query(description="last day (UTC), at most 366 days after start; the series stops at "
                                              "today (UTC): days to come are not known yet")],
) -> dict[str, Any]:
    if end < start or (end - start).days > 366:
        msg = "end must be on or after start, and at most 366 days later"
        raise ValidationFailed(msg, errors=[place_error(["query", "end"], msg.removeprefix("end "))])
    async with session.begin():
        return {"days": await metrics.stage_series(session, ws, start, end)}


_LIST_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("No such list")}
lists_router = APIRouter(prefix="/v1", tags=["lists"])


@lists_router.post("/lists", status_code=201, response_model=ListOut, operation_id="create_list",
                   summary="Create a manual list (then upload ids to it)",
                   responses={**COMMON_ERRORS, 409: problem_schema("Name already used")})
async def create_list(body: ListCreate, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await lists.create_list(session, ws, body.name)


@lists_router.get("/lists", response_model=ListPage, operation_id="list_lists", summary="Manual lists",
                  responses=COMMON_ERRORS)
async def list_lists(ws: WorkspaceDep, session: SessionDep, page: AfterDep, limit: Limit = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await lists.list_lists(session, ws, page.position, limit)
    return {"lists": items, "next_cursor": page.next(nxt)}


@lists_router.get("/lists/{list_id}", response_model=ListOut, operation_id="get_list", summary="One manual list",
                  responses=_LIST_NOT_FOUND)
async def get_list(list_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await lists.get_list(session, ws, list_id)


async def _change(request: Request, session: AsyncSession, ws: uuid.UUID, list_id: uuid.UUID, refs: list[str], *,
                  add: bool) -> dict[str, Any]:
    async with session.begin():
        await lists.get_list(session, ws, list_id)  # 404 before asking ingest
    found = await lists.resolve(request.app.state.internal, ws, refs)
    async with session.begin():
        return await lists.change_members(session, ws, list_id, found, refs, add=add)


@lists_router.post("/lists/{list_id}/members", response_model=ListUpload, operation_id="add_list_members",
                   summary="Add profiles to a list by profile id, userId, anonymousId or email",
                   responses=_LIST_NOT_FOUND)
async def add_list_members(list_id: uuid.UUID, body: ListIds, ws: WorkspaceDep, session: SessionDep,
                           request: Request) -> dict[str, Any]:
    return await _change(request, session, ws, list_id, body.ids, add=True)


@lists_router.post(
    "/lists/{list_id}/members/csv", response_model=ListUpload, operation_id="upload_list_csv",
    summary="Add profiles to a list from a CSV file (first column: ids; an `id`/`email` header is skipped)",
    responses=_LIST_NOT_FOUND,
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {
        "schema": {"type": "string"}, "example": "email\nada@example.com\ngrace@example.com\n"}}}},
)
async def upload_list_csv(list_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, request: Request
                          ) -> dict[str, Any]:
    body = await request.body()
    if len(body) > 2 * 1024 * 1024:
        raise ValidationFailed("The CSV file is over 2 MB", errors=[place_error(["body"], "over 2 MB")])
    return await _change(request, session, ws, list_id, lists.ids_from_csv(body), add=True)


@lists_router.post("/lists/{list_id}/members/remove", response_model=ListUpload, operation_id="remove_list_members",
                   summary="Take profiles off a list", responses=_LIST_NOT_FOUND)
async def remove_list_members(list_id: uuid.UUID, body: ListIds, ws: WorkspaceDep, session: SessionDep,
                              request: Request) -> dict[str, Any]:
    return await _change(request, session, ws, list_id, body.ids, add=False)
