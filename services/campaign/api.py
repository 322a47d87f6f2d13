"""Campaign HTTP routes: templates, campaigns and their sends."""

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import StringConstraints

from services.campaign import campaigns, ingest_client
from services.campaign.schemas import (
    CampaignCreate,
    CampaignList,
    CampaignOut,
    CampaignStats,
    CampaignUpdate,
    JourneyList,
    MigrateOut,
    PreviewIn,
    PreviewOut,
    ProfileJourneys,
    SendList,
    SnippetIn,
    SnippetList,
    SnippetOut,
    TemplateCreate,
    TemplateList,
    TemplateOut,
    TestSendIn,
    TestSendOut,
    TriggerOut,
    TriggerRequest,
)
from shared import profile_merges
from shared.auth import WORKSPACE_HEADER, WorkspaceDep
from shared.db import SessionDep
from shared.errors import COMMON_ERRORS, Conflict, NotFound, UpstreamUnavailable, ValidationFailed, problem_schema
from shared.idempotency import keys_differ, mark_replayed, replay_response
from shared.pagination import AfterDep, PageDep, StampAfterDep
from shared.validation import StorableText

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
# an Idempotency-Key header: 1-200 characters PostgreSQL can hold (a NUL is a 422 naming the header)
KeyText = Annotated[str, StringConstraints(min_length=1, max_length=200), *StorableText.__metadata__]
IdempotencyKey = Annotated[KeyText | None, Header(alias="Idempotency-Key",
                                                  description="a retried trigger with the same key enters once "
                                                              "(or `idempotency_key` in the body)")]
_CONFLICT = {**COMMON_ERRORS, 409: problem_schema("Name already used")}
_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("Not found")}


@router.post("/templates", status_code=201, response_model=TemplateOut, operation_id="create_template",
             tags=["templates"], summary="Create a Liquid email template (syntax checked on save)",
             responses=_CONFLICT)
async def create_template(body: TemplateCreate, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.create_template(session, ws, body.model_dump(exclude_none=True))


@router.get("/templates", response_model=TemplateList, operation_id="list_templates", tags=["templates"],
            summary="List templates", responses=COMMON_ERRORS)
async def list_templates(ws: WorkspaceDep, session: SessionDep, page: AfterDep, limit: Limit = 100
                         ) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_templates(session, ws, page.position, limit)
    return {"templates": items, "next_cursor": page.next(nxt)}


@router.put("/templates/{template_id}", response_model=TemplateOut, operation_id="update_template",
            tags=["templates"], summary="Replace a template's content (checked like on create)",
            responses={**_CONFLICT, 404: problem_schema("Not found")})
async def update_template(template_id: uuid.UUID, body: TemplateCreate, ws: WorkspaceDep, session: SessionDep
                          ) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.update_template(session, ws, template_id, body.model_dump(exclude_none=True))


@router.post("/templates/{template_id}/preview", response_model=PreviewOut, operation_id="preview_template",
             tags=["templates"], summary="Render a template as a real user would get it (locale, traits, data)",
             responses=_NOT_FOUND)
async def preview_template(template_id: uuid.UUID, body: PreviewIn, ws: WorkspaceDep, session: SessionDep,
                           request: Request) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.render_preview(session, request.app.state.internal, ws, template_id, body.user,
                                              body.locale, body.data)


@router.post("/templates/{template_id}/test", status_code=202, response_model=TestSendOut,
             operation_id="test_send_template", tags=["templates"],
             summary="Send a rendered template on its channel to an address (a test: not counted by any campaign)",
             responses={**_NOT_FOUND, 422: problem_schema("Invalid body, or an address that does not fit the "
                                                          "template's channel")})
async def test_send_template(template_id: uuid.UUID, body: TestSendIn, ws: WorkspaceDep, session: SessionDep,
                             request: Request) -> dict[str, Any]:
    async with session.begin():
        out = await campaigns.render_preview(session, request.app.state.internal, ws, template_id, body.user,
                                             body.locale, body.data)
    resp = await request.app.state.internal.request(
        "POST", "delivery", "/v1/messages", retry=True, headers={WORKSPACE_HEADER: str(ws)},
        json=campaigns.test_message(template_id, out, body.to))
    if resp.status_code == 422:  # delivery checks the address for the channel, before storing anything
        problem = resp.json()
        why = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in problem.get("errors") or [])
        raise ValidationFailed(f"Delivery refused the test message: {why or problem.get('detail')}")
    if resp.status_code not in (200, 201, 202):
        raise UpstreamUnavailable(f"delivery answered {resp.status_code}: {resp.text[:200]}")
    return {"message_id": resp.json()["id"]}


