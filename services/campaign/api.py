"""Campaign HTTP routes: templates, campaigns and their sends."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from services.campaign import campaigns
from services.campaign.schemas import (
    CampaignCreate,
    CampaignList,
    CampaignOut,
    CampaignStats,
    CampaignUpdate,
    JourneyList,
    ProfileJourneys,
    SendList,
    TemplateCreate,
    TemplateList,
    TemplateOut,
    TriggerOut,
    TriggerRequest,
)
from shared.auth import WorkspaceDep
from shared.db import AfterDep, SessionDep
from shared.errors import COMMON_ERRORS, Conflict, problem_schema

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
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
async def list_templates(ws: WorkspaceDep, session: SessionDep, after: AfterDep, limit: Limit = 100
                         ) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_templates(session, ws, after, limit)
    return {"templates": items, "next_cursor": nxt}


@router.put("/templates/{template_id}", response_model=TemplateOut, operation_id="update_template",
            tags=["templates"], summary="Replace a template's content (checked like on create)",
            responses={**_CONFLICT, 404: problem_schema("Not found")})
async def update_template(template_id: uuid.UUID, body: TemplateCreate, ws: WorkspaceDep, session: SessionDep
                          ) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.update_template(session, ws, template_id, body.model_dump(exclude_none=True))


@router.get("/templates/{template_id}", response_model=TemplateOut, operation_id="get_template",
            tags=["templates"], summary="One template", responses=_NOT_FOUND)
async def get_template(template_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.get_template(session, ws, template_id)


@router.post("/campaigns", status_code=201, response_model=CampaignOut, operation_id="create_campaign",
             tags=["campaigns"], summary="Create a campaign: a journey run when its trigger happens",
             responses={**_CONFLICT, 404: problem_schema("Template not found")})
async def create_campaign(body: CampaignCreate, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.create_campaign(session, ws, body.model_dump(mode="json"))


@router.get("/campaigns", response_model=CampaignList, operation_id="list_campaigns", tags=["campaigns"],
            summary="List campaigns", responses=COMMON_ERRORS)
async def list_campaigns(ws: WorkspaceDep, session: SessionDep, after: AfterDep, limit: Limit = 100
                         ) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_campaigns(session, ws, after, limit)
    return {"campaigns": items, "next_cursor": nxt}


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, operation_id="get_campaign",
            tags=["campaigns"], summary="One campaign", responses=_NOT_FOUND)
async def get_campaign(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.get_campaign(session, ws, campaign_id)


@router.put("/campaigns/{campaign_id}", response_model=CampaignOut, operation_id="update_campaign",
            tags=["campaigns"], summary="Edit a campaign: a new version (users inside finish theirs)",
            responses={**_CONFLICT, 404: problem_schema("Campaign or template not found")})
async def update_campaign(campaign_id: uuid.UUID, body: CampaignUpdate, ws: WorkspaceDep, session: SessionDep
                          ) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.update_campaign(session, ws, campaign_id, body.model_dump(mode="json"))


@router.post("/campaigns/{campaign_id}/archive", response_model=CampaignOut, operation_id="archive_campaign",
             tags=["campaigns"], summary="Archive a campaign: no more entries, users inside leave",
             responses=_NOT_FOUND)
async def archive_campaign(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.archive(session, ws, campaign_id)


@router.post("/campaigns/{campaign_id}/trigger", status_code=202, response_model=TriggerOut,
             operation_id="trigger_campaign", tags=["campaigns"],
             summary="Enter a user now, with data (transactional messages, API-triggered journeys)",
             responses={**_NOT_FOUND, 409: problem_schema("The campaign is not active")})
async def trigger_campaign(campaign_id: uuid.UUID, body: TriggerRequest, ws: WorkspaceDep, session: SessionDep,
                           request: Request) -> dict[str, Any]:
    async with session.begin():
        campaign = await campaigns.get_campaign(session, ws, campaign_id)
    if campaign["status"] != "active":
        raise Conflict(f"The campaign is {campaign['status']}")
    found = await campaigns.resolve_user(request.app.state.internal, ws, body.user)
    async with session.begin():
        out = await campaigns.trigger(session, ws, campaign_id, found, body.data, body.idempotency_key)
    if out["entered"]:
        request.app.state.waker.request("campaign", "advance_journeys")
    return out


@router.get("/campaigns/{campaign_id}/journeys", response_model=JourneyList, operation_id="list_campaign_journeys",
            tags=["journeys"], summary="Who is in the campaign, at which step", responses=_NOT_FOUND)
async def list_journeys(
    campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, after: AfterDep, limit: Limit = 100,
    status: Annotated[str | None, Query(description="active | waiting | holdout | completed | exited")] = None,
    step: Annotated[str | None, Query(description="current step id")] = None,
) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_journeys(session, ws, campaign_id, status=status, step=step, after=after,
                                                   limit=limit)
    return {"journeys": items, "next_cursor": nxt}


@router.get("/campaigns/{campaign_id}/stats", response_model=CampaignStats, operation_id="campaign_stats",
            tags=["journeys"], summary="Funnel: entered, per step, sends and skips by reason, conversions and lift",
            responses=_NOT_FOUND)
async def campaign_stats(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.stats(session, ws, campaign_id)


@router.get("/profiles/{profile_id}/journeys", response_model=ProfileJourneys, operation_id="profile_journeys",
            tags=["journeys"], summary="A profile's journeys and, step by step, what happened and why",
            responses=COMMON_ERRORS)
async def profile_journeys(profile_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return {"journeys": await campaigns.profile_journeys(session, ws, profile_id)}


for _action, _status in (("pause", "paused"), ("resume", "active")):

    async def _set_status(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep,
                          _s: str = _status) -> dict[str, Any]:
        async with session.begin():
            return await campaigns.set_status(session, ws, campaign_id, _s)

    router.add_api_route(f"/campaigns/{{campaign_id}}/{_action}", _set_status, methods=["POST"],
                         response_model=CampaignOut, operation_id=f"{_action}_campaign", tags=["campaigns"],
                         summary=f"{_action.capitalize()} a campaign", responses=_NOT_FOUND)


@router.get("/campaigns/{campaign_id}/sends", response_model=SendList, operation_id="list_campaign_sends",
            tags=["campaigns"], summary="Sends decided by a campaign, with their outcome", responses=_NOT_FOUND)
async def list_sends(campaign_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep, after: AfterDep,
                     limit: Limit = 100) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await campaigns.list_sends(session, ws, campaign_id, after, limit)
    return {"sends": items, "next_cursor": nxt}
