"""Campaign HTTP routes: templates, campaigns and their sends."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.campaign import campaigns
from services.campaign.schemas import (
    CampaignCreate,
    CampaignList,
    CampaignOut,
    SendList,
    TemplateCreate,
    TemplateOut,
)
from shared.auth import WorkspaceDep
from shared.db import AfterDep, SessionDep
from shared.errors import COMMON_ERRORS, problem_schema

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
_CONFLICT = {**COMMON_ERRORS, 409: problem_schema("Name already used")}
_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("Not found")}


@router.post("/templates", status_code=201, response_model=TemplateOut, operation_id="create_template",
             tags=["templates"], summary="Create a Liquid email template (syntax checked on save)",
             responses=_CONFLICT)
async def create_template(body: TemplateCreate, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.create_template(session, ws, body.model_dump())


@router.get("/templates/{template_id}", response_model=TemplateOut, operation_id="get_template",
            tags=["templates"], summary="One template", responses=_NOT_FOUND)
async def get_template(template_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await campaigns.get_template(session, ws, template_id)


@router.post("/campaigns", status_code=201, response_model=CampaignOut, operation_id="create_campaign",
             tags=["campaigns"], summary="Create a campaign: when TRIGGER, send TEMPLATE",
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