@router.put("/snippets/{name}", response_model=SnippetOut, operation_id="put_snippet", tags=["templates"],
            summary="Create or replace a snippet: a partial templates include with {% render 'name' %}",
            responses=COMMON_ERRORS)
async def put_snippet(name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$")], body: SnippetIn,
                      ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.put_snippet(session, ws, name, body.content)


@router.get("/snippets", response_model=SnippetList, operation_id="list_snippets", tags=["templates"],
            summary="The workspace's snippets, in name order", responses=COMMON_ERRORS)
async def list_snippets(ws: WorkspaceDep, session: SessionDep, page: PageDep, limit: Limit = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_snippets(session, ws, page.position, limit)
    return {"snippets": items, "next_cursor": page.next(nxt)}


@router.get("/templates/{template_id}", response_model=TemplateOut, operation_id="get_template",
            tags=["templates"], summary="One template", responses=_NOT_FOUND)
async def get_template(template_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.get_template(session, ws, template_id)


@router.post("/campaigns", status_code=201, response_model=CampaignOut, operation_id="create_campaign",
             tags=["campaigns"], summary="Create a campaign: a journey run when its trigger happens",
             responses={**_CONFLICT, 404: problem_schema("Template not found")})
async def create_campaign(body: CampaignCreate, ws: WorkspaceDep, session: SessionDep, request: Request
                          ) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.create_campaign(session, ws, body.model_dump(mode="json"),
                                               internal=request.app.state.internal)


@router.get("/campaigns", response_model=CampaignList, operation_id="list_campaigns", tags=["campaigns"],
            summary="List campaigns", responses=COMMON_ERRORS)
async def list_campaigns(ws: WorkspaceDep, session: SessionDep, page: AfterDep, limit: Limit = 100
                         ) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_campaigns(session, ws, page.position, limit)
    return {"campaigns": items, "next_cursor": page.next(nxt)}


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, operation_id="get_campaign",
            tags=["campaigns"], summary="One campaign", responses=_NOT_FOUND)
async def get_campaign(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.get_campaign(session, ws, campaign_id)


@router.put("/campaigns/{campaign_id}", response_model=CampaignOut, operation_id="update_campaign",
            tags=["campaigns"], summary="Edit a campaign: a new version (users inside finish theirs)",
            responses={**_CONFLICT, 404: problem_schema("Campaign or template not found"),
                       409: problem_schema("Name already used, or the campaign is archived (archiving is final)")})
async def update_campaign(campaign_id: uuid.UUID, body: CampaignUpdate, ws: WorkspaceDep, session: SessionDep,
                          request: Request) -> dict[str, Any]:
    async with session.begin():
        data = body.model_dump(mode="json")
        if "topic" not in body.model_fields_set:  # omitted: kept (null clears it)
            del data["topic"]
        return await campaigns.update_campaign(session, ws, campaign_id, data,
                                               internal=request.app.state.internal)


@router.post("/campaigns/{campaign_id}/migrate", response_model=MigrateOut, operation_id="migrate_campaign_users",
             tags=["campaigns"], summary="Move users inside older versions to the current one (same step)",
             responses={**_NOT_FOUND, 409: problem_schema("The campaign is archived")})
async def migrate_campaign(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.migrate(session, ws, campaign_id)


@router.post("/campaigns/{campaign_id}/archive", response_model=CampaignOut, operation_id="archive_campaign",
             tags=["campaigns"], summary="Archive a campaign: no more entries, users inside leave",
             responses=_NOT_FOUND)
async def archive_campaign(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.archive(session, ws, campaign_id)


@router.post("/campaigns/{campaign_id}/trigger", status_code=202, response_model=TriggerOut,
             operation_id="trigger_campaign", tags=["campaigns"],
             summary="Enter a user now, with data (transactional messages, API-triggered journeys)",
             description="Only a campaign whose trigger is `api` takes it (another is a 409 naming its trigger: a "
                         "segment's or an event's campaign has its audience, a broadcast its slots), under its entry "
                         "rule. Returns 202 with what happened; a retry with the same idempotency key, user and "
                         "data gets "
                         "that first answer again as a 200 (header `Idempotent-Replayed: true`), and the same key "
                         "with another user or other data is a 409.",
             responses={**_NOT_FOUND, 200: replay_response(TriggerOut),
                        409: problem_schema("The campaign is not active or not API-triggered, or the idempotency key "
                                            "was used for another trigger")})
async def trigger_campaign(campaign_id: uuid.UUID, body: TriggerRequest, ws: WorkspaceDep, session: SessionDep,
                           request: Request, response: Response,
                           idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise keys_differ()
    async with session.begin():
        campaign = await campaigns.get_campaign(session, ws, campaign_id)
    # before asking ingest; checked again as the user enters (where a retry with a key is answered first, even
    # by a campaign paused since)
    if not (idempotency_key or body.idempotency_key):
        if campaign["status"] != "active":
            raise Conflict(f"The campaign is {campaign['status']}")
        if (kind := campaign["trigger"].get("type")) != "api":
            raise Conflict(campaigns.not_api_triggered(str(kind)), trigger=kind)
    found = await ingest_client.resolve_user(request.app.state.internal, ws, body.user)
    async with session.begin():
        out, replayed = await campaigns.trigger(session, ws, campaign_id, found, body.data,
                                                idempotency_key or body.idempotency_key)
    if replayed:
        mark_replayed(response)
    elif out["entered"]:
        request.app.state.waker.request("campaign", "advance_journeys")
    return out


@router.get("/campaigns/{campaign_id}/journeys", response_model=JourneyList, operation_id="list_campaign_journeys",
            tags=["journeys"], summary="Who is in the campaign, at which step", responses=_NOT_FOUND)
async def list_journeys(
    campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, page: AfterDep, limit: Limit = 100,
    status: Annotated[Literal["active", "waiting", "holdout", "completed", "exited"] | None,
                      Query(description="active | waiting | holdout | completed | exited")] = None,
    step: Annotated[str | None, Query(description="the step id journeys are at, as `step` in the answer says "
                                                  "(one sleeping in a delay or wait_until is at the step after it): "
                                                  "the journeys still in the campaign there (active or waiting, as "
                                                  "the stats' `in_progress_by_step` counts them), unless `status` "
                                                  "asks for others (`exited`: those who left there)")
                    ] = None,
) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_journeys(session, ws, campaign_id, status=status, step=step,
                                                   after=page.position, limit=limit)
    return {"journeys": items, "next_cursor": page.next(nxt)}


@router.get("/campaigns/{campaign_id}/stats", response_model=CampaignStats, operation_id="campaign_stats",
            tags=["journeys"], summary="Funnel: entered, per step, sends and skips by reason, conversions and lift",
            responses=_NOT_FOUND)
async def campaign_stats(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.stats(session, ws, campaign_id)


@router.get("/profiles/{profile_id}/journeys", response_model=ProfileJourneys, operation_id="profile_journeys",
            tags=["journeys"], summary="A profile's journeys, newest first, and step by step what happened and why",
            description=profile_merges.ROUTE_DESCRIPTION + " A profile with no journey is an empty list; an id "
                        "that is no profile of the workspace (asked of ingest, as the programs' profile routes do) is "
                        "a 404.",
            responses=_NOT_FOUND)
async def profile_journeys(
    profile_id: Annotated[uuid.UUID, Path(description=profile_merges.PATH_DESCRIPTION)], ws: WorkspaceDep,
    session: SessionDep, page: AfterDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200, description="page size (each journey comes with its log)")] = 50,
) -> dict[str, Any]:
    async with session.begin():
        live, items, nxt = await campaigns.profile_journeys(session, ws, profile_id, page.position, limit)
    # campaign knows only profiles that entered something: whether one with none exists is ingest's to say
    if not items and page.position is None and not await ingest_client.lookup_profiles(
            request.app.state.internal, ws, [str(live)]):
        raise NotFound(f"No profile {profile_id} in this workspace")
    return {"profile_id": str(live), "journeys": items, "next_cursor": page.next(nxt)}


def _status_route(status: str) -> Any:
    """The status is closed over: as a default argument it was a query parameter (``?_s=archived``)."""

    async def _set_status(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
        async with session.begin():
            return await campaigns.set_status(session, ws, campaign_id, status)

    return _set_status


for _action, _status in (("pause", "paused"), ("resume", "active")):
    _set_status = _status_route(_status)
    router.add_api_route(f"/campaigns/{{campaign_id}}/{_action}", _set_status, methods=["POST"],
                         response_model=CampaignOut, operation_id=f"{_action}_campaign", tags=["campaigns"],
                         summary=f"{_action.capitalize()} a campaign",
                         responses={**_NOT_FOUND, 409: problem_schema("The campaign is archived")})


@router.get("/campaigns/{campaign_id}/sends", response_model=SendList, operation_id="list_campaign_sends",
            tags=["campaigns"], summary="Sends decided by a campaign, with their outcome",
            description="Newest first: by `created_at`, then by `id` (descending) among sends decided together. "
                        "Sends decided while a client pages sort before its first page: the next pages hold what "
                        "they would have held, nothing skipped or repeated.", responses=_NOT_FOUND)
async def list_sends(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, page: StampAfterDep,
                     limit: Limit = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_sends(session, ws, campaign_id, page.stamp, limit)
    return {"sends": items, "next_cursor": page.next(nxt)}
